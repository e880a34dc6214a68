"""Scale and faults: resume equivalence, atomic checkpoints, SIGTERM, NaN losses, DDP and bf16 on CPU."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from ddpm.lit_module import NonFiniteLossError
from ddpm.losses import SimpleLoss
from tests.helpers import CLI_ENV, SHORT, cli, run_train

REPO = Path(__file__).resolve().parents[1]

# A small moons run: 31 batches per epoch, so step 20 is mid-epoch and step 45 is in the second epoch.
BASE = [
    *[o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "final_samples"))],
    "data.n_train=2000",
    "data.batch_size=64",
    "T=100",
    "lr_scheduler=warmup",  # constant after warmup: the LR must not depend on max_steps
    "trainer.val_check_interval=20",
    "final_samples=100",
    "reverse_gif=false",
]


class PoisonBatches(L.Callback):
    """Test helper: turns the training batch into NaNs at the given optimizer steps."""

    def __init__(self, steps: list[int], rank: int | None = None) -> None:
        self.steps = set(steps)
        self.rank = rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.steps and self.rank in (None, trainer.global_rank):
            batch[0].fill_(float("nan"))


class EMAProbe(L.Callback):
    """Test helper: each rank writes a digest of its EMA weights when training ends."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        # read the callback's average model directly, which is what checkpoints and sampling use
        ema = next(c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging))
        flat = torch.cat([p.detach().flatten().double() for p in ema._average_model.module.net.parameters()])
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(
            repr(flat.sum().item()) + " " + repr(flat.norm().item())
        )


class HistoryProbe(L.Callback):
    """Test helper: each rank writes its importance sampler's loss history (count and digest) at the end."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        state = pl_module.timestep_sampler.state_dict()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(
            f"{int(state['loss_counts'].sum())} {state['loss_history'].sum().item()!r}"
        )


def _weights(ckpt: Path, key: str) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)[key]
    return {k: v for k, v in state.items() if k.startswith("net.")}


def _losses(metrics_csv: Path) -> dict[int, float]:
    rows = csv.DictReader(metrics_csv.open())
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


#: improved DDPM's importance-sampled L_vlb: t is drawn by a loss history the checkpoint must carry (T=20
#: so that every t has its 10 losses, and t follows the history, well before the interruption at step 20)
IMPORTANCE_SAMPLED = [
    "T=20",
    "diffusion.variance=learned_range",
    "loss=vlb",
    "timestep_sampler=loss_second_moment",
]


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="default"),
        pytest.param(IMPORTANCE_SAMPLED, id="iddpm", marks=pytest.mark.slow),
        # EDM's continuous noise levels are drawn from the same global RNGs the checkpoint restores
        pytest.param(["experiment=toy2d_edm", "sampler.steps=4"], id="edm"),
    ],
)
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, extra: list[str]) -> None:
    base = [*BASE, *extra]
    _, full = run_train(tmp_path / "full", [*base, "trainer.max_steps=45"])
    _, part = run_train(tmp_path / "part", [*base, "trainer.max_steps=20"])
    ckpt = part / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 20
    if extra is IMPORTANCE_SAMPLED:  # the history is in the checkpoint, and already drives t
        assert bool((saved["timestep_sampler"]["loss_counts"] == 10).all())
    # resume in the same run folder, as `ddpm-train ckpt_path=<run>` does
    metrics, resumed = run_train(tmp_path / "part", [*base, "trainer.max_steps=45", "ckpt_path=last"])
    assert resumed == part
    assert metrics["global_step"] == 45
    for run in (full, resumed):  # 45 is not a validation step: the final step is saved all the same
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 45
    for key in ("current_model_state", "state_dict"):  # raw weights, and the EMA weights
        a, b = (
            _weights(full / "checkpoints" / "last.ckpt", key),
            _weights(resumed / "checkpoints" / "last.ckpt", key),
        )
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), (key, name)
    # the log of the first part survives the resume, and the two parts log the uninterrupted run's losses
    whole = _losses(full / "csv" / "metrics.csv")
    first, second = _losses(part / "csv" / "metrics.csv"), _losses(part / "csv" / "resumed_1" / "metrics.csv")
    assert first and second and max(first) < min(second)
    assert {**first, **second} == whole
    # and the samples drawn at the end are the same
    with np.load(full / "samples.npz") as x, np.load(resumed / "samples.npz") as y:
        assert np.array_equal(x["samples"], y["samples"])


class SigtermDuring(L.Callback):
    """Test helper: raises Lightning's SIGTERM flag while optimizer step ``step`` trains, like a signal."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step - 1:
            trainer._signal_connector.received_sigterm = True


