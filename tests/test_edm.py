"""EDM (issue 30): against k-diffusion's reference, on the exact oracle, and end to end as a run."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ddpm.build import build, load_run
from ddpm.diffusion import GaussianDiffusion
from ddpm.edm import EDMDenoiser, EDMProcess, karras_sigmas
from ddpm.losses import EDMLoss
from ddpm.oracle import GaussianMixtureOracle, GaussianOracle
from ddpm.samplers import DDIMSampler, DPMSolverSampler, EDMSampler, UniPCSampler
from ddpm.schedules import make_beta_schedule
from ddpm.timestep_sampling import LogNormalNoiseLevels
from tests.helpers import SHORT, cli, compose_cfg, run_train

with warnings.catch_warnings():
    # k-diffusion imports OpenAI's clip, which imports the deprecated pkg_resources: not ours
    warnings.simplefilter("ignore", UserWarning)
    K = pytest.importorskip("k_diffusion")

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.30, 0.12], [0.12, 0.20]], dtype=torch.float64)


class TimeNet(nn.Module):
    """A small network of (x, time) with a real-valued time input, as ddpm-lab's denoisers take it."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim + 1, 32), nn.SiLU(), nn.Linear(32, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def exact_ode_solution(x_T: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Where the probability-flow ODE of N(MU, COV) data takes x at sigma_max down to sigma = 0: along each
    eigenvector of COV (eigenvalue l) the deviation from MU scales as sqrt(l + sigma^2)."""
    vals, vecs = torch.linalg.eigh(COV)
    z = (x_T.double() - MU) @ vecs
    return MU + (z * (vals / (vals + sigma_max**2)).sqrt()) @ vecs.T


# ----------------------------------------------------------------------------- against k-diffusion
@pytest.mark.parametrize("n", [1, 2, 18, 50])
def test_karras_sigmas_equal_k_diffusion(n: int) -> None:
    ours = karras_sigmas(n, 0.002, 80.0, 7.0)
    ref = K.sampling.get_sigmas_karras(n, 0.002, 80.0, 7.0).double()
    assert ours.shape == (n + 1,) and float(ours[-1]) == 0.0
    # k-diffusion computes in float32: the rounding of its ramp and root (a few ulp) is multiplied by the
    # power rho = 7; ours is float64
    torch.testing.assert_close(ours, ref, rtol=16 * 2**-23, atol=0.0)


def test_denoiser_forward_and_loss_equal_k_diffusion() -> None:
    torch.manual_seed(0)
    net = TimeNet()
    ours = EDMDenoiser(net, sigma_data=0.5)
    ref = K.layers.Denoiser(lambda x, sigma: net(x, sigma.log() / 4), sigma_data=0.5)
    x0, noise = torch.randn(64, 3), torch.randn(64, 3)
    sigma = (torch.randn(64) * 1.2 - 1.2).exp()  # EDM's training levels, from 0.003 to 80 and beyond
    torch.testing.assert_close(
        ours(x0 + sigma[:, None] * noise, sigma), ref(x0 + sigma[:, None] * noise, sigma)
    )
    torch.testing.assert_close(ours.loss(x0, sigma, noise), ref.loss(x0, noise, sigma))
    c_skip, c_out, c_in, c_noise = ours.scalings(sigma)
    ref_skip, ref_out, ref_in = ref.get_scalings(sigma)
    for a, b in ((c_skip, ref_skip), (c_out, ref_out), (c_in, ref_in)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(c_noise, sigma.log() / 4)


class Recorder(nn.Module):
    """A network that outputs 0 and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x, t))
        return torch.zeros_like(x)


def test_denoiser_calls_its_network_with_c_in_x_and_c_noise() -> None:
    denoiser = EDMDenoiser(Recorder(), sigma_data=0.5)
    seen = denoiser.net.calls
    x, sigma = torch.ones(2, 3), torch.tensor([0.5, 2.0])
    out = denoiser(x, sigma)
    torch.testing.assert_close(seen[0][0], x / (sigma[:, None] ** 2 + 0.25).sqrt())
    torch.testing.assert_close(seen[0][1], sigma.log() / 4)
    torch.testing.assert_close(out, 0.25 / (sigma[:, None] ** 2 + 0.25) * x)  # F = 0: c_skip x


