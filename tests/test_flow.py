"""Flow matching and rectified flow (issue 31): against TorchCFM's reference, on the exact oracle, and end to
end as a run."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ddpm.build import build, load_run
from ddpm.diffusion import GaussianDiffusion
from ddpm.flow import (
    FLOW_TIME_FLOOR,
    FlowProcess,
    TimeScaledNetwork,
    interpolate,
    ot_pairing,
    velocity_target,
)
from ddpm.losses import HybridLoss, SimpleLoss
from ddpm.oracle import GaussianMixtureOracle, GaussianOracle
from ddpm.samplers import DDIMSampler, DPMSolverSampler, HeunSampler, UniPCSampler
from ddpm.schedules import make_beta_schedule
from ddpm.timestep_sampling import LogitNormalTimes, UniformTimesteps, default_timesteps
from tests.helpers import SHORT, cli, compose_cfg, run_train

cfm = pytest.importorskip("torchcfm.conditional_flow_matching")
cfm_ot = pytest.importorskip("torchcfm.optimal_transport")

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.30, 0.12], [0.12, 0.20]], dtype=torch.float64)


def total_cost(x0: torch.Tensor, noise: torch.Tensor) -> float:
    return float((x0.double() - noise.double()).square().sum())


# ----------------------------------------------------------------------------- against TorchCFM
def test_interpolate_and_velocity_equal_torchcfm() -> None:
    """TorchCFM's x0 is our noise, its x1 our data, its t is 1 - ours and its u_t is -v."""
    g = torch.Generator().manual_seed(0)
    data, noise, t = (
        torch.randn(64, 3, 4, 4, generator=g),
        torch.randn(64, 3, 4, 4, generator=g),
        torch.rand(64),
    )
    t_ref, x_ref, u_ref = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
        noise, data, t=1 - t
    )
    torch.testing.assert_close(t_ref, 1 - t)
    torch.testing.assert_close(interpolate(data, noise, t), x_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(velocity_target(data, noise), -u_ref)
    process = FlowProcess()
    torch.testing.assert_close(process.q_sample(data, t, noise), x_ref, rtol=1e-6, atol=1e-6)


def test_ot_pairing_is_the_least_total_cost_by_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x0, noise = torch.randn(7, 2, generator=g), torch.randn(7, 2, generator=g)
        best = min(total_cost(x0, noise[list(p)]) for p in itertools.permutations(range(7)))
        perm = ot_pairing(x0, noise)
        assert sorted(perm.tolist()) == list(range(7))
        assert total_cost(x0, noise[perm]) == pytest.approx(best, rel=1e-12)


def test_ot_pairing_reaches_the_assignment_optimum_on_large_batches() -> None:
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(256, 2, 3, generator=g), torch.randn(256, 2, 3, generator=g)
    cost = torch.cdist(x0.reshape(256, -1).double(), noise.reshape(256, -1).double()).square()
    rows, cols = linear_sum_assignment(cost.numpy())
    perm = ot_pairing(x0, noise)
    assert total_cost(x0, noise[perm]) == pytest.approx(float(cost[rows, cols].sum()), rel=1e-10)
    assert total_cost(x0, noise[perm]) < 0.5 * total_cost(x0, noise)  # far below the independent pairs


def test_ot_pairing_equals_torchcfm_exact_plan() -> None:
    """On equal batches with a unique optimum (continuous random data), POT's plan is the permutation."""
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(32, 5, generator=g), torch.randn(32, 5, generator=g)
    pi = torch.as_tensor(cfm_ot.OTPlanSampler(method="exact").get_map(x0, noise))
    perm = ot_pairing(x0, noise)
    expected = torch.zeros(32, 32, dtype=pi.dtype)
    expected[torch.arange(32), perm] = 1 / 32
    torch.testing.assert_close(pi, expected, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match=r"ot_pairing needs two batches of one shape"):
        ot_pairing(x0, noise[:5])


def test_minibatch_ot_coupling_repairs_the_drawn_noise() -> None:
    process = FlowProcess()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    drawn = SimpleLoss(process).noise(x0, torch.Generator().manual_seed(5))
    paired = SimpleLoss(process, coupling="minibatch_ot").noise(x0, torch.Generator().manual_seed(5))
    torch.testing.assert_close(paired, drawn[ot_pairing(x0, drawn)])
    assert total_cost(x0, paired) < total_cost(x0, drawn)
    with pytest.raises(ValueError, match=r"coupling='sinkhorn' is unknown; choose one of independent, "):
        SimpleLoss(process, coupling="sinkhorn")


# ----------------------------------------------------------------------------- the process
def test_flow_process_is_the_straight_path_in_alpha_and_sigma() -> None:
    process = FlowProcess()
    t = torch.rand(50, dtype=torch.float64)
    torch.testing.assert_close(process.alpha(t), 1 - t)
    torch.testing.assert_close(process.sigma(t), t)
    torch.testing.assert_close(process.time_at_noise_level(process.noise_level(t)), t)
    x0, noise = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    a, s = (v[:, None] for v in (process.alpha(t), process.sigma(t)))
    x_t = process.q_sample(x0, t, noise)
    v = process.parameterization.target(x0, noise, a, s)
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(process.parameterization.to_x0(v, x_t, a, s), x0)
    torch.testing.assert_close(process.parameterization.to_eps(v, x_t, a, s), noise)
    assert process.coefficients(1.0) == (FLOW_TIME_FLOOR, 1.0 - FLOW_TIME_FLOOR)
    assert process.time_bins(torch.tensor([0.0, 0.3, 0.5, 0.99, 1.0]), 4).tolist() == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match=r"time_scale=0 is invalid"):
        FlowProcess(time_scale=0)


