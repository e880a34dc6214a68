"""The training application: Hydra configs composed in-process, ddpm-train / ddpm-sample as commands."""

from __future__ import annotations

import json
import math
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ddpm.build import load_run
from ddpm.cli.common import check_group_overrides
from ddpm.cli.eval import main as eval_main
from ddpm.cli.sample import main as sample_main
from ddpm.cli.train import train
from ddpm.config import CONF_DIR, ConfigError
from ddpm.schedules import NotPureNoiseWarning
from tests.helpers import SHORT, cli, compose_cfg, run_train
from tests.wandb_records import logged_history

# Image experiments (digits, mnist, cifar10_ddpm, and the *_cond ones that extend them) write grids, not toy
# plots: tests/test_images.py and tests/test_conditional.py run them.
IMAGE_DATA = [p.stem for p in (CONF_DIR / "data").glob("*.yaml") if "ImageDataModule" in p.read_text()]


def _image_experiment(path: Path) -> bool:
    text = path.read_text()
    if any(f"override /data: {d}\n" in text for d in IMAGE_DATA):
        return True
    extended = (path.parent / f"{name}.yaml" for name in re.findall(r"^  - (\w+)$", text, flags=re.MULTILINE))
    return any(_image_experiment(p) for p in extended if p.is_file())


#: the distillations train only with teacher=RUN (tests/test_distillation.py trains them from a teacher)
EXPERIMENTS = sorted(
    p.stem
    for p in (CONF_DIR / "experiment").glob("*.yaml")
    if not _image_experiment(p) and "_distill_" not in p.stem
)
SCHEDULES = sorted(p.stem for p in (CONF_DIR / "schedule").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))


# seed_sine samples its 100-point signals with all 1000 DDPM steps at each of three validations, at the end
# and for the reverse-process figures (9 s of the test's 10); the full chain is the same code as T = 100's
FEWER_STEPS = {"seed_sine": ["sampler.steps=100"]}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs(experiment: str, tmp_path: Path) -> None:
    fewer = FEWER_STEPS.get(experiment, [])
    metrics, run_dir = run_train(tmp_path, [f"experiment={experiment}", *SHORT, *fewer])
    assert metrics["global_step"] == 4
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "plots" / "samples_vs_data.png").is_file()
    assert (run_dir / "plots" / "samples_step0000002.png").is_file()
    with np.load(run_dir / "samples.npz") as npz:
        samples, held_out = npz["samples"], npz["held_out"]
    assert samples.shape == held_out.shape
    assert samples.shape[0] == 64
    assert np.isfinite(samples).all()
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["final/n"] == 64
    assert saved["final/energy"] >= 0


# every schedule and every sampler at least once (the pairs are independent: one run covers one of each)
PAIRS = [
    (SCHEDULES[i % len(SCHEDULES)], SAMPLERS[i % len(SAMPLERS)])
    for i in range(max(len(SCHEDULES), len(SAMPLERS)))
]


@pytest.mark.parametrize(("schedule", "sampler"), PAIRS)
def test_every_schedule_and_sampler_trains_a_step(schedule: str, sampler: str, tmp_path: Path) -> None:
    overrides = [o for o in SHORT if not o.startswith("trainer.max_steps")]
    metrics, run_dir = run_train(
        tmp_path, [f"schedule={schedule}", f"sampler={sampler}", "T=50", "trainer.max_steps=2", *overrides]
    )
    assert metrics["global_step"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)  # T=50 on purpose: a fast step
        run = load_run(run_dir)
    assert run.model.diffusion.num_timesteps == 50
    target = OmegaConf.load(CONF_DIR / "sampler" / f"{sampler}.yaml")._target_
    assert type(run.model.sampler).__name__ == target.rsplit(".", 1)[1]
    # the validation figures were drawn with this sampler
    assert any((run_dir / "plots").glob("samples_step*.png"))


def test_T_in_one_word(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["T=123"])
    assert cfg.schedule.T == 123
    assert "T" not in cfg.diffusion  # stated once: the schedule makes T betas, the diffusion takes them


