"""Toy sample quality: one draw scored against held-out data, or K independent draws with confidence.

:func:`sample_quality` draws samples from a trained module and compares them with the DataModule's held-out
data in raw units (the figure validation logs and a run's ``metrics.json`` report). One quality ratio
(energy distance over the data-vs-data floor, see :mod:`ddpm.metrics`) is a random
number: another draw of samples gives another value. :func:`repeated_quality` draws K sample sets and
reports the spread of the ratio over them (mean, std and a percentile interval), and the pooled ratio, the
mean energy over the mean floor, which a perfect sampler meets at 1 as K grows. :func:`class_quality`
scores a class-conditional model class by class: each class's quality ratio against that class's held-out
data, and the fraction of its samples nearest its own class's centre.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ddpm.metrics import QualityReport, moment_errors, quality_report

__all__ = [
    "ClassQuality",
    "RepeatedQuality",
    "Spread",
    "class_quality",
    "repeated_quality",
    "sample_quality",
    "spread",
]


def sample_quality(
    module: Any, datamodule: Any, n: int, seed: int = 0, floors: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Draw ``n`` samples with ``module.sample`` and score them against held-out toy data in raw units.

    Args:
        module: a trained :class:`~ddpm.lit_module.DiffusionModule` or a loaded run's
            :class:`~ddpm.sampling_model.SamplingModel` (its sampler and current weights).
        datamodule: toy data (``kind == "toy"``), a :class:`~ddpm.data.toy.ToyData` or its DataModule:
            ``denormalize``, ``held_out``, ``training_data``, ``true_moments``.
        n: samples to draw; the held-out set and the floor's training sample are cut to the same size.
        seed: seeds the sampler's noise.
        floors: the report's data-vs-data floors at this n, from an earlier call on the same data (the
            floors depend on the data only; see :func:`~ddpm.metrics.quality_report`).

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
        "report": quality_report(samples, held_out, second, floors),
    }
    moments = datamodule.true_moments()
    if moments is not None:
        out["moments"] = moment_errors(samples, *moments)
    return out


@dataclass
class ClassQuality:
    """A conditional toy model's figures by class at one guidance scale.

    ``ratios[k]``: the energy distance of class k's samples to class k's held-out data over the
    data-vs-data floor (:mod:`ddpm.metrics`); ``nearest[k]``: the fraction of class k's samples whose
    nearest class centre (:meth:`~ddpm.data.toy.ToyData.class_centres`) is k's.
    """

    guidance_scale: float
    n_per_class: int
    ratios: list[float]
    nearest: list[float]

    @property
    def nearest_mode(self) -> float:
        """The fraction of all samples nearest their own class's centre (classes equally weighted)."""
        return float(np.mean(self.nearest))

    @property
    def worst_ratio(self) -> float:
        """The largest per-class quality ratio."""
        return float(np.max(self.ratios))

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat figures for a logger or ``metrics.json``: ``nearest_mode``, ``class_ratio_max`` and, per
        class k, ``class_ratio_k`` and ``nearest_mode_k``."""
        out = {f"{prefix}nearest_mode": self.nearest_mode, f"{prefix}class_ratio_max": self.worst_ratio}
        for k, (ratio, near) in enumerate(zip(self.ratios, self.nearest, strict=True)):
            out[f"{prefix}class_ratio_{k}"] = ratio
            out[f"{prefix}nearest_mode_{k}"] = near
        return out

    def headline(self) -> str:
        """One line a person reads."""
        return (
            f"w={self.guidance_scale:g}: {100 * self.nearest_mode:.1f}% of samples nearest their class's mode"
            f" (worst class {100 * min(self.nearest):.1f}%); per-class quality ratio "
            f"{min(self.ratios):.2f}-{self.worst_ratio:.2f} x the floor (n={self.n_per_class} per class)"
        )


def class_quality(
    module: Any,
    data: Any,
    n_per_class: int,
    seed: int = 0,
    guidance_scale: float | None = None,
    sampler: Any = None,
) -> ClassQuality:
    """Draw ``n_per_class`` samples of every class (one sampling call) and score each class on its own.

    Args:
        module: a class-conditional module (``num_classes > 0``; ``sample(n, y=..., guidance_scale=...)``).
        data: its toy data with labels (``held_out_labels``, ``train_labels``, ``class_centres``).
        n_per_class: samples per class; each class's held-out and floor data are cut to the same size.
        seed: seeds the sampler's noise.
        guidance_scale: classifier-free guidance w (None: the sampler's).
        sampler: another sampler than the module's.
    """
    classes = int(module.num_classes)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    gen = torch.Generator(device=module.device).manual_seed(seed)
    x = module.sample(len(y), sampler=sampler, generator=gen, y=y, guidance_scale=guidance_scale)
    samples = data.denormalize(x).cpu()
    held_out, held_y = data.held_out(), data.held_out_labels()
    pool, pool_y = data.training_data(), data.train_labels
    centres = data.class_centres().to(samples.dtype)
    nearest_centre = torch.cdist(samples.reshape(len(y), -1), centres.reshape(classes, -1)).argmin(1)
    ratios, nearest = [], []
    for k in range(classes):
        mine = samples[y == k]
        ratios.append(float(quality_report(mine, held_out[held_y == k], pool[pool_y == k]).ratio))
        nearest.append(float((nearest_centre[y == k] == k).double().mean()))
    w = (sampler or module.sampler).guidance_scale if guidance_scale is None else guidance_scale
    return ClassQuality(float(w), n_per_class, ratios, nearest)


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

    @property
    def pooled_ratio(self) -> float:
        """The mean energy distance over the mean floor (NaN when every floor is 0).

        The mean of the per-draw ratios divides by each draw's own floor, whose noise at a few thousand
        points is large (two data draws' distance varies threefold at n = 2000): it is biased up (Jensen)
        and has a long upper tail, so a perfect sampler scores 1.3-1.8x on it. The pooled ratio is a ratio
        of two means, consistent as the draws grow; a perfect sampler's tends to 1
        (``scripts/perfect_model_floor.py``).
        """
        floor = sum(r.energy_floor for r in self.reports)
        return sum(r.energy for r in self.reports) / floor if floor > 0 else math.nan

    def as_dict(self) -> dict[str, Any]:
        """Every figure's spread plus the per-draw reports, for JSON."""
        keys = ("ratio", "sliced_w_ratio", "energy", "energy_floor", "sliced_w", "sliced_w_floor")
        return {
            "n": self.n,
            "repeats": self.repeats,
            "floor_draws": self.floor_draws,
            **{key: self.spread_of(key).as_dict() for key in keys},
            "pooled_ratio": self.pooled_ratio,
            "draws": [r.as_dict() for r in self.reports],
        }

    def headline(self) -> str:
        """One line a person reads."""
        pooled = f" (pooled: {self.pooled_ratio:.3g})" if self.repeats > 1 else ""
        return (
            f"energy distance {self.spread_of('ratio').format()} x the data-vs-data floor{pooled}; "
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