def test_the_network_sees_time_scaled_as_its_embedding_expects() -> None:
    seen: list[torch.Tensor] = []

    class Net(torch.nn.Module):
        num_classes = 3

        def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            seen.append(t)
            return x

    net = FlowProcess(time_scale=1000.0).wrap_network(Net())
    assert isinstance(net, TimeScaledNetwork) and net.num_classes == 3
    net(torch.zeros(2, 2), torch.tensor([0.25, 1.0]))
    torch.testing.assert_close(seen[0], torch.tensor([250.0, 1000.0]))


def test_oracle_velocity_is_the_conditional_mean_of_n_minus_x0() -> None:
    """For Gaussian data (x0, n, x_t, v) are jointly Gaussian: E[v | x_t] by PRML eq. 2.81, written out
    independently of the oracle's Tweedie form."""
    process = FlowProcess()
    oracle = GaussianOracle(process, MU, COV)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    eye = torch.eye(2, dtype=torch.float64)
    for t in (0.05, 0.4, 0.9, 1.0):
        cov_vx = t * eye - (1 - t) * COV  # Cov(n - x0, (1 - t) x0 + t n)
        cov_x = (1 - t) ** 2 * COV + t**2 * eye
        expected = -MU + (x - (1 - t) * MU) @ torch.linalg.solve(cov_x, cov_vx.T)
        torch.testing.assert_close(
            oracle.velocity(x, t), expected, rtol=1e-6, atol=1e-6
        )  # t reaches it as float32
        torch.testing.assert_close(oracle(x.float(), t).double(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the samplers
def exact_flow_solution(x_T: torch.Tensor, level: float) -> torch.Tensor:
    """Where the probability-flow ODE of N(MU, COV) data takes x_T at noise level sigma / alpha = ``level``
    down to the data: along each eigenvector (eigenvalue l) of COV the deviation of x / alpha from MU scales
    as sqrt(l + level^2) (EDM eq. 4's frame)."""
    alpha = 1 / (1 + level)  # the flow's alpha at t = level / (1 + level)
    vals, vecs = torch.linalg.eigh(COV)
    z = (x_T.double() / alpha - MU) @ vecs
    return MU + (z * (vals / (vals + level**2)).sqrt()) @ vecs.T


def test_euler_is_ddim_and_the_explicit_euler_step_in_t() -> None:
    """sampler=euler (DDIM, eta 0) on the flow is x <- x + (t' - t) v(x, t) from x = z at t = 1."""
    process = FlowProcess()
    oracle = GaussianOracle(process, MU, COV)
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(7))
    for steps in (1, 2, 4, 10):
        ours = DDIMSampler(steps=steps, spacing="linspace").sample(
            oracle, process, (512, 2), x_T=z, progress=False
        )
        grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
        x = z.double()
        for t, t_next in itertools.pairwise(grid):
            # the network is asked at t = 1, the step is taken from 1 - 2**-12, where the solvers read the
            # path's coefficients (FLOW_TIME_FLOOR: log(alpha / sigma) is -inf at t = 1)
            x = x + (t_next - min(t, 1 - FLOW_TIME_FLOOR)) * oracle.velocity(x, t)
        torch.testing.assert_close(ours.double(), x, rtol=1e-5, atol=1e-5)


def test_euler_is_first_order_and_heun_second_order_on_the_exact_flow() -> None:
    process = FlowProcess()
    oracle = GaussianOracle(process, MU, COV)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(8))
    exact = exact_flow_solution(x_T, (1 - FLOW_TIME_FLOOR) / FLOW_TIME_FLOOR)
    ratios = {}
    for sampler in (DDIMSampler, HeunSampler):
        errors = []
        for steps in (16, 32, 64):
            out = sampler(steps=steps, spacing="linspace").sample(
                oracle, process, (256, 2), x_T=x_T, progress=False
            )
            errors.append(float((out.double() - exact).norm(dim=1).mean()))
        ratios[sampler] = [errors[0] / errors[1], errors[1] / errors[2]]  # per doubling of the steps
    assert all(1.6 < r < 2.5 for r in ratios[DDIMSampler]), ratios  # first order: 2
    assert all(3.0 < r < 5.5 for r in ratios[HeunSampler]), ratios  # second order: 4


