"""Which of the T training timesteps a sampler visits: the ``spacing`` option every sampler shares.

Every spacing places ``steps`` network evaluations on a grid of ``steps + 1`` points whose lowest one is the
clean data: the step after the last evaluation lands on it with the data prediction of that evaluation
(diffusers' ``final_sigmas_type="zero"``), so no evaluation is spent at t = 0, where the network has almost
nothing left to do, and the first step is at T - 1 (except ``leading``, whose offset is its definition). For
T = 1000 on the linear schedule and 10 steps (0-based timesteps, descending):

=========  =================================================================
spacing    timesteps
=========  =================================================================
linspace   999, 899, 799, 699, 599, 500, 400, 300, 200, 100
leading    900, 810, 720, 630, 540, 450, 360, 270, 180, 90
trailing   999, 899, 799, 699, 599, 499, 399, 299, 199, 99
karras     999, 944, 880, 804, 711, 593, 434, 233, 77, 15 (Heun keeps them fractional)
logsnr     999, 898, 785, 653, 492, 302, 138, 52, 17, 4 (Heun keeps them fractional)
quadratic  999, 809, 639, 490, 360, 250, 160, 90, 40, 10
custom     the sampler's own list (``sampler.timesteps=[...]``, :func:`check_custom_timesteps`)
fitted     a run's fitted schedule (``ddpm-eval RUN --fit-steps N``), read from the run folder when it is
           loaded (``build.fitted_schedule``) and given to the sampler as a custom list
=========  =================================================================

``linspace``, ``leading`` and ``trailing`` are Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample
Steps are Flawed", table 2), as diffusers' ``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler``
place them. ``karras`` (Karras et al. 2022, eq. 5, rho = 7) and ``logsnr`` (uniform in log-SNR, DPM-Solver
sec. 3.3) are grids of ``steps + 1`` noise levels sigma = sqrt((1 - abar) / abar) from sigma(T-1) to sigma(0),
the lowest left to the clean data, mapped back to timesteps by interpolating log sigma; integer samplers
round them (and drop repeats, so with many steps those near t = 0 may merge), Heun keeps them fractional.
``quadratic`` is uniform in sqrt(t): DDIM's "quadratic" subsequence (Song et al. 2021, appendix D.2, its
choice for CIFAR-10) and DPM-Solver's ``time_quadratic``, placed like ``linspace`` between T - 1 and 0 (the
DDIM code stops at 0.8 T). It spends more steps near the data than linspace without the long first jumps of
karras / logsnr. With ``steps = T`` every spacing is the whole chain, T - 1 down to 0.

Until 2026-12 DDPM and DDIM placed their last evaluation at t = 0 (diffusers' ``DDIMScheduler``), and karras /
logsnr their last at sigma(0): with 1 step ``linspace`` evaluated the network at t = 0 on pure noise, and at 2
to 4 steps one evaluation in a few was spent there.
"""

from __future__ import annotations

import enum
import itertools
import math

import torch

from ddpm.diffusion import _parse_enum, log_sigmas, timestep_at_noise_level
from ddpm.process import Process

__all__ = [
    "CONTINUOUS_SPACINGS",
    "Spacing",
    "check_custom_timesteps",
    "make_timesteps",
    "process_timesteps",
    "sigma_to_timestep",
]

#: EDM's rho (Karras et al. 2022, eq. 5 and table 1)
KARRAS_RHO = 7.0


class Spacing(enum.StrEnum):
    """How a sampler's steps are placed among the T training timesteps (see the module docstring)."""

    LINSPACE = "linspace"
    LEADING = "leading"
    TRAILING = "trailing"
    KARRAS = "karras"
    LOGSNR = "logsnr"
    QUADRATIC = "quadratic"
    #: the sampler's own ``timesteps`` list (``sampler.timesteps=[...]``)
    CUSTOM = "custom"
    #: a run's fitted schedule (``ddpm-eval RUN --fit-steps N``), which loading the run turns into ``custom``
    FITTED = "fitted"


