"""diffusers interop (:mod:`ddpm.interop`) against diffusers itself, and ddpm-export's safetensors file.

- A ``UNet2DModel`` in the DDPM CIFAR-10 layout (google/ddpm-cifar10-32's config: [sin, cos] features with
  freq_shift 1, GroupNorm eps 1e-6, TF "SAME" downsampling, attention at 16x16) with random weights, saved
  by ``save_pretrained``, loads into ddpm-lab's UNet with the same outputs (relative 1e-5); the fast test
  uses an eighth of the widths, the slow one the published 35.7M-parameter configuration.
- A diffusers pipeline folder's scheduler becomes ddpm-lab's schedule, objective and variance, and
  ``ddpm-sample --pretrained`` samples it.
- A trained digits run exported with ``export_diffusers`` loads in ``DDPMPipeline``: its UNet gives ddpm-lab's
  outputs, its scheduler ddpm-lab's betas, and the pipeline draws images.
- Configs ddpm-lab cannot express are refused in one line naming the setting.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.build import load_run
from ddpm.config import ConfigError
from ddpm.interop import export_diffusers, load_diffusers_pipeline, load_diffusers_unet
from ddpm.schedules import NotPureNoiseWarning

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: on a busy 2-core CPU, two threads wait on each other (diffusers' 8x8 UNet:
    0.36 s a forward pass with two threads, 0.015 s with one, measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: google/ddpm-cifar10-32's unet/config.json (diffusers' conversion of the DDPM paper's CIFAR-10 model)
DDPM_CIFAR10 = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "attention_head_dim": None,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "time_embedding_type": "positional",
}
#: google/ddpm-cifar10-32's scheduler/scheduler_config.json
DDPM_CIFAR10_SCHEDULER = {
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "variance_type": "fixed_large",
    "clip_sample": True,
}


def _random_unet(config: dict, folder: Path, safe: bool = True, seed: int = 0):
    """A UNet2DModel with random weights (none zero) saved with ``save_pretrained``."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():  # diffusers' init leaves some layers at 0 / 1: perturb every weight
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=safe)
    return model


