"""The commands that only read a trained run build it in plain PyTorch (issue 17): ``ddpm-sample``,
``ddpm-eval`` and ``ddpm-viz reverse`` each run in a fresh process, on a real trained run, and must end
with Lightning, torchmetrics and W&B never imported, their files written; and the loaded run samples
exactly as its training module does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.build import build, load_run
from ddpm.data import ImageData, ImageDataModule, ToyData, ToyDataModule
from ddpm.samplers import DDIMSampler, DDPMSampler
from ddpm.sampling_model import SamplingModel
from tests.digits_classifier import CACHE_DIR, digits_metric
from tests.helpers import CLI_ENV

#: the packages that only training may import (each costs seconds: Lightning pulls in torch._dynamo)
TRAINING_ONLY = ("lightning", "pytorch_lightning", "torchmetrics", "wandb")

_COMMAND = """\
import json, sys
from {module} import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
print("IMPORTED=" + json.dumps([m for m in {names!r} if m in sys.modules]))
sys.exit(code)
"""


def run_fresh(module: str, argv: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """``module.main(argv)`` in a new Python process: (exit code, which of :data:`TRAINING_ONLY` it had
    imported at the end, stdout + stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", _COMMAND.format(module=module, names=TRAINING_ONLY), json.dumps(argv)],
        cwd=cwd,
        env={**os.environ, **CLI_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("IMPORTED=")]
    assert lines, output
    return proc.returncode, json.loads(lines[-1].removeprefix("IMPORTED=")), output


# ----------------------------------------------------------------------------- a toy run
def test_ddpm_sample_imports_no_lightning(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    argv = [str(toy_run), "sampler=ddim", "sampler.steps=10", "--n", "300", "--out", str(out)]
    code, imported, output = run_fresh("ddpm.cli.sample", argv, tmp_path)
    assert code == 0, output
    assert imported == [], output
    with np.load(out) as npz:
        samples = npz["samples"]
    assert samples.shape == (300, 2) and np.isfinite(samples).all()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 300 and summary["sampler"].startswith("DDIMSampler(steps=10")
    assert summary["ratio"] > 0  # scored against the run's held-out data
    assert Image.open(out.with_suffix(".png")).format == "PNG"


def test_ddpm_eval_of_a_toy_run_imports_no_lightning(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    argv = [str(toy_run), "sampler=ddim", "sampler.steps=10", "--n", "200", "--repeats", "2"]
    argv += ["--out", str(out)]
    code, imported, output = run_fresh("ddpm.cli.eval", argv, tmp_path)
    assert code == 0, output
    assert imported == [], output
    result = json.loads(out.read_text())
    assert result["kind"] == "toy" and result["weights"] == "ema" and result["steps"] == 10
    assert result["n"] == 200 and len(result["quality"]["ratio"]["values"]) == 2
    assert result["samples_per_s"] > 0
    assert "this run has no W&B run" in output  # logger=csv: nothing to add to W&B, and wandb not imported


def test_ddpm_viz_reverse_imports_no_lightning(toy_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "rev.png"
    argv = ["reverse", str(toy_run), "--n", "40", "--frames", "5", "--out", str(out)]
    code, imported, output = run_fresh("ddpm.cli.viz", argv, tmp_path)
    assert code == 0, output
    assert imported == [], output
    assert Image.open(out).format == "PNG"
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")  # T=50 on purpose: fast
def test_a_loaded_run_samples_exactly_as_its_training_module(toy_run: Path) -> None:
    run = load_run(toy_run)
    assert type(run.model) is SamplingModel
    assert type(run.data) is ToyData and not isinstance(run.data, L.LightningDataModule)
    datamodule, module = build(run.config)  # the Lightning objects of the same stored config
    state = torch.load(run.checkpoint, weights_only=True)["state_dict"]
    module.load_state_dict(state)  # strict: the names are the same in both
    assert run.model.state_dict().keys() == module.state_dict().keys() == state.keys()
    assert not torch.equal(run.model.net.out.weight, build(run.config)[1].net.out.weight)  # trained ones

    for kwargs in ({}, {"batch_size": 7}, {"sampler": DDPMSampler()}):
        gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        ours = run.model.sample(20, generator=gen_a, **kwargs)
        theirs = module.sample(20, generator=gen_b, **kwargs)
        assert torch.equal(ours, theirs), kwargs
    ddim = DDIMSampler(steps=5)
    chain = run.model.sample(6, ddim, torch.Generator().manual_seed(1), return_trajectory=True)
    same = module.sample(6, ddim, torch.Generator().manual_seed(1), return_trajectory=True)
    assert chain.trajectory.shape == (6, 6, 2) and torch.equal(chain.trajectory, same.trajectory)

    # the data class holds the DataModule's data: the same held-out and training draws, the same scale
    assert torch.equal(run.data.held_out(), datamodule.held_out())
    assert torch.equal(run.data.training_data(), datamodule.training_data())
    assert torch.equal(run.data.mean, datamodule.mean) and torch.equal(run.data.std, datamodule.std)


def test_each_datamodule_is_its_data_class_plus_loaders() -> None:
    assert issubclass(ToyDataModule, ToyData) and issubclass(ToyDataModule, L.LightningDataModule)
    assert issubclass(ImageDataModule, ImageData) and issubclass(ImageDataModule, L.LightningDataModule)
    args = {"dataset": "gaussian", "n_train": 64, "n_val": 16, "batch_size": 8, "seed": 5}
    plain, full = ToyData(**args), ToyDataModule(**args)  # the same arguments
    assert torch.equal(plain.held_out(), full.held_out()) and plain.data_shape == full.data_shape == (2,)
    (batch,) = next(iter(full.train_dataloader()))  # the loaders are the DataModule's only addition
    assert batch.shape == (8, 2)
    assert not hasattr(plain, "train_dataloader") and not hasattr(ImageData, "val_dataloader")


# ----------------------------------------------------------------------------- an image run
def test_ddpm_sample_of_an_image_run_imports_no_lightning(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    argv = [str(digits_run), "sampler=ddim", "sampler.steps=5", "--n", "10", "--out", str(out)]
    code, imported, output = run_fresh("ddpm.cli.sample", argv, tmp_path)
    assert code == 0, output
    assert imported == [], output
    with np.load(out) as npz:
        assert npz["samples"].dtype == np.uint8 and npz["samples"].shape == (10, 8, 8, 1)
    assert Image.open(out.with_suffix(".png")).size == (4 * 66 + 2, 3 * 66 + 2)  # 10 images, 4 per row


def test_ddpm_eval_of_an_image_run_imports_no_lightning(digits_run: Path, tmp_path: Path) -> None:
    digits_metric()  # the offline classifier, trained once into the tests' cache, which the command reads
    out = tmp_path / "e.json"
    argv = [str(digits_run), "sampler=ddim", "sampler.steps=5", "--n", "40", "--repeats", "1"]
    argv += ["--cache-dir", str(CACHE_DIR), "--out", str(out)]
    code, imported, output = run_fresh("ddpm.cli.eval", argv, tmp_path)
    assert code == 0, output
    assert imported == [], output  # the classifier metric needs no torchmetrics
    result = json.loads(out.read_text())
    assert result["kind"] == "image" and result["n"] == 40
    images = result["images"]
    assert images["metric"] == "classifier_frechet" and images["classifier"]["dataset"] == "digits"
    assert images["ratio"]["mean"] > 1  # four training steps: noise, far from real digits


def test_ddpm_eval_of_published_weights_imports_no_lightning(digits_run: Path, tmp_path: Path) -> None:
    # a diffusers pipeline folder (here: the digits run exported) is evaluated as a run, on its data set
    from ddpm.interop import export_diffusers
    from ddpm.schedules import NotPureNoiseWarning

    digits_metric()
    with pytest.warns(NotPureNoiseWarning):  # digits_run's T=20 chain ends far from noise, on purpose
        pipeline = export_diffusers(load_run(digits_run), tmp_path / "pipe")
    out = tmp_path / "e.json"
    argv = ["--pretrained", str(pipeline), "--dataset", "digits", "sampler=ddim", "sampler.steps=5"]
    argv += ["--n", "40", "--repeats", "1", "--cache-dir", str(CACHE_DIR), "--out", str(out)]
    code, imported, output = run_fresh("ddpm.cli.eval", argv, tmp_path)
    assert code == 0, output
    assert imported == [], output
    result = json.loads(out.read_text())
    assert result["kind"] == "image" and result["n"] == 40 and result["steps"] == 5
    images = result["images"]
    assert images["metric"] == "classifier_frechet" and images["classifier"]["dataset"] == "digits"
    assert images["ratio"]["mean"] > 1  # four training steps: noise, far from real digits