@pytest.mark.slow  # three runs: ~10 s idle, ~30 s on the shared 2-core machine
def test_a_sigterm_at_an_epochs_last_batch_resumes_exactly(tmp_path: Path) -> None:
    """Step 31 ends epoch 0 (31 batches): the SIGTERM checkpoint must resume into epoch 1's first batch with
    that step's EMA update (a requeued cluster job resumes this way, ``tests/test_slurm.py``)."""
    _, full = run_train(tmp_path / "full", [*BASE, "trainer.max_steps=45"])
    stop = [*BASE, "trainer.max_steps=45", "+callbacks.stop._target_=tests.test_faults.SigtermDuring"]
    with pytest.raises(SystemExit):
        run_train(tmp_path / "part", [*stop, "+callbacks.stop.step=31"])
    _, resumed = run_train(tmp_path / "part", [*BASE, "trainer.max_steps=45", "ckpt_path=last"])
    for key in ("current_model_state", "state_dict"):  # raw weights, and the EMA weights
        a = _weights(full / "checkpoints" / "last.ckpt", key)
        b = _weights(resumed / "checkpoints" / "last.ckpt", key)
        assert all(torch.equal(a[name], b[name]) for name in a), key
    whole = _losses(full / "csv" / "metrics.csv")
    first, second = (
        _losses(resumed / "csv" / "metrics.csv"),
        _losses(resumed / "csv" / "resumed_1" / "metrics.csv"),
    )
    assert max(first) == 30 and {**first, **second} == whole  # steps are logged from 0


def test_resuming_a_run_that_stopped_before_its_first_validation_keeps_one_current_last_ckpt(
    tmp_path: Path,
) -> None:
    run_train(tmp_path, [*BASE, "trainer.max_steps=5"])  # last.ckpt comes from the end-of-training save
    _, run = run_train(tmp_path, [*BASE, "trainer.max_steps=20", "ckpt_path=last"])  # ends on a validation
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20


def test_same_seed_same_losses_and_samples(tmp_path: Path) -> None:
    runs = [run_train(tmp_path / name, [*BASE, "trainer.max_steps=25"])[1] for name in ("a", "b")]
    losses = []
    for run in runs:
        rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
        losses.append([float(r["train/loss"]) for r in rows if r.get("train/loss")])
    assert len(losses[0]) >= 20
    assert losses[0] == losses[1]
    with np.load(runs[0] / "samples.npz") as x, np.load(runs[1] / "samples.npz") as y:
        assert np.array_equal(x["samples"], y["samples"])
    _, other = run_train(tmp_path / "c", [*BASE, "trainer.max_steps=25", "seed=7"])
    with np.load(runs[0] / "samples.npz") as x, np.load(other / "samples.npz") as y:
        assert not np.array_equal(x["samples"], y["samples"])


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    poison = ["+callbacks.poison._target_=tests.test_faults.PoisonBatches", "+callbacks.poison.steps=[25]"]
    with pytest.raises(NonFiniteLossError, match="at step 25"):
        run_train(tmp_path, [*BASE, "trainer.max_steps=40", *poison])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20  # the validation at 20 (auto: no step checkpoint before 50)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_nonfinite_loss_may_be_skipped_when_allowed(tmp_path: Path) -> None:
    poison = ["+callbacks.poison._target_=tests.test_faults.PoisonBatches", "+callbacks.poison.steps=[5,9]"]
    with pytest.warns(UserWarning, match="step skipped") as record:
        metrics, run = run_train(tmp_path, [*BASE, "trainer.max_steps=30", "max_nonfinite_skips=2", *poison])
    assert [str(w.message).split(":")[0] for w in record if "step skipped" in str(w.message)] == [
        "training loss is nan at step 5",
        "training loss is nan at step 9",
    ]
    assert metrics["global_step"] == 30
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["nonfinite_skipped"] == 2
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    assert max(float(r["train/nonfinite_skipped"]) for r in rows if r.get("train/nonfinite_skipped")) == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