def _assert_same_outputs(theirs, ours, channels: int, size: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, channels, size, size, generator=gen)
    t = torch.tensor([3, 917])
    with torch.no_grad():
        expected = theirs(x, t).sample
        got = ours(x, t)
    err = ((got - expected).abs().max() / expected.abs().max()).item()
    assert err < 1e-5, err


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_a_ddpm_layout_unet2dmodel_loads_with_the_same_outputs(tmp_path: Path, safe: bool) -> None:
    # the layout with an eighth of the width (and 8 groups, as 16 channels cannot make 32)
    config = {**DDPM_CIFAR10, "block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8}
    theirs = _random_unet(config, tmp_path / "unet", safe=safe)
    ours = load_diffusers_unet(tmp_path / "unet")
    assert ours.downsample_padding == "tf_same" and ours.norm_eps == 1e-6 and ours.attn_resolutions == (16,)
    _assert_same_outputs(theirs, ours, 3, 32)


@pytest.mark.slow
def test_the_ddpm_cifar10_unet_loads_with_the_same_outputs(tmp_path: Path) -> None:
    theirs = _random_unet(DDPM_CIFAR10, tmp_path / "unet")
    ours = load_diffusers_unet(tmp_path / "unet")
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    _assert_same_outputs(theirs, ours, 3, 32)


def _pipeline_folder(tmp_path: Path, scheduler: dict | None = None) -> Path:
    folder = tmp_path / "ddpm-tiny"
    config = {**DDPM_CIFAR10, "block_out_channels": [32, 32], "sample_size": 8, "layers_per_block": 1}
    config.update(
        down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"]
    )
    _random_unet(config, folder / "unet")
    sched = diffusers.DDPMScheduler(**(scheduler or DDPM_CIFAR10_SCHEDULER))
    sched.save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return folder


def test_a_pipeline_folder_becomes_a_ddpm_lab_run(tmp_path: Path) -> None:
    scheduler = {**DDPM_CIFAR10_SCHEDULER, "num_train_timesteps": 50, "prediction_type": "v_prediction"}
    folder = _pipeline_folder(tmp_path, scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        run = load_diffusers_pipeline(folder, sampler_overrides=["sampler=ddim", "sampler.steps=5"])
    diff = run.model.diffusion
    reference = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    assert diff.num_timesteps == 50
    torch.testing.assert_close(diff.betas.float(), reference.betas, rtol=1e-6, atol=0)
    assert diff.objective.value == "v" and diff.variance.value == "fixed_large" and diff.clip_denoised
    assert run.data.data_shape == (3, 8, 8) and run.model.sampler.steps is None  # DDPM over all T
    x = run.model.sample(3, sampler=run.sampler, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 3, 8, 8) and torch.isfinite(x).all()


def test_ddpm_sample_pretrained_writes_images(tmp_path: Path) -> None:
    from ddpm.cli.sample import main

    folder = _pipeline_folder(tmp_path)
    out = tmp_path / "s.npz"
    argv = ["--pretrained", str(folder), "sampler=ddim", "sampler.steps=4", "--n", "5", "--out", str(out)]
    assert main(argv) == 0
    with np.load(out) as npz:
        assert npz["samples"].dtype == np.uint8 and npz["samples"].shape == (5, 8, 8, 3)


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("unet", "time_embedding_type", "fourier"),
        ("unet", "resnet_time_scale_shift", "scale_shift"),
        ("unet", "num_class_embeds", 10),
        ("unet", "up_block_types", ["AttnUpBlock2D", "AttnUpBlock2D"]),
        ("unet", "cross_attention_dim", 768),
        ("scheduler", "variance_type", "learned_range"),
        ("scheduler", "beta_schedule", "exponential"),
    ],
)
def test_an_unsupported_config_is_refused_in_one_line(tmp_path: Path, where: str, key: str, value) -> None:
    folder = _pipeline_folder(tmp_path)
    path = folder / where / ("config.json" if where == "unet" else "scheduler_config.json")
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        load_diffusers_pipeline(folder)
    message = str(err.value)
    assert "\n" not in message and f"{key}={json.dumps(value)}" in message and str(path) in message


def _load(path: Path):
    with warnings.catch_warnings():  # digits_run's T=20 ends far from noise, on purpose (a short chain)
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        return load_run(path)


def test_a_trained_digits_run_exports_to_ddpm_pipeline(digits_run: Path, tmp_path: Path) -> None:
    run = _load(digits_run)
    out = export_diffusers(run, tmp_path / "pipe")
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    _assert_same_outputs(pipe.unet.eval(), run.model.net, 1, 8)
    torch.testing.assert_close(pipe.scheduler.betas, run.model.diffusion.betas.float(), rtol=1e-6, atol=0)
    assert pipe.scheduler.config.variance_type == "fixed_large" and pipe.scheduler.config.clip_sample
    images = pipe(batch_size=2, num_inference_steps=20, generator=torch.Generator().manual_seed(0),
                  output_type="np").images  # fmt: skip
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all() and images.std() > 0
    # ...and back: ddpm-lab reads its own export as the same network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        again = load_diffusers_pipeline(out)
    _assert_same_outputs(pipe.unet, again.model.net, 1, 8)


def test_ddpm_export_safetensors_loads_back_without_pickle(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors import safe_open

    from ddpm.cli.export import main

    out = tmp_path / "m.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        assert main([str(digits_run), "--format", "safetensors", "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ddpm_config"])["data"]["dataset"] == "digits" and meta["ddpm_weights"] == "ema"

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load called")

    original = _load(digits_run)
    monkeypatch.setattr(torch, "load", no_pickle)
    exported = _load(out)
    for (name, a), b in zip(
        original.model.state_dict().items(), exported.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert exported.config.model == original.config.model


def test_ddpm_export_refuses_a_bad_format(digits_run: Path, capsys: pytest.CaptureFixture) -> None:
    from ddpm.cli.export import main

    with pytest.raises(SystemExit) as exc:
        main([str(digits_run), "--format", "onnx"])
    assert exc.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: --format='onnx' is unknown; choose one of safetensors, diffusers"
    )