@pytest.mark.parametrize(
    "sampler",
    [DDIMSampler(steps=8), DPMSolverSampler(steps=8, order=2), UniPCSampler(steps=8, order=3)],
    ids=["ddim", "dpm_solver", "unipc"],
)
def test_multistep_solvers_give_the_same_samples_on_the_flow_and_the_vp_chain(sampler) -> None:
    """The same ODE in another time variable: on the straight path at the noise levels of a VP grid, from
    the VP start rescaled to the flow's alpha, every solver lands on the same samples as on the chain."""
    chain = GaussianDiffusion(make_beta_schedule("linear", 1000))
    process = FlowProcess()
    grid = [900, 700, 500, 300, 150, 60, 20, 5]
    times = [float(process.time_at_noise_level(chain.noise_level(torch.tensor([t])))) for t in grid]
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(9))
    keys = {"steps": sampler.steps} | ({} if isinstance(sampler, DDIMSampler) else {"order": sampler.order})
    vp = type(sampler)(**keys, timesteps=grid)
    flow = type(sampler)(**keys, timesteps=times)
    scale = process.coefficients(times[0])[0] / chain.coefficients(grid[0])[0]
    out_vp = vp.sample(GaussianOracle(chain, MU, COV), chain, (256, 2), x_T=x_T, progress=False)
    out_flow = flow.sample(
        GaussianOracle(process, MU, COV), process, (256, 2), x_T=x_T * scale, progress=False
    )
    torch.testing.assert_close(out_flow, out_vp, rtol=1e-4, atol=1e-4)


def test_flow_grids_evaluate_noise_first_and_never_the_data() -> None:
    process = FlowProcess()
    assert DDIMSampler(steps=1).timesteps(process) == [1.0]
    assert DDIMSampler(steps=4).timesteps(process) == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert HeunSampler(steps=2, spacing="linspace").timesteps(process) == pytest.approx([1.0, 0.5, 0.5])
    for spacing in ("linspace", "quadratic", "karras"):
        ts = DPMSolverSampler(steps=5, spacing=spacing).timesteps(process)
        assert ts[0] == pytest.approx(1.0, abs=FLOW_TIME_FLOOR) and min(ts) > 0 and len(ts) == 5
    with pytest.raises(ValueError, match=r"spacing='logsnr' needs a lowest noise level above 0; FlowProcess"):
        UniPCSampler(steps=5, spacing="logsnr").timesteps(process)


def test_mixture_modes_are_all_reached_on_the_flow() -> None:
    process = FlowProcess()
    oracle = GaussianMixtureOracle.eight_gaussians(process)
    sampler = HeunSampler(steps=10, spacing="linspace")
    x = sampler.sample(
        oracle, process, (4000, 2), generator=torch.Generator().manual_seed(10), progress=False
    )
    assert float(oracle.mode_weights(x.double()).min()) > 0.09  # 1/8 = 0.125 each


