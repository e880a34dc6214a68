"""Sampler leaderboard: every sampler of ``ddpm.samplers`` on exact oracle denoisers, error against NFE.

    uv run python scripts/sampler_leaderboard.py                 # the full run: docs/samplers.md + its plot
    uv run python scripts/sampler_leaderboard.py --quick         # seconds: the same code paths, a small slice
    uv run python scripts/sampler_leaderboard.py --n 4000 --seeds 0 1 2 3 4

No network is trained: the "model" is ``ddpm.oracle``'s exact optimal denoiser, so every error below is the
sampler's own (discretisation, final step, start from N(0, I)), not a network's.
The checking math is library code (``ddpm.evaluation.exact``); this script picks the samplers and budgets,
runs them, and writes the report. Each sampler's predicted order is its own ``convergence_order``.

What is measured:

* Gaussian data, x0 ~ N(mu, Sigma) in 2D, on the linear and cosine schedules (T = 1000, eps objective):
  the relative covariance error ||C - Sigma||_F / ||Sigma||_F of the samples, and their mean error
  ||m - mu||_2. The oracle's eps is affine in x_t and every deterministic sampler's step is linear in x_t and
  the network output, so a deterministic sampler is an affine map x_T -> A x_T + b; running it on the three
  points {0, e_1, e_2} gives A and b, hence C = A A^T and m = b EXACTLY, with no Monte-Carlo noise. The
  claim is checked on 20,000 draws (``verify_affine``). DDPM is stochastic: Monte Carlo on ``--mc-n`` draws
  with a bootstrap standard error, and an exact figure by propagating mean and covariance through the
  sampler's own ``step`` (``ddpm_moments``).
* Mixtures (eight Gaussians; an anisotropic 3-component mixture): the energy distance to held-out data as a
  multiple of the data-vs-data floor (``ddpm.metrics``), pooled over ``--seeds``, and the mode-weight error
  (total variation between the fraction of samples per component and the weights).

Writes a markdown report (``docs/samplers.md`` unless ``--out``) and a log-log plot beside it, and prints
the tables. Run single-threaded (``--threads``): on a shared 2-core machine more threads only contend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ddpm.diffusion import GaussianDiffusion
from ddpm.edm import EDMProcess
from ddpm.evaluation.exact import (
    BOOTSTRAP_RESAMPLES,
    FIT_CEILING,
    FIT_FLOOR_FACTOR,
    MixtureResult,
    SlopeFit,
    covariance_error,
    covariance_sampling_noise,
    data_draws,
    final_step_error,
    fit_slope,
    mixture_quality,
    null_band,
    verify_affine,
)
from ddpm.flow import FlowProcess
from ddpm.oracle import GaussianMixtureOracle
from ddpm.process import Process
from ddpm.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    EDMSampler,
    HeunSampler,
    Sampler,
    UniPCSampler,
    alpha_sigma,
)
from ddpm.samplers.fitting import GRID_STEPS, fit_timesteps
from ddpm.schedules import make_beta_schedule

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "samplers.md"
T = 1000
SCHEDULES = ("linear", "cosine")
BUDGETS = (5, 10, 15, 20, 25, 50, 100, 250)
QUICK_BUDGETS = (5, 10, 20)
#: the Gaussian of the issue
GAUSSIAN_MU = (1.0, -0.5)
GAUSSIAN_SIGMA = ((0.5, 0.3), (0.3, 0.8))
MIXTURES = ("eight_gaussians", "anisotropic")
ORACLE_TITLES = {
    "gaussian": "Gaussian N(mu, Sigma)",
    "eight_gaussians": "eight Gaussians",
    "anisotropic": "anisotropic 3-component mixture",
}
#: the issue's targets
COV_TARGET = 0.02
COV_TARGET_NFE = 20
MIX_FAST_BUDGET, MIX_DDIM_BUDGET = 10, 50
#: mixture seeds: at n = 2000 a sampler's energy ratio moves by tenths from one seed to the next (the
#: per-seed ranges of docs/samplers.md), and target (b) compares samplers whose ratios differ by less
SEEDS = tuple(range(8))
#: a fitted slope passes when it is at least this close to -order (steeper passes too)
SLOPE_TOLERANCE = 0.5
#: the samplers run in float32 (eps = 1.2e-7 per operation, up to 250 steps): relative errors of the state
#: below this are rounding, not discretisation
FLOAT32_FLOOR = 1e-5
#: fresh exact data draws scored like a sampler's samples: the band an exact sampler's pooled ratio falls in
NULL_REPLICATES = 20
#: target (b) is also tried with every spacing of these samplers at its 10-NFE budget
SWEEP_SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr", "quadratic")
DDPM_1000 = "DDPM-1000 (all T steps)"
#: the plot's y range stops here (Gaussian covariance error, mixture ratio); the tables hold every figure
PLOT_TOP = {"gaussian": 3.0, "mixture": 100.0}


# ---------------------------------------------------------------------------------------------- samplers
@dataclass(frozen=True)
class SamplerSpec:
    """One leaderboard entry: a label and a factory that builds the sampler for an NFE budget."""

    label: str
    factory: Callable[[int], Sampler]
    #: a schedule fitted to the oracle itself (GITS, ``ddpm.samplers.fitting``): the sampler on that list
    fitted: Callable[[list], Sampler] | None = None

    def build(self, budget: int, oracle: Any, diffusion: GaussianDiffusion) -> Sampler:
        """The sampler for ``budget``; a fitted spec first fits ``budget`` timesteps to ``oracle``."""
        if self.fitted is None:
            return self.factory(budget)
        dim = int(oracle.means.shape[-1])
        # candidates: at least twice the budget (250 NFE: every other of 500 logsnr points)
        grid = min(diffusion.num_timesteps, max(GRID_STEPS, 2 * budget))
        schedule = fit_timesteps(
            oracle,
            diffusion,
            budget,
            (FIT_N, dim),
            grid_steps=grid,
            generator=torch.Generator().manual_seed(0),
        )
        return self.fitted(list(schedule))

    @property
    def order(self) -> int:
        """The order of accuracy the method predicts: the sampler's own ``convergence_order``."""
        return self.factory(20).convergence_order


#: the deterministic methods that take any spacing: label -> factory(nfe, spacing)
METHODS: dict[str, Callable[[int, str], Sampler]] = {
    "DDIM (eta=0)": lambda n, sp: DDIMSampler(n, eta=0.0, spacing=sp),
    "DPM-Solver++ 1": lambda n, sp: DPMSolverSampler(n, order=1, spacing=sp),
    "DPM-Solver++ 2M": lambda n, sp: DPMSolverSampler(n, order=2, spacing=sp),
    "DPM-Solver++ 3M": lambda n, sp: DPMSolverSampler(n, order=3, spacing=sp),
    "UniPC-bh2 p=2": lambda n, sp: UniPCSampler(n, order=2, spacing=sp),
    "UniPC-bh2 p=3": lambda n, sp: UniPCSampler(n, order=3, spacing=sp),
    # B(h) = h: the UniPC paper's choice for unconditional sampling at very few steps (sec. 3.3)
    "UniPC-bh1 p=1": lambda n, sp: UniPCSampler(n, order=1, spacing=sp, solver_type="bh1"),
    "UniPC-bh1 p=2": lambda n, sp: UniPCSampler(n, order=2, spacing=sp, solver_type="bh1"),
}
#: the methods the leaderboard runs on linspace at every budget (the others appear on chosen grids and in the
#: 10-NFE sweep of target (b))
LINSPACE_METHODS = (
    "DDIM (eta=0)",
    "DPM-Solver++ 1",
    "DPM-Solver++ 2M",
    "DPM-Solver++ 3M",
    "UniPC-bh2 p=2",
    "UniPC-bh2 p=3",
)


def on_grid(method: str, spacing: str = "linspace") -> SamplerSpec:
    """``METHODS[method]`` on ``spacing``, labelled ``"<method>, <spacing>"`` (linspace: the plain label)."""
    make = METHODS[method]
    label = method if spacing == "linspace" else f"{method}, {spacing}"
    return SamplerSpec(label, lambda n: make(n, spacing))


