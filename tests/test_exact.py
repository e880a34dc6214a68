"""ddpm.evaluation.exact on a small slice: the exact covariance error, its Monte-Carlo check, the mixture
figure, the log-log slope fit, and the order each sampler carries."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.exact import (
    covariance_error,
    data_draws,
    final_step_error,
    fit_slope,
    mixture_quality,
    verify_affine,
)
from ddpm.metrics import quality_report
from ddpm.oracle import GaussianMixtureOracle
from ddpm.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, HeunSampler, UniPCSampler
from ddpm.schedules import make_beta_schedule

#: scripts/sampler_leaderboard.py's Gaussian, float64
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SIGMA = torch.tensor([[0.5, 0.3], [0.3, 0.8]], dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and on a shared CPU more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def linear() -> GaussianDiffusion:
    """The leaderboard's forward process: linear, T = 1000, eps, no clipping (clipping is not affine)."""
    return GaussianDiffusion(make_beta_schedule("linear", 1000), objective="eps", clip_denoised=False)


@pytest.fixture(scope="module")
def errors(linear) -> dict[tuple[str, int], float]:
    """Exact covariance errors on the Gaussian oracle, linear schedule, at NFE 10 and 20."""
    factories = {
        "ddim": lambda n: DDIMSampler(n),
        "dpm2m": lambda n: DPMSolverSampler(n, order=2),
        "unipc": lambda n: UniPCSampler(n, order=2),
    }
    out = {}
    for name, make in factories.items():
        for nfe in (10, 20):
            r = covariance_error(make(nfe), linear, MU, SIGMA)
            assert r.method == "affine" and r.nfe == nfe
            out[name, nfe] = r.cov_error
    return out


def test_affine_covariance_equals_monte_carlo(linear) -> None:
    """The deterministic sampler is the affine map read off three probes, and 10k draws agree with A A^T."""
    v = verify_affine(DPMSolverSampler(10, order=2), linear, MU, SIGMA, n=10_000, seed=0)
    assert v["max_gap"] < 1e-4  # float32 rounding, not a non-affine sampler
    assert abs(v["cov_error_mc"] - v["cov_error_affine"]) <= 3 * v["cov_error_mc_se"], v
    assert v["mc_vs_affine"] <= 4 * v["mc_noise"], v


def test_ddpm_monte_carlo_agrees_with_its_propagated_moments(linear) -> None:
    r = covariance_error(DDPMSampler(10), linear, MU, SIGMA, mc_n=10_000, seed=0)
    assert r.method == "monte carlo" and r.cov_error_se is not None and r.exact_cov_error is not None
    assert abs(r.cov_error - r.exact_cov_error) <= 3 * r.cov_error_se, r


def test_dpm_solver_2m_meets_the_target_at_20_nfe(errors) -> None:
    assert errors["dpm2m", 20] <= 0.02, errors


def test_error_falls_from_10_to_20_nfe(errors) -> None:
    for name in ("ddim", "dpm2m", "unipc"):
        assert errors[name, 20] < errors[name, 10], (name, errors)


def test_ddim_is_far_behind_second_order_at_20_nfe(errors) -> None:
    assert errors["ddim", 20] > 5 * errors["dpm2m", 20], errors


def test_final_step_error_is_the_floor_from_t0(linear) -> None:
    """From t = 0 the final jump costs little (abar_0 is close to 1); from t = 100 much more."""
    assert 0 < final_step_error(linear, SIGMA, 0) < 1e-3 < final_step_error(linear, SIGMA, 100)


def test_mixture_quality_is_quality_reports_energy_over_its_floor(linear) -> None:
    oracle = GaussianMixtureOracle.eight_gaussians(linear)
    sampler = DPMSolverSampler(10, order=2)
    res = mixture_quality(sampler, oracle, n=300, seed=3)
    data = data_draws(oracle, 300, 3)
    x = sampler.sample(oracle, linear, (300, 2), generator=torch.Generator().manual_seed(3), progress=False)
    report = quality_report(x, data.held_out, data.second)
    assert res.energy == pytest.approx(report.energy, rel=1e-9)
    assert res.floor == pytest.approx(report.energy_floor, rel=1e-9)
    assert res.ratio == pytest.approx(report.ratio, rel=1e-9)
    assert 0.0 <= res.tv <= 1.0 and res.nfe == 10


def test_unipc_on_quadratic_spacing_meets_the_target_at_20_nfe(linear) -> None:
    sampler = UniPCSampler(20, order=2, spacing="quadratic")
    assert covariance_error(sampler, linear, MU, SIGMA).cov_error < 0.02


def test_fit_slope_recovers_a_power_law() -> None:
    points = [(n, 3.0 * n**-2.0) for n in (5, 10, 20, 40, 80)]
    fit = fit_slope(points, floor=1e-6, ceiling=1.0)
    assert fit is not None and fit.slope == pytest.approx(-2.0) and fit.points == 5
    assert fit_slope(points[:1], floor=1e-6) is None


def test_samplers_carry_their_order() -> None:
    """The order of accuracy each method predicts, the slope the leaderboard fits against."""
    assert DDPMSampler.order == DDIMSampler.order == 1 and HeunSampler.order == 2
    assert [DPMSolverSampler(10, order=k).convergence_order for k in (1, 2, 3)] == [1, 2, 3]
    # UniPC: the corrector raises the predictor's order p to p + 1
    assert [UniPCSampler(10, order=p).convergence_order for p in (1, 2, 3)] == [2, 3, 4]
    assert HeunSampler(5).convergence_order == 2 and DDPMSampler(10).convergence_order == 1
