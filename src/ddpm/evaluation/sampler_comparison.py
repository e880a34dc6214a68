"""Sample quality against cost over a grid of samplers: the rows, their Pareto fronts and the table.

:func:`compare_samplers` scores every combination of a grid (a :class:`ComparisonCase`: its overrides and the
sampler they build) with a scoring function the caller gives, so the same loop serves toy runs
(energy-distance ratio) and image runs (the classifier's Fréchet ratio). Each :class:`ComparisonRow` holds the
quality spread over the draws, the network evaluations per sample (``sampler.nfe``, not ``steps``: Heun
evaluates twice per level and a karras grid may merge levels) and the wall seconds spent sampling.
:func:`pareto_front` marks the combinations no other beats on both quality and cost, once with NFE and once
with seconds as the cost; :func:`comparison_table` is the Markdown table ``ddpm-eval --compare-samplers``
prints and writes.

Lower quality figures are better (they are ratios to a data-vs-data floor; 1.0 = as good as real data).
Plain PyTorch and the samplers: no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ddpm.evaluation.toy import Spread
from ddpm.process import Process
from ddpm.samplers import DDPMSampler, NonFiniteSampleError, Sampler

__all__ = [
    "DEFAULT_GRID",
    "ComparisonCase",
    "ComparisonRow",
    "Scored",
    "compare_samplers",
    "comparison_label",
    "comparison_table",
    "mark_fronts",
    "pareto_front",
]

#: The grid without overrides: DDPM over all T steps (the reference), DDIM, DPM-Solver++ 2M (the conf's
#: order 2), UniPC and Heun at step counts where each is usually used. Other keys keep their conf defaults.
DEFAULT_GRID: tuple[tuple[str, ...], ...] = (
    ("sampler=ddpm",),  # conf/sampler/ddpm.yaml: steps null = all T
    *(("sampler=ddim", f"sampler.steps={s}") for s in (10, 20, 50, 100)),
    *(("sampler=dpm_solver", f"sampler.steps={s}") for s in (5, 10, 20)),
    *(("sampler=unipc", f"sampler.steps={s}") for s in (5, 10, 20)),
    *(("sampler=heun", f"sampler.steps={s}") for s in (3, 5, 10)),
)


@dataclass
class ComparisonCase:
    """One combination of the grid: the overrides that chose it and the sampler they build for the run."""

    overrides: list[str]
    sampler: Sampler


@dataclass
class Scored:
    """What scoring one sampler gives: the quality figure's spread over the draws (lower is better), the
    wall seconds spent sampling, the samples drawn, and the full result of the metric (for the JSON)."""

    quality: Spread
    seconds: float
    samples: int
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ComparisonRow:
    """One scored combination. ``error`` is set (and the quality NaN) when its sampling diverged."""

    label: str
    option: str | None
    overrides: list[str]
    sampler: str
    nfe: int
    quality: Spread
    seconds: float
    samples: int
    reference: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    on_front_nfe: bool = False
    on_front_seconds: bool = False

    @property
    def seconds_per_1000(self) -> float:
        """Sampling wall seconds per 1000 samples (NaN when nothing was drawn)."""
        return 1000.0 * self.seconds / self.samples if self.samples else math.nan

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        out = {
            "label": self.label,
            "option": self.option,
            "overrides": list(self.overrides),
            "sampler": self.sampler,
            "nfe": self.nfe,
            "quality": self.quality.as_dict(),
            "seconds": self.seconds,
            "samples": self.samples,
            "seconds_per_1000": self.seconds_per_1000,
            "on_front_nfe": self.on_front_nfe,
            "on_front_seconds": self.on_front_seconds,
            "reference": self.reference,
            "details": self.details,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


def pareto_front(costs: Sequence[float], qualities: Sequence[float]) -> list[bool]:
    """Which points are on the Pareto front of (cost, quality), lower being better for both.

    A point is off the front when another is at least as cheap and at least as good, and strictly better
    in one of the two: of two equally good points the cheaper one stays, of two equally cheap the better
    one. Points equal in both (exact ties) stay together. A point with a NaN cost or quality is never on
    the front and pushes no other off it.
    """
    if len(costs) != len(qualities):
        raise ValueError(f"{len(costs)} costs but {len(qualities)} qualities; give one of each per point")
    points = [(float(c), float(q)) for c, q in zip(costs, qualities, strict=True)]
    valid = [not (math.isnan(c) or math.isnan(q)) for c, q in points]
    front = []
    for i, (c, q) in enumerate(points):
        dominated = any(
            valid[j] and j != i and c2 <= c and q2 <= q and (c2 < c or q2 < q)
            for j, (c2, q2) in enumerate(points)
        )
        front.append(valid[i] and not dominated)
    return front


def mark_fronts(rows: Sequence[ComparisonRow]) -> None:
    """Set ``on_front_nfe`` and ``on_front_seconds`` of every row (quality = the mean over the draws)."""
    quality = [r.quality.mean for r in rows]
    for row, on in zip(rows, pareto_front([r.nfe for r in rows], quality), strict=True):
        row.on_front_nfe = on
    for row, on in zip(rows, pareto_front([r.seconds_per_1000 for r in rows], quality), strict=True):
        row.on_front_seconds = on


def _option(overrides: Sequence[str]) -> str | None:
    """The ``sampler=<option>`` of an override list, or None (the run's own sampler)."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "sampler":
            return value
    return None


def comparison_label(overrides: Sequence[str], sampler: Sampler, diffusion: Process) -> str:
    """A short name for a row: the option, its steps, and any other key set: ``ddim 10``, ``ddpm 1000``,
    ``dpm_solver 10 order=3``. Without ``sampler=`` the sampler class names the option."""
    option = _option(overrides) or type(sampler).__name__.removesuffix("Sampler").lower()
    steps = getattr(sampler, "steps", None)
    if not isinstance(steps, int):  # DDPM's steps=None: every step of the chain
        steps = len(sampler.timesteps(diffusion))
    extras = [
        item.removeprefix("sampler.")
        for item in overrides
        if item.startswith("sampler.") and not item.startswith("sampler.steps=")
    ]
    return " ".join([option, str(steps), *extras])


def _nan_spread() -> Spread:
    return Spread(math.nan, math.nan, math.nan, math.nan, 0.9, [])


def compare_samplers(
    cases: Sequence[ComparisonCase],
    diffusion: Process,
    score: Callable[[Sampler], Scored],
    warm_up: Callable[[Sampler], object] | None = None,
    log: Callable[[str], object] | None = None,
    progress: bool = True,
) -> list[ComparisonRow]:
    """Score every combination and mark the Pareto fronts.

    Args:
        cases: the combinations, each with its sampler built for the run.
        diffusion: the run's process (for the NFE and the reference: DDPM over all T steps).
        score: samples with a sampler and scores the draws; it times only the sampling.
        warm_up: called once, untimed, with the cheapest sampler before the first row, so one-time costs
            (thread pools, a CUDA context, the allocator's first blocks) are not charged to that row.
        log: gets a line per finished row (e.g. ``tqdm.write``, which keeps the progress bar intact).
        progress: show a progress bar over the combinations.

    Returns:
        One row per case, in the order given. A sampler that diverges (NaN/inf samples) gives a row with
        its ``error`` and a NaN quality, off both fronts, rather than stopping the comparison.
    """
    nfes = [case.sampler.nfe(diffusion) for case in cases]
    if warm_up is not None and cases:
        warm_up(cases[min(range(len(cases)), key=nfes.__getitem__)].sampler)
    rows: list[ComparisonRow] = []
    for case, nfe in zip(tqdm(cases, desc="sampler comparison", disable=not progress), nfes, strict=True):
        label = comparison_label(case.overrides, case.sampler, diffusion)
        # the reference: DDPM's own sampler over every step of its chain
        reference = isinstance(case.sampler, DDPMSampler) and nfe == getattr(diffusion, "num_timesteps", 0)
        common: dict[str, Any] = {
            "label": label,
            "option": _option(case.overrides),
            "overrides": list(case.overrides),
            "sampler": repr(case.sampler),
            "nfe": nfe,
            "reference": reference,
        }
        try:
            scored = score(case.sampler)
        except NonFiniteSampleError as err:
            row = ComparisonRow(**common, quality=_nan_spread(), seconds=math.nan, samples=0, error=str(err))
            if log is not None:
                log(f"{label}: NFE {nfe}, failed: {err}")
        else:
            row = ComparisonRow(
                **common,
                quality=scored.quality,
                seconds=scored.seconds,
                samples=scored.samples,
                details=scored.details,
            )
            if log is not None:
                log(
                    f"{label}: NFE {nfe}, quality {_quality_text(row.quality)}, "
                    f"{row.seconds:.2f} s ({row.seconds_per_1000:.3g} s / 1000 samples)"
                )
        rows.append(row)
    mark_fronts(rows)
    return rows


def _quality_text(q: Spread) -> str:
    if math.isnan(q.mean):
        return "nan"
    return f"{q.mean:.3g} ± {q.std:.2g}" if len(q.values) > 1 else f"{q.mean:.3g}"


def _front_text(row: ComparisonRow) -> str:
    marks = [name for name, on in (("NFE", row.on_front_nfe), ("s", row.on_front_seconds)) if on]
    return ", ".join(marks)


def comparison_table(rows: Sequence[ComparisonRow], metric: str) -> str:
    """The rows as a Markdown table sorted by NFE (then seconds), front rows marked.

    ``front`` names the fronts a row is on: ``NFE`` (no other row has as few or fewer network evaluations
    and a better quality), ``s`` (the same with sampling seconds per 1000 samples). ``metric`` heads the
    quality column.
    """
    ordered = sorted(rows, key=lambda r: (r.nfe, math.inf if math.isnan(r.seconds) else r.seconds))
    pct = next((round(100 * r.quality.interval) for r in rows if r.quality.values), 90)
    lines = [
        f"| sampler | NFE | {metric} (mean ± std) | {pct}% interval | seconds | s / 1000 samples | front |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in ordered:
        name = f"{r.label} (reference)" if r.reference else r.label
        if r.error is not None:
            first = r.error.splitlines()[0] if r.error else "failed"
            lines.append(f"| {name} | {r.nfe} | failed: {first} | | | | |")
            continue
        q = r.quality
        interval = f"[{q.low:.3g}, {q.high:.3g}]" if len(q.values) > 1 else ""
        lines.append(
            f"| {name} | {r.nfe} | {_quality_text(q)} | {interval} | {r.seconds:.2f} | "
            f"{r.seconds_per_1000:.3g} | {_front_text(r)} |"
        )
    return "\n".join(lines) + "\n"