def sampler_specs() -> list[SamplerSpec]:
    """The samplers ranked, the solvers' spacing variants included (DDPM-1000 is added separately)."""
    return [
        SamplerSpec("DDPM (ancestral, linspace)", lambda n: DDPMSampler(n, spacing="linspace")),
        *(on_grid(method) for method in LINSPACE_METHODS),
        # EDM Algorithm 1: N noise levels cost 2N - 1 evaluations, so N = (budget + 1) // 2
        SamplerSpec("Heun (EDM, karras)", lambda n: HeunSampler((n + 1) // 2, spacing="karras")),
        on_grid("DPM-Solver++ 2M", "logsnr"),
        on_grid("DPM-Solver++ 2M", "karras"),
        # the solvers on logsnr: uniform steps in lambda, so every step's h shrinks as 1 / NFE (target (c))
        on_grid("DPM-Solver++ 3M", "logsnr"),
        on_grid("UniPC-bh2 p=2", "logsnr"),
        on_grid("UniPC-bh2 p=2", "quadratic"),
        on_grid("UniPC-bh2 p=3", "logsnr"),
        on_grid("UniPC-bh2 p=3", "karras"),
        on_grid("UniPC-bh1 p=1", "logsnr"),
        *fitted_specs(),
    ]


#: the teacher batch of a fitted schedule (the exact denoiser: a small batch fixes the cost's mean)
FIT_N = 512


def fitted_specs() -> list[SamplerSpec]:
    """Schedules fitted to each oracle with its exact denoiser (``ddpm-eval --fit-steps`` on a run)."""
    return [
        SamplerSpec("DDIM (eta=0), fitted", lambda n: DDIMSampler(n), lambda ts: DDIMSampler(timesteps=ts)),
        SamplerSpec(
            "DPM-Solver++ 2M, fitted",
            lambda n: DPMSolverSampler(n, order=2),
            lambda ts: DPMSolverSampler(order=2, timesteps=ts),
        ),
        SamplerSpec(
            "UniPC-bh2 p=2, fitted",
            lambda n: UniPCSampler(n, order=2),
            lambda ts: UniPCSampler(order=2, timesteps=ts),
        ),
        SamplerSpec(
            "UniPC-bh2 p=3, fitted",
            lambda n: UniPCSampler(n, order=3),
            lambda ts: UniPCSampler(order=3, timesteps=ts),
        ),
    ]


def sweep_specs() -> list[SamplerSpec]:
    """DDIM and the multistep solvers with every spacing: the candidates for target (b) at 10 NFE."""
    return [
        on_grid(method, spacing)
        for method in METHODS
        if method != "DPM-Solver++ 1"  # it is DDIM (order 1), already swept
        for spacing in SWEEP_SPACINGS
    ]


def make_diffusion(schedule: str) -> GaussianDiffusion:
    """The forward process of the leaderboard: ``schedule`` with T = 1000, eps objective, no clipping."""
    # no clipping: clipping x0-hat would make the deterministic samplers non-affine
    return GaussianDiffusion(make_beta_schedule(schedule, T), objective="eps", clip_denoised=False)


def gaussian_data() -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, Sigma) of the Gaussian oracle, float64."""
    return torch.tensor(GAUSSIAN_MU, dtype=torch.float64), torch.tensor(GAUSSIAN_SIGMA, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- mixtures
def make_mixture(name: str, diffusion: GaussianDiffusion) -> GaussianMixtureOracle:
    """The mixture oracle called ``name`` (``eight_gaussians`` or ``anisotropic``)."""
    return getattr(GaussianMixtureOracle, name)(diffusion)


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class Row:
    """One leaderboard cell: a sampler at one NFE budget on one oracle and schedule.

    ``error`` is the headline figure: the covariance error (Gaussian) or the energy distance / floor pooled
    over seeds (mixtures); ``metrics`` holds the rest (see ``leaderboard``).
    """

    oracle: str
    schedule: str
    sampler: str
    order: int
    budget: int
    nfe: int
    error: float
    metrics: dict[str, Any] = field(default_factory=dict)


def _gaussian_rows(
    schedule: str, specs: Sequence[SamplerSpec], budgets: Sequence[int], mc_n: int, bar: tqdm
) -> list[Row]:
    diffusion = make_diffusion(schedule)
    mu, sigma = gaussian_data()
    floor = final_step_error(diffusion, sigma, 0)  # the jump from t = 0: no sampler ending there beats it
    oracle = GaussianMixtureOracle(diffusion, mu[None], sigma[None])
    runs = [(s.label, s.order, b, s.build(b, oracle, diffusion)) for s in specs for b in budgets]
    ddpm = DDPMSampler(None)
    runs.append((DDPM_1000, ddpm.convergence_order, T, ddpm))
    rows = []
    for label, order, budget, sampler in runs:
        bar.set_postfix_str(f"gaussian {schedule} {label} {budget}")
        r = covariance_error(sampler, diffusion, mu, sigma, mc_n=mc_n, seed=0)
        metrics = {k: v for k, v in vars(r).items() if k not in ("cov_error", "nfe")}
        rows.append(
            Row("gaussian", schedule, label, order, budget, r.nfe, r.cov_error, {**metrics, "floor": floor})
        )
        bar.update()
    return rows


def _mixture_rows(
    name: str,
    schedule: str,
    specs: Sequence[SamplerSpec],
    budgets: Sequence[int],
    n: int,
    seeds: Sequence[int],
    bar: tqdm,
    sweep: Sequence[SamplerSpec] = (),
) -> list[Row]:
    diffusion = make_diffusion(schedule)
    oracle = make_mixture(name, diffusion)
    runs = [(s.label, s.order, b, s.build(b, oracle, diffusion), False) for s in specs for b in budgets]
    ddpm = DDPMSampler(None)
    runs.append((DDPM_1000, ddpm.convergence_order, T, ddpm, False))
    have = {(label, b) for label, _, b, _, _ in runs}
    runs += [
        (s.label, s.order, MIX_FAST_BUDGET, s.factory(MIX_FAST_BUDGET), True)
        for s in sweep
        if (s.label, MIX_FAST_BUDGET) not in have
    ]
    per_seed: dict[int, list[MixtureResult]] = {i: [] for i in range(len(runs))}
    draws = []
    for seed in seeds:
        data = data_draws(oracle, n, seed)
        draws.append(data)
        for i, (label, _, budget, sampler, _) in enumerate(runs):
            bar.set_postfix_str(f"{name} {schedule} seed {seed} {label} {budget}")
            per_seed[i].append(mixture_quality(sampler, oracle, n, seed, data))
            bar.update()
    null = null_band(oracle, draws, NULL_REPLICATES, seed=2_000_000 + seeds[0])
    rows = []
    for i, (label, order, budget, _, swept) in enumerate(runs):
        results = per_seed[i]
        ratios = [r.ratio for r in results]
        # pooled over seeds: mean energy / mean floor (a single floor is a noisy, heavy-tailed denominator)
        pooled = sum(r.energy for r in results) / sum(r.floor for r in results)
        rows.append(
            Row(
                name,
                schedule,
                label,
                order,
                budget,
                results[0].nfe,
                pooled,
                {
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "ratios": ratios,
                    "energies": [r.energy for r in results],
                    "floors": [r.floor for r in results],
                    "tv": statistics.fmean(r.tv for r in results),
                    "tv_max": max(r.tv for r in results),
                    "tv_floor": statistics.fmean(d.tv for d in draws),
                    "null_median": statistics.median(null),
                    # the 19th of 20 sorted: about the 95th percentile
                    "null_q95": null[math.ceil(0.95 * len(null)) - 1],
                    "seeds": list(seeds),
                    "n": n,
                    "sweep": swept,
                },
            )
        )
    return rows


def leaderboard(
    schedules: Sequence[str] = SCHEDULES,
    budgets: Sequence[int] = BUDGETS,
    n: int = 2000,
    seeds: Sequence[int] = SEEDS,
    mc_n: int = 20_000,
    mixtures: Sequence[str] = MIXTURES,
    specs: Sequence[SamplerSpec] | None = None,
    progress: bool = True,
    sweep_b: bool = True,
) -> list[Row]:
    """Every sampler at every budget on the Gaussian and mixture oracles, for each schedule.

    Gaussian rows carry ``mean_error``, ``method``, ``cov_error_se`` (Monte Carlo), ``exact_cov_error``,
    ``solver_error``, ``final_step_error``, ``t_min`` and ``floor`` (the final-step error from t = 0);
    mixture rows ``ratio_min`` / ``ratio_max`` (per seed), ``tv`` (mean over seeds), ``tv_max``,
    ``tv_floor`` (a data draw's), ``null_median`` / ``null_q95`` (the band exact samples fall in), the
    per-seed ``energies``, ``floors`` and ``ratios``, and ``sweep`` (a spacing variant measured at 10 NFE
    only, for target (b); ``sweep_b=False`` leaves them out).
    """
    specs = list(specs if specs is not None else sampler_specs())
    # target (b)'s spacing sweep, when its two budgets are measured (``sweep`` rows, budget 10 only)
    labels = {s.label for s in specs}
    sweep = [s for s in sweep_specs() if s.label not in labels] if sweep_b else []
    if not {MIX_FAST_BUDGET, MIX_DDIM_BUDGET} <= set(budgets):
        sweep = []
    per_combo = len(specs) * len(budgets) + 1
    total = len(schedules) * (per_combo + len(mixtures) * len(seeds) * (per_combo + len(sweep)))
    rows: list[Row] = []
    with tqdm(total=total, desc="leaderboard", disable=not progress, file=sys.stderr) as bar:
        for schedule in schedules:
            rows += _gaussian_rows(schedule, specs, budgets, mc_n, bar)
        for name in mixtures:
            for schedule in schedules:
                rows += _mixture_rows(name, schedule, specs, budgets, n, seeds, bar, sweep)
    return rows


# ---------------------------------------------------------------------------------------------- EDM's process
#: EDM's Algorithm 2 with the churn of its ImageNet-64 setting (Karras et al. 2022, table 5)
EDM_CHURN = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}
#: the multistep solvers compared on both processes, on the karras grid
EDM_SOLVERS = ("DDIM (eta=0)", "DPM-Solver++ 2M", "UniPC-bh2 p=3")
EDM_BEGIN, EDM_END = "<!-- BEGIN edm-process -->", "<!-- END edm-process -->"
EDM_HEUN = "EDM (Heun, churn 0)"
#: the slope of EDM's Heun is fitted from this NFE on (below it the error is not yet asymptotic)
EDM_SLOPE_FROM = 19
#: EDM's CIFAR-10 sampler: 18 levels, 35 evaluations (a budget the EDM section adds to the others)
EDM_PAPER_NFE = 35


def edm_specs() -> list[SamplerSpec]:
    """EDM's sampler (churn 0 and the paper's churn; N levels cost 2N - 1) and the solvers on karras."""
    return [
        SamplerSpec(EDM_HEUN, lambda n: EDMSampler(max(2, (n + 1) // 2))),
        SamplerSpec("EDM (Heun, churn 40)", lambda n: EDMSampler(max(2, (n + 1) // 2), **EDM_CHURN)),
        *(on_grid(method, "karras") for method in EDM_SOLVERS),
    ]


def edm_rows(budgets: Sequence[int], mc_n: int, progress: bool = True) -> list[Row]:
    """The Gaussian oracle on EDM's process (x = x0 + sigma n, sigma in [0.002, 80]) and, for the solvers,
    on the linear VP chain at the same budgets: ``schedule`` is ``edm`` or ``linear``."""
    mu, sigma = gaussian_data()
    processes: dict[str, Process] = {"edm": EDMProcess(), "linear": make_diffusion("linear")}
    runs = [
        (name, spec, budget)
        for spec in edm_specs()
        for name in processes
        if name == "edm" or spec.label.endswith("karras")
        for budget in sorted({*budgets, EDM_PAPER_NFE})
    ]
    rows = []
    for name, spec, budget in tqdm(runs, desc="EDM's process", disable=not progress, file=sys.stderr):
        r = covariance_error(spec.factory(budget), processes[name], mu, sigma, mc_n=mc_n, seed=0)
        metrics = {k: v for k, v in vars(r).items() if k not in ("cov_error", "nfe")}
        rows.append(Row("gaussian", name, spec.label, spec.order, budget, r.nfe, r.cov_error, metrics))
    return rows


def render_edm_section(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The report's section on EDM's process, between :data:`EDM_BEGIN` and :data:`EDM_END`."""
    labels = list(dict.fromkeys(r.sampler for r in rows))
    budgets = sorted({r.budget for r in rows})
    out = [
        EDM_BEGIN,
        "## On EDM's process",
        "",
        "The Gaussian oracle on EDM's process (`ddpm.edm.EDMProcess`: x = x0 + sigma n, sigma from 80",
        "down to 0.002, then 0; the oracle is the exact denoiser D(x; sigma) = mu + S (S + sigma^2 I)^-1",
        "(x - mu)), against the same solvers on the linear VP chain (T = 1000) with the same karras",
        "spacing. The covariance error of the samples (exact for the deterministic samplers, from their",
        f"affine map; Monte Carlo on {meta['mc_n']:,} draws for the churned one), at the NFE each budget",
        "gives (EDM's sampler: N levels, 2N - 1 evaluations).",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}, {meta['wall_s']:.0f} s).",
        "",
        "| sampler | process | " + " | ".join(f"budget {b}" for b in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    for label in labels:
        for process in ("edm", "linear"):
            mine = {r.budget: r for r in rows if r.sampler == label and r.schedule == process}
            if mine:
                cells = [f"{_pct(mine[b].error)} ({mine[b].nfe})" if b in mine else "" for b in budgets]
                name = "EDM" if process == "edm" else "VP linear"
                out.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    out += ["", "Cells: covariance error (NFE)."]
    heun = [(r.nfe, r.error) for r in rows if r.sampler == EDM_HEUN and r.schedule == "edm"]
    fit = fit_slope([(n, e) for n, e in heun if n >= EDM_SLOPE_FROM], floor=0.0)
    if fit is not None:
        slope = fit.slope
        verdict = "second order, as predicted" if -2.5 <= slope <= -1.5 else "not at its predicted order"
        out.append(
            f"- EDM's Heun without churn falls as NFE^{slope:.2f} from {EDM_SLOPE_FROM} NFE on (its order "
            f"predicts -2): {verdict}."
        )
    for label in labels:
        vp = {r.budget: r.error for r in rows if r.sampler == label and r.schedule == "linear"}
        ratios = [
            r.error / vp[r.budget]
            for r in rows
            if r.sampler == label and r.schedule == "edm" and vp.get(r.budget, 0) > 0
        ]
        if ratios:
            within = "within a decade everywhere" if all(0.1 <= x <= 10 for x in ratios) else "not always"
            out.append(
                f"- {label}: the error on EDM's process is {min(ratios):.2g}x to {max(ratios):.2g}x the VP "
                f"chain's at equal budgets ({within})."
            )
    at_35 = [r for r in rows if r.schedule == "edm" and r.budget == EDM_PAPER_NFE]
    heun_35 = next((r for r in at_35 if r.sampler == EDM_HEUN), None)
    if heun_35 is not None:
        best = min(at_35, key=figure)
        out.append(
            f"- At EDM's CIFAR-10 budget ({EDM_PAPER_NFE} NFE, 18 levels): {EDM_HEUN} {_pct(heun_35.error)}; "
            f"the best on the same levels, {best.sampler}, {_pct(best.error)} at {best.nfe} NFE."
        )
    out.append(EDM_END)
    return "\n".join(out) + "\n"


def splice_edm_section(report: str, section: str) -> str:
    """``report`` with its EDM section replaced by ``section`` (appended when it has none)."""
    return splice_section(report, section, EDM_BEGIN, EDM_END)


# ---------------------------------------------------------------------------------------------- the flow
FLOW_BEGIN, FLOW_END = "<!-- BEGIN flow-path -->", "<!-- END flow-path -->"
#: the samplers on the flow's straight path, uniform in t (linspace): label -> (factory for an NFE budget,
#: the order the error should fall with)
FLOW_SAMPLERS: dict[str, tuple[Callable[[int], Sampler], int]] = {
    "Euler (sampler=euler)": (lambda n: DDIMSampler(n, eta=0.0, spacing="linspace"), 1),
    "Heun in t (sampler=heun)": (lambda n: HeunSampler(max(2, (n + 1) // 2), spacing="linspace"), 2),
    "DPM-Solver++ 2M": (lambda n: DPMSolverSampler(n, order=2, spacing="linspace"), 2),
    "UniPC-bh2 p=3": (lambda n: UniPCSampler(n, order=3, spacing="linspace"), 4),
}
#: the small budgets a flow is sampled at as well (1 and 2 Euler steps)
FLOW_FEW = (1, 2, 4)


def flow_rows(
    budgets: Sequence[int], n: int, seeds: Sequence[int], mc_n: int, progress: bool = True
) -> list[Row]:
    """The Gaussian oracle (covariance error) and the eight-Gaussians mixture (energy over the floor) on the
    flow's straight path (``ddpm.flow.FlowProcess``), every sampler on a grid uniform in t."""
    process = FlowProcess()
    mu, sigma = gaussian_data()
    oracle = GaussianMixtureOracle.eight_gaussians(process)
    draws = {seed: data_draws(oracle, n, seed) for seed in seeds}
    runs = [
        (label, budget)
        for label in FLOW_SAMPLERS
        for budget in sorted({*FLOW_FEW, *budgets})
        if not (label.startswith("Heun") and budget < 3)
    ]
    rows = []
    for label, budget in tqdm(runs, desc="the flow's path", disable=not progress, file=sys.stderr):
        make, order = FLOW_SAMPLERS[label]
        r = covariance_error(make(budget), process, mu, sigma, mc_n=mc_n, seed=0)
        rows.append(Row("gaussian", "flow", label, order, budget, r.nfe, r.cov_error, {}))
        results = [mixture_quality(make(budget), oracle, n, seed, draws[seed]) for seed in seeds]
        pooled = sum(x.energy for x in results) / sum(x.floor for x in results)
        rows.append(Row("eight_gaussians", "flow", label, order, budget, r.nfe, pooled, {}))
    return rows


def render_flow_section(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The report's section on the flow's straight path, between :data:`FLOW_BEGIN` and :data:`FLOW_END`."""
    budgets = sorted({r.budget for r in rows})
    out = [
        FLOW_BEGIN,
        "## On the flow's straight path",
        "",
        "Flow matching's process (`ddpm.flow.FlowProcess`: x_t = (1 - t) x0 + t n, the network the exact",
        "velocity E[n - x0 | x_t] of `ddpm.oracle`), every sampler on times uniform in t from t = 1 (the",
        "flow's usual grid; Euler is DDIM with eta = 0, Heun steps in t). The Gaussian oracle's covariance",
        "error (exact, from the affine map) and the eight-Gaussians mixture's energy distance over the",
        f"data-vs-data floor (pooled over seeds {list(meta['seeds'])}, n = {meta['n']:,}), at the NFE each",
        "budget gives.",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}, {meta['wall_s']:.0f} s).",
        "",
        "| sampler | oracle | " + " | ".join(f"budget {b}" for b in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    for label in FLOW_SAMPLERS:
        for oracle in ("gaussian", "eight_gaussians"):
            mine = {r.budget: r for r in rows if r.sampler == label and r.oracle == oracle}
            show = _pct if oracle == "gaussian" else (lambda e: f"{e:.3g}x")
            cells = [f"{show(mine[b].error)} ({mine[b].nfe})" if b in mine else "" for b in budgets]
            out.append(f"| {label} | {oracle} | " + " | ".join(cells) + " |")
    out += ["", "Cells: covariance error or energy / floor (NFE)."]
    for label, (_, order) in FLOW_SAMPLERS.items():
        points = [
            (r.nfe, r.error) for r in rows if r.sampler == label and r.oracle == "gaussian" and r.nfe >= 8
        ]
        fit = fit_slope(points, floor=0.0)
        if fit is not None:
            verdict = (
                "as predicted" if -order - 0.5 <= fit.slope <= -order + 0.5 else "not at its predicted order"
            )
            out.append(
                f"- {label}: the covariance error falls as NFE^{fit.slope:.2f} from 8 NFE on (its order "
                f"predicts -{order}): {verdict}."
            )
    sigma = gaussian_data()[1]
    floors = {n: final_step_error(FlowProcess(), sigma, 1 / n) for n in (10, 50)}
    out.append(
        f"- On this grid the last step lands on the data from t = 1/N with the data prediction there, whose "
        f"covariance error alone is {_pct(floors[10])} at N = 10 and {_pct(floors[50])} at N = 50 (as N^-2): "
        "a floor under every solver's last step, which keeps the multistep solvers near order 2 here."
    )
    out.append(FLOW_END)
    return "\n".join(out) + "\n"


def splice_section(report: str, section: str, begin: str, end: str) -> str:
    """``report`` with the section between ``begin`` and ``end`` replaced by ``section`` (appended when it
    has none)."""
    if begin in report and end in report:
        head, rest = report.split(begin, 1)
        return head + section.rstrip("\n") + rest.split(end, 1)[1]
    return report.rstrip("\n") + "\n\n" + section


# ---------------------------------------------------------------------------------------------- analysis
def figure(r: Row) -> float:
    """The figure comparisons and fits use: DDPM's exact propagated error on the Gaussian (its Monte-Carlo
    estimate cannot fall below the sampling noise), the headline ``error`` otherwise."""
    exact = r.metrics.get("exact_cov_error")
    return float(exact) if exact is not None else r.error


def _select(rows: Sequence[Row], **match: Any) -> list[Row]:
    return [r for r in rows if all(getattr(r, k) == v for k, v in match.items())]


def _labels(rows: Sequence[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.setdefault(r.sampler, None)
    return list(seen)


def _slope_points(rows: Sequence[Row], key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        value = figure(r) if key == "error" else r.metrics.get(key)
        if value is not None and r.sampler != DDPM_1000:
            out.append((r.nfe, float(value)))
    return out


@dataclass
class SlopeRow:
    """A sampler's fitted slopes on one schedule of the Gaussian oracle."""

    schedule: str
    sampler: str
    order: int
    end_to_end: SlopeFit | None
    solver: SlopeFit | None

    @property
    def passed(self) -> bool:
        """The end-to-end slope is at least ``order - SLOPE_TOLERANCE`` steep."""
        return self.end_to_end is not None and -self.end_to_end.slope >= self.order - SLOPE_TOLERANCE


def gaussian_slopes(rows: Sequence[Row]) -> list[SlopeRow]:
    """Per schedule and sampler: the slope of the covariance error (DDPM: its exact propagated figure; the
    Monte-Carlo one sits on its sampling noise) and of the solver-only error before the final jump."""
    out = []
    for schedule in _schedules(rows, "gaussian"):
        sched_rows = _select(rows, oracle="gaussian", schedule=schedule)
        floor = sched_rows[0].metrics["floor"]
        for label in _labels(sched_rows):
            if label == DDPM_1000:
                continue
            mine = _select(sched_rows, sampler=label)
            # each point above its own final jump's floor: the grid's last timestep moves with the NFE
            points = [
                (r.nfe, figure(r))
                for r in mine
                if figure(r) > FIT_FLOOR_FACTOR * (r.metrics.get("final_step_error") or floor)
            ]
            end = fit_slope(points, floor)
            solver = fit_slope(_slope_points(mine, "solver_error"), FLOAT32_FLOOR)
            out.append(SlopeRow(schedule, label, mine[0].order, end, solver))
    return out


def _schedules(rows: Sequence[Row], oracle: str) -> list[str]:
    return list(dict.fromkeys(r.schedule for r in rows if r.oracle == oracle))


@dataclass
class Target:
    """One of the issue's targets: what it asks, the measured figure, and whether it is met."""

    name: str
    text: str
    passed: bool | None  # None: not measured in this run


def target_covariance(rows: Sequence[Row]) -> Target:
    """(a) Gaussian, linear: some sampler reaches covariance error <= 2% at <= 20 NFE."""
    name = (
        f"(a) Gaussian oracle, linear T={T}: covariance error <= {COV_TARGET:.0%} at <= {COV_TARGET_NFE} NFE"
    )
    cands = [r for r in _select(rows, oracle="gaussian", schedule="linear") if r.nfe <= COV_TARGET_NFE]
    if not cands:
        return Target(name, "not measured (no linear-schedule Gaussian rows at <= 20 NFE)", None)
    best = min(cands, key=figure)
    hits = sorted((r for r in cands if figure(r) <= COV_TARGET), key=lambda r: (r.nfe, figure(r)))
    ddim = [
        r
        for r in _select(rows, oracle="gaussian", schedule="linear", sampler="DDIM (eta=0)")
        if r.error <= COV_TARGET
    ]
    text = f"best at <= {COV_TARGET_NFE} NFE: {best.sampler} at {best.nfe} NFE, {_pct(figure(best))}"
    if hits:
        h = hits[0]
        text += f"; cheapest under {COV_TARGET:.0%}: {h.sampler} at {h.nfe} NFE ({_pct(figure(h))})"
    if ddim:
        first = min(ddim, key=lambda r: r.nfe)
        text += f"; DDIM first gets under {COV_TARGET:.0%} at {first.nfe} NFE ({_pct(first.error)})"
    else:
        text += f"; DDIM does not get under {COV_TARGET:.0%} within the budgets measured"
    return Target(name, text, bool(hits))


def target_mixture(rows: Sequence[Row]) -> Target:
    """(b) Mixtures: the best sampler at a budget of 10 NFE (the leaderboard's and the spacing sweep's) beats
    DDIM at 50 NFE on the pooled energy ratio, on every mixture and schedule measured."""
    name = (
        f"(b) mixture oracles: the best sampler at {MIX_FAST_BUDGET} NFE beats DDIM at {MIX_DDIM_BUDGET} "
        "NFE on the energy-distance ratio"
    )
    parts, verdicts = [], []
    for oracle in MIXTURES:
        for schedule in _schedules(rows, oracle):
            mine = _select(rows, oracle=oracle, schedule=schedule)
            fast = [r for r in mine if r.budget == MIX_FAST_BUDGET and r.sampler != DDPM_1000]
            ddim = [r for r in mine if r.sampler == "DDIM (eta=0)" and r.budget == MIX_DDIM_BUDGET]
            if not fast or not ddim:
                continue
            best, ref = min(fast, key=lambda r: r.error), ddim[0]
            wins = sum(a < b for a, b in zip(best.metrics["energies"], ref.metrics["energies"], strict=True))
            ok = best.error < ref.error
            verdicts.append(ok)
            parts.append(
                f"{ORACLE_TITLES[oracle]}, {schedule}: {best.sampler} at {best.nfe} NFE {best.error:.2f}x vs "
                f"DDIM-{ref.nfe} {ref.error:.2f}x the floor (lower on {wins}/{len(ref.metrics['energies'])} "
                f"seeds) {'PASS' if ok else 'FAIL'}"
            )
    if not verdicts:
        return Target(name, f"not measured (needs budgets {MIX_FAST_BUDGET} and {MIX_DDIM_BUDGET})", None)
    return Target(name, "; ".join(parts), all(verdicts))


def method_and_grid(label: str) -> tuple[str, str]:
    """A leaderboard label split into its method and its timestep grid: ``"UniPC-bh2 p=3, logsnr"`` ->
    ``("UniPC-bh2 p=3", "logsnr")``; Heun is on karras, a label without a grid on linspace."""
    if label.startswith("Heun"):
        return "Heun (EDM)", "karras"
    base, _, grid = label.rpartition(", ")
    return (base, grid) if grid in SWEEP_SPACINGS else (label, "linspace")


def last_interval(schedule: str, grid: str, nfe: int) -> float:
    """h = lambda(t_last) - lambda(t_before) of a multistep solver's last step before the final jump
    (lambda = log(alpha / sigma)): on linspace and quadratic it does not shrink as the NFE grows."""
    diffusion = make_diffusion(schedule)
    before, last = DPMSolverSampler(nfe, order=2, spacing=grid).timesteps(diffusion)[-2:]
    (a1, s1), (a0, s0) = alpha_sigma(diffusion, last), alpha_sigma(diffusion, before)
    return math.log(a1 / s1) - math.log(a0 / s0)


def target_orders(slopes: Sequence[SlopeRow]) -> Target:
    """(c) Every method's Gaussian covariance error falls at (at least) the rate its order predicts, on each
    schedule, on a grid whose steps all shrink as the NFE grows; the rows short of it are named."""
    name = "(c) every sampler's error falls with NFE at the rate its order predicts"
    if not slopes:
        return Target(name, "not measured", None)
    # a fitted schedule is another grid at every budget (fitted to it), not one grid refined: no order to
    # fall at, so (c) leaves it out (its errors are in the tables)
    slopes = [s for s in slopes if not s.sampler.endswith("fitted")]
    methods: dict[tuple[str, str], list[SlopeRow]] = {}
    for s in slopes:
        methods.setdefault((method_and_grid(s.sampler)[0], s.schedule), []).append(s)
    reached, missing = [], []
    for (method, schedule), group in methods.items():
        fits = [(s, s.end_to_end) for s in group if s.passed and s.end_to_end is not None]
        if not fits:
            missing.append(f"{method} ({schedule})")
            continue
        # the passing fit over the most points (then the steepest): a two-point fit is the least sure
        best, fit = min(fits, key=lambda pair: (-pair[1].points, pair[1].slope))
        grid = method_and_grid(best.sampler)[1]
        reached.append(f"{method} ({schedule}, order {best.order}): {fit.slope:.2f} on {grid}")
    text = (
        f"{len(reached)}/{len(methods)} (method, schedule) pairs fit a slope within {SLOPE_TOLERANCE} of "
        "-order or steeper on at least one grid: " + "; ".join(reached)
    )
    if missing:
        text += "; never: " + ", ".join(missing)
    short = [s for s in slopes if not s.passed]
    if short:
        text += (
            ". Short of their order on their grid (the last interval of linspace and quadratic shrinks far "
            "slower than 1 / NFE in log-SNR, see the slopes section): "
            + ", ".join(
                f"{s.sampler} ({s.schedule}, order {s.order}: "
                f"{'no fit' if s.end_to_end is None else f'{s.end_to_end.slope:.2f}'})"
                for s in short
            )
        )
    return Target(name, text, not missing)


def cheapest_at_ddpm1000(rows: Sequence[Row], oracle: str, schedule: str) -> tuple[Row | None, float]:
    """The sampler and budget with the fewest NFE whose error is at DDPM-1000's level at that budget and at
    every larger one; and that level. Gaussian: DDPM-1000's exact covariance error. Mixtures: the 95th
    percentile of the pooled ratio exact samples reach (``null_q95``): one DDPM-1000 run is a single draw
    from that band (its Gaussian error is far below what n samples resolve), so its own pooled figure would
    set a level by chance."""
    mine = [r for r in _select(rows, oracle=oracle, schedule=schedule) if not r.metrics.get("sweep")]
    ref = _select(mine, sampler=DDPM_1000)
    if not ref:
        return None, math.nan
    level = figure(ref[0]) if oracle == "gaussian" else ref[0].metrics["null_q95"]
    best: Row | None = None
    for label in _labels(mine):
        if label == DDPM_1000:
            continue
        runs = sorted(_select(mine, sampler=label), key=lambda r: r.nfe)
        for i, r in enumerate(runs):
            if all(figure(s) <= level for s in runs[i:]):
                if best is None or (r.nfe, figure(r)) < (best.nfe, figure(best)):
                    best = r
                break
    return best, level


# ---------------------------------------------------------------------------------------------- report
def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _cell(r: Row) -> str:
    if r.oracle == "gaussian":
        text = _pct(r.error)
        if r.metrics.get("method") == "monte carlo":
            text += f" ± {_pct(r.metrics['cov_error_se'])}"
            if r.metrics.get("exact_cov_error") is not None:
                text += f" (exact {_pct(r.metrics['exact_cov_error'])})"
    else:
        text = f"{r.error:.2f} ({r.metrics['ratio_min']:.2f}–{r.metrics['ratio_max']:.2f})"
    return text + (f" [{r.nfe}]" if r.nfe != r.budget else "")


def _table(rows: Sequence[Row], cell: Callable[[Row], str]) -> list[str]:
    budgets = sorted({r.budget for r in rows})
    lines = [
        "| sampler (order) | " + " | ".join(str(b) for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for label in _labels(rows):
        mine = {r.budget: r for r in _select(rows, sampler=label)}
        order = next(iter(mine.values())).order
        lines.append(
            f"| {label} ({order}) | " + " | ".join(cell(mine[b]) if b in mine else "" for b in budgets) + " |"
        )
    return lines


def _slope_diagnosis(rows: Sequence[Row], slopes: Sequence[SlopeRow]) -> list[str]:
    """For every sampler short of its order: its error at its largest budget beside the final-step error
    from its last timestep and its solver-only error, which say which of the two holds it back."""
    out = []
    for s in slopes:
        if s.passed:
            continue
        mine = sorted(
            _select(rows, oracle="gaussian", schedule=s.schedule, sampler=s.sampler), key=lambda r: r.nfe
        )
        last = mine[-1]
        m = last.metrics
        if m.get("solver_error") is None:
            out.append(f"- {s.sampler} ({s.schedule}): {_pct(figure(last))} at {last.nfe} NFE.")
            continue
        out.append(
            f"- {s.sampler} ({s.schedule}), at {last.nfe} NFE: error {_pct(figure(last))}; an exact solver "
            f"stopping at its last timestep t = {m['t_min']:.4g} would still have "
            f"{_pct(m['final_step_error'])} after the final jump; its own solver-only error there is "
            f"{_pct(m['solver_error'])}."
        )
    if out:
        grids = sorted({method_and_grid(s.sampler)[1] for s in slopes if not s.passed} - {"logsnr", "karras"})
        widths = [
            f"{grid}, {schedule}: h = {last_interval(schedule, grid, 10):.2f} at 10 NFE, "
            f"{last_interval(schedule, grid, 250):.2f} at 250"
            for grid in grids
            for schedule in dict.fromkeys(s.schedule for s in slopes)
        ]
        out = [
            "Samplers short of their order. Where the error tracks the final-step error of the last timestep "
            "while the solver-only error falls at (or beyond) the predicted order, the shortfall is the "
            "timestep grid's last point (and the final jump from it), not the solver's steps:",
            "",
            *out,
            "",
        ]
        if widths:
            out += [
                "A multistep solver's order is a statement about steps that shrink: its local error is "
                "O(h^(k+1)) in h, the step in lambda = log(alpha / sigma). On logsnr every step is "
                "(lambda(0) - lambda(T - 1)) / NFE until that is one timestep (about 25 NFE on linear, "
                "where the steps left sit next to t = 0 and their error is below the floor). On the grids "
                "above, the last step before the final jump shrinks far slower than 1 / NFE, if at all ("
                + "; ".join(widths)
                + "), at t far enough from 0 for its error to dominate, so the end-to-end slope there "
                "measures that step, not the solver; the same solvers on logsnr reach their order.",
                "",
            ]
    heun = [r for r in rows if r.oracle == "gaussian" and r.sampler.startswith("Heun")]
    if heun:
        levels = []
        for schedule in dict.fromkeys(r.schedule for r in heun):
            a, sg = alpha_sigma(make_diffusion(schedule), T - 1)
            levels.append(f"{sg / a:.4g} ({schedule})")  # EDM table 1 (VP): sigma = sqrt((1 - abar) / abar)
        out += [
            "Heun (EDM) integrates in sigma = sqrt((1 - abar) / abar) from sigma_max = sigma(T - 1) = "
            + ", ".join(levels)
            + "; with few noise levels its first interval spans most of that range in one trapezoidal step.",
            "",
        ]
    return out


def _sweep_table(rows: Sequence[Row]) -> list[str]:
    """Target (b)'s evidence: every sampler measured at the 10-NFE budget, spacing variants included, beside
    DDIM at 50 NFE, per mixture and schedule."""
    combos = [(o, s) for o in MIXTURES for s in _schedules(rows, o)]
    fast = [r for r in rows if r.oracle in MIXTURES and r.budget == MIX_FAST_BUDGET]
    if not combos or not any(r.metrics.get("sweep") for r in fast):
        return []
    out = [
        f"Target (b) with every spacing: the pooled ratio of each sampler at the {MIX_FAST_BUDGET}-NFE "
        "budget (DDIM and the multistep solvers on every spacing; real NFE in brackets where it differs), "
        f"against DDIM at {MIX_DDIM_BUDGET} NFE:",
        "",
        "| sampler | " + " | ".join(f"{ORACLE_TITLES[o]}, {s}" for o, s in combos) + " |",
        "|---|" + "---|" * len(combos),
    ]
    for label in _labels(fast):
        cells = []
        for o, s in combos:
            r = [x for x in fast if x.oracle == o and x.schedule == s and x.sampler == label]
            cells.append(
                "" if not r else f"{r[0].error:.2f}" + (f" [{r[0].nfe}]" if r[0].nfe != r[0].budget else "")
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    ref = []
    for o, s in combos:
        r = [x for x in rows if x.oracle == o and x.schedule == s and x.sampler == "DDIM (eta=0)"]
        r = [x for x in r if x.budget == MIX_DDIM_BUDGET]
        ref.append(f"**{r[0].error:.2f}**" if r else "")
    out += [f"| DDIM (eta=0) at {MIX_DDIM_BUDGET} NFE | " + " | ".join(ref) + " |", ""]
    return out


def render_markdown(rows: Sequence[Row], meta: dict[str, Any] | None = None) -> str:
    """The report: how it was measured, a table per oracle and schedule, the fitted slopes, the issue's
    three targets with PASS/FAIL, and which sampler to use. ``meta``: command, date, machine, wall_s, cpu_s,
    plot (a file name), verify (``verify_affine`` results by label), n, seeds, mc_n."""
    meta = meta or {}
    every = list(rows)
    rows = [r for r in rows if not r.metrics.get("sweep")]  # the spacing sweep has its own table
    out = ["# Sampler leaderboard", ""]
    out += [
        f"- Command: `{meta.get('command', 'python scripts/sampler_leaderboard.py')}`",
        f"- Date: {meta.get('date', 'n/a')}; machine: {meta.get('machine', 'n/a')}; "
        f"wall time {meta.get('wall_s', math.nan):.0f} s (CPU time of the process "
        f"{meta.get('cpu_s', math.nan):.0f} s; the machine is shared, so wall time depends on its load)",
        f"- Oracles (`ddpm.oracle`, exact: no network is trained): Gaussian mu = {list(GAUSSIAN_MU)}, "
        f"Sigma = {[list(r) for r in GAUSSIAN_SIGMA]}; eight Gaussians; the anisotropic 3-component "
        f"mixture. Schedules: {', '.join(dict.fromkeys(r.schedule for r in rows))}, T = {T}, objective eps, "
        "no clipping.",
        "- NFE = network evaluations per sample, the sampler's own `nfe(diffusion)`. Columns are NFE "
        "budgets; `[k]` marks a cell whose real NFE k differs (Heun spends 2N - 1 for N = (budget + 1) // 2 "
        "noise levels; karras / logsnr / quadratic grids drop timesteps that round to the same integer).",
        "",
        "## How it is measured",
        "",
        "- **Gaussian**: relative covariance error ||C - Sigma||_F / ||Sigma||_F of the samples (mean error "
        "||m - mu||_2 below each table). The oracle's eps is affine in x_t and each deterministic step is "
        "linear in x_t and the network output, so a deterministic sampler is an affine map x_T -> A x_T + b: "
        "running it on x_T in {0, e_1, e_2} gives A and b, and C = A A^T, m = b exactly (x_T ~ N(0, I)), "
        "with no Monte-Carlo noise.",
    ]
    verify = meta.get("verify") or {}
    if verify:
        gaps = max(v["max_gap"] for v in verify.values())
        z = max(v["mc_vs_affine"] / v["mc_noise"] for v in verify.values())
        worst = max(
            abs(v["cov_error_mc"] - v["cov_error_affine"]) / v["cov_error_mc_se"] for v in verify.values()
        )
        nv = next(iter(verify.values()))["n"]
        out.append(
            f"  Checked on {nv:,} draws of x_T for every deterministic sampler at budget 20 (linear): the "
            f"samples equal A x_T + b within {gaps:.1e} (float32), ||C_mc - A A^T||_F is at most {z:.2f}x "
            f"its expected sampling noise, and the Monte-Carlo covariance error differs from the exact one "
            f"by at most {worst:.2f} bootstrap standard errors."
        )
        out.append("")
        out.append("  | sampler | affine error | Monte-Carlo error ± SE | largest gap to A x_T + b |")
        out.append("  |---|---|---|---|")
        for label, v in verify.items():
            out.append(
                f"  | {label} | {_pct(v['cov_error_affine'])} | {_pct(v['cov_error_mc'])} ± "
                f"{_pct(v['cov_error_mc_se'])} | {v['max_gap']:.1e} |"
            )
        out.append("")
    mc_n = meta.get("mc_n")
    out += [
        f"- **DDPM** is stochastic: Monte Carlo on {mc_n:,} samples (seed 0), ± a bootstrap standard error "
        f"({BOOTSTRAP_RESAMPLES} resamples). A covariance estimated from {mc_n:,} draws is itself off by "
        f"about {_pct(meta.get('mc_noise', math.nan))} of ||Sigma||_F (Wishart variance), so the Monte-Carlo "
        "figure cannot go below that; `exact` is DDPM's figure from the mean and covariance propagated "
        "through its own `step` (each step is x' = M x + c + G z), which the slopes and the comparisons use."
        if mc_n
        else "- **DDPM** is stochastic: Monte Carlo with a bootstrap standard error.",
        f"- **Mixtures**: energy distance to {meta.get('n', '?')} held-out data points divided by the "
        "data-vs-data floor (`ddpm.metrics`: the energy distance between two independent data draws of the "
        f"same size), pooled over seeds {meta.get('seeds', '?')} as sum of energies / sum of floors (one "
        "floor is a noisy, heavy-tailed denominator), with the per-seed range in brackets; 1.0 is as good as "
        "the sample size can show. Every sampler starts from the same x_T for a seed (paired comparisons), "
        "and the data draws are seeded apart from it (seed + 1,000,000). The ratio is noisy: below each "
        f"table, the band that exact samples show ({NULL_REPLICATES} fresh data draws per seed scored the "
        "same way against the same held-out sets); ratios inside it cannot be told from exact sampling at "
        "this n. Mode-weight error: total variation 0.5 sum_k |f_k - w_k| between the fraction of samples "
        "per component (`mode_weights`) and the weights, mean over seeds.",
        "",
    ]
    if meta.get("plot"):
        out += [
            f"![error vs NFE]({meta['plot']})",
            "",
            f"The plot's y axis stops at {_pct(PLOT_TOP['gaussian'])} (Gaussian) and "
            f"{PLOT_TOP['mixture']:g}x (mixtures); Heun's and a few few-step points lie above it (every "
            "figure is in the tables).",
            "",
        ]

    for oracle in ("gaussian", *MIXTURES):
        for schedule in _schedules(rows, oracle):
            mine = _select(rows, oracle=oracle, schedule=schedule)
            what = "covariance error" if oracle == "gaussian" else "energy distance / floor (per-seed range)"
            out += [f"## {ORACLE_TITLES[oracle]}, {schedule} schedule: {what}", ""]
            out += _table(mine, _cell)
            out.append("")
            if oracle == "gaussian":
                floor = mine[0].metrics["floor"]
                top = max(r.budget for r in mine if r.sampler != DDPM_1000)
                worst = max(mine, key=lambda r: r.metrics.get("mean_error", 0.0))
                worst_top = max((r for r in mine if r.budget == top), key=lambda r: r.metrics["mean_error"])
                out.append(
                    f"- Mean error ||m - mu||_2 (||mu|| = {math.hypot(*GAUSSIAN_MU):.3g}; DDPM's by Monte "
                    f"Carlo): largest {worst.metrics['mean_error']:.2g} ({worst.sampler}, {worst.nfe} NFE); "
                    f"at budget {top} at most {worst_top.metrics['mean_error']:.2g} ({worst_top.sampler})."
                )
                out.append(
                    f"- Floor: the last step of every sampler returns the x0 prediction E[x0 | x_t]; from "
                    f"t = 0 that alone leaves {_pct(floor)} (abar_0 < 1). Samplers whose last network call "
                    "is at t > 0 (the multistep solvers on linspace: t_min = 999 / budget) carry the larger "
                    "final-step error of that t_min (the slopes section)."
                )
            else:
                m0 = mine[0].metrics
                ddpm = _select(mine, sampler=DDPM_1000)
                out.append(
                    f"- Exact samples (fresh data draws) reach a pooled ratio of {m0['null_median']:.2f} "
                    f"(median of {NULL_REPLICATES}), {m0['null_q95']:.2f} (95th percentile)"
                    + (f"; DDPM-1000 {ddpm[0].error:.2f}." if ddpm else ".")
                )
                tv_floor = m0.get("tv_floor", math.nan)
                out += [
                    "",
                    f"Mode-weight error (TV, mean over seeds; a data draw of the same size shows "
                    f"{tv_floor:.3f}). "
                    "Every sampler starts from the same x_T and mostly carries it to the same component, so "
                    "at this n the TV largely shows the draw of x_T rather than the sampler:",
                    "",
                ]
                out += _table(
                    mine, lambda r: f"{r.metrics['tv']:.3f}" + (f" [{r.nfe}]" if r.nfe != r.budget else "")
                )
            out.append("")

    slopes = gaussian_slopes(rows)
    out += [
        "## Convergence: fitted log-log slopes (Gaussian oracle)",
        "",
        f"Least-squares slope of log(error) against log(NFE), over the budgets whose error lies between "
        f"{FIT_FLOOR_FACTOR:g}x the floor and {FIT_CEILING:.0%} (above {FIT_CEILING:.0%} a sampler is not in "
        "its asymptotic regime; near the floor the final step dominates). `end-to-end` fits the covariance "
        "error of the tables (DDPM: its exact figure). `solver only` fits the error of the state at the last "
        "timestep the network sees, against the exact probability-flow ODE from the same x_T "
        f"(C_t C_s^-1), above {FIT_FLOOR_FACTOR * FLOAT32_FLOOR:.0e} (float32 rounding): the integration "
        "error without the final jump to the clean data. PASS: the end-to-end slope is at least "
        f"order - {SLOPE_TOLERANCE} steep.",
        "",
        "| schedule | sampler | predicted | end-to-end slope (points, NFE range) | solver-only slope | |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(f: SlopeFit | None) -> str:
        return "no fit" if f is None else f"{f.slope:.2f} ({f.points}, {f.nfe_lo}–{f.nfe_hi})"

    for s in slopes:
        out.append(
            f"| {s.schedule} | {s.sampler} | -{s.order} | {fmt(s.end_to_end)} | {fmt(s.solver)} | "
            f"{'PASS' if s.passed else 'FAIL'} |"
        )
    out.append("")
    out += _slope_diagnosis(rows, slopes)

    targets = [target_covariance(rows), target_mixture(every), target_orders(slopes)]
    out += ["## Targets", ""]
    for t in targets:
        verdict = "not measured" if t.passed is None else ("PASS" if t.passed else "FAIL")
        out.append(f"- {t.name}: **{verdict}**. {t.text}.")
    out.append("")
    out += _sweep_table(every)

    out += ["## Which sampler to use", ""]
    out.append(
        "Cheapest sampler at DDPM-1000's quality, per oracle and schedule: the fewest NFE at which a "
        "sampler's error is at DDPM-1000's level and stays there at every larger budget measured. Gaussian: "
        "DDPM-1000's exact covariance error. Mixtures: DDPM-1000 is as good as exact there (its Gaussian "
        "error is far below what n samples resolve), so its level is the band exact samples reach (95th "
        "percentile of their pooled ratio); DDPM-1000's own pooled figure is one noisy draw from that band. "
        "That band is wide at this n and number of seeds, so on the mixtures this finds the first budget at "
        "which a sampler can no longer be told from exact sampling, not a finer ranking; the Gaussian "
        "figures are exact and rank finely."
    )
    out.append("")
    for oracle in ("gaussian", *MIXTURES):
        for schedule in _schedules(rows, oracle):
            best, level = cheapest_at_ddpm1000(rows, oracle, schedule)
            shown = _pct(level) if oracle == "gaussian" else f"{level:.2f}x"
            if best is None:
                out.append(
                    f"- {ORACLE_TITLES[oracle]}, {schedule}: no sampler reaches DDPM-1000's level "
                    f"({shown}) and stays there within the budgets measured."
                )
            else:
                fig = _pct(figure(best)) if oracle == "gaussian" else f"{best.error:.2f}x"
                out.append(
                    f"- {ORACLE_TITLES[oracle]}, {schedule}: **{best.sampler} at {best.nfe} NFE** "
                    f"({fig}; DDPM-1000's level {shown})."
                )
    out.append("")
    out += [
        "Best figure at small budgets (any sampler; on the mixtures, differences inside the exact-sample "
        "band are noise):",
        "",
    ]
    for oracle in ("gaussian", *MIXTURES):
        for schedule in _schedules(rows, oracle):
            mine = [r for r in _select(rows, oracle=oracle, schedule=schedule) if r.sampler != DDPM_1000]
            parts = []
            for budget in (10, 20, 50):
                at = [r for r in mine if r.budget == budget]
                if at:
                    b = min(at, key=figure)
                    shown = _pct(figure(b)) if oracle == "gaussian" else f"{figure(b):.2f}x"
                    parts.append(f"budget {budget}: {b.sampler} ({shown} at {b.nfe} NFE)")
            if parts:
                out.append(f"- {ORACLE_TITLES[oracle]}, {schedule}: " + "; ".join(parts) + ".")
    out.append("")
    return "\n".join(out)


def render_plot(rows: Sequence[Row], path: Path) -> None:
    """Log-log error against NFE: one panel per oracle and schedule, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    rows = [r for r in rows if not r.metrics.get("sweep")]
    combos = [(o, s) for o in ("gaussian", *MIXTURES) for s in _schedules(rows, o)]
    schedules = list(dict.fromkeys(s for _, s in combos))
    oracles = list(dict.fromkeys(o for o, _ in combos))
    height = 3.9 * len(schedules) + 1.0  # + an inch for the legend
    fig, axes = plt.subplots(
        len(schedules), len(oracles), figsize=(5.2 * len(oracles), height), squeeze=False
    )
    labels = [label for label in _labels(rows) if label != DDPM_1000]

    # one colour per method, the spacing variants ("<method>, logsnr") in its colour with another line style
    def family(label: str) -> tuple[str, str]:
        base, _, spacing = label.rpartition(", ")
        return (base, "--" if spacing == "logsnr" else ":") if spacing in SWEEP_SPACINGS else (label, "-")

    families = list(dict.fromkeys(family(label)[0] for label in labels))
    colors = plt.get_cmap("tab10")
    ticks = [b for b in (5, 10, 20, 50, 100, 250, 1000) if b in {r.budget for r in rows}]
    for (oracle, schedule), ax in ((c, axes[schedules.index(c[1])][oracles.index(c[0])]) for c in combos):
        mine = _select(rows, oracle=oracle, schedule=schedule)
        for label in labels:
            runs = sorted(_select(mine, sampler=label), key=lambda r: r.nfe)
            if not runs:
                continue
            ys = [figure(r) for r in runs]
            base, style = family(label)
            color = colors(families.index(base) % 10)
            ax.plot([r.nfe for r in runs], ys, style, marker="o", ms=3, color=color, label=label, lw=1.2)
        ref = _select(mine, sampler=DDPM_1000)
        if ref:
            level = figure(ref[0])
            ax.axhline(level, color="k", lw=0.8, ls="-.", label="DDPM-1000")
        if oracle == "gaussian":
            ax.axhline(mine[0].metrics["floor"], color="grey", lw=0.8, ls=":", label="final-step floor (t=0)")
            ax.set_ylabel("covariance error (DDPM: exact)")
        else:
            ax.axhline(
                mine[0].metrics["null_q95"], color="grey", lw=0.8, ls="--", label="exact samples, 95th pct"
            )
            ax.set_ylabel("energy distance / floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(top=PLOT_TOP["gaussian" if oracle == "gaussian" else "mixture"])  # after the log scale
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE")
        ax.set_title(f"{ORACLE_TITLES[oracle]}, {schedule}", fontsize=10)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
    legend: dict[str, Any] = {}
    for ax in axes.flat:  # the Gaussian panels have the final-step floor, the mixtures the exact-sample band
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.9 / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- CLI
def machine_description() -> str:
    """``nproc`` cores and ``lscpu``'s model name, torch version and threads."""

    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    cores = run(["nproc"]).strip() or str(os.cpu_count())
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in run(["lscpu"]).splitlines()
            if line.startswith("Model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return f"{model}, {cores} cores (nproc), torch {torch.__version__} ({torch.get_num_threads()} threads)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line: ``--out``, ``--quick``, ``--n``, ``--seeds``, ``--mc-n``, ``--threads``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (plot beside it)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a small slice: linear only, budgets {QUICK_BUDGETS}, n=500, one seed, mc-n=2000",
    )
    p.add_argument("--n", type=int, default=None, help="samples per mixture run (default 2000)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="mixture seeds (default 0 .. 7)")
    p.add_argument("--mc-n", type=int, default=None, help="DDPM Monte-Carlo samples (default 20000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--edm-only",
        action="store_true",
        help="only the section on EDM's process, spliced into the existing report (minutes, not hours)",
    )
    p.add_argument(
        "--flow-only",
        action="store_true",
        help="only the section on the flow's straight path, spliced into the existing report (minutes)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the leaderboard, write the report and the plot, print the tables; returns rows and report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (500 if args.quick else 2000)
    seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    mc_n = args.mc_n or (2000 if args.quick else 20_000)
    schedules = ("linear",) if args.quick else SCHEDULES
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    started = dt.datetime.now(dt.UTC)
    t0, cpu0 = time.perf_counter(), time.process_time()
    command = "uv run python scripts/sampler_leaderboard.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    edm_meta = {"command": command.strip(), "date": f"{started:%Y-%m-%d %H:%M} UTC", "mc_n": mc_n}
    if args.flow_only:
        flow = flow_rows(budgets, n, seeds, mc_n)
        flow_meta = edm_meta | {"machine": machine_description(), "wall_s": time.perf_counter() - t0}
        section = render_flow_section(flow, flow_meta | {"n": n, "seeds": seeds})
        old = args.out.read_text() if args.out.is_file() else ""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(splice_section(old, section, FLOW_BEGIN, FLOW_END))
        print(section)
        print(f"Wrote the flow section of {args.out}")
        return {"rows": flow, "report": section, "meta": flow_meta}
    if args.edm_only:
        edm = edm_rows(budgets, mc_n)
        edm_meta |= {"machine": machine_description(), "wall_s": time.perf_counter() - t0}
        section = render_edm_section(edm, edm_meta)
        old = args.out.read_text() if args.out.is_file() else ""
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(splice_edm_section(old, section))
        print(section)
        print(f"Wrote the EDM section of {args.out}")
        return {"rows": edm, "report": section, "meta": edm_meta}

    diffusion = make_diffusion("linear")
    mu, sigma = gaussian_data()
    gaussian = GaussianMixtureOracle(diffusion, mu[None], sigma[None])
    verify = {
        s.label: verify_affine(s.build(20, gaussian, diffusion), diffusion, mu, sigma, n=mc_n, seed=0)
        for s in sampler_specs()
        if not s.factory(20).stochastic
    }
    rows = leaderboard(schedules, budgets, n=n, seeds=seeds, mc_n=mc_n)
    edm = edm_rows(budgets, mc_n)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0

    plot = args.out.with_name(args.out.stem + "_error_vs_nfe.png")
    render_plot(rows, plot)
    s2 = sigma.float().double()
    mc_noise = covariance_sampling_noise(s2, mc_n) / float(s2.norm())
    meta = {
        "command": command.strip(),
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "machine": machine_description(),
        "wall_s": wall,
        "cpu_s": cpu,
        "plot": plot.name,
        "verify": verify,
        "n": n,
        "seeds": seeds,
        "mc_n": mc_n,
        "mc_noise": mc_noise,
    }
    edm_meta |= {"machine": meta["machine"], "wall_s": wall}
    report = splice_edm_section(render_markdown(rows, meta), render_edm_section(edm, edm_meta))
    flow = flow_rows(budgets, n, seeds, mc_n)
    flow_meta = edm_meta | {"wall_s": time.perf_counter() - t0, "n": n, "seeds": seeds}
    report = splice_section(report, render_flow_section(flow, flow_meta), FLOW_BEGIN, FLOW_END)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"Wrote {args.out} and {plot} ({wall:.0f} s)")
    return {"rows": rows, "report": report, "meta": meta}


if __name__ == "__main__":
    main()
