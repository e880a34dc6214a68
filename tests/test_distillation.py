"""Distillation into a few-step student (issue 33): progressive distillation (Salimans & Ho 2022) and
consistency distillation (Song et al. 2023): their targets' defining properties, the consistency boundary
condition, the round schedule, a student distilled from the exact Gaussian oracle, and the runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ddpm.build import build, load_run
from ddpm.diffusion import GaussianDiffusion
from ddpm.distillation import (
    CLEAN,
    Denoiser,
    ProgressiveDistillationLoss,
    consistency_grid,
    consistency_output,
    consistency_scalings,
    ddim_step,
    progressive_target,
    student_grid,
)
from ddpm.evaluation.exact import AffineStudent, OracleDenoiser, distil_gaussian_oracle
from ddpm.oracle import GaussianOracle
from ddpm.samplers import ConsistencySampler, DDIMSampler
from ddpm.schedules import make_beta_schedule
from ddpm.timestep_sampling import GridTimes, UniformTimesteps, check_loss
from tests.helpers import SHORT, cli, compose_cfg, run_train

MU = torch.tensor([0.5, -0.3])
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.5]])


def chain(objective: str = "v", T: int = 1000) -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule("linear", T), objective=objective)


def test_progressive_target_makes_one_student_step_land_on_two_teacher_steps() -> None:
    """Salimans & Ho Algorithm 2, line 10: one DDIM step from t with x0 = x~ reaches the teacher's z''."""
    d = chain()
    oracle = GaussianOracle(d, MU, SIGMA)
    teacher = OracleDenoiser(oracle)
    gen = torch.Generator().manual_seed(0)
    x0 = oracle.sample(64, generator=gen).float()
    t = torch.full((64,), 749, dtype=torch.long)
    t_mid, t_next = torch.full_like(t, 624), torch.full_like(t, 499)
    x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=gen))
    z_mid = ddim_step(d, teacher(x_t, t), x_t, t, t_mid)
    z_next = ddim_step(d, teacher(z_mid, t_mid), z_mid, t_mid, t_next)
    x_tilde = progressive_target(teacher, d, x_t, t, t_mid, t_next)
    torch.testing.assert_close(ddim_step(d, x_tilde, x_t, t, t_next), z_next, rtol=1e-4, atol=1e-4)
    # onto the clean data (t'' = -1): the target is the teacher's second x0 itself
    clean = torch.full_like(t, int(CLEAN))
    z_mid = ddim_step(d, teacher(x_t, t), x_t, t, t_mid)
    torch.testing.assert_close(
        progressive_target(teacher, d, x_t, t, t_mid, clean), teacher(z_mid, t_mid), rtol=1e-4, atol=1e-4
    )


def test_rounds_halve_the_students_steps_on_its_samplers_grid() -> None:
    d = chain()
    loss = ProgressiveDistillationLoss(d, teacher_steps=16, student_steps=2, round_steps=3)
    assert loss.rounds == 3 and loss.total_steps == 9
    net = AffineStudent(1000, 2)
    loss.use_teacher(OracleDenoiser(GaussianOracle(d, MU, SIGMA)))
    times = GridTimes(d)
    check_loss(times, loss)
    seen = []
    for step in range(9):
        loss.prepare(step, net)
        t, w = times.sample(256)
        grid = student_grid(d, loss.steps_in_round(loss.round), "linspace")
        assert grid == DDIMSampler(steps=len(grid)).timesteps(d)  # what ddpm-sample's DDIM visits
        assert set(t.tolist()) <= set(grid) and t.dtype == torch.long and bool((w == 1).all())
        seen.append(len(grid))
        with torch.no_grad():
            net.bias.add_(1.0)  # the student moves on; the next round's teacher is a copy of it
    assert seen == [8, 8, 8, 4, 4, 4, 2, 2, 2]
    assert isinstance(loss.teacher, Denoiser)
    assert float(loss.teacher.net.bias[0, 0]) == 6.0  # copied at step 6, when round 2 began
    # every round's midpoints lie strictly between its grid points
    assert bool((loss._mid < loss._grid).all()) and bool((loss._mid[:-1] > loss._next[:-1]).all())
    with pytest.raises(ValueError, match=r"must be 2, 4, 8"):
        ProgressiveDistillationLoss(d, teacher_steps=12, student_steps=4)
    with pytest.raises(ValueError, match=r"trains at the times of its own grid"):
        check_loss(UniformTimesteps(d), loss)


