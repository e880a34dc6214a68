"""scripts/sampler_leaderboard.py's report: its tables and PASS/FAIL lines on hand-made rows. The checking
math it runs is library code, tested in tests/test_exact.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm.evaluation.exact import SlopeFit
from tests.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "sampler_leaderboard.py"


@pytest.fixture(scope="module")
def lb():
    yield from load_script(SCRIPT, "ddpm_sampler_leaderboard_script")


def test_target_c_counts_a_method_once_on_its_best_grid(lb) -> None:
    """A solver short of its order on linspace but at it on logsnr meets (c), and the short row is named;
    a method short on every grid fails it."""
    slopes = [
        lb.SlopeRow("linear", "DPM-Solver++ 3M", 3, SlopeFit(-1.4, 5, 15, 250), None),
        lb.SlopeRow("linear", "DPM-Solver++ 3M, logsnr", 3, SlopeFit(-2.6, 4, 15, 49), None),
        lb.SlopeRow("linear", "Heun (EDM, karras)", 2, SlopeFit(-2.1, 3, 49, 249), None),
    ]
    target = lb.target_orders(slopes)
    assert target.passed
    assert "2/2 (method, schedule) pairs" in target.text and "-2.60 on logsnr" in target.text
    assert "DPM-Solver++ 3M (linear, order 3: -1.40)" in target.text
    target = lb.target_orders([*slopes[:1], lb.SlopeRow("linear", "UniPC-bh2 p=2", 3, None, None)])
    assert not target.passed and "never: DPM-Solver++ 3M (linear), UniPC-bh2 p=2 (linear)" in target.text
    assert lb.method_and_grid("UniPC-bh2 p=2, quadratic") == ("UniPC-bh2 p=2", "quadratic")
    assert lb.method_and_grid("DDPM (ancestral, linspace)") == ("DDPM (ancestral, linspace)", "linspace")


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