# ----------------------------------------------------------------------------- the training times
def test_training_times_on_the_flow() -> None:
    process = FlowProcess()
    t, w = UniformTimesteps(process).sample(100_000, generator=torch.Generator().manual_seed(11))
    assert float(t.min()) >= 0 and float(t.max()) <= 1 and abs(float(t.mean()) - 0.5) < 0.005
    assert bool((w == 1).all()) and isinstance(default_timesteps(process), UniformTimesteps)
    t, w = LogitNormalTimes(process, mean=0.5, scale=0.8).sample(
        200_000, generator=torch.Generator().manual_seed(12)
    )
    logit = (t / (1 - t)).double().log()
    assert abs(float(logit.mean()) - 0.5) < 0.01 and abs(float(logit.std()) - 0.8) < 0.01
    chain = GaussianDiffusion(make_beta_schedule("linear", 1000))
    with pytest.raises(ValueError, match=r"logit_normal draws times in a continuous interval"):
        LogitNormalTimes(chain)
    with pytest.raises(ValueError, match=r"scale=0 is invalid"):
        LogitNormalTimes(process, scale=0)
    with pytest.raises(ValueError, match=r"HybridLoss is written for DDPM's chain"):
        HybridLoss(process)


def test_the_velocity_loss_is_the_mean_squared_error_to_n_minus_x0() -> None:
    process = FlowProcess()
    net = torch.nn.Linear(2, 2)
    wrapped = process.wrap_network(lambda x, t: net(x) + t[:, None] / 1000)
    x0, noise, t = torch.randn(8, 2), torch.randn(8, 2), torch.rand(8)
    x_t = interpolate(x0, noise, t)
    expected = (net(x_t) + t[:, None] - (noise - x0)).square().mean(1)
    torch.testing.assert_close(SimpleLoss(process)(wrapped, x0, t, noise), expected)


# ----------------------------------------------------------------------------- as a run
def test_cifar10_flow_composes_builds_and_trains_two_steps_on_cpu(tmp_path: Path, monkeypatch) -> None:
    from tests.test_images import write_tiny_cifar

    write_tiny_cifar(tmp_path / "data", monkeypatch)
    cfg = compose_cfg(tmp_path, ["experiment=cifar10_flow"])
    assert cfg.diffusion._target_ == "ddpm.flow.FlowProcess" and set(cfg.diffusion) == {
        "_target_",
        "time_scale",
        "clip_denoised",
        "clip_range",
    }
    assert cfg.loss._target_ == "ddpm.losses.SimpleLoss" and cfg.loss.coupling == "independent"
    assert cfg.sampler._target_ == "ddpm.samplers.HeunSampler" and cfg.sampler.spacing == "linspace"
    assert cfg.optimizer.lr == 2e-4 and cfg.data.batch_size == 128
    _, module = build(cfg)
    assert isinstance(module.net, TimeScaledNetwork) and isinstance(module.diffusion, FlowProcess)
    assert abs(sum(p.numel() for p in module.net.parameters()) - 35.7e6) < 0.1e6
    overrides = ["trainer=cpu", "data.batch_size=2", "data.num_workers=0", "data.pin_memory=false"]
    overrides += ["data.val_size=2", "model.base_channels=32", "model.channel_mult=[1,2]"]
    overrides += ["sampler.steps=2", "final_samples=4", "callbacks.samples.num_samples=4"]
    metrics, _ = run_train(tmp_path, ["experiment=cifar10_flow", *SHORT, *overrides, "trainer.max_steps=2"])
    assert metrics["global_step"] == 2


def test_digits_flow_keeps_the_digits_recipe(tmp_path: Path) -> None:
    digits = compose_cfg(tmp_path, ["experiment=digits"], run_folder=False)
    flow = compose_cfg(tmp_path, ["experiment=digits_flow"], run_folder=False)
    assert flow.diffusion._target_ == "ddpm.flow.FlowProcess" and flow.diffusion.clip_denoised
    for key in ("optimizer", "lr_scheduler", "model", "data", "trainer"):
        assert flow[key] == digits[key], key
    assert flow.callbacks.ema == digits.callbacks.ema


def test_class_conditional_flow_trains_and_samples_with_guidance(tmp_path: Path) -> None:
    metrics, run_dir = run_train(
        tmp_path,
        ["experiment=toy2d_cond", "diffusion=flow", "sampler=euler", "sampler.guidance_scale=2", *SHORT],
    )
    assert metrics["global_step"] == 4
    run = load_run(run_dir)
    y = torch.arange(run.model.num_classes).repeat(4)
    x = run.model.sample(len(y), y=y, generator=torch.Generator().manual_seed(0))
    assert x.shape == (len(y), 2) and bool(torch.isfinite(x).all())


