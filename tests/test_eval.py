"""ddpm-eval: a tiny trained toy run evaluated in-process; the image branch with a stand-in generator."""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from ddpm.build import LoadedRun
from ddpm.cli.eval import evaluate
from ddpm.cli.eval import main as eval_main
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import DDIMSampler, Sampler
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule
from tests.digits_classifier import CACHE_DIR, digits_metric
from tests.helpers import SHORT, run_train
from tests.wandb_records import logged_history, logged_summary


def test_ddpm_eval_writes_its_json(toy_run: Path, capsys) -> None:
    args = [str(toy_run), "sampler=ddim", "sampler.steps=10", "--n", "200", "--repeats", "3"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        assert eval_main([*args, "--bpd", "--bpd-n", "100"]) == 0
    out = capsys.readouterr().out
    path = toy_run / "eval" / "ddim10_n200_k3_seed0_bpd.json"
    assert f"Wrote {path}" in out
    assert "x the data-vs-data floor" in out and "bits/dim" in out and "Weights: ema" in out

    result = json.loads(path.read_text())
    assert result["weights"] == "ema"  # the checkpoint's state_dict is Lightning's EMA average
    assert result["kind"] == "toy" and result["steps"] == 10 and result["n"] == 200
    assert result["repeats"] == 3 and result["seed"] == 0
    assert result["samples_per_s"] > 0 and result["sampling_seconds"] > 0
    quality = result["quality"]
    assert quality["metric"] == "energy_distance" and quality["floor_draws"] == 3
    for key in ("ratio", "sliced_w_ratio", "energy", "energy_floor"):
        spread = quality[key]
        assert len(spread["values"]) == 3
        assert spread["low"] <= spread["mean"] <= spread["high"] and spread["std"] >= 0
    assert len(quality["draws"]) == 3 and all(d["n"] == 200 for d in quality["draws"])
    assert quality["ratio"]["mean"] > 1  # four training steps: far from the data
    bpd = result["bpd"]
    assert bpd["decoder_kind"] == "gaussian" and bpd["n"] == 100 and bpd["T"] == 50
    assert len(bpd["terms"]) == 50 and bpd["t_samples"] is None
    assert bpd["bits_per_dim"] == pytest.approx(bpd["prior"] + bpd["diffusion"] + bpd["decoder"])
    assert math.isfinite(bpd["bits_per_dim_raw_units"])


def test_ddpm_eval_adds_its_figures_to_the_runs_wandb_run(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [*SHORT, "T=50", "callbacks.samples=null", "final_samples=0", "logger=wandb"]
    _, run = run_train(tmp_path, overrides)
    run_id = (run / ".wandb_id").read_text().strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        args = [str(run), "sampler=ddim", "sampler.steps=10", "--n", "100", "--repeats", "2"]
        assert eval_main(args) == 0
    assert f"added to run {run_id} (offline) under eval/ddim10_n100_k2_seed0/" in capsys.readouterr().out
    result = json.loads((run / "eval" / "ddim10_n100_k2_seed0.json").read_text())
    # the evaluation is a second offline part of the same W&B run (wandb sync merges them); the training's
    # history is still there
    prefix = "eval/ddim10_n100_k2_seed0"

    def read() -> tuple[list[Path], dict[str, float]]:
        files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}*.wandb"))
        return files, {k: v for f in files for k, v in logged_summary(f).items()}

    # W&B's service process writes the file: on a loaded CPU the summary lands a moment after finish()
    deadline = time.monotonic() + 20
    files, summary = read()
    while f"{prefix}/samples_per_s" not in summary and time.monotonic() < deadline:
        time.sleep(0.5)
        files, summary = read()
    assert any("train/loss" in logged_history(f) for f in files)
    assert summary[f"{prefix}/samples_per_s"] == pytest.approx(result["samples_per_s"])
    assert summary[f"{prefix}/steps"] == 10
    # every finite figure of the JSON's quality section is there, with its value
    spreads = {k: v for k, v in result["quality"].items() if isinstance(v, dict) and "mean" in v}
    quality = {f"{prefix}/quality/{k}/mean": v["mean"] for k, v in spreads.items()}
    assert quality
    for key, value in quality.items():
        if math.isfinite(value):
            assert summary[key] == pytest.approx(value), (key, sorted(summary))


def test_ddpm_eval_bpd_only_with_sampled_timesteps(toy_run: Path) -> None:
    out = toy_run / "bound.json"
    args = [str(toy_run), "--no-quality", "--bpd", "--bpd-n", "50", "--bpd-t-samples", "5", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        assert eval_main(args) == 0
    result = json.loads(out.read_text())
    assert result["quality"] == {"skipped": "--no-quality"}
    assert result["bpd"]["t_samples"] == 5 and result["bpd"]["terms"] is None
    assert "samples_per_s" not in result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "1"], "--n=1"),
        (["--repeats", "0"], "--repeats=0"),
        (["--no-quality"], "--no-quality without --bpd"),
        (["sampler=ddim", "sampler.steps=500"], "steps=500 > T=50"),
        (["sampler=lms"], "sampler=lms is not an option"),
        (["--out", "x.txt"], "must end in .json"),
    ],
)
def test_ddpm_eval_rejects_bad_input_in_one_line(toy_run: Path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        eval_main([str(toy_run), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_ddpm_eval_rejects_a_missing_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        eval_main([str(tmp_path / "nothing")])
    assert exc.value.code == 2
    assert "neither a run folder nor a checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --compare-samplers
def test_ddpm_eval_sampler_comparison_writes_its_table_json_and_figure(toy_run: Path, capsys) -> None:
    args = [str(toy_run), "--compare-samplers", "sampler=ddim,dpm_solver", "sampler.steps=5,10"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        assert eval_main([*args, "--n", "200", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    folder = toy_run / "eval"
    paths = [folder / f"sampler_comparison.{suffix}" for suffix in ("json", "md", "png")]
    assert f"Wrote {', '.join(map(str, paths))}" in out

    result = json.loads(paths[0].read_text())
    assert result["run_dir"] == str(toy_run) and result["checkpoint"].endswith("last.ckpt")
    assert result["weights"] == "ema" and result["kind"] == "toy" and result["T"] == 50
    assert (result["n"], result["repeats"], result["seed"]) == (200, 2, 0)
    assert result["grid"] == ["sampler=ddim,dpm_solver", "sampler.steps=5,10"] and result["left_out"] == []
    rows = result["rows"]
    assert [(r["option"], r["nfe"]) for r in rows] == [
        ("ddim", 5),
        ("ddim", 10),
        ("dpm_solver", 5),
        ("dpm_solver", 10),
    ]
    assert (
        rows[2]["overrides"] == ["sampler=dpm_solver", "sampler.steps=5"]
        and rows[2]["label"] == "dpm_solver 5"
    )
    for row in rows:
        quality = row["quality"]
        assert len(quality["values"]) == 2 and all(math.isfinite(v) and v > 0 for v in quality["values"])
        assert quality["low"] <= quality["mean"] <= quality["high"] and quality["std"] >= 0
        assert row["seconds"] > 0 and row["samples"] == 400 and row["seconds_per_1000"] > 0
        assert row["details"]["n"] == 200 and len(row["details"]["draws"]) == 2
        assert not row["reference"]  # no DDPM over all T steps in this grid
    # each front holds the best row, and every row off it is beaten by one on it
    best = min(rows, key=lambda r: r["quality"]["mean"])
    assert best["on_front_nfe"] and best["on_front_seconds"]
    for front, cost in (("on_front_nfe", "nfe"), ("on_front_seconds", "seconds_per_1000")):
        for row in rows:
            if not row[front]:
                assert any(
                    r[front] and r[cost] <= row[cost] and r["quality"]["mean"] <= row["quality"]["mean"]
                    for r in rows
                )

    table = [line for line in paths[1].read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 5 and table[0].startswith("| sampler | NFE |")  # the header and 4 rows
    assert [line.split(" | ")[1] for line in table[1:]] == ["5", "5", "10", "10"]  # sorted by NFE
    assert "\n".join(table[1:]) in out  # printed too
    with Image.open(paths[2]) as image:
        image.verify()
        assert image.format == "PNG" and image.size == (1440, 576)


def test_ddpm_eval_sampler_comparison_refuses_steps_beyond_t_before_sampling(
    toy_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    def never(*args, **kwargs):
        pytest.fail("sampling started before every combination was checked")

    monkeypatch.setattr(Sampler, "sample", never)
    out = tmp_path / "out" / "comparison.json"
    args = [
        str(toy_run),
        "--compare-samplers",
        "sampler=ddim,unipc",
        "sampler.steps=10,500",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        eval_main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: sampler=ddim sampler.steps=500: steps=500 > T=50; "
        "a sampler cannot take more steps than the chain has"
    )
    assert list(tmp_path.iterdir()) == []  # the --out folder was probed and removed, nothing written


# ----------------------------------------------------------------------------- the image branch
class StandInModule:
    """A "generator" that returns given images in [-1, 1] (the shape of ``SamplingModel.sample``)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images * 2 - 1
        self.device = torch.device("cpu")
        self.diffusion = GaussianDiffusion(make_beta_schedule("linear", 10, warn=False))
        self.net = lambda x, t: torch.zeros_like(x)  # predicts eps = 0
        self.data_shape = tuple(images.shape[1:])

    def sample(self, n: int, sampler=None, generator=None, progress=False, batch_size=None) -> torch.Tensor:
        idx = torch.randperm(
            len(self.images), generator=torch.Generator().manual_seed(int(generator.initial_seed()))
        )
        return self.images[idx[:n]]


class StandInImageData:
    """What ddpm-eval uses of a run's image data: held-out images in [0, 1], the [-1, 1] network scale."""

    kind = "image"

    def __init__(self, held_out: torch.Tensor) -> None:
        self.images = held_out

    def held_out(self, n: int | None = None) -> torch.Tensor:
        return self.images[:n]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 1) / 2


def image_run(tmp_path: Path, images: torch.Tensor) -> LoadedRun:
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}}, ckpt)  # no current_model_state: "raw" weights
    return LoadedRun(
        model=StandInModule(images),  # type: ignore[arg-type]
        data=StandInImageData(digits_metric().data.test_x),
        config=OmegaConf.create({"data": {"dataset": "digits"}}),
        checkpoint=ckpt,
        run_dir=tmp_path,
        sampler=DDIMSampler(steps=5),
    )


def eval_args(**kw) -> argparse.Namespace:
    base = dict(n=None, repeats=2, seed=0, batch_size=None, no_quality=False, bpd=False, bpd_n=100)
    base.update(bpd_t_samples=None, cache_dir=CACHE_DIR, fid_real=100)
    base.update(inception_weights=str(CACHE_DIR / "no-inception.pth"))
    return argparse.Namespace(**{**base, **kw})


def test_image_evaluation_scores_a_perfect_and_a_collapsed_generator(tmp_path: Path) -> None:
    data = digits_metric().data
    sampler = DDIMSampler(steps=5)
    log: list[str] = []
    perfect = evaluate(image_run(tmp_path / "a", data.train_x), sampler, eval_args(bpd=True), log)
    collapsed_images = data.train_x[data.train_y == 3].repeat(3, 1, 1, 1)
    collapsed = evaluate(image_run(tmp_path / "b", collapsed_images), sampler, eval_args(), [])

    assert perfect["kind"] == "image" and perfect["weights"] == "raw"
    images = perfect["images"]
    assert images["n"] == perfect["n"] == len(data.test_y)  # n defaults to the held-out size
    assert images["metric"] == "classifier_frechet" and images["classifier"]["dataset"] == "digits"
    assert images["ratio"]["mean"] < 3 < collapsed["images"]["ratio"]["mean"] / 10
    assert images["class_entropy"]["mean"] > 0.95 > 0.3 > collapsed["images"]["class_entropy"]["mean"]
    assert set(images["floor"]) == {"frechet", "class_entropy", "confidence", "classifier_score"}
    assert perfect["fid"]["skipped"].startswith("FID skipped")
    assert any(line.startswith("FID skipped") for line in log)
    # Digits have 17 grey levels: the discretised decoder with 17 bins, a probability <= 1 per pixel.
    assert perfect["bpd"]["decoder_kind"] == "discretized" and perfect["bpd"]["bins"] == 17
    assert perfect["bpd"]["decoder"] > 0


def test_a_sampler_comparison_of_an_image_run_scores_with_the_classifier(tmp_path: Path) -> None:
    from ddpm.cli.eval import _comparison_scorer

    data = digits_metric().data
    run = image_run(tmp_path, data.train_x)
    score, metric, n = _comparison_scorer(run, eval_args(n=300))
    scored = score(DDIMSampler(steps=5))
    assert metric == "classifier Fréchet distance / floor" and n == 300
    assert scored.samples == 600 and scored.seconds > 0  # two draws of n
    assert scored.details["metric"] == "classifier_frechet" and scored.details["n"] == 300
    assert scored.quality.values == scored.details["ratio"]["values"] and len(scored.quality.values) == 2
    assert 0 < scored.quality.mean < 3  # training images: close to the held-out floor