# Lightning's model summary counts bytes at 32 bits under bf16-mixed, and T=100 with the linear schedule
# does not reach pure noise (NotPureNoiseWarning): both are true and beside the point here.
@pytest.mark.filterwarnings("ignore:Precision bf16-mixed is not supported by the model summary")
@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_bf16_mixed_trains_on_cpu_with_float32_diffusion_math(tmp_path: Path) -> None:
    metrics, run = run_train(tmp_path, [*BASE, "trainer.max_steps=30", "precision=bf16-mixed"])
    assert metrics["global_step"] == 30
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert all(np.isfinite(losses)) and np.mean(losses[-5:]) < np.mean(losses[:5])
    from ddpm.build import load_run

    loaded = load_run(run)
    # fused AdamW cannot have its gradients clipped under mixed precision: torch's default is used
    assert loaded.config.optimizer.fused is None and loaded.config.trainer.gradient_clip_val
    model = loaded.model
    assert model.diffusion.alphas_cumprod.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x0 = torch.randn(8, 2)
        assert model.diffusion.q_sample(x0, torch.arange(8)).dtype == torch.float32
        loss = SimpleLoss(model.diffusion)(model.net, x0, torch.arange(8), torch.randn_like(x0)).mean()
    assert loss.dtype == torch.float32


