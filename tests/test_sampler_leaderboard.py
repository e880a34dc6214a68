"""scripts/sampler_leaderboard.py on a small slice: the exact covariance error, its Monte-Carlo check, the
mixture figure, and the report's tables and PASS/FAIL lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm.metrics import quality_report
from ddpm.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, UniPCSampler
from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sampler_leaderboard.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and on a shared CPU more threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lb():
    yield from load_script(SCRIPT, "ddpm_sampler_leaderboard_script")


@pytest.fixture(scope="module")
def linear(lb):
    return lb.make_diffusion("linear")


@pytest.fixture(scope="module")
def errors(lb, linear) -> dict[tuple[str, int], float]:
    """Exact covariance errors on the Gaussian oracle, linear schedule, at NFE 10 and 20."""
    mu, sigma = lb.gaussian_data()
    factories = {
        "ddim": lambda n: DDIMSampler(n),
        "dpm2m": lambda n: DPMSolverSampler(n, order=2),
        "unipc": lambda n: UniPCSampler(n, order=2),
    }
    out = {}
    for name, make in factories.items():
        for nfe in (10, 20):
            r = lb.covariance_error(make(nfe), linear, mu, sigma)
            assert r.method == "affine" and r.nfe == nfe
            out[name, nfe] = r.cov_error
    return out


def test_affine_covariance_equals_monte_carlo(lb, linear) -> None:
    """The deterministic sampler is the affine map read off three probes, and 10k draws agree with A A^T."""
    mu, sigma = lb.gaussian_data()
    v = lb.verify_affine(DPMSolverSampler(10, order=2), linear, mu, sigma, n=10_000, seed=0)
    assert v["max_gap"] < 1e-4  # float32 rounding, not a non-affine sampler
    assert abs(v["cov_error_mc"] - v["cov_error_affine"]) <= 3 * v["cov_error_mc_se"], v
    assert v["mc_vs_affine"] <= 4 * v["mc_noise"], v


def test_ddpm_monte_carlo_agrees_with_its_propagated_moments(lb, linear) -> None:
    mu, sigma = lb.gaussian_data()
    r = lb.covariance_error(DDPMSampler(10), linear, mu, sigma, mc_n=10_000, seed=0)
    assert r.method == "monte carlo" and r.cov_error_se is not None and r.exact_cov_error is not None
    assert abs(r.cov_error - r.exact_cov_error) <= 3 * r.cov_error_se, r


def test_dpm_solver_2m_meets_the_target_at_20_nfe(errors) -> None:
    assert errors["dpm2m", 20] <= 0.02, errors


def test_error_falls_from_10_to_20_nfe(errors) -> None:
    for name in ("ddim", "dpm2m", "unipc"):
        assert errors[name, 20] < errors[name, 10], (name, errors)


def test_ddim_is_far_behind_second_order_at_20_nfe(errors) -> None:
    assert errors["ddim", 20] > 5 * errors["dpm2m", 20], errors


def test_final_step_error_is_the_floor_from_t0(lb, linear) -> None:
    """From t = 0 the final jump costs little (abar_0 is close to 1); from t = 100 much more."""
    _, sigma = lb.gaussian_data()
    assert 0 < lb.final_step_error(linear, sigma, 0) < 1e-3 < lb.final_step_error(linear, sigma, 100)


def test_mixture_quality_is_quality_reports_energy_over_its_floor(lb, linear) -> None:
    oracle = lb.make_mixture("eight_gaussians", linear)
    sampler = DPMSolverSampler(10, order=2)
    res = lb.mixture_quality(sampler, oracle, n=300, seed=3)
    data = lb.data_draws(oracle, 300, 3)
    x = sampler.sample(oracle, linear, (300, 2), generator=torch.Generator().manual_seed(3), progress=False)
    report = quality_report(x, data.held_out, data.second)
    assert res.energy == pytest.approx(report.energy, rel=1e-9)
    assert res.floor == pytest.approx(report.energy_floor, rel=1e-9)
    assert res.ratio == pytest.approx(report.ratio, rel=1e-9)
    assert 0.0 <= res.tv <= 1.0 and res.nfe == 10


def test_unipc_on_quadratic_spacing_meets_the_target_at_20_nfe(lb, linear) -> None:
    mu, sigma = lb.gaussian_data()
    sampler = UniPCSampler(20, order=2, spacing="quadratic")
    assert lb.covariance_error(sampler, linear, mu, sigma).cov_error < 0.02


def test_target_c_counts_a_method_once_on_its_best_grid(lb) -> None:
    """A solver short of its order on linspace but at it on logsnr meets (c), and the short row is named;
    a method short on every grid fails it."""
    fit = lb.SlopeFit
    slopes = [
        lb.SlopeRow("linear", "DPM-Solver++ 3M", 3, fit(-1.4, 5, 15, 250), None),
        lb.SlopeRow("linear", "DPM-Solver++ 3M, logsnr", 3, fit(-2.6, 4, 15, 49), None),
        lb.SlopeRow("linear", "Heun (EDM, karras)", 2, fit(-2.1, 3, 49, 249), None),
    ]
    target = lb.target_orders(slopes)
    assert target.passed
    assert "2/2 (method, schedule) pairs" in target.text and "-2.60 on logsnr" in target.text
    assert "DPM-Solver++ 3M (linear, order 3: -1.40)" in target.text
    target = lb.target_orders([*slopes[:1], lb.SlopeRow("linear", "UniPC-bh2 p=2", 3, None, None)])
    assert not target.passed and "never: DPM-Solver++ 3M (linear), UniPC-bh2 p=2 (linear)" in target.text
    assert lb.method_and_grid("UniPC-bh2 p=2, quadratic") == ("UniPC-bh2 p=2", "quadratic")
    assert lb.method_and_grid("DDPM (ancestral, linspace)") == ("DDPM (ancestral, linspace)", "linspace")


def test_fit_slope_recovers_a_power_law(lb) -> None:
    points = [(n, 3.0 * n**-2.0) for n in (5, 10, 20, 40, 80)]
    fit = lb.fit_slope(points, floor=1e-6, ceiling=1.0)
    assert fit.slope == pytest.approx(-2.0) and fit.points == 5
    assert lb.fit_slope(points[:1], floor=1e-6) is None


def _tiny_rows(lb) -> list:
    """A hand-made row set: the rendering and the targets' arithmetic, not measured figures."""
    row = lb.Row
    g = {"floor": 1e-4, "mean_error": 1e-5, "method": "affine"}
    rows = []
    for label, order, errs in (
        ("DDIM (eta=0)", 1, (0.35, 0.09, 0.036)),
        ("DPM-Solver++ 2M", 2, (0.12, 0.03, 0.005)),
    ):
        for budget, e in zip((10, 20, 50), errs, strict=True):
            m = {**g, "exact_cov_error": e, "solver_error": e, "final_step_error": 1e-4, "t_min": 0.0}
            rows.append(row("gaussian", "linear", label, order, budget, budget, e, m))
    ddpm = {**g, "method": "monte carlo", "cov_error_se": 0.002, "exact_cov_error": 0.004}
    rows.append(row("gaussian", "linear", lb.DDPM_1000, 1, 1000, 1000, 0.011, ddpm))

    def mix(label: str, order: int, budget: int, ratio: float) -> object:
        m = {"ratio_min": ratio, "ratio_max": ratio, "ratios": [ratio], "energies": [ratio], "floors": [1.0]}
        m |= {"tv": 0.01, "tv_max": 0.01, "tv_floor": 0.01, "seeds": [0], "n": 10}
        m |= {"null_median": 0.9, "null_q95": 1.2}
        return row("eight_gaussians", "linear", label, order, budget, budget, ratio, m)

    rows += [mix("DDIM (eta=0)", 1, 10, 9.0), mix("DDIM (eta=0)", 1, 50, 2.0)]
    rows += [mix("DPM-Solver++ 2M", 2, 10, 1.5), mix("DPM-Solver++ 2M", 2, 50, 1.0)]
    rows.append(mix(lb.DDPM_1000, 1, 1000, 1.0))
    return rows


