"""Power-function EMA (EDM2, Karras et al. 2024, sec. 3): the math against ema-pytorch (MIT), the callback's
snapshots, their reconstruction on a real toy run, and exact resume."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from ema_pytorch.post_hoc_ema import sigma_rel_to_gamma as reference_sigma_rel_to_gamma
from ema_pytorch.post_hoc_ema import solve_weights as reference_solve_weights

from ddpm.ema import (
    SIGMA_REL_MAX,
    combine,
    gamma_to_sigma_rel,
    power_ema_beta,
    sigma_rel_to_gamma,
    solve_weights,
    update_power_ema,
)
from ddpm.ema_snapshots import (
    SNAPSHOT_DIR,
    list_snapshots,
    load_snapshot,
    reconstruct,
    write_snapshot,
)
from tests.helpers import CLI_ENV, SHORT, run_train

REPO = Path(__file__).resolve().parents[1]

SIGMA_RELS = [0.005, 0.01, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.28, 0.3]


# ----------------------------------------------------------------------------- the math
def test_sigma_rel_and_gamma_round_trip() -> None:
    for sigma_rel in SIGMA_RELS:
        assert abs(gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) - sigma_rel) < 1e-9
    for gamma in [-0.38, 0.0, 0.5, 1.0, 3.0, 6.94, 16.97, 50.0, 500.0]:
        assert abs(sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)) - gamma) < 1e-9 * max(1.0, gamma)
    # EDM2's two tracked lengths (sec. 3.1)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("sigma_rel", [0.0, -0.1, SIGMA_REL_MAX, 0.5, float("nan")])
def test_sigma_rel_out_of_range_is_refused(sigma_rel: float) -> None:
    with pytest.raises(ValueError, match="sigma_rel="):
        sigma_rel_to_gamma(sigma_rel)


def test_sigma_rel_to_gamma_equals_ema_pytorchs() -> None:
    for sigma_rel in SIGMA_RELS:
        ours, theirs = sigma_rel_to_gamma(sigma_rel), reference_sigma_rel_to_gamma(sigma_rel)
        assert abs(ours - theirs) <= 1e-9 * max(1.0, abs(theirs)), sigma_rel


def _random_snapshots(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    n = int(rng.integers(2, 16))
    steps = np.sort(rng.choice(np.arange(1, 20_000), n, replace=False)).astype(np.float64)
    gammas = np.array([sigma_rel_to_gamma(s) for s in rng.uniform(0.02, 0.25, n)])
    return steps, gammas, float(rng.integers(1, 20_000)), sigma_rel_to_gamma(rng.uniform(0.02, 0.25))


def test_solve_weights_equals_ema_pytorchs_on_random_snapshot_sets() -> None:
    rng = np.random.default_rng(0)
    f64 = lambda x: torch.as_tensor(np.atleast_1d(x), dtype=torch.float64)  # noqa: E731
    for _ in range(50):
        t_i, gamma_i, t_r, gamma_r = _random_snapshots(rng)
        ours = solve_weights(t_i, gamma_i, t_r, gamma_r)
        theirs = reference_solve_weights(f64(t_i), f64(gamma_i), f64(t_r), f64(gamma_r))[:, 0]
        # the same convention (no normalisation): equal to the solver's rounding
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    # several targets at once: one column each, as in EDM2's Algorithm 3
    t_i, gamma_i, _, _ = _random_snapshots(rng)
    both = solve_weights(t_i, gamma_i, [500.0, 900.0], [3.0, 9.0])
    assert both.shape == (len(t_i), 2)
    torch.testing.assert_close(both[:, 1], solve_weights(t_i, gamma_i, 900.0, 9.0))


def test_a_tracked_length_at_a_snapshots_step_is_that_snapshot() -> None:
    steps = [100 * k for k in range(1, 11)]
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    t_i = [t for t in steps for _ in gammas]
    gamma_i = [g for _ in steps for g in gammas]
    for j, (t, gamma) in enumerate(zip(t_i, gamma_i, strict=True)):
        unit = torch.zeros(len(t_i), dtype=torch.float64)
        unit[j] = 1.0
        torch.testing.assert_close(solve_weights(t_i, gamma_i, t, gamma), unit, rtol=0, atol=1e-8)


def test_duplicate_snapshots_get_the_least_norm_coefficients() -> None:
    coefficients = solve_weights([100, 100, 200], [6.94, 6.94, 6.94], 100, 6.94)  # a singular system
    torch.testing.assert_close(coefficients, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_the_update_weighs_each_step_by_the_power_profile() -> None:
    """EDM2 eq. 1-2: after t steps, the weights of step tau are the profile's mass on (tau - 1, tau],
    (tau / t)^(gamma + 1) - ((tau - 1) / t)^(gamma + 1), which sum to 1."""
    t, gamma = 40, sigma_rel_to_gamma(0.1)
    assert power_ema_beta(1, gamma) == 0.0
    eye = torch.eye(t, dtype=torch.float64)  # the weights at step tau: the tau-th unit vector
    average = [torch.full((t,), float("nan"), dtype=torch.float64)]  # step 1 overwrites it
    for step in range(1, t + 1):
        update_power_ema(average, [eye[step - 1]], step, gamma)
    tau = torch.arange(1, t + 1, dtype=torch.float64)
    expected = (tau / t) ** (gamma + 1) - ((tau - 1) / t) ** (gamma + 1)
    torch.testing.assert_close(average[0], expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="step=0"):
        power_ema_beta(0, gamma)


def test_reconstruction_converges_as_snapshots_get_denser() -> None:
    """A random walk of 'weights' averaged by the tracked EMAs exactly: the length 0.05 at the last step,
    rebuilt without its own snapshot, is closer the denser the snapshots (EDM2 sec. 3.2): a snapshot every
    5%, 2.5% and 1% of the run miss by 10.4%, 1.9% and 0.16% of the distance between the two EMAs."""
    generator = torch.Generator().manual_seed(0)
    n, dim = 200, 256
    walk = torch.cumsum(torch.randn(n, dim, generator=generator, dtype=torch.float64), 0)
    gammas = {s: sigma_rel_to_gamma(s) for s in (0.05, 0.10)}
    errors = []
    for every in (10, 5, 2):
        averages = {s: [torch.zeros(dim, dtype=torch.float64)] for s in gammas}
        snapshots: list[tuple[int, float, float, torch.Tensor]] = []
        for step in range(1, n + 1):
            for s, gamma in gammas.items():
                update_power_ema(averages[s], [walk[step - 1]], step, gamma)
                if step % every == 0:
                    snapshots.append((step, gamma, s, averages[s][0].clone()))
        truth, other = averages[0.05][0], averages[0.10][0]
        used = [x for x in snapshots if not (x[0] == n and x[2] == 0.05)]
        c = solve_weights([x[0] for x in used], [x[1] for x in used], n, gammas[0.05])
        rebuilt = combine(({"w": x[3]} for x in used), c)["w"]
        errors.append(float((rebuilt - truth).norm() / (other - truth).norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors


def test_combine_sums_in_float64_and_keeps_each_dtype() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}
    out = combine([a, b], [0.25, 0.75])
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert int(out["n"]) == 4  # not averaged: the last one's
    with pytest.raises(ValueError, match="same tensors"):
        combine([a, {"v": torch.zeros(2)}], [0.5, 0.5])


# ----------------------------------------------------------------------------- snapshot files
def test_snapshot_files_carry_step_and_gamma_and_refuse_foreign_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ddpm.config import ConfigError

    gamma = sigma_rel_to_gamma(0.05)
    state = {"net.w": torch.arange(6.0).reshape(2, 3).t(), "net.b": torch.ones(2)}  # a non-contiguous one
    path = write_snapshot(tmp_path, state, 120, gamma, 0.05)
    assert path.name == "sigma0.05_step00000120.safetensors"
    (snapshot,) = list_snapshots(tmp_path)
    assert (snapshot.step, snapshot.gamma, snapshot.sigma_rel) == (120, gamma, 0.05)
    loaded = load_snapshot(snapshot)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "sigma0.1_step00000001.safetensors"))  # no metadata
    with pytest.raises(ConfigError, match="not a power-EMA snapshot"):
        list_snapshots(tmp_path)
    with pytest.raises(ConfigError, match="kept no power-EMA snapshots"):
        list_snapshots(tmp_path / "missing")


# ----------------------------------------------------------------------------- the callback in a real run
# A small moons run (31 batches per epoch), as tests/test_faults.py's exact-resume test: a snapshot of both
# EMAs every step, stopped at step 20 and resumed to 45 in the twin.
BASE = [
    *[o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "final_samples"))],
    "data.n_train=2000",
    "data.batch_size=64",
    "T=100",
    "lr_scheduler=warmup",  # constant after warmup: the LR must not depend on max_steps
    "trainer.val_check_interval=20",
    "final_samples=100",
    "reverse_gif=false",
    "callbacks.samples=null",
    "callbacks/ema=power",
    "callbacks.ema.snapshot_every_n_steps=1",
]
#: decay=null: validation, sampling and the checkpoint's state_dict use the first power EMA
BY_DECAY = {"null": ["callbacks.ema.decay=null"], "fixed": []}


@pytest.fixture(scope="module", params=["null", pytest.param("fixed", marks=pytest.mark.slow)])
def uninterrupted(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    decay = request.param
    _, run = run_train(
        tmp_path_factory.mktemp(f"full_{decay}"), [*BASE, *BY_DECAY[decay], "trainer.max_steps=45"]
    )
    return decay, run


def _files(run: Path) -> dict[str, tuple[dict[str, str], dict[str, torch.Tensor]]]:
    from safetensors import safe_open

    out = {}
    for snapshot in list_snapshots(run / SNAPSHOT_DIR):
        with safe_open(str(snapshot.path), framework="pt") as f:
            metadata = f.metadata()
        out[snapshot.path.name] = (metadata, load_snapshot(snapshot))
    return out


def test_the_run_keeps_both_emas_and_a_snapshot_of_each_at_every_step(
    uninterrupted: tuple[str, Path],
) -> None:
    decay, run = uninterrupted
    snapshots = list_snapshots(run / SNAPSHOT_DIR)
    assert [(s.sigma_rel, s.step) for s in snapshots] == [(s, t) for s in (0.05, 0.1) for t in range(1, 46)]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    power = ckpt["callbacks"]["PowerEMA"]["power_ema"]
    assert power["step"] == 45 and power["sigma_rels"] == [0.05, 0.1]
    last = {s.sigma_rel: load_snapshot(s) for s in snapshots if s.step == 45}
    # the running EMAs in the checkpoint are the last snapshots; with decay=null the first one is the
    # checkpoint's state_dict (what validation and sampling used), else the fixed EMA is
    tracked = [ckpt["state_dict"] if a is None else a for a in power["averages"]]
    for sigma_rel, state in zip((0.05, 0.1), tracked, strict=True):
        assert all(torch.equal(state[k], last[sigma_rel][k]) for k in last[sigma_rel])
    assert (power["averages"][0] is None) == (decay == "null")
    assert ckpt["ddpm_config"]["callbacks"]["ema"]["_target_"] == "ddpm.callbacks.PowerEMA"


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b))


def test_a_tracked_length_is_reconstructed_from_the_other_snapshots(uninterrupted: tuple[str, Path]) -> None:
    """At a snapshot's own step the reconstruction is that snapshot; without it, each tracked length at the
    last step is rebuilt from the earlier snapshots and the other length's to within 1% of the distance
    between the two tracked EMAs (measured on this run: 0.07% for sigma_rel 0.05, 0.19% for 0.10; with
    EDM2's coefficients not normalised to sum 1, 11.8% and 14.1%)."""
    _, run = uninterrupted
    snapshots = list_snapshots(run / SNAPSHOT_DIR)
    own = reconstruct(snapshots, 0.05, step=30)
    assert len(own.snapshots) == 60
    at = next(i for i, s in enumerate(own.snapshots) if (s.sigma_rel, s.step) == (0.05, 30))
    assert float(own.coefficients[at]) == pytest.approx(1.0, abs=1e-6)
    assert float(own.coefficients.abs().sum()) == pytest.approx(1.0, abs=1e-5)
    truth = load_snapshot(own.snapshots[at])
    assert all(torch.allclose(own.state[k], truth[k], rtol=0, atol=1e-6) for k in truth)
    for sigma_rel, other in ((0.05, 0.1), (0.1, 0.05)):
        held_out = [s for s in snapshots if (s.sigma_rel, s.step) != (sigma_rel, 45)]
        rebuilt = reconstruct(held_out, sigma_rel)
        assert rebuilt.step == 45 and abs(rebuilt.least_squares_sum - 1) < 0.01
        (truth,) = (load_snapshot(s) for s in snapshots if (s.sigma_rel, s.step) == (sigma_rel, 45))
        (neighbour,) = (load_snapshot(s) for s in snapshots if (s.sigma_rel, s.step) == (other, 45))
        assert _distance(rebuilt.state, truth) < 0.01 * _distance(neighbour, truth), sigma_rel


def test_a_resumed_run_ends_with_the_emas_and_snapshots_of_its_uninterrupted_twin(
    uninterrupted: tuple[str, Path], tmp_path: Path
) -> None:
    decay, full = uninterrupted
    base = [*BASE, *BY_DECAY[decay]]
    _, part = run_train(tmp_path / "part", [*base, "trainer.max_steps=20"])
    # a snapshot from after the checkpoint (of a run killed past its last.ckpt): the resumed run removes it
    stale = write_snapshot(part / SNAPSHOT_DIR, {"net.x": torch.zeros(1)}, 99, sigma_rel_to_gamma(0.05), 0.05)
    _, resumed = run_train(tmp_path / "part", [*base, "trainer.max_steps=45", "ckpt_path=last"])
    assert resumed == part and not stale.exists()
    a, b = _files(full), _files(resumed)
    assert a.keys() == b.keys() and len(a) == 90
    for name, (metadata, tensors) in a.items():
        assert b[name][0] == metadata
        assert all(torch.equal(tensors[k], b[name][1][k]) for k in tensors), name
    x, y = (
        torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        for r in (full, resumed)
    )
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(x[key][k], y[key][k]) for k in x[key]), key
    px, py = x["callbacks"]["PowerEMA"]["power_ema"], y["callbacks"]["PowerEMA"]["power_ema"]
    assert px["step"] == py["step"] == 45
    for ax, ay in zip(px["averages"], py["averages"], strict=True):
        assert (ax is None and ay is None) or all(torch.equal(ax[k], ay[k]) for k in ax)
    with np.load(full / "samples.npz") as s, np.load(resumed / "samples.npz") as t:
        assert np.array_equal(s["samples"], t["samples"])


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")  # T=100 linear, on purpose
def test_ddpm_ema_writes_a_length_that_ddpm_sample_reads(
    uninterrupted: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open

    from ddpm.build import load_run
    from ddpm.cli.ema import main

    _, run = uninterrupted
    out = tmp_path / "ema.safetensors"
    assert main([str(run), "--sigma-rel", "0.05", "--out", str(out)]) == 0
    assert "sigma_rel=0.05 (gamma=16.97) at step 45 from 90 snapshots" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    assert (metadata["ema_sigma_rel"], metadata["ema_step"], metadata["ddpm_weights"]) == (
        "0.05",
        "45",
        "ema",
    )
    loaded = load_run(out).model.state_dict()  # as ddpm-sample / ddpm-eval read it
    (tracked,) = (
        load_snapshot(s) for s in list_snapshots(run / SNAPSHOT_DIR) if (s.sigma_rel, s.step) == (0.05, 45)
    )
    assert all(torch.allclose(loaded[k], tracked[k], rtol=0, atol=1e-6) for k in tracked)
    assert main([str(run), "--sigma-rel", "0.07", "--step", "30"]) == 0  # another length, earlier
    assert (run / "ema" / "sigma0.07_step00000030.safetensors").is_file()
    for argv, message in [
        (["--sigma-rel", "0.4"], "error: --sigma-rel: sigma_rel=0.4 must be in (0, 0.3003)"),
        (["--sigma-rel", "0.1", "--step", "46"], "error: --step=46 is after the last snapshot (step 45)"),
        (["--sigma-rel", "0.1", "--out", str(tmp_path / "x.pt")], "must end in .safetensors"),
    ]:
        with pytest.raises(SystemExit) as exit_code:
            main([str(run), *argv])
        assert exit_code.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:schedule 'linear' with T=100")  # BASE's short chain, on purpose
def test_ema_sweep_scores_each_length_and_names_the_best(
    uninterrupted: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ddpm-eval RUN --ema-sweep``: each length rebuilt and scored beside the checkpoint's EMA, the table
    and the best printed, the JSON and the plot written; the run's own weights are back afterwards."""
    import json

    from ddpm.cli.eval import main

    _, run = uninterrupted
    out = tmp_path / "sweep.json"
    argv = [str(run), "--ema-sweep", "0.05,0.1,0.2", "--n", "100", "--repeats", "2", "--out", str(out)]
    assert main([*argv, "--no-wandb"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert [r["sigma_rel"] for r in result["rows"]] == [0.05, 0.1, 0.2]
    assert all(r["step"] == 45 and math.isfinite(r["quality"]["mean"]) for r in result["rows"])
    best = min(result["rows"], key=lambda r: r["quality"]["mean"])
    assert result["best_sigma_rel"] == best["sigma_rel"]
    assert f"Best: sigma_rel {best['sigma_rel']:g}" in printed and "| the checkpoint's EMA |" in printed
    assert out.with_suffix(".png").stat().st_size > 0
    # the weights scored for a length are the ones ddpm-ema writes for it: scored alone, the same figure
    from ddpm.cli.ema import main as ema_main

    weights = tmp_path / "s01.safetensors"
    assert ema_main([str(run), "--sigma-rel", "0.1", "--out", str(weights)]) == 0
    alone = tmp_path / "alone.json"
    assert main([str(weights), "--n", "100", "--repeats", "2", "--out", str(alone), "--no-wandb"]) == 0
    capsys.readouterr()
    means = {r["sigma_rel"]: r["quality"]["mean"] for r in result["rows"]}
    assert json.loads(alone.read_text())["quality"]["ratio"]["mean"] == pytest.approx(means[0.1], rel=1e-9)
    for bad, message in [
        ("0.05,abc", "'abc' is not a number"),
        ("0.5", "sigma_rel=0.5 must be in (0, 0.3003)"),
        ("0.1,0.1", "repeats a length"),
    ]:
        with pytest.raises(SystemExit) as exit_code:
            main([str(run), "--ema-sweep", bad])
        assert exit_code.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run), "--ema-sweep", "0.1", "--bpd"])
    assert "the EMA sweep is an evaluation of its own" in capsys.readouterr().err


class PowerProbe(L.Callback):
    """Test helper: each rank writes a digest of its power EMAs and how many snapshots it wrote."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        from ddpm.callbacks import PowerEMA

        power = next(c for c in trainer.callbacks if isinstance(c, PowerEMA))
        flat = torch.cat([t.flatten().double().cpu() for k in (0, 1) for t in power.ema_state(k).values()])
        self.folder.mkdir(parents=True, exist_ok=True)
        text = f"{flat.sum().item()!r} {flat.norm().item()!r}\n{len(power.written)}"
        (self.folder / f"rank{trainer.global_rank}.txt").write_text(text)


@pytest.mark.slow  # two DDP ranks in new processes: ~40 s
def test_ddp_ranks_keep_the_same_power_emas_and_rank_0_writes_the_snapshots(tmp_path: Path) -> None:
    run, probe = tmp_path / "run", tmp_path / "probe"
    argv = [*BASE, "trainer=ddp_cpu", "trainer.max_steps=10", "callbacks.ema.snapshot_every_n_steps=5"]
    argv += [f"hydra.run.dir={run}", "+callbacks.probe._target_=tests.test_ema.PowerProbe"]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **CLI_ENV}
    exe = Path(sys.executable).parent / "ddpm-train"
    res = subprocess.run(
        [str(exe), *argv, f"+callbacks.probe.folder={probe}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [p.read_text().split("\n") for p in sorted(probe.glob("rank*.txt"))]
    assert len(ranks) == 2 and ranks[0][0] == ranks[1][0]  # the same EMAs on both ranks
    assert [r[1] for r in ranks] == ["4", "0"]  # rank 0 wrote both lengths at steps 5 and 10
    assert [(s.sigma_rel, s.step) for s in list_snapshots(run / SNAPSHOT_DIR)] == [
        (0.05, 5),
        (0.05, 10),
        (0.1, 5),
        (0.1, 10),
    ]


# ----------------------------------------------------------------------------- config and resume
def test_the_power_option_composes_with_the_experiments_and_the_default_is_unchanged(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from ddpm.callbacks import EMA, PowerEMA
    from tests.helpers import compose_cfg

    default = compose_cfg(tmp_path, ["experiment=digits"], run_folder=False).callbacks.ema
    assert dict(default) == {
        "_target_": "ddpm.callbacks.EMA",
        "decay": 0.995,
        "update_starting_at_step": None,
    }
    assert type(instantiate(default)) is EMA
    power = instantiate(
        compose_cfg(tmp_path, ["experiment=digits", "callbacks/ema=power"], run_folder=False).callbacks.ema
    )
    assert isinstance(power, PowerEMA) and power.decay == 0.995 and power.sigma_rels == [0.05, 0.1]
    assert (
        compose_cfg(tmp_path, ["callbacks/ema=power", "callbacks.ema=null"], run_folder=False).callbacks.ema
        is None
    )
    for experiment in (
        "digits",
        "cifar10_ddpm",
        "cifar10_iddpm",
        "cifar10_cond",
        "cifar10_edm",
    ):  # power variants
        base = compose_cfg(tmp_path, [f"experiment={experiment}"], run_folder=False)
        cfg = compose_cfg(tmp_path, [f"experiment={experiment}_power"], run_folder=False)
        variant = instantiate(cfg.callbacks.ema)
        assert isinstance(variant, PowerEMA) and variant.decay == base.callbacks.ema.decay
        assert (
            cfg.trainer.max_steps == base.trainer.max_steps
        )  # a snapshot every 1% of the run (rounded down)
        assert variant.snapshot_every_n_steps == cfg.trainer.max_steps // 100
    with pytest.raises(ValueError, match="sigma_rels"):
        PowerEMA(sigma_rels=[0.05, 0.05])
    with pytest.raises(ValueError, match=r"sigma_rels: sigma_rel=0\.4"):
        PowerEMA(sigma_rels=[0.05, 0.4])
    with pytest.raises(ValueError, match="update_starting_at_step is the fixed EMA's"):
        PowerEMA(decay=None, update_starting_at_step=10)


def test_a_power_run_resumes_as_a_power_run_and_its_lengths_cannot_change() -> None:
    from omegaconf import OmegaConf

    from ddpm.config import ConfigError
    from ddpm.registry import checked_arguments
    from ddpm.resume import merge_for_resume
    from ddpm.stored_config import run_identity

    power = {"_target_": "ddpm.callbacks.PowerEMA", "sigma_rels": [0.03, 0.2], "snapshot_every_n_steps": 7}
    stored = {
        "T": 50,
        "seed": 1,
        "model": {"_target_": "ddpm.models.MLPDenoiser", "hidden": 128},
        "schedule": {"_target_": "ddpm.schedules.make_beta_schedule", "name": "linear", "T": 50},
        "diffusion": {"_target_": "ddpm.diffusion.GaussianDiffusion", "_partial_": True},
        "sampler": {"_target_": "ddpm.samplers.DDIMSampler", "steps": 10},
        "data": {"_target_": "ddpm.data.ToyDataModule", "dataset": "moons"},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
        "lr_scheduler": None,
        "callbacks": {"ema": {**power, "decay": None, "update_starting_at_step": None}},
    }
    run = run_identity(stored, "test")
    option, kwargs = checked_arguments("callbacks.ema", run.config["callbacks"]["ema"])  # the registry's
    assert option.target == "ddpm.callbacks.PowerEMA" and kwargs["sigma_rels"] == [0.03, 0.2]
    today = OmegaConf.create(
        {"T": 1000, "callbacks": {"ema": {"_target_": "ddpm.callbacks.EMA", "decay": 0.999}}}
    )
    merged = merge_for_resume(today, run, typed=[])
    assert {k: merged.callbacks.ema[k] for k in power} == power and merged.callbacks.ema.decay is None
    today.callbacks.ema = {**power, "sigma_rels": [0.05, 0.1]}
    with pytest.raises(
        ConfigError, match=r"callbacks.ema.sigma_rels=\[0.05, 0.1\] cannot change when resuming"
    ):
        merge_for_resume(today, run, typed=["callbacks.ema.sigma_rels"])
    # the default EMA's identity is as before: no _target_, no lengths
    stored["callbacks"] = {"ema": {"_target_": "ddpm.callbacks.EMA", "decay": 0.99}}
    assert run_identity(stored, "test").config["callbacks"] == {
        "ema": {"decay": 0.99, "update_starting_at_step": None}
    }