def test_atomic_checkpoint_survives_sigkill_during_save(tmp_path: Path) -> None:
    """Three writers killed at random points, usually mid-save: the file is always one complete save. They
    are forked from one process, so the import (Lightning's, through ddpm.checkpointing) is paid once."""
    target = tmp_path / "last.ckpt"
    script = (
        "import os, sys, torch\n"
        "from ddpm.checkpointing import atomic_torch_save\n"
        "for _ in sys.stdin:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        i = 0\n"
        "        while True:\n"
        "            atomic_torch_save({'i': i, 'w': torch.full((4_000_000,), float(i))}, sys.argv[1])\n"
        "            print(f'saved {i}', flush=True)\n"
        "            i += 1\n"
        "    print(f'writer {pid}', flush=True)\n"
        "    os.waitpid(pid, 0)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdin is not None and parent.stdout is not None
    rng = np.random.default_rng(0)
    try:
        for _ in range(3):
            parent.stdin.write("go\n")
            parent.stdin.flush()
            line = parent.stdout.readline()
            while not line.startswith("writer "):  # past the last writer's saves
                line = parent.stdout.readline()
            pid = int(line.split()[1])
            assert parent.stdout.readline().startswith("saved ")  # one save of this writer completed
            time.sleep(float(rng.uniform(0.0, 0.3)))  # then kill it at a random point, usually mid-save
            os.kill(pid, signal.SIGKILL)
            ckpt = torch.load(target, weights_only=True)
            # complete and consistent
            assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["i"])))
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.slow
def test_sigterm_saves_and_the_run_resumes_in_its_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, **CLI_ENV}
    args = [str(Path(sys.executable).parent / "ddpm-train"), *BASE, "trainer.max_steps=100000",
            "logger=many", f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.Popen(
        args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM at step" in err
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step > 20
    first_id = (run_dir / ".wandb_id").read_text().strip()

    res = cli("ddpm-train", f"ckpt_path={run_dir}", f"trainer.max_steps={step + 10}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"Run folder: {run_dir}" in res.stdout
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 10
    assert (run_dir / ".wandb_id").read_text().strip() == first_id
    assert len(list((run_dir / "wandb").glob(f"offline-run-*-{first_id}"))) == 2  # same W&B run, resumed


def _train_ddp_cpu(tmp_path: Path, probe: str, overrides: list[str]) -> subprocess.CompletedProcess:
    """``ddpm-train`` with two CPU ranks (a new process: DDP spawns) and a probe callback writing into
    ``tmp_path / "probe"``."""
    env_path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ddpm-train"),
            *BASE,
            "trainer=ddp_cpu",
            *overrides,
            f"+callbacks.probe._target_=tests.test_faults.{probe}",
            f"+callbacks.probe.folder={tmp_path / 'probe'}",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": env_path, **CLI_ENV},
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_ddp_on_cpu_trains_and_samples_once(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    probe = tmp_path / "probe"
    overrides = ["trainer.max_steps=20", "trainer.val_check_interval=10", "logger=many"]
    res = _train_ddp_cpu(tmp_path, "EMAProbe", [*overrides, f"hydra.run.dir={run_dir}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Batch: 64 per device x 2 devices x 1 accumulated = 128 per optimizer step" in res.stdout
    assert res.stdout.count("Run folder:") == 1  # rank 0 reports, samples and plots
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "samples.npz").is_file()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run per job
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "run"]  # one run folder, nothing else
    digests = {p.read_text() for p in probe.glob("rank*.txt")}
    assert len(list(probe.glob("rank*.txt"))) == 2 and len(digests) == 1  # EMA identical on both ranks


@pytest.mark.slow
def test_ddp_ranks_share_one_importance_sampler_history(tmp_path: Path) -> None:
    """Two CPU ranks: every rank adds both ranks' losses, so the histories stay equal (and hold 2 x 64 per
    step until full)."""
    probe = tmp_path / "probe"
    overrides = [*IMPORTANCE_SAMPLED, "trainer.max_steps=3", "trainer.val_check_interval=3"]
    overrides.append("T=200")  # 200 x 10 places: no t gets more than 10 of the 384 losses, so all are kept
    res = _train_ddp_cpu(tmp_path, "HistoryProbe", [*overrides, f"hydra.run.dir={tmp_path / 'run'}"])
    assert res.returncode == 0, res.stderr[-3000:]
    digests = [p.read_text() for p in sorted(probe.glob("rank*.txt"))]
    assert len(digests) == 2 and digests[0] == digests[1], digests
    assert int(digests[0].split()[0]) == 3 * 2 * 64  # 3 steps of 64 per rank, both ranks' on each


def test_ckpt_path_auto_takes_the_newest_of_last_and_lightnings_slurm_checkpoint(tmp_path: Path) -> None:
    import os as _os

    from omegaconf import OmegaConf

    from ddpm.cli.train import _resolve_ckpt_path

    cfg = OmegaConf.create({"ckpt_path": "auto"})
    assert _resolve_ckpt_path(cfg, tmp_path) is None  # nothing yet: a fresh start
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert _resolve_ckpt_path(cfg, tmp_path) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SIGUSR1 save before a requeue: later
    hpc.write_bytes(b"x")
    _os.utime(last, (1_000_000, 1_000_000))
    assert _resolve_ckpt_path(cfg, tmp_path) == str(hpc)
    _os.utime(hpc, (900_000, 900_000))  # last.ckpt saved after it
    assert _resolve_ckpt_path(cfg, tmp_path) == str(last)


@pytest.mark.slow
def test_ddp_ranks_agree_to_stop_when_the_loss_is_nan_on_one_rank(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    poison = ["+callbacks.poison._target_=tests.test_faults.PoisonBatches", "+callbacks.poison.steps=[25]",
              "+callbacks.poison.rank=1", "max_nonfinite_skips=1"]  # fmt: skip
    res = subprocess.run(
        [str(Path(sys.executable).parent / "ddpm-train"), *BASE, "trainer=ddp_cpu", "trainer.max_steps=40",
         *poison, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env={**env, "WANDB_MODE": "offline", "MPLBACKEND": "Agg"}, capture_output=True,
        text=True, timeout=400,
    )  # fmt: skip
    # both ranks stop (none is left waiting in the gradient all-reduce), saying why the step is not skipped
    assert res.returncode == 1, res.stderr[-3000:]
    assert "at step 25; stopped on every rank: under DDP a step cannot be skipped" in res.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 20  # the last good checkpoint