def test_default_config_is_toy2d_on_cpu(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, [])
    assert cfg.task_name == "toy2d"
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.data.dataset == "moons"
    assert cfg.logger.wandb.offline is True


def test_training_reduces_the_loss_and_logs_csv(tmp_path: Path) -> None:
    overrides = [o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check"))]
    _, run_dir = run_train(
        tmp_path,
        [*overrides, "experiment=seed_gaussian2d", "trainer.max_steps=300", "trainer.val_check_interval=150"],
    )
    import csv

    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:5])
    for key in (
        "val/loss",
        "val/quality_ratio",
        "val/mean_error",
        "lr-AdamW",
        "train/grad_norm",
        "train/loss_q1",
        "val/loss_q4",
    ):
        assert any(r.get(key) for r in rows), key
    # eps-prediction: noise is hardest to tell from data at small t, so the first quarter's loss is highest
    last = [r for r in rows if r.get("train/loss_q1")][-1]
    q = [float(last[f"train/loss_q{k}"]) for k in range(1, 5)]
    assert q[0] > q[3] and all(np.isfinite(q))


def test_gaussian2d_learns_the_moments(tmp_path: Path) -> None:
    """conf/experiment/seed_gaussian2d.yaml's N((2, 2), 0.5^2 I), T = 100: after a short CPU run the samples'
    moments are close."""
    overrides = [
        o
        for o in SHORT
        if not o.startswith(("trainer.max_steps", "trainer.val_check", "trainer.log_every", "final_samples"))
    ]
    metrics, _ = run_train(
        tmp_path,
        [
            *overrides,
            "experiment=seed_gaussian2d",
            "trainer.max_steps=800",
            "trainer.val_check_interval=800",
            # the final samples' moments are checked, not the logs: logging every step took 40% of the time
            "trainer.log_every_n_steps=50",
            "final_samples=2000",
        ],
    )
    assert metrics["final/mean_error"] < 0.1  # |mean - (2, 2)|
    assert metrics["final/cov_error"] < 0.1  # ||cov - 0.25 I||_F
    assert metrics["final/ratio"] < 3.0


@pytest.mark.slow
def test_toy2d_default_reaches_its_quality_threshold(tmp_path: Path) -> None:
    """The default run (moons, 1500 steps) ends within 2x the data-vs-data noise floor."""
    overrides = [
        o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "final_samples"))
    ]
    metrics, _ = run_train(tmp_path, [*overrides, "final_samples=2000"])
    assert metrics["global_step"] == 1500
    assert metrics["final/ratio"] < 2.0


# ----------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["T=0"], r"T=0 is invalid"),
        (["T=-5"], r"T=-5 is invalid"),
        (["optimizer.lr=-0.001"], r"optimizer\.lr=-0\.001"),
        (["data=array", "data.path=/no/such/file.npy"], r"data\.path='/no/such/file\.npy' does not exist"),
        (["data=array"], r"data\.path"),
        (["sampler=ddim", "sampler.steps=5000"], r"sampler\.steps=5000"),
        (["schedule.beta_end=1.5"], r"schedule: beta_end=1\.5 is outside \(0, 1\)"),
        (["schedule=cosine", "schedule.s=-1"], r"schedule: s=-1"),
        (["diffusion.objective=score"], r"diffusion: objective='score' is unknown"),
        (["cpu_threads=0"], r"cpu_threads=0 is invalid; use an integer >= 1"),
        (
            ["diffusion.variance=learned_range", "model.out_mult=1"],
            r"model: the network outputs \(2,\) per sample .*=learned_range needs the network to output 2x",
        ),
        (
            ["timestep_sampler=loss_second_moment"],
            r"timestep_sampler: LossSecondMomentTimesteps samples t by the bound's per-t terms L_t, which "
            r"SimpleLoss\(distance=mse, weighting=none\) has none of; use loss=vlb",
        ),
        (
            ["schedule.rescale_zero_terminal_snr=true"],
            r"diffusion: objective=eps with a zero-terminal-SNR schedule",
        ),
        (
            ["loss.offset_noise=0.1"],
            r"loss: offset_noise=0.1 needs data with channels and positions",
        ),
    ],
)
def test_bad_config_fails_before_work_and_leaves_no_run_folder(overrides, match, tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, [*overrides, *SHORT])
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(parents=True)  # what Hydra writes before the task starts
    with pytest.raises(ConfigError, match=match):
        train(cfg)
    assert not run_dir.exists()