def test_consistency_function_meets_its_boundary_exactly_and_the_denoiser_far_from_it() -> None:
    """CM eq. 7: f(x, t_min) = x / alpha for any network output; far from it c_skip, c_out -> EDM's."""
    d = chain()
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(32, 2, generator=gen)
    out = torch.randn(32, 2, generator=gen) * 100  # any output at all
    t0 = torch.zeros(32, dtype=torch.long)
    alpha0 = float(d.alpha(torch.tensor([0]))[0])
    assert torch.equal(consistency_output(d, out, x_t, t0), x_t / alpha0)
    c_skip, c_out = consistency_scalings(torch.tensor([0.01, 80.0], dtype=torch.float64), 0.01)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    # at the noisiest time f is (almost) the network's own x0-hat: c_skip ~ EDM's there
    t = torch.full((32,), 999, dtype=torch.long)
    a, s = (float(v) for v in d.coefficients(999))
    x0_hat = d.x0_from_output(out, x_t, a, s)
    torch.testing.assert_close(consistency_output(d, out, x_t, t), x0_hat, rtol=1e-3, atol=1e-3)
    grid = consistency_grid(d, 18)
    assert grid[0] == 999 and grid[-1] == 0 and grid == sorted(set(grid), reverse=True)


def test_consistency_sampler_is_f_at_the_noisiest_time_then_noise_and_f_again() -> None:
    d = chain()
    net = AffineStudent(1000, 2)
    with torch.no_grad():
        net.weight.normal_(generator=torch.Generator().manual_seed(0))
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    one = ConsistencySampler(steps=1)
    assert one.timesteps(d) == [999] and not one.stochastic
    t = torch.full((16,), 999, dtype=torch.long)
    expected = consistency_output(d, net(x_T, t), x_T, t)
    torch.testing.assert_close(one.sample(net, d, (16, 2), x_T=x_T, progress=False), expected)
    two = ConsistencySampler(timesteps=[999, 300])
    gen = torch.Generator().manual_seed(3)
    x = two.sample(net, d, (16, 2), x_T=x_T, generator=gen, progress=False)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(16, 2, generator=gen)  # the loop draws the first step's noise first
    a, s = d.coefficients(300)
    floor = d.coefficients(0)
    level = math.sqrt((s / a) ** 2 - (floor[1] / floor[0]) ** 2)
    x_mid = a * (expected + level * z)  # CM Algorithm 1, line 5
    t2 = torch.full((16,), 300, dtype=torch.long)
    torch.testing.assert_close(x, consistency_output(d, net(x_mid, t2), x_mid, t2))


