"""Toy sample quality with confidence: K independent sample draws, each scored against its own floor.

One quality ratio (energy distance over the data-vs-data floor, see :mod:`ddpm.metrics`) is a random
number: another draw of samples gives another value. :func:`repeated_quality` draws K sample sets and
reports the spread of the ratio over them (mean, std and a percentile interval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpm.metrics import QualityReport, quality_report

__all__ = ["RepeatedQuality", "Spread", "repeated_quality", "spread"]


@dataclass
class Spread:
    """Summary of one figure over K repeats: mean, std (ddof 1) and a central percentile interval."""

    mean: float
    std: float
    low: float
    high: float
    interval: float
    values: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "mean": self.mean,
            "std": self.std,
            "low": self.low,
            "high": self.high,
            "interval": self.interval,
            "values": self.values,
        }

    def format(self, digits: int = 3) -> str:
        """``1.23 ± 0.05 [1.18, 1.30]`` (the std is omitted for one value)."""
        if len(self.values) < 2:
            return f"{self.mean:.{digits}g}"
        pct = round(100 * self.interval)
        return (
            f"{self.mean:.{digits}g} ± {self.std:.2g} "
            f"[{pct}% interval {self.low:.{digits}g}, {self.high:.{digits}g}]"
        )


def spread(values: Sequence[float], interval: float = 0.9) -> Spread:
    """Mean, std and the central ``interval`` percentile range of ``values`` (NaNs are dropped).

    With few values (K = 5) the interval is close to [min, max]; it is an empirical range over the draws,
    not a parametric confidence interval.
    """
    if not 0.0 < interval < 1.0:
        raise ValueError(f"interval={interval!r} must lie in (0, 1)")
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return Spread(math.nan, math.nan, math.nan, math.nan, interval, [float(x) for x in values])
    tail = 100 * (1 - interval) / 2
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    low, high = np.percentile(v, [tail, 100 - tail])
    return Spread(float(v.mean()), std, float(low), float(high), interval, [float(x) for x in values])


@dataclass
class RepeatedQuality:
    """K quality reports of independent sample draws, and the spread of their figures."""

    n: int
    reports: list[QualityReport]
    floor_draws: int

    @property
    def repeats(self) -> int:
        """K, the number of sample draws."""
        return len(self.reports)

    def spread_of(self, key: str) -> Spread:
        """The spread of one :meth:`QualityReport.as_dict` field over the draws (e.g. ``ratio``)."""
        return spread([float(r.as_dict()[key]) for r in self.reports])

    def as_dict(self) -> dict[str, Any]:
        """Every figure's spread plus the per-draw reports, for JSON."""
        keys = ("ratio", "sliced_w_ratio", "energy", "energy_floor", "sliced_w", "sliced_w_floor")
        return {
            "n": self.n,
            "repeats": self.repeats,
            "floor_draws": self.floor_draws,
            **{key: self.spread_of(key).as_dict() for key in keys},
            "draws": [r.as_dict() for r in self.reports],
        }

    def headline(self) -> str:
        """One line a person reads."""
        return (
            f"energy distance {self.spread_of('ratio').format()} x the data-vs-data floor; "
            f"sliced W1 {self.spread_of('sliced_w_ratio').format()} x its floor "
            f"(n={self.n}, {self.repeats} draws)"
        )


def repeated_quality(
    draw: Callable[[int], torch.Tensor],
    held_out: torch.Tensor,
    pool: torch.Tensor,
    n: int,
    repeats: int,
) -> RepeatedQuality:
    """Score ``repeats`` independent sample draws against held-out data, each over a data-vs-data floor.

    Args:
        draw: ``draw(k) -> samples [>= n, ...]`` for repeat k (use a different seed per k), in the units of
            ``held_out``.
        held_out: data the model never saw [>= n, ...].
        pool: other data of the same distribution (the training split) for the floors. When it holds
            ``repeats * n`` samples, repeat k's floor uses the disjoint chunk k, so the floor's own
            sampling noise is part of the spread; otherwise every repeat shares the first n.
        n: samples per draw; held-out and floor data are cut to the same n (the distances depend on n).
        repeats: K >= 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    n = min(n, len(held_out), len(pool))
    if n < 2:
        raise ValueError(f"n={n}: need at least 2 held-out and pool samples")
    disjoint = len(pool) >= repeats * n
    reports = []
    for k in range(repeats):
        chunk = pool[k * n : (k + 1) * n] if disjoint else pool[:n]
        reports.append(quality_report(draw(k)[:n], held_out[:n], chunk))
    return RepeatedQuality(n=n, reports=reports, floor_draws=repeats if disjoint else 1)