def check_custom_timesteps(
    timesteps: object,
    T: int | None = None,
    fractional: bool = False,
    time_range: tuple[float, float] | None = None,
) -> list:
    """A custom schedule as the list a sampler visits: a non-empty, strictly decreasing list of timesteps in
    [0, T - 1] (integers; fractional ones where ``fractional``, for Heun), or of a continuous process's times
    in ``time_range`` (EDM's noise levels), or a one-line ValueError naming the value and what is allowed.
    ``T`` and ``time_range`` None check the list alone (before the process is known)."""
    shown = repr(timesteps) if len(repr(timesteps)) <= 80 else repr(timesteps)[:77] + "..."
    where = f"timesteps={shown}"
    kind = "numbers" if fractional else "integers"
    if not isinstance(timesteps, list | tuple) or not timesteps:
        raise ValueError(f"{where} is invalid; give a non-empty list of {kind}, e.g. [999, 500, 100]")
    values = []
    for v in timesteps:
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (not fractional and not float(v).is_integer()):
            raise ValueError(f"{where} holds {v!r}; every timestep must be one of the {kind} 0 .. T-1")
        values.append(float(v) if fractional and not float(v).is_integer() else int(v))
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{where} is not strictly decreasing; list the timesteps from the noisiest down")
    if time_range is not None:
        low, high = time_range
        if values[-1] < low or values[0] > high:
            raise ValueError(f"{where} leaves the process's times [{low:g}, {high:g}]")
        return [float(v) for v in values]
    if values[-1] < 0 or (T is not None and values[0] > T - 1):
        bound = f"[0, T-1] = [0, {T - 1}]" if T is not None else "[0, T-1]"
        raise ValueError(f"{where} leaves {bound}; the chain's timesteps are 0 .. T-1")
    return values


#: the spacings of a continuous process's times (the others place steps among a chain's T indices)
CONTINUOUS_SPACINGS = (Spacing.KARRAS, Spacing.LOGSNR, Spacing.LINSPACE, Spacing.QUADRATIC)


def process_timesteps(process: Process, steps: int, spacing: str = "karras") -> list[float]:
    """``steps`` descending times of a continuous process, from the noisiest end of its ``time_range`` to
    the cleanest, both evaluated (EDM's grid: the step after the last lands on the clean data, sigma = 0).
    A process whose cleanest time is the data itself (noise level 0 there: the flow's t = 0) leaves that
    end to the clean data, as a chain's grid does: ``steps + 1`` points, the last not evaluated (Euler with
    N uniform steps on the flow: t = 1, 1 - 1/N, ..., 1/N).

    ``karras``: EDM eq. 5 (rho = 7) in the noise level sigma / alpha; ``logsnr``: uniform in log-SNR
    (DPM-Solver sec. 3.3); ``linspace``: uniform in t; ``quadratic``: uniform in sqrt(t - t_min).

    Raises:
        ValueError: steps < 1, a spacing that indexes a chain (leading, trailing), or ``logsnr`` down to a
            noise level of 0 (its log-SNR is infinite).
    """
    spacing = _parse_enum(Spacing, "spacing", spacing)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; steps must be an integer >= 1")
    if spacing not in CONTINUOUS_SPACINGS:
        allowed = ", ".join(s.value for s in CONTINUOUS_SPACINGS)
        raise ValueError(
            f"spacing={spacing.value!r} places steps among a chain's T timesteps; "
            f"{type(process).__name__} is continuous: choose one of {allowed}"
        )
    low, high = process.time_range
    bottom, top = process.noise_level_range()
    data_end = bottom == 0.0  # the cleanest time is the data: the step after the last lands there
    if data_end and spacing is Spacing.LOGSNR:
        raise ValueError(
            f"spacing='logsnr' needs a lowest noise level above 0; {type(process).__name__} reaches the "
            "data at its cleanest time: choose karras, linspace or quadratic"
        )
    ramp = torch.linspace(0, 1, steps + 1 if data_end else steps, dtype=torch.float64)
    if spacing in (Spacing.KARRAS, Spacing.LOGSNR):
        ends = torch.tensor([top, bottom], dtype=torch.float64)
        if spacing is Spacing.KARRAS:
            top, bottom = ends ** (1 / KARRAS_RHO)
            levels = (top + ramp * (bottom - top)) ** KARRAS_RHO  # EDM eq. 5
        else:
            levels = (ends[0].log() + ramp * (ends[1].log() - ends[0].log())).exp()  # DPM-Solver sec. 3.3
        times = process.time_at_noise_level(levels)
    elif spacing is Spacing.LINSPACE:
        times = high + ramp * (low - high)
    else:
        times = low + (high - low) * (1 - ramp) ** 2  # DDIM appendix D.2: uniform in sqrt(t)
    return [float(t) for t in (times[:-1] if data_end else times)]