def test_edm_sampler_equals_k_diffusion_heun_step_for_step() -> None:
    process = EDMProcess()
    oracle = GaussianOracle(process, MU, COV)
    sampler = EDMSampler(steps=18)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1)) * 80.0
    ours = sampler.sample(oracle, process, (256, 2), x_T=x_T, return_trajectory=True, progress=False)
    seen: list[torch.Tensor] = []
    sigmas = K.sampling.get_sigmas_karras(18, 0.002, 80.0, 7.0)
    ref = K.sampling.sample_heun(
        lambda x, s: oracle(x, s), x_T, sigmas, disable=True, callback=lambda d: seen.append(d["x"])
    )
    assert len(ours.timesteps) == 2 * 18 - 1  # 35 evaluations
    # the state at each of the 18 levels: x_T, then every second entry (after each Heun correction)
    torch.testing.assert_close(ours.trajectory[0::2][:18], torch.stack(seen), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.samples, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- on the exact oracle
def test_oracle_of_the_edm_process_is_the_exact_denoiser() -> None:
    process = EDMProcess()
    oracle = GaussianOracle(process, MU, COV)
    x = torch.randn(16, 2, dtype=torch.float64) * 3
    for sigma in (0.01, 1.0, 40.0):
        expected = MU + (x - MU) @ torch.linalg.inv(COV + sigma**2 * torch.eye(2)).T @ COV.T
        torch.testing.assert_close(oracle(x, torch.full((16,), sigma, dtype=torch.float64)), expected)


def test_edm_sampler_is_second_order_on_the_exact_ode() -> None:
    """Heun on the eq. 5 levels against the exact solution of the probability-flow ODE: the error falls
    about 4x when the levels double (order 2)."""
    process = EDMProcess()
    oracle = GaussianOracle(process, MU, COV)
    x_T = torch.randn(512, 2, generator=torch.Generator().manual_seed(2)).double() * 80.0
    exact = exact_ode_solution(x_T, 80.0)
    errors = []
    for steps in (16, 32, 64):
        out = EDMSampler(steps=steps).sample(oracle, process, (512, 2), x_T=x_T.float(), progress=False)
        errors.append(float((out.double() - exact).norm(dim=1).mean()))
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(3.0 < r < 5.5 for r in ratios), (errors, ratios)


def test_churn_raises_the_level_and_keeps_the_distribution() -> None:
    process = EDMProcess()
    oracle = GaussianOracle(process, MU, COV)
    plain = EDMSampler(steps=10)
    churned = EDMSampler(steps=10, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
    assert churned.stochastic and not plain.stochastic
    ts = churned.timesteps(process)
    levels = plain.noise_levels(process)
    assert len(ts) == 2 * 10 - 1
    gamma = min(40.0 / 10, math.sqrt(2) - 1)
    for level, raised in zip(levels, [ts[0], *ts[2::2]], strict=True):
        want = level * (1 + gamma) if 0.05 <= level <= 50.0 else level  # EDM Algorithm 2, lines 4-5
        assert raised == pytest.approx(want, rel=1e-12)
    # the same stochastic sampler as k-diffusion's: equal covariance within sampling error (the noise is
    # drawn in another order, so not sample for sample). With 10 levels, churn inflates the covariance far
    # beyond that error (about 0.57 against 0.44 without churn and 0.30 for the data).
    n = 20000
    x = churned.sample(oracle, process, (n, 2), generator=torch.Generator().manual_seed(3), progress=False)
    torch.manual_seed(3)
    ref = K.sampling.sample_heun(
        lambda x, s: oracle(x, s),
        torch.randn(n, 2) * 80.0,
        K.sampling.get_sigmas_karras(10, 0.002, 80.0, 7.0),
        s_churn=40.0,
        s_tmin=0.05,
        s_tmax=50.0,
        s_noise=1.003,
        disable=True,
    )
    deterministic = plain.sample(
        oracle, process, (n, 2), generator=torch.Generator().manual_seed(3), progress=False
    )
    cov, ref_cov, plain_cov = (torch.cov(v.double().T) for v in (x, ref, deterministic))
    assert float((cov - ref_cov).abs().max()) < 0.02
    assert float((cov - plain_cov).abs().max()) > 0.08


@pytest.mark.parametrize(
    "sampler",
    [DDIMSampler(steps=8), DPMSolverSampler(steps=8, order=2), UniPCSampler(steps=8, order=3)],
    ids=["ddim", "dpm_solver", "unipc"],
)
def test_multistep_solvers_give_the_same_samples_on_both_processes(sampler) -> None:
    """The same ODE in another time variable: on EDM's process at the noise levels of a VP grid, from the
    VP start divided by its alpha, every solver lands on the same samples as on the VP chain."""
    chain = GaussianDiffusion(make_beta_schedule("linear", 1000))
    process = EDMProcess(sigma_min=0.002, sigma_max=80.0)
    grid = [900, 700, 500, 300, 150, 60, 20, 5]
    levels = [float(chain.noise_level(torch.tensor([t]))) for t in grid]
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(4))
    vp = type(sampler)(**{**_arguments(sampler), "timesteps": grid})
    edm = type(sampler)(**{**_arguments(sampler), "timesteps": levels})
    alpha = chain.coefficients(grid[0])[0]
    out_vp = vp.sample(GaussianOracle(chain, MU, COV), chain, (256, 2), x_T=x_T, progress=False)
    out_edm = edm.sample(GaussianOracle(process, MU, COV), process, (256, 2), x_T=x_T / alpha, progress=False)
    torch.testing.assert_close(out_edm, out_vp, rtol=1e-4, atol=1e-4)


def _arguments(sampler) -> dict:
    keys = {"steps": sampler.steps}
    if hasattr(sampler, "order") and not isinstance(sampler, DDIMSampler):
        keys["order"] = sampler.order
    return keys


def test_edm_sampler_samples_a_vp_chain_within_its_levels() -> None:
    chain = GaussianDiffusion(make_beta_schedule("linear", 1000))
    sampler = EDMSampler(steps=18)
    ts = sampler.noise_levels(chain)
    assert ts[0] == pytest.approx(float(chain.time_at_noise_level(torch.tensor(80.0))), rel=1e-9)
    assert ts[-1] == pytest.approx(0.0, abs=1e-9)  # sigma_min 0.002 clamped to the chain's sigma(0) = 0.01
    oracle = GaussianMixtureOracle.eight_gaussians(chain)
    x = sampler.sample(oracle, chain, (4000, 2), generator=torch.Generator().manual_seed(5), progress=False)
    assert float(oracle.mode_weights(x.double()).min()) > 0.09  # every mode reached (1/8 = 0.125 each)


def test_edm_process_grids_and_refusals() -> None:
    process = EDMProcess()
    assert UniPCSampler(steps=5, spacing="karras").timesteps(process) == pytest.approx(
        karras_sigmas(5)[:-1].tolist(), rel=1e-12
    )
    assert DDIMSampler(steps=3, spacing="linspace").timesteps(process) == pytest.approx([80.0, 40.001, 0.002])
    with pytest.raises(ValueError, match=r"spacing='trailing' places steps among a chain"):
        DDIMSampler(steps=3, spacing="trailing").timesteps(process)
    with pytest.raises(ValueError, match=r"timesteps=\[90, 1\] leaves the process's times \[0.002, 80\]"):
        DDIMSampler(timesteps=[90.0, 1.0]).timesteps(process)
    from ddpm.samplers import DDPMSampler

    with pytest.raises(ValueError, match=r"sampler=ancestral .* needs DDPM's chain"):
        DDPMSampler().timesteps(process)
    with pytest.raises(ValueError, match=r"log_normal draws EDM's continuous noise levels"):
        LogNormalNoiseLevels(GaussianDiffusion(make_beta_schedule("linear", 1000)))
    with pytest.raises(
        ValueError, match=r"loss=edm trains EDM's preconditioned denoiser at its noise levels"
    ):
        EDMLoss(GaussianDiffusion(make_beta_schedule("linear", 1000)))
    from ddpm.losses import HybridLoss, VLBLoss

    for chain_loss in (HybridLoss, VLBLoss):
        with pytest.raises(ValueError, match=rf"{chain_loss.__name__} is written for DDPM's chain"):
            chain_loss(process)
    with pytest.raises(ValueError, match=r"sigma_min=80 must be below sigma_max=1"):
        EDMProcess(sigma_min=80, sigma_max=1)


def test_log_normal_noise_levels_have_edm_moments() -> None:
    sampler = LogNormalNoiseLevels(EDMProcess())
    sigma, weights = sampler.sample(200_000, generator=torch.Generator().manual_seed(6))
    log_sigma = sigma.double().log()
    assert abs(float(log_sigma.mean()) + 1.2) < 0.01 and abs(float(log_sigma.std()) - 1.2) < 0.01
    assert bool((weights == 1).all())


def test_edm_loss_is_the_denoisers_loss_with_label_dropout() -> None:
    torch.manual_seed(7)
    denoiser = EDMDenoiser(TimeNet(), sigma_data=1.0)
    loss = EDMLoss(EDMProcess(sigma_data=1.0))
    x0, noise, sigma = torch.randn(8, 3), torch.randn(8, 3), torch.rand(8) * 5 + 0.01
    torch.testing.assert_close(loss(denoiser, x0, sigma, noise), denoiser.loss(x0, sigma, noise))
    with pytest.raises(ValueError, match=r"loss=edm needs the network wrapped in EDM's preconditioning"):
        loss(TimeNet(), x0, sigma, noise)


# ----------------------------------------------------------------------------- as a run
def test_cifar10_edm_composes_builds_and_trains_two_steps_on_cpu(tmp_path: Path, monkeypatch) -> None:
    from tests.test_images import write_tiny_cifar

    write_tiny_cifar(tmp_path / "data", monkeypatch)
    cfg = compose_cfg(tmp_path, ["experiment=cifar10_edm"])
    assert cfg.diffusion._target_ == "ddpm.edm.EDMProcess" and cfg.diffusion.sigma_data == 0.5
    assert cfg.loss._target_ == "ddpm.losses.EDMLoss"
    assert (cfg.timestep_sampler.p_mean, cfg.timestep_sampler.p_std) == (-1.2, 1.2)
    assert cfg.sampler._target_ == "ddpm.samplers.EDMSampler" and cfg.sampler.steps == 18
    assert cfg.optimizer.lr == 1e-3 and cfg.data.batch_size == 512 and cfg.model.dropout == 0.13
    _, module = build(cfg)
    assert isinstance(module.net, EDMDenoiser) and isinstance(module.diffusion, EDMProcess)
    assert abs(sum(p.numel() for p in module.net.parameters()) - 35.7e6) < 0.1e6
    overrides = ["trainer=cpu", "data.batch_size=2", "data.num_workers=0", "data.pin_memory=false"]
    overrides += ["data.val_size=2", "model.base_channels=32", "model.channel_mult=[1,2]"]
    overrides += ["sampler.steps=2", "final_samples=4", "callbacks.samples.num_samples=4"]
    metrics, _ = run_train(tmp_path, ["experiment=cifar10_edm", *SHORT, *overrides, "trainer.max_steps=2"])
    assert metrics["global_step"] == 2


@pytest.fixture(scope="module")
def toy_edm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("toy_edm")
    metrics, run_dir = run_train(
        tmp, ["experiment=toy2d_edm", *SHORT, "trainer.max_steps=60", "trainer.val_check_interval=30"]
    )
    assert metrics["global_step"] == 60 and math.isfinite(metrics["final/ratio"])
    return run_dir


def test_toy2d_edm_run_loads_samples_and_evaluates(toy_edm_run: Path) -> None:
    run = load_run(toy_edm_run)
    assert isinstance(run.model.diffusion, EDMProcess) and run.model.diffusion.sigma_data == 1.0
    assert isinstance(run.model.net, EDMDenoiser) and isinstance(run.sampler, EDMSampler)
    x = run.model.sample(32, generator=torch.Generator().manual_seed(0))
    assert x.shape == (32, 2) and bool(torch.isfinite(x).all())
    other = run.make_sampler(["sampler=unipc", "sampler.steps=10", "sampler.spacing=karras"])
    assert other.timesteps(run.model.diffusion)[0] == pytest.approx(80.0)
    done = cli(
        "ddpm-eval", str(toy_edm_run), "--n", "200", "sampler=heun", "sampler.steps=6", cwd=toy_edm_run
    )
    assert done.returncode == 0, done.stderr
    (written,) = (toy_edm_run / "eval").glob("heun*.json")
    assert math.isfinite(json.loads(written.read_text())["quality"]["ratio"]["mean"])


def test_bpd_on_an_edm_run_is_refused_in_one_line(toy_edm_run: Path) -> None:
    done = cli("ddpm-eval", str(toy_edm_run), "--bpd", cwd=toy_edm_run)
    assert done.returncode == 2
    assert "--bpd is DDPM's variational bound" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_toy2d_edm_reaches_the_default_runs_threshold(tmp_path: Path) -> None:
    """toy2d_edm as shipped ends within 2x the data-vs-data noise floor, as the default run does."""
    overrides = [
        o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "final_samples"))
    ]
    metrics, _ = run_train(tmp_path, ["experiment=toy2d_edm", *overrides, "final_samples=2000"])
    assert metrics["global_step"] == 1500
    assert metrics["final/ratio"] < 2.0