def test_progressive_distillation_of_the_gaussian_oracle_matches_its_teacher() -> None:
    """Two rounds, 16 -> 8 -> 4 steps: the student's DDIM-4 has the 16-step teacher's covariance, so its
    error against the converged ODE is the teacher's (19%), where DDIM's own 4 steps are 60% off;
    ``scripts/distillation_side_by_side.py --oracle`` measures 1, 2 and 4 steps from a 512-step teacher."""
    errors = distil_gaussian_oracle(chain("v"), MU, SIGMA, teacher_steps=16, student_steps=4, round_steps=100)
    assert errors["student_vs_teacher"] < 0.005
    assert abs(errors["student"] - errors["teacher"]) < 0.005 and errors["teacher"] < errors["plain"] / 2


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained toy2d run (few steps, T = 1000 as the presets distil it)."""
    tmp = tmp_path_factory.mktemp("teacher")
    _, run_dir = run_train(tmp, [*SHORT, "trainer.max_steps=20", "trainer.val_check_interval=10"])
    return run_dir


PROGRESSIVE = [
    "experiment=toy2d_distill_progressive",
    *SHORT,
    "loss.teacher_steps=8",
    "loss.student_steps=2",
    "loss.round_steps=3",
    "trainer.max_steps=6",
    "sampler.steps=2",
]


def test_progressive_student_is_a_normal_run_that_samples_at_its_final_steps(
    toy_teacher: Path, tmp_path: Path
) -> None:
    metrics, run_dir = run_train(tmp_path, [*PROGRESSIVE, f"teacher={toy_teacher}"])
    assert metrics["global_step"] == 6 and math.isfinite(metrics["final/ratio"])
    run = load_run(run_dir)
    assert isinstance(run.sampler, DDIMSampler) and run.sampler.steps == 2
    assert run.model.diffusion.parameterization.__class__.__name__ == "VPrediction"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["loss"]["round"] == 1 and "teacher" in ckpt["loss"]  # the round's teacher rides along
    done = cli("ddpm-sample", str(run_dir), "--n", "50", "--out", str(tmp_path / "s.npz"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_the_student_starts_from_the_teachers_weights(toy_teacher: Path, tmp_path: Path) -> None:
    _, module = build(compose_cfg(tmp_path, [*PROGRESSIVE, f"teacher={toy_teacher}"]))
    teacher = load_run(toy_teacher)
    for (name, mine), theirs in zip(
        module.net.state_dict().items(), teacher.model.net.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs), name


def test_consistency_student_samples_in_one_and_two_steps(toy_teacher: Path, tmp_path: Path) -> None:
    overrides = [
        "experiment=toy2d_distill_consistency",
        *SHORT,
        "trainer.max_steps=6",
        f"teacher={toy_teacher}",
    ]
    metrics, run_dir = run_train(tmp_path, overrides)
    assert metrics["global_step"] == 6 and math.isfinite(metrics["final/ratio"])
    run = load_run(run_dir)
    assert isinstance(run.sampler, ConsistencySampler) and run.sampler.nfe(run.model.diffusion) == 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(ckpt["loss"]) == {"target", "prepared_step"}
    two = run.make_sampler(["sampler.steps=2"])
    x = two.sample(
        run.model, run.model.diffusion, (40, 2), generator=torch.Generator().manual_seed(0), progress=False
    )
    assert x.shape == (40, 2) and bool(torch.isfinite(x).all())


def test_distillation_refusals_are_one_line_before_any_work(toy_teacher: Path, tmp_path: Path) -> None:
    from ddpm.config import ConfigError

    cases = {
        "data.n_train=999": r"data.n_train=999 differs from the teacher's 20000",
        "model.hidden=64": r"model.hidden=64 differs from the teacher's 128",
        "T=500": r"T=500 differs from the teacher's 1000",
        "schedule=cosine": r"schedule\.",
        "sampler.steps=4": r"use sampler=ddim sampler.eta=0 sampler.steps=2",
        "trainer.max_steps=5": r"trainer.max_steps=5 is shorter .* give trainer.max_steps=6",
        "conditional=true": r"conditional=true with a teacher",
    }
    for i, (override, message) in enumerate(cases.items()):
        cfg = compose_cfg(tmp_path / str(i), [*PROGRESSIVE, f"teacher={toy_teacher}", override])
        with pytest.raises(ConfigError, match=message):
            build(cfg)
    with pytest.raises(ConfigError, match=r"distils a trained run: give teacher=RUN"):
        build(compose_cfg(tmp_path / "none", PROGRESSIVE))
    consistency = ["experiment=toy2d_distill_consistency", *SHORT, f"teacher={toy_teacher}", "sampler=ddim"]
    with pytest.raises(ConfigError, match=r"use sampler=consistency"):
        build(compose_cfg(tmp_path / "c", consistency))
    done = cli(
        "ddpm-train",
        *PROGRESSIVE,
        f"teacher={tmp_path / 'nowhere'}",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "teacher=" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_resumed_progressive_run_goes_on_with_its_rounds_teacher(toy_teacher: Path, tmp_path: Path) -> None:
    """Stopped (SIGTERM) in round 1 and resumed, the student ends with an uninterrupted run's weights: the
    round's teacher, a copy of the student as round 1 began, comes back from the checkpoint."""
    base = [*PROGRESSIVE, f"teacher={toy_teacher}", "final_samples=16"]
    _, whole = run_train(tmp_path / "whole", base)
    stop = [*base, "+callbacks.stop._target_=tests.test_faults.SigtermDuring", "+callbacks.stop.step=5"]
    with pytest.raises(SystemExit):
        run_train(tmp_path / "part", stop)
    saved = torch.load(tmp_path / "part" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5 and saved["loss"]["round"] == 1
    _, resumed = run_train(tmp_path / "part", [*base, "ckpt_path=last"])
    for key in ("state_dict",):
        a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)[key]
        b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)[key]
        for name in a:
            assert torch.equal(a[name], b[name]), name


@pytest.mark.slow  # two UNet students: ~25 s each on an idle 2-core CPU
@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")  # T = 20: the teacher's, on purpose
@pytest.mark.parametrize(
    "student",
    [
        [
            "experiment=digits_distill_progressive",
            "loss.teacher_steps=8",
            "loss.student_steps=2",
            "loss.round_steps=2",
            "sampler.steps=2",
        ],
        ["experiment=digits_distill_consistency", "loss.grid_points=6"],
    ],
    ids=["progressive", "consistency"],
)
def test_digits_students_train_and_sample(digits_run: Path, tmp_path: Path, student: list[str]) -> None:
    """The digits presets distil a UNet run (the session's digits run: T = 20, so fewer steps)."""
    overrides = [
        *student,
        f"teacher={digits_run}",
        "T=20",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    ]
    overrides += ["callbacks.samples=null", "final_samples=8", "logger=csv", "callbacks.progress_bar=null"]
    metrics, run_dir = run_train(tmp_path, overrides)
    assert metrics["global_step"] == 4
    x = load_run(run_dir).model.sample(4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 8, 8) and bool(torch.isfinite(x).all())


def test_a_time_off_the_grid_is_refused_not_matched_to_another() -> None:
    d = chain()
    loss = ProgressiveDistillationLoss(d, teacher_steps=8, student_steps=4, round_steps=3)
    loss.use_teacher(OracleDenoiser(GaussianOracle(d, MU, SIGMA)))
    net = AffineStudent(1000, 2)
    loss.prepare(0, net)
    x0 = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"t=7 is not one of the times"):
        loss(net, x0, torch.tensor([999, 7]), torch.randn(2, 2))