def sigma_to_timestep(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The real-valued timestep whose noise level is ``sigma``
    (:meth:`ddpm.diffusion.GaussianDiffusion.time_at_noise_level` on a chain of ``alphas_cumprod``)."""
    return timestep_at_noise_level(sigma, alphas_cumprod)


def _noise_level_grid(spacing: Spacing, steps: int, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``steps`` noise levels from sigma(T-1) down to sigma(0), float64."""
    levels = log_sigmas(alphas_cumprod)
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    if spacing is Spacing.KARRAS:
        lo, hi = levels[0].exp() ** (1 / KARRAS_RHO), levels[-1].exp() ** (1 / KARRAS_RHO)
        return (hi + ramp * (lo - hi)) ** KARRAS_RHO  # EDM eq. 5
    # DPM-Solver sec. 3.3: uniform steps in lambda = log(alpha / sigma) = -log sigma (VP)
    return (levels[-1] + ramp * (levels[0] - levels[-1])).exp()


def make_timesteps(
    T: int,
    steps: int,
    spacing: str = "linspace",
    *,
    alphas_cumprod: torch.Tensor | None = None,
    fractional: bool = False,
) -> list:
    """Descending timesteps among 0 .. T-1 at which a sampler with ``steps`` steps evaluates the network;
    the step after the last lands on the clean data (module docstring).

    Args:
        T: the number of training timesteps.
        steps: the number of steps, 1 <= steps <= T.
        spacing: ``linspace``, ``leading``, ``trailing``, ``karras``, ``logsnr`` or ``quadratic`` (module
            docstring).
        alphas_cumprod: the schedule's abar, needed by ``karras`` and ``logsnr``.
        fractional: keep the real-valued timesteps of ``karras`` / ``logsnr`` instead of rounding them.

    Returns:
        ``int`` timesteps (``float`` for fractional karras / logsnr), descending, without repeats, none at
        t = 0 unless ``steps = T`` (the whole chain).

    Raises:
        ValueError: steps < 1 or > T, an unknown spacing, or karras / logsnr without ``alphas_cumprod``.
    """
    spacing = _parse_enum(Spacing, "spacing", spacing)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; steps must be an integer >= 1")
    if steps > T:
        raise ValueError(f"steps={steps} > T={T}; a sampler cannot take more steps than the chain has")
    if steps == T:
        return list(range(T - 1, -1, -1))
    if spacing in (Spacing.KARRAS, Spacing.LOGSNR):
        if alphas_cumprod is None:
            raise ValueError(f"spacing={spacing.value!r} needs the schedule's alphas_cumprod")
        # steps + 1 levels: the lowest, sigma(0), is left to the clean data
        t = sigma_to_timestep(_noise_level_grid(spacing, steps + 1, alphas_cumprod)[:-1], alphas_cumprod)
        ts = t.tolist() if fractional else t.round().long().tolist()
    elif spacing is Spacing.LINSPACE:
        ts = torch.linspace(0, T - 1, steps + 1, dtype=torch.float64).round().long().tolist()
    elif spacing is Spacing.QUADRATIC:
        # DDIM appendix D.2: tau_i = c i^2, i.e. uniform in sqrt(t)
        ramp = torch.linspace(0, math.sqrt(T - 1), steps + 1, dtype=torch.float64)
        ts = (ramp**2).round().long().tolist()
    elif spacing is Spacing.LEADING:
        ratio = T // (steps + 1)
        ts = [i * ratio for i in range(steps + 1)]
    else:
        stride = T / steps
        ts = [round(T - i * stride) - 1 for i in range(steps)]
    # the clean data follows the last evaluation: none at t = 0 (quadratic's first points may round there)
    return sorted({t for t in ts if t > 0}, reverse=True)
