"""Toy sample quality: one draw scored against held-out data, or K independent draws with confidence.

:func:`sample_quality` draws samples from a trained module and compares them with the DataModule's held-out
data in raw units (the figure validation logs and a run's ``metrics.json`` report). One quality ratio
(energy distance over the data-vs-data floor, see :mod:`ddpm.metrics`) is a random
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

from ddpm.metrics import QualityReport, moment_errors, quality_report

__all__ = ["RepeatedQuality", "Spread", "repeated_quality", "sample_quality", "spread"]


def sample_quality(module: Any, datamodule: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """Draw ``n`` samples with ``module.sample`` and score them against held-out toy data in raw units.

    Args:
        module: a trained :class:`~ddpm.lit_module.DiffusionModule` or a loaded run's
            :class:`~ddpm.diffusion_model.DiffusionModel` (its sampler and current weights).
        datamodule: toy data (``kind == "toy"``), a :class:`~ddpm.data.toy.ToyData` or its DataModule:
            ``denormalize``, ``held_out``, ``training_data``, ``true_moments``.
        n: samples to draw; the held-out set and the floor's training sample are cut to the same size.
        seed: seeds the sampler's noise.

    Returns:
        ``samples`` and ``held_out`` (raw units, CPU), the :class:`~ddpm.metrics.QualityReport` under
        ``report``, and ``moments`` (mean / covariance errors) when the data's moments are known.
    """
    gen = torch.Generator(device=module.device).manual_seed(seed)
    samples = datamodule.denormalize(module.sample(n, generator=gen)).cpu()
    held_out = datamodule.held_out(n)
    second = datamodule.training_data(len(held_out))
    held_out = held_out[: len(second)]
    out: dict[str, Any] = {
        "samples": samples,
        "held_out": held_out,
        "report": quality_report(samples, held_out, second),
    }
    moments = datamodule.true_moments()
    if moments is not None:
        out["moments"] = moment_errors(samples, *moments)
    return out


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