def test_render_markdown_tables_and_targets(lb) -> None:
    report = lb.render_markdown(_tiny_rows(lb), {"command": "x --quick", "wall_s": 1.0, "mc_n": 100, "n": 10})
    assert "| sampler (order) | 10 | 20 | 50 | 1000 |" in report
    assert "| DPM-Solver++ 2M (2) | 12% | 3% | 0.5% |  |" in report
    assert "| DDPM-1000 (all T steps) (1) |  |  |  | 1.1% ± 0.2% (exact 0.4%) |" in report
    assert "| DDIM (eta=0) (1) | 9.00 (9.00–9.00) | 2.00 (2.00–2.00) |  |" in report
    # (a): 2M is at 3% at 20 NFE, above 2%; (b): 2M at 10 (1.5x) beats DDIM at 50 (2.0x)
    assert "covariance error <= 2% at <= 20 NFE: **FAIL**" in report
    assert "beats DDIM at 50 NFE on the energy-distance ratio: **PASS**" in report
    # (c): DDIM falls at slope -1 over 20-50 (35% at 10 is above the fit's ceiling), 2M at -1.96
    assert "| linear | DDIM (eta=0) | -1 | -1.00 (2, 20–50) |" in report
    assert "| linear | DPM-Solver++ 2M | -2 | -1.96 (2, 20–50) |" in report
    assert "rate its order predicts: **PASS**" in report
    assert "## Targets" in report and "## Which sampler to use" in report
    assert "Exact samples (fresh data draws) reach a pooled ratio of 0.90 (median of 20), 1.20" in report
    # the mixtures' level is the exact-sample band (1.2): 2M reaches it at 50 NFE, DDIM never
    assert "eight Gaussians, linear: **DPM-Solver++ 2M at 50 NFE** (1.00x; DDPM-1000's level 1.20x)" in report
    assert "Gaussian N(mu, Sigma), linear: no sampler reaches DDPM-1000's level (0.4%)" in report