@pytest.fixture(scope="module")
def toy_flow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("toy_flow")
    metrics, run_dir = run_train(
        tmp, ["experiment=toy2d_flow_ot", *SHORT, "trainer.max_steps=60", "trainer.val_check_interval=30"]
    )
    assert metrics["global_step"] == 60 and math.isfinite(metrics["final/ratio"])
    return run_dir


def test_toy2d_flow_run_loads_samples_and_evaluates(toy_flow_run: Path) -> None:
    run = load_run(toy_flow_run)
    assert isinstance(run.model.diffusion, FlowProcess) and isinstance(run.model.net, TimeScaledNetwork)
    assert isinstance(run.sampler, HeunSampler) and run.sampler.steps == 8
    x = run.model.sample(32, generator=torch.Generator().manual_seed(0))
    assert x.shape == (32, 2) and bool(torch.isfinite(x).all())
    other = run.make_sampler(["sampler=euler", "sampler.steps=2"])
    assert other.timesteps(run.model.diffusion) == pytest.approx([1.0, 0.5])
    done = cli(
        "ddpm-eval", str(toy_flow_run), "--n", "200", "sampler=euler", "sampler.steps=2", cwd=toy_flow_run
    )
    assert done.returncode == 0, done.stderr
    (written,) = (toy_flow_run / "eval").glob("ddim*.json")
    assert math.isfinite(json.loads(written.read_text())["quality"]["ratio"]["mean"])


def test_bpd_and_unpaired_spacings_on_a_flow_run_are_refused_in_one_line(toy_flow_run: Path) -> None:
    done = cli("ddpm-eval", str(toy_flow_run), "--bpd", cwd=toy_flow_run)
    assert done.returncode == 2 and "--bpd is DDPM's variational bound" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = cli("ddpm-sample", str(toy_flow_run), "sampler=unipc", cwd=toy_flow_run)
    assert done.returncode == 2 and "spacing='logsnr' needs a lowest noise level above 0" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["toy2d_flow", "toy2d_flow_ot"])
def test_toy_flow_experiments_reach_the_default_runs_threshold(tmp_path: Path, experiment: str) -> None:
    """Every toy flow experiment as shipped ends within 2x the data-vs-data noise floor at its default
    sampler, as the default run does."""
    overrides = [
        o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "final_samples"))
    ]
    metrics, _ = run_train(tmp_path, [f"experiment={experiment}", *overrides, "final_samples=2000"])
    assert metrics["global_step"] == 1500
    assert metrics["final/ratio"] < 2.0


# ----------------------------------------------------------------------------- reflow
def test_reflow_trains_on_the_teachers_cached_ode_pairs(toy_flow_run: Path, tmp_path: Path) -> None:
    from ddpm.reflow import pairs_cache_path

    cache = tmp_path / "cache"
    student = [
        f"teacher={toy_flow_run}",
        "reflow.pairs=300",
        "reflow.batch=128",
        f"reflow.cache_dir={cache}",
        "reflow.teacher_steps=null",  # the teacher's sampler as the run has it
    ]
    cfg = compose_cfg(tmp_path / "a", ["experiment=toy2d_reflow", *SHORT, *student])
    datamodule, module = build(cfg)
    assert isinstance(module.diffusion, FlowProcess) and datamodule.pairs is not None
    samples, noise = datamodule.pairs
    teacher = load_run(toy_flow_run)
    process = teacher.model.diffusion
    x_T = noise * process.prior_std(1.0)  # the solvers' 1 - 2**-12 at t = 1
    expected = teacher.sampler.sample(teacher.model, process, (300, 2), x_T=x_T, progress=False)
    torch.testing.assert_close(samples, expected, rtol=1e-5, atol=1e-5)  # the teacher's ODE from the noise
    (cached,) = (cache / "reflow").glob("*.npz")
    assert cached == pairs_cache_path(cache, teacher.checkpoint, teacher.sampler, 300, 0)
    batch = next(iter(datamodule.train_dataloader()))
    assert set(batch) == {"x", "noise"} and batch["x"].shape == (cfg.data.batch_size, 2)
    cached.write_bytes(cached.read_bytes())  # the second student reads the cache: same pairs, no sampling
    again, _ = build(compose_cfg(tmp_path / "b", ["experiment=toy2d_reflow", *SHORT, *student]))
    torch.testing.assert_close(again.pairs[0], samples)
    metrics, run_dir = run_train(tmp_path / "c", ["experiment=toy2d_reflow", *SHORT, *student])
    assert metrics["global_step"] == 4 and load_run(run_dir).sampler.steps == 2


