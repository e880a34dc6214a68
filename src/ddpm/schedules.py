"""Noise schedules: beta_t for t = 0 .. T-1, computed in float64.

Every schedule is registered by name so a config can pick it (``conf/schedule/<name>.yaml``)::

    betas = make_beta_schedule("cosine", T=1000)

Indices are 0-based as in code: ``abar[t] = prod_{s<=t} (1 - beta[s])``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

__all__ = [
    "SCHEDULES",
    "NotPureNoiseWarning",
    "alphas_cumprod",
    "make_beta_schedule",
    "register_schedule",
    "rescale_zero_terminal_snr",
]

ScheduleFn = Callable[..., torch.Tensor]

#: name -> function(T, **kwargs) returning float64 betas of shape [T].
SCHEDULES: dict[str, ScheduleFn] = {}

#: abar[T-1] above this means x_T is visibly not N(0, I).
PURE_NOISE_TOLERANCE = 1e-2


class NotPureNoiseWarning(UserWarning):
    """abar[T-1] is far from 0, so x_T is not N(0, I) and sampling starts off the forward process."""


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Decorator that adds a schedule function to :data:`SCHEDULES` under ``name``."""

    def decorator(fn: ScheduleFn) -> ScheduleFn:
        if name in SCHEDULES:
            raise ValueError(f"schedule name {name!r} is already registered")
        SCHEDULES[name] = fn
        return fn

    return decorator


def _check_range(beta_start: float, beta_end: float) -> None:
    for arg, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{arg}={value!r} is outside (0, 1); a beta must satisfy 0 < beta < 1")
    if beta_start > beta_end:
        raise ValueError(f"beta_start={beta_start!r} > beta_end={beta_end!r}; beta_start must be <= beta_end")


@register_schedule("linear")
def linear_schedule(
    T: int, beta_start: float = 1e-4, beta_end: float = 0.02, scale_to_T: bool = False
) -> torch.Tensor:
    """DDPM's linear schedule; ``scale_to_T`` multiplies both ends by 1000/T (improved-diffusion)."""
    if scale_to_T:
        scale = 1000.0 / T
        beta_start, beta_end = beta_start * scale, beta_end * scale
    _check_range(beta_start, beta_end)
    # DDPM sec. 4: beta_t linear from beta_1 = 1e-4 to beta_T = 0.02.
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


@register_schedule("quadratic")
def quadratic_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's "quad" schedule (diffusers' "scaled_linear"): linear in sqrt(beta)."""
    _check_range(beta_start, beta_end)
    # DDPM code, get_beta_schedule("quad"): beta = linspace(sqrt(b0), sqrt(b1), T)**2.
    return torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2


@register_schedule("cosine")
def cosine_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, betas clipped at ``max_beta``."""
    if s < 0:
        raise ValueError(f"s={s!r} is negative; the cosine offset must be >= 0")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta={max_beta!r} is outside (0, 1)")
    u = torch.arange(T + 1, dtype=torch.float64) / T
    # Improved DDPM eq. 17: f(u) = cos(((u + s) / (1 + s)) * pi / 2)^2, abar_t = f(t) / f(0).
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    # Improved DDPM sec. 3.2: beta_t = min(1 - abar_t / abar_{t-1}, 0.999).
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


@register_schedule("sigmoid")
def sigmoid_schedule(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """GeoDiff / diffusers' sigmoid schedule on beta (not lucidrains' schedule defined on abar)."""
    _check_range(beta_start, beta_end)
    # GeoDiff: beta = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start.
    x = torch.linspace(-6, 6, T, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar[t] = prod_{s<=t} (1 - beta[s]) (DDPM eq. 4), in the dtype of ``betas``."""
    return torch.cumprod(1.0 - betas, dim=0)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so that abar[T-1] is exactly 0 (zero terminal SNR), abar[0] unchanged.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1 (as
    diffusers' ``rescale_zero_terminal_snr``): sqrt(abar) is shifted so its last value is 0 and scaled so its
    first keeps its value; it stays monotone. The last beta becomes 1, so x_{T-1} is pure noise and a model
    must predict v or x0 there (eps carries no information about x0 at abar = 0).
    """
    b = torch.as_tensor(betas, dtype=torch.float64)
    if b.numel() < 2:
        raise ValueError("rescale_zero_terminal_snr needs T >= 2: with one step abar[0] cannot stay and be 0")
    root = torch.cumprod(1.0 - b, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    # Lin et al. 2023, Algorithm 1: shift sqrt(abar) so that its last value is 0, then scale the first back
    root = (root - last) * first / (first - last)
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


_rescale = rescale_zero_terminal_snr  # make_beta_schedule's argument of the same name hides it


def make_beta_schedule(
    name: str, T: int, warn: bool = True, rescale_zero_terminal_snr: bool = False, **kwargs: float
) -> torch.Tensor:
    """Return the float64 betas of schedule ``name`` for a chain of ``T`` steps, shape [T].

    Args:
        name: one of :data:`SCHEDULES` (``linear``, ``quadratic``, ``cosine``, ``sigmoid``).
        T: number of diffusion steps, >= 1.
        warn: emit :class:`NotPureNoiseWarning` when abar[T-1] > 1e-2.
        rescale_zero_terminal_snr: rescale the betas so that abar[T-1] = 0 exactly (Lin et al. 2023,
            :func:`rescale_zero_terminal_snr`); the last beta is then 1, and the diffusion needs the v or x0
            objective.
        **kwargs: the schedule's own options (``beta_start``, ``beta_end``, ``scale_to_T``, ``s``...).

    Raises:
        ValueError: unknown name, T < 1, or betas outside (0, 1) / beta_start > beta_end.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T={T!r} is invalid; T must be an integer >= 1")
    try:
        betas = SCHEDULES[name](T, **kwargs)
    except TypeError as err:  # unexpected keyword: say which schedule got it
        raise ValueError(f"schedule {name!r}: {err}") from None
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(
            f"schedule {name!r} with T={T} and {kwargs} gives betas in "
            f"[{betas.min().item():.3g}, {betas.max().item():.3g}]; all must lie in (0, 1)"
        )
    if rescale_zero_terminal_snr:
        betas = _rescale(betas)  # abar[T-1] = 0: nothing to warn about below
    final = alphas_cumprod(betas)[-1].item()
    if warn and final > PURE_NOISE_TOLERANCE:
        warnings.warn(
            f"schedule {name!r} with T={T} ends at abar[T-1]={final:.3g} > {PURE_NOISE_TOLERANCE}: "
            "x_T is not N(0, I), so sampling from N(0, I) starts off the forward process",
            NotPureNoiseWarning,
            stacklevel=2,
        )
    return betas
