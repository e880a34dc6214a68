"""The checks the viz functions make of their arguments, in one place: the functions run them on entry,
and ``ddpm-viz`` runs the same ones before any work, turning the ``ValueError`` into its one-line error.

Every message names the bad value and what is allowed, on one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch

from ddpm.schedules import SCHEDULES, make_beta_schedule


def resolve_schedule_kwargs(
    name: str, defaults: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Options for ``make_beta_schedule(name, ...)``: the ``defaults`` it accepts, updated by ``overrides``.

    Defaults a schedule does not take (``beta_start`` for ``cosine``) are dropped, so a demo's beta range
    does not break another schedule; an override it does not take is an error.

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


def resolve_schedule(
    name: str, T: int, defaults: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The betas of schedule ``name`` for T steps and the options they were built with.

    The options are :func:`resolve_schedule_kwargs`'s; building the betas is what checks T and the options'
    values (cheap: T numbers), so ``ddpm-viz`` calls this before any work too.

    Raises:
        ValueError: an unknown name, an option the schedule does not take, T < 1 or a bad option value.
    """
    opts = resolve_schedule_kwargs(name, defaults, overrides)
    # warn=False: the demos' short chains end away from pure noise on purpose, and the figures show abar.
    return make_beta_schedule(name, T, warn=False, **opts), opts


def resolve_schedules(
    names: Sequence[str], T: int, options: Mapping[str, Any] | None = None
) -> dict[str, tuple[torch.Tensor, dict[str, Any]]]:
    """:func:`resolve_schedule` for several schedules compared side by side: each takes the ``options`` it
    accepts and ignores the others.

    Raises:
        ValueError: ``names`` is empty, a schedule is refused, or an option is taken by none of them.
    """
    if not names:
        raise ValueError("names is empty; give at least one schedule")
    options = options or {}
    out = {name: resolve_schedule(name, T, defaults=options) for name in names}
    unused = sorted(set(options) - {key for _, opts in out.values() for key in opts})
    if unused:
        raise ValueError(f"schedule option(s) {unused} are not taken by any of {list(names)}")
    return out


def check_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    """Return ``timesteps`` as a list of ints, or raise ``ValueError`` naming the first one outside [0, T)."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty; give at least one t in [0, T)")
    for t in ts:
        if not 0 <= t < T:
            raise ValueError(f"timestep t={t} is outside [0, {T - 1}]; with T={T} each t must be in [0, T)")
    return ts


#: The layouts :func:`~ddpm.viz.demos.plot_forward_1d` draws.
Forward1DLayout = Literal["overlay", "panels"]
FORWARD_1D_LAYOUTS: tuple[str, ...] = get_args(Forward1DLayout)

#: What each size and style argument of the viz functions allows, by parameter name (a name means the same
#: wherever it appears): the test a value must pass, and the message's end after ``name=value``.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "length": (lambda v: v >= 2, "is invalid; the signal needs >= 2 points"),
    "n": (lambda v: v >= 1, "is invalid; give at least 1 point"),
    "std": (lambda v: v >= 0, "is invalid; a standard deviation must be >= 0"),
    "lim": (lambda v: v > 0, "is invalid; the axes half-width must be > 0"),
    "n_draws": (lambda v: v >= 1, "is invalid; give at least 1 chain"),
    "layout": (lambda v: v in FORWARD_1D_LAYOUTS, f"is unknown; choose one of {list(FORWARD_1D_LAYOUTS)}"),
    "fps": (lambda v: v >= 1, "is invalid; use an integer >= 1"),
    "max_frames": (lambda v: v >= 1, "is invalid; use an integer >= 1"),
}


def check_arguments(values: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> None:
    """Raise a ValueError, ``<name>=<value> is invalid; <what is allowed>``, for the first value that
    breaks its rule.

    Args:
        values: argument values by parameter name: ``length``, ``n``, ``std``, ``lim``, ``n_draws``,
            ``layout``, ``fps`` or ``max_frames``.
        labels: what to call a parameter in the message instead of its name, e.g. ``{"n_draws": "--draws"}``
            for a command line.
    """
    for name, value in values.items():
        allowed, tail = _RULES[name]
        if not allowed(value):
            raise ValueError(f"{(labels or {}).get(name, name)}={value!r} {tail}")