def test_reflow_student_starts_from_the_teachers_weights_unless_told_scratch(
    toy_flow_run: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    student = [f"teacher={toy_flow_run}", "reflow.pairs=64", "reflow.batch=64", f"reflow.cache_dir={cache}"]
    teacher = load_run(toy_flow_run).model.net.state_dict()
    _, module = build(compose_cfg(tmp_path / "a", ["experiment=toy2d_reflow", *SHORT, *student]))
    tuned = module.net.state_dict()
    assert tuned.keys() == teacher.keys()
    for key, value in teacher.items():  # the teacher's weights (its EMA's), every tensor
        torch.testing.assert_close(tuned[key], value, rtol=0, atol=0)
    _, fresh = build(
        compose_cfg(tmp_path / "b", ["experiment=toy2d_reflow", *SHORT, *student, "reflow.init=scratch"])
    )
    assert any(not torch.equal(fresh.net.state_dict()[k], v) for k, v in teacher.items())
    # scratch takes a teacher of another network; init=teacher refuses it in one line, before any pair
    wide = ["model.hidden=64", f"reflow.cache_dir={tmp_path / 'other'}"]
    build(
        compose_cfg(
            tmp_path / "c", ["experiment=toy2d_reflow", *SHORT, *student, *wide, "reflow.init=scratch"]
        )
    )
    from ddpm.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"model.hidden=64 differs from the teacher's 128 .*reflow.init=scratch"
    ):
        build(compose_cfg(tmp_path / "d", ["experiment=toy2d_reflow", *SHORT, *student, *wide]))
    assert len(list((tmp_path / "other").glob("reflow/*.npz"))) == 1  # only scratch's run drew pairs


def test_reflow_teacher_steps_draw_the_pairs_with_that_many_steps(toy_flow_run: Path, tmp_path: Path) -> None:
    student = [
        f"teacher={toy_flow_run}",
        "reflow.pairs=64",
        "reflow.teacher_steps=3",
        f"reflow.cache_dir={tmp_path / 'cache'}",
    ]
    datamodule, _ = build(compose_cfg(tmp_path / "a", ["experiment=toy2d_reflow", *SHORT, *student]))
    samples, noise = datamodule.pairs
    teacher = load_run(toy_flow_run)
    three = teacher.make_sampler(["sampler.steps=3"])
    assert teacher.sampler.steps == 8 and three.steps == 3
    x_T = noise * teacher.model.diffusion.prior_std(1.0)
    expected = three.sample(teacher.model, teacher.model.diffusion, (64, 2), x_T=x_T, progress=False)
    torch.testing.assert_close(samples, expected, rtol=1e-5, atol=1e-5)
    eight = teacher.sampler.sample(teacher.model, teacher.model.diffusion, (64, 2), x_T=x_T, progress=False)
    assert not torch.allclose(samples, eight, atol=1e-4)  # not the teacher's own 8 steps


def test_reflow_refusals_are_one_line_before_any_work(toy_flow_run: Path, tmp_path: Path) -> None:
    from ddpm.config import ConfigError

    base = ["experiment=toy2d_reflow", *SHORT, f"reflow.cache_dir={tmp_path / 'cache'}"]
    cases = {
        "data.n_train=999": r"data.n_train=999 differs from the teacher's 20000",
        "diffusion=default": r"this run's process is GaussianDiffusion: use diffusion=flow",
        "reflow.pairs=0": r"reflow.pairs=0 is invalid",
        "reflow.init=copy": r"reflow.init='copy' is invalid; it must be one of teacher, scratch",
        "reflow.teacher_steps=0": r"reflow.teacher_steps=0 is invalid; it must be an integer >= 1, or null",
        "conditional=true": r"conditional=true with a teacher",
    }
    for i, (override, message) in enumerate(cases.items()):
        cfg = compose_cfg(tmp_path / str(i), [*base, f"teacher={toy_flow_run}", override])
        with pytest.raises(ConfigError, match=message):
            build(cfg)
    done = cli(
        "ddpm-train",
        *base,
        f"teacher={tmp_path / 'nowhere'}",
        f"hydra.run.dir={tmp_path / 'r'}",
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "teacher=" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
