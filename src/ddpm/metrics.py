"""Sample-quality metrics for toy data, reported against a data-vs-data noise floor.

A distance between generated samples and held-out data means little on its own: two independent draws
of the same distribution are also at a positive distance at finite n. So every figure comes with its
floor, the same distance between two data draws of the same size, and the headline is their ratio
("3.1x the floor"; 1.0 is as good as a finite sample can show).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["QualityReport", "energy_distance", "moment_errors", "quality_report", "sliced_wasserstein"]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).double()


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo), V-statistic, >= 0."""
    x, y = _flat(x), _flat(y)
    # V-statistic (diagonals included): it is a squared MMD norm, so never negative, and a ratio to the
    # floor is well defined.
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return max(float(2 * xy - xx - yy), 0.0)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance over random unit directions (equal sample sizes)."""
    x, y = _flat(x), _flat(y)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    # W1 between 1D empirical measures of equal size is the mean gap of the sorted projections.
    px, _ = (x @ dirs).sort(dim=0)
    py, _ = (y @ dirs).sort(dim=0)
    return float((px - py).abs().mean())


def moment_errors(samples: torch.Tensor, reference_mean: torch.Tensor, reference_cov: torch.Tensor) -> dict:
    """Euclidean error of the sample mean and Frobenius error of the sample covariance."""
    s = _flat(samples)
    mean_err = (s.mean(0) - reference_mean.double().reshape(-1)).norm()
    cov = torch.cov(s.T).reshape(s.shape[1], s.shape[1])
    cov_err = (cov - reference_cov.double().reshape(cov.shape)).norm()
    return {"mean_error": float(mean_err), "cov_error": float(cov_err)}


@dataclass
class QualityReport:
    """Distances of generated samples to held-out data, and the data-vs-data floors."""

    n: int
    energy: float
    energy_floor: float
    sliced_w: float
    sliced_w_floor: float

    @property
    def ratio(self) -> float:
        """Energy distance over its floor (nan when the floor is 0, e.g. constant data)."""
        return self.energy / self.energy_floor if self.energy_floor > 0 else math.nan

    @property
    def sliced_w_ratio(self) -> float:
        """Sliced Wasserstein over its floor."""
        return self.sliced_w / self.sliced_w_floor if self.sliced_w_floor > 0 else math.nan

    def as_dict(self) -> dict[str, float]:
        """All figures, ratios included, for logging."""
        return {**asdict(self), "ratio": self.ratio, "sliced_w_ratio": self.sliced_w_ratio}

    def headline(self) -> str:
        """One line a person reads."""
        if math.isnan(self.ratio):
            return f"energy distance {self.energy:.4g} (the data-vs-data floor is 0: constant data)"
        return (
            f"energy distance {self.energy:.4g} = {self.ratio:.2f}x the data-vs-data floor "
            f"({self.energy_floor:.4g}, n={self.n}); sliced W1 {self.sliced_w_ratio:.2f}x its floor"
        )


def quality_report(samples: torch.Tensor, held_out: torch.Tensor, second_draw: torch.Tensor) -> QualityReport:
    """Compare ``samples`` with ``held_out`` data, and ``second_draw`` (independent data) for the floor.

    All three are cut to the same size n so the distances and the floor are comparable.
    """
    n = min(len(samples), len(held_out), len(second_draw))
    s, h, d = samples[:n].cpu(), held_out[:n].cpu(), second_draw[:n].cpu()
    return QualityReport(
        n=n,
        energy=energy_distance(s, h),
        energy_floor=energy_distance(d, h),
        sliced_w=sliced_wasserstein(s, h),
        sliced_w_floor=sliced_wasserstein(d, h),
    )
