"""Which of the T training timesteps a sampler visits: the ``spacing`` option every sampler shares.

For T = 1000 on the linear schedule and 10 steps (0-based timesteps, descending; the step after the last
one always lands on the clean data, abar = 1):

=========  ===================================================  ===========================================
spacing    DDPM / DDIM (``include_zero=True``)                   multistep solvers (``include_zero=False``)
=========  ===================================================  ===========================================
linspace   999, 888, 777, 666, 555, 444, 333, 222, 111, 0       999, 899, 799, 699, 599, 500, 400, 300,
                                                                200, 100
leading    900, 800, 700, 600, 500, 400, 300, 200, 100, 0       900, 810, 720, 630, 540, 450, 360, 270,
                                                                180, 90
trailing   999, 899, 799, 699, 599, 499, 399, 299, 199, 99      the same
karras     999, 937, 864, 775, 663, 511, 301, 102, 18, 0        the same (Heun keeps them fractional)
logsnr     999, 886, 757, 603, 410, 202, 73, 22, 5, 0           the same (Heun keeps them fractional)
quadratic  999, 789, 604, 444, 308, 197, 111, 49, 12, 0         999, 809, 639, 490, 360, 250, 160, 90, 40,
                                                                10
=========  ===================================================  ===========================================

``linspace``, ``leading`` and ``trailing`` are Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample
Steps are Flawed", table 2). DDPM and DDIM follow diffusers' ``DDIMScheduler``, which places the last step
at t = 0; the multistep solvers follow diffusers' ``DPMSolverMultistepScheduler`` and
``UniPCMultistepScheduler``: a grid of ``steps + 1`` points whose lowest one is the clean data, so no
network evaluation is spent at t = 0. ``karras`` (Karras et al. 2022, eq. 5, rho = 7) and ``logsnr``
(uniform in log-SNR, DPM-Solver sec. 3.3) are grids of noise levels sigma = sqrt((1 - abar) / abar) from
sigma(T-1) to sigma(0), mapped back to timesteps by interpolating log sigma; integer samplers round them
(and drop repeats, so with many steps those near t = 0 may merge), Heun keeps them fractional.
``quadratic`` is uniform in sqrt(t): DDIM's "quadratic" subsequence (Song et al. 2021, appendix D.2, its
choice for CIFAR-10) and DPM-Solver's ``time_quadratic``, placed like ``linspace`` between T - 1 and 0 (the
DDIM code stops at 0.8 T). It spends more steps near the data than linspace without the long first jumps of
karras / logsnr: UniPC on it is the best 10-step sampler on the mixtures of ``scripts/sampler_leaderboard.py``
(docs/samplers.md). With many steps, points near t = 0 round to the same integer and merge.
"""

from __future__ import annotations

import enum
import math

import torch

from ddpm.diffusion import _parse_enum, log_sigmas

__all__ = ["Spacing", "make_timesteps", "sigma_to_timestep"]

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


def sigma_to_timestep(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The real-valued timestep whose noise level is ``sigma``: log sigma interpolated linearly between
    the integers (diffusers' ``_sigma_to_t``; the inverse of ``GaussianDiffusion.alphas_cumprod_at``)."""
    levels = log_sigmas(alphas_cumprod)
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-10).log()
    # index of the last log_sigma <= the target; log sigma rises with t
    low = (torch.searchsorted(levels, log_sigma, right=True) - 1).clamp(0, len(levels) - 2)
    lo, hi = levels[low], levels[low + 1]
    w = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
    return low + w


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
    include_zero: bool = True,
    fractional: bool = False,
) -> list:
    """Descending timesteps among 0 .. T-1 that a sampler with ``steps`` steps visits.

    Args:
        T: the number of training timesteps.
        steps: the number of steps, 1 <= steps <= T.
        spacing: ``linspace``, ``leading``, ``trailing``, ``karras``, ``logsnr`` or ``quadratic`` (module
            docstring).
        alphas_cumprod: the schedule's abar, needed by ``karras`` and ``logsnr``.
        include_zero: ``linspace`` / ``leading`` / ``quadratic`` place their last step at t = 0 (DDIM);
            False spaces ``steps + 1`` points and leaves the lowest, t = 0, to the clean data (the multistep
            solvers).
        fractional: keep the real-valued timesteps of ``karras`` / ``logsnr`` instead of rounding them.

    Returns:
        ``int`` timesteps (``float`` for fractional karras / logsnr), descending, without repeats.

    Raises:
        ValueError: steps < 1 or > T, an unknown spacing, or karras / logsnr without ``alphas_cumprod``.
    """
    spacing = _parse_enum(Spacing, "spacing", spacing)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; steps must be an integer >= 1")
    if steps > T:
        raise ValueError(f"steps={steps} > T={T}; a sampler cannot take more steps than the chain has")
    if spacing in (Spacing.KARRAS, Spacing.LOGSNR):
        if alphas_cumprod is None:
            raise ValueError(f"spacing={spacing.value!r} needs the schedule's alphas_cumprod")
        t = sigma_to_timestep(_noise_level_grid(spacing, steps, alphas_cumprod), alphas_cumprod)
        ts = t.tolist() if fractional else t.round().long().tolist()
        return sorted(set(ts), reverse=True)
    n = steps if include_zero else steps + 1
    if spacing is Spacing.LINSPACE:
        ts = torch.linspace(0, T - 1, n, dtype=torch.float64).round().long().tolist()
    elif spacing is Spacing.QUADRATIC:
        # DDIM appendix D.2: tau_i = c i^2, i.e. uniform in sqrt(t)
        ts = (torch.linspace(0, math.sqrt(T - 1), n, dtype=torch.float64) ** 2).round().long().tolist()
    elif spacing is Spacing.LEADING:
        ratio = T // n
        ts = [i * ratio for i in range(n)]
    else:
        stride = T / steps
        ts = [round(T - i * stride) - 1 for i in range(steps)]
    if not include_zero and spacing is not Spacing.TRAILING:
        ts = [t for t in ts if t > 0]  # quadratic's first few points may all round to 0
    return sorted(set(ts), reverse=True)
