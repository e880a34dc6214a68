"""Feature-statistics accumulation as a torchmetrics ``Metric``: the Fréchet distance of two feature sets.

The features come from any extractor (the offline digits classifier of :mod:`ddpm.evaluation.classifier`,
or Inception); the metric only keeps running sums in float64, so it works batch by batch, across devices
(``dist_reduce_fx="sum"``) and with a reference side computed once (``reset_real=False``).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from ddpm.metrics import frechet_distance

__all__ = ["FeatureFrechetDistance"]


class FeatureFrechetDistance(Metric):
    """Accumulate features of a ``real`` and a ``fake`` set; :meth:`compute` gives their Fréchet distance.

    Args:
        num_features: d, the feature size.
        reset_real: when False, :meth:`reset` keeps the real side (a fixed reference set).

    Example::

        fd = FeatureFrechetDistance(64)
        fd.update(real_features, real=True)
        fd.update(fake_features, real=False)
        fd.compute()  # tensor(float64)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    real_sum: torch.Tensor
    real_outer: torch.Tensor
    real_n: torch.Tensor
    fake_sum: torch.Tensor
    fake_outer: torch.Tensor
    fake_n: torch.Tensor

    def __init__(self, num_features: int, reset_real: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features={num_features!r} must be >= 1")
        self.num_features = int(num_features)
        self.reset_real = bool(reset_real)
        d = self.num_features
        for side in ("real", "fake"):
            self.add_state(f"{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor, real: bool) -> None:
        """Add features [N, d] to the real or the fake side."""
        f = features.reshape(features.shape[0], -1).to(torch.float64)
        if f.shape[1] != self.num_features:
            raise ValueError(f"features have {f.shape[1]} columns, expected {self.num_features}")
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])

    def statistics(self, real: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, unbiased covariance) of one side, float64."""
        side = "real" if real else "fake"
        n = getattr(self, f"{side}_n")
        if float(n) < 2:
            raise RuntimeError(f"the {side} side holds {int(n)} samples; the Fréchet distance needs >= 2")
        mean = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> torch.Tensor:
        """The Fréchet distance between the two sides (float64 scalar)."""
        value = frechet_distance(*self.statistics(True), *self.statistics(False))
        return torch.tensor(value, dtype=torch.float64)

    def reset(self) -> None:
        """Clear the fake side, and the real side too unless ``reset_real`` is False."""
        if self.reset_real:
            super().reset()
            return
        kept = {name: getattr(self, name).clone() for name in ("real_sum", "real_outer", "real_n")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)
