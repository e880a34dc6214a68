"""The checks the viz functions make of their arguments, kept apart so ``ddpm-viz`` can run the same ones
before any work."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ddpm.schedules import SCHEDULES, make_beta_schedule


def resolve_schedule_kwargs(
    name: str, defaults: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Options for ``make_beta_schedule(name, ...)``: the ``defaults`` it accepts, updated by ``overrides``.

    Defaults a schedule does not take (``beta_start`` for ``cosine``) are dropped, so a demo's seed settings
    do not break another schedule; an override it does not take is an error.

    Raises:
        ValueError: ``name`` is not a registered schedule, or an override is not one of its options.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    accepted = [p for p in inspect.signature(SCHEDULES[name]).parameters if p != "T"]
    for key in overrides or {}:
        if key not in accepted:
            raise ValueError(f"schedule {name!r} has no option {key!r}; its options are {accepted}")
    out = {k: v for k, v in (defaults or {}).items() if k in accepted}
    out.update(overrides or {})
    return out


def _betas(name: str, T: int, kwargs: Mapping[str, Any]) -> torch.Tensor:
    # warn=False: the demos' short chains end away from pure noise on purpose, and the figures show abar.
    return make_beta_schedule(name, T, warn=False, **kwargs)


def check_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    """Return ``timesteps`` as a list of ints, or raise ``ValueError`` naming the first one outside [0, T)."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty; give at least one t in [0, T)")
    for t in ts:
        if not 0 <= t < T:
            raise ValueError(f"timestep t={t} is outside [0, {T - 1}]; with T={T} each t must be in [0, T)")
    return ts