def test_config_error_keeps_a_folder_with_real_results(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["ckpt_path=last", *SHORT])
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "samples.npz").write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="ckpt_path=last"):
        train(cfg)
    assert (run_dir / "samples.npz").read_bytes() == b"keep me"


def test_unknown_group_option_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        check_group_overrides(["schedule=nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "schedule=nope" in err and "cosine, linear, quadratic, sigmoid" in err
    check_group_overrides(["schedule=linear,cosine", "trainer.max_steps=3", "experiment=toy2d"])


def test_array_data_from_a_user_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    traj = np.cumsum(rng.normal(size=(500, 16)), axis=1).astype(np.float32)  # random-walk trajectories
    path = tmp_path / "traj.csv"
    np.savetxt(path, traj, delimiter=",", header=",".join(f"x{i}" for i in range(16)), comments="")
    _, run_dir = run_train(tmp_path, ["data=array", f"data.path={path}", *SHORT])
    with np.load(run_dir / "samples.npz") as npz:
        assert npz["samples"].shape == (64, 16)
        assert npz["held_out"].shape == (50, 16)  # 10% of 500
    run = load_run(run_dir)
    assert run.data.data_dim == 16
    assert torch.allclose(run.data.mean, torch.from_numpy(traj).mean(0), atol=0.5)


# ----------------------------------------------------------------------------- the commands
# One ddpm-train and one ddpm-sample process for the whole module (each new process pays ~15 s of imports on a
# small CPU); each test checks one thing they did, and runs in-process from there.
@pytest.fixture(scope="module")
def trained_by_command(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``ddpm-train`` as a command: cosine schedule, T = 100, 30 steps; (its finished process, run folder)."""
    cwd = tmp_path_factory.mktemp("commands")
    run_dir = cwd / "run"
    res = cli(
        "ddpm-train",
        "schedule=cosine",
        "T=100",
        "trainer.max_steps=30",
        "trainer.val_check_interval=15",
        "trainer.log_every_n_steps=5",
        "final_samples=200",
        "callbacks.samples.num_samples=200",
        "checkpoint_every_n_steps=10",  # last.ckpt between validations too
        f"hydra.run.dir={run_dir}",
        cwd=cwd,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res, run_dir


@pytest.fixture(scope="module")
def sampled_by_command(trained_by_command) -> tuple[subprocess.CompletedProcess, Path]:
    """``ddpm-sample RUN sampler=ddim sampler.steps=20 --n 300`` as a command; (its process, the .npz)."""
    _, run_dir = trained_by_command
    res = cli(
        "ddpm-sample", str(run_dir), "sampler=ddim", "sampler.steps=20", "--n", "300", cwd=run_dir.parent
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res, run_dir / "samples" / "ddim20_n300_seed0.npz"


def test_ddpm_train_prints_the_composed_config(trained_by_command) -> None:
    res, _ = trained_by_command
    assert "name: cosine" in res.stdout


def test_ddpm_train_names_the_run_folder_and_the_quality(trained_by_command) -> None:
    res, run_dir = trained_by_command
    assert f"Run folder: {run_dir}" in res.stdout
    assert "x the data-vs-data floor" in res.stdout


def test_ddpm_train_says_where_its_time_went(trained_by_command) -> None:
    res, run_dir = trained_by_command
    timings = json.loads((run_dir / "timings.json").read_text())
    phases = timings["phases_s"]
    assert list(phases) == [
        "start-up",
        "imports",
        "set-up",
        "validation",  # the sanity check comes first
        "training",
        "final samples",
        "reverse process figures",
        "loggers",
    ]
    assert all(v >= 0 for v in phases.values()) and phases["training"] > 0 and phases["validation"] > 0
    assert timings["steps"] == 30
    assert timings["total_s"] == pytest.approx(sum(phases.values()), abs=1e-3)
    line = next(x for x in res.stdout.splitlines() if x.startswith("Time: "))
    assert f"training {phases['training']:.1f} s" in line and "ms per step" in line
    share = re.search(r"; validation (\d+\.\d)% of training\)$", line)
    assert share, line  # timings.json rounds the seconds: the printed share agrees to its last digit
    assert float(share[1]) == pytest.approx(100 * phases["validation"] / phases["training"], abs=0.11)


def test_ddpm_train_saves_checkpoints_without_lightnings_default_notice(trained_by_command) -> None:
    res, run_dir = trained_by_command
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "`weights_only` was not set" not in res.stdout + res.stderr


def test_cpu_threads_sets_torchs_threads_for_the_run(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1 already (as under pytest-xdist, tests/conftest.py): the run sets it
    try:
        run_train(tmp_path, [*SHORT, "cpu_threads=1", "reverse_gif=false"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ddpm_train_keeps_the_hydra_config_and_the_best_checkpoint(trained_by_command) -> None:
    _, run_dir = trained_by_command
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_ddpm_train_logs_to_an_offline_wandb_run_in_the_run_folder(trained_by_command) -> None:
    """W&B ran offline inside the run folder, and its file holds the logged metrics."""
    _, run_dir = trained_by_command
    wandb_files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    history = logged_history(wandb_files[0])
    assert len(history["train/loss"]) >= 5
    assert "val/loss" in history and "val/quality_ratio" in history and "final/ratio" in history
    assert history["val/energy"][-1] > 0


def test_ddpm_sample_reports_its_throughput(sampled_by_command) -> None:
    res, _ = sampled_by_command
    assert "Throughput:" in res.stdout


def test_ddpm_sample_writes_samples_a_plot_and_a_summary(sampled_by_command) -> None:
    _, out = sampled_by_command
    with np.load(out) as npz:
        assert npz["samples"].shape == (300, 2)
    assert out.with_suffix(".png").is_file()
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["n"] == 300 and summary["energy"] >= 0


def test_ddpm_sample_from_a_checkpoint_with_the_same_seed_gives_the_same_samples(
    trained_by_command, sampled_by_command, tmp_path: Path
) -> None:
    _, run_dir = trained_by_command
    _, out = sampled_by_command
    again = tmp_path / "again.npz"
    args = [str(run_dir / "checkpoints" / "last.ckpt"), "sampler=ddim", "sampler.steps=20", "--n", "300"]
    assert sample_main([*args, "--out", str(again), "--no-plot"]) == 0
    with np.load(out) as a, np.load(again) as b:
        assert np.array_equal(a["samples"], b["samples"])  # same seed, same samples


@pytest.mark.parametrize(("option", "nfe"), [("dpm_solver", 5), ("unipc", 5), ("heun", 9)])
def test_the_high_order_samplers_run_through_sample_and_eval(
    option: str, nfe: int, trained_by_command, tmp_path: Path, capsys
) -> None:
    _, run_dir = trained_by_command
    out = tmp_path / f"{option}.npz"
    args = [str(run_dir), f"sampler={option}", "sampler.steps=5", "--n", "100"]
    assert sample_main([*args, "--out", str(out), "--no-plot"]) == 0
    assert f"{nfe} steps" in capsys.readouterr().out  # one step per network evaluation (Heun: 2 * 5 - 1)
    with np.load(out) as npz:
        assert npz["samples"].shape == (100, 2) and np.isfinite(npz["samples"]).all()
    assert json.loads(out.with_suffix(".json").read_text())["energy"] >= 0
    assert eval_main([*args, "--repeats", "1", "--out", str(tmp_path / f"{option}.json")]) == 0
    result = json.loads((tmp_path / f"{option}.json").read_text())
    target = OmegaConf.load(CONF_DIR / "sampler" / f"{option}.yaml")._target_
    assert result["steps"] == nfe and result["sampler"].startswith(target.rsplit(".", 1)[1] + "(")
    assert math.isfinite(result["quality"]["ratio"]["mean"])


@pytest.mark.parametrize(
    ("bad", "key"),
    [
        (["sampler=ddim", "sampler.steps=500"], "steps=500 > T=100"),
        (["sampler=lms"], "sampler=lms is not an option"),
        (["--n", "0"], "--n=0"),
    ],
)
def test_ddpm_sample_rejects_bad_values_in_one_line(
    bad: list[str], key: str, trained_by_command, capsys
) -> None:
    _, run_dir = trained_by_command
    with pytest.raises(SystemExit) as exc:
        sample_main([str(run_dir), *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1, err


def test_ddpm_sample_rejects_a_path_that_is_no_run(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        sample_main([str(tmp_path / "nothing")])
    assert "neither a run folder nor a checkpoint" in capsys.readouterr().err


def test_ddpm_sample_rejects_a_mismatched_checkpoint(tmp_path: Path) -> None:
    _, run_dir = run_train(tmp_path, SHORT)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["ddpm_config"]["model"]["hidden"] = 64  # config says one network, weights are another
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ConfigError, match="does not match its config"):
        load_run(tmp_path / "bad.ckpt")


def test_ddpm_train_rejects_bad_values_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cases = (
        (["schedule=nope"], "schedule=nope"),
        (["T=0"], "T=0 is invalid"),
        (["diffusion.T=0"], "diffusion.T=0 cannot be set there; set T=0 instead"),
        (["schedule.T=7"], "schedule.T=7 cannot be set there; set T=7 instead"),
        (["model.compile=true"], "set module.compile=true instead"),
        # the loss and the timestep sampler left the diffusion node: the old keys name the new ones
        (["diffusion.loss=l1"], "diffusion.loss=l1: the loss is a config group of its own now; set "
         "loss=simple loss.distance=l1 instead"),
        (["diffusion.vlb_weight=0.01"], "set loss.vlb_weight=0.01 instead"),
        (["diffusion.timestep_sampler=loss_second_moment"],
         "set timestep_sampler=loss_second_moment instead"),
    )  # fmt: skip
    for args, key in cases:
        res = cli("ddpm-train", *args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert res.returncode == 2, res.stderr[-2000:]
        assert key in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not run_dir.exists()


@pytest.mark.parametrize("debug", sorted(p.stem for p in (CONF_DIR / "debug").glob("*.yaml")))
def test_debug_presets_run(debug: str, tmp_path: Path) -> None:
    # fast_dev_run turns the loggers off: the LR monitor (which needs one) must step aside, not fail
    metrics, run_dir = run_train(
        tmp_path, [f"debug={debug}", "trainer.max_steps=4", "print_config=false", "reverse_gif=false"]
    )
    assert 1 <= metrics["global_step"] <= 4
    assert (run_dir / "samples.npz").is_file()


def test_an_offline_wandb_logger_asks_wandb_for_offline_itself(tmp_path: Path) -> None:
    """wandb reads WANDB_MODE (all that Lightning's offline=True sets) once per process: the mode goes
    into wandb.init's own arguments, so a run after another W&B run in the process stays offline."""
    from ddpm.cli.train import _loggers

    wandb_cfg = {
        "_target_": "lightning.pytorch.loggers.WandbLogger",
        "project": "p",
        "save_dir": str(tmp_path),
    }
    cfg = OmegaConf.create({"logger": {"wandb": {**wandb_cfg, "offline": True}, "csv": None}})
    (offline,) = _loggers(cfg)
    assert offline._wandb_init["mode"] == "offline"
    online = _loggers(OmegaConf.create({"logger": {"wandb": {**wandb_cfg, "offline": False}}}))[0]
    assert "mode" not in online._wandb_init  # online: wandb's own settings and WANDB_MODE decide
