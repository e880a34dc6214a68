"""Sample-quality metrics for toy data, reported against a data-vs-data noise floor.

A distance between generated samples and held-out data means little on its own: two independent draws
of the same distribution are also at a positive distance at finite n. So every figure comes with its
floor, the same distance between two data draws of the same size, and the headline is their ratio
("3.1x the floor"; 1.0 is as good as a finite sample can show).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "QualityReport",
    "energy_distance",
    "feature_statistics",
    "frechet_distance",
    "moment_errors",
    "quality_report",
    "sliced_wasserstein",
]


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


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean [d], unbiased covariance [d, d]) of features [N, d] (N >= 2), in float64."""
    f = _flat(features)
    if f.shape[0] < 2:
        raise ValueError(f"feature_statistics needs at least 2 samples, got {f.shape[0]}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    # A covariance estimate can have eigenvalues at -1e-15 from rounding; they are 0.
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), squared.

    ``|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))`` (Dowson & Landau 1982; FID, Heusel et al.
    2017). The trace of the matrix square root is taken as tr((S1^(1/2) S2 S1^(1/2))^(1/2)), which equals
    tr((S1 S2)^(1/2)) but involves only symmetric matrices, so both square roots come from eigendecompositions
    in float64 (no complex parts, unlike scipy's sqrtm on the non-symmetric product). Accepts tensors or
    arrays; returns a float >= 0 (rounding below 0 is clamped).
    """
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(c, dtype=torch.float64) for c in (cov1, cov2))
    d = m1.numel()
    if m2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes do not agree: mu1 {d}, mu2 {m2.numel()}, "
            f"cov1 {tuple(s1.shape)}, cov2 {tuple(s2.shape)}"
        )
    root1 = _sqrtm_psd(s1)
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    value = (m1 - m2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross
    return max(float(value), 0.0)


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


def quality_report(
    samples: torch.Tensor,
    held_out: torch.Tensor,
    second_draw: torch.Tensor,
    floors: tuple[float, float] | None = None,
) -> QualityReport:
    """Compare ``samples`` with ``held_out`` data, and ``second_draw`` (independent data) for the floor.

    All three are cut to the same size n so the distances and the floor are comparable. ``floors``:
    (energy floor, sliced W1 floor) of this ``held_out`` and ``second_draw`` at this n, computed before
    (a report at every validation compares against the same data: its floors need computing once).
    """
    n = min(len(samples), len(held_out), len(second_draw))
    s, h, d = samples[:n].cpu(), held_out[:n].cpu(), second_draw[:n].cpu()
    energy_floor, sliced_w_floor = floors or (energy_distance(d, h), sliced_wasserstein(d, h))
    return QualityReport(
        n=n,
        energy=energy_distance(s, h),
        energy_floor=energy_floor,
        sliced_w=sliced_wasserstein(s, h),
        sliced_w_floor=sliced_w_floor,
    )
