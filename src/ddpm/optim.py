"""Learning-rate schedules with linear warmup (configured as ``_partial_`` in ``conf/lr_scheduler``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["warmup_lr"]


def warmup_lr(
    optimizer: Optimizer,
    warmup_steps: int = 0,
    decay: str = "constant",
    total_steps: int | None = None,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then constant or cosine decay to ``min_lr_ratio``.

    DDPM trains CIFAR-10 with Adam, 5000 warmup steps and a constant rate afterwards.
    Stepped once per optimizer step (``interval: step``).
    """
    if warmup_steps < 0:
        raise ValueError(f"lr_scheduler.warmup_steps={warmup_steps!r} must be >= 0")
    if decay not in ("constant", "cosine"):
        raise ValueError(f"lr_scheduler.decay={decay!r} is unknown; choose 'constant' or 'cosine'")
    if decay == "cosine" and (total_steps is None or total_steps < 1):
        raise ValueError(f"lr_scheduler.total_steps={total_steps!r} must be >= 1 for cosine decay")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"lr_scheduler.min_lr_ratio={min_lr_ratio!r} is outside [0, 1]")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "constant":
            return 1.0
        assert total_steps is not None
        # A run shorter than its warmup simply ends before the decay starts.
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
