"""EDM's second-order sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2; Algorithm 1 without churn), on any process.

EDM writes every process as x = x0 + sigma n after dividing out the scale: on DDPM's chain sigma =
sqrt((1 - abar) / abar) and x = x_t / sqrt(abar) (EDM table 1, VP column), so the network trained on x_t =
sqrt(abar) x0 + sqrt(1 - abar) eps is asked at x_t = sqrt(abar) x and at the timestep whose noise level is
sigma, which the ``karras`` spacing makes fractional; on EDM's own process (:class:`ddpm.edm.EDMProcess`)
the time is sigma. Each interval is an Euler step of the ODE dx/dsigma = (x - D(x; sigma)) / sigma followed
by Heun's trapezoidal correction, except the last one onto sigma = 0: 2N - 1 network evaluations for N
noise levels. With churn (S_churn > 0) each step first raises the noise level by a factor 1 + gamma with
fresh noise (Algorithm 2, lines 4-6).

The variables the steps are taken in are the process's :meth:`~ddpm.process.Process.ode_frame`: EDM's
(x / alpha against sigma / alpha) by default, and on the flow's straight path
(:class:`ddpm.flow.FlowProcess`) x against t itself, where the ODE is dx/dt = v = n - x0 and the first
step starts at pure noise (t = 1), where x / alpha is infinite. On EDM's process the two frames coincide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ddpm.edm import karras_sigmas
from ddpm.process import Process
from ddpm.samplers.base import CLEAN, Sampler, StepOutput, alpha_sigma, check_steps
from ddpm.samplers.guidance import check_guidance_scale

__all__ = ["EDMSampler", "HeunSampler", "HeunState"]


class HeunState(NamedTuple):
    """An Euler step waiting for its correction: where it started (y = x / s and tau in the process's
    :meth:`~ddpm.process.Process.ode_frame`: EDM's x and sigma by default) and its slope."""

    x: torch.Tensor
    sigma: float
    slope: torch.Tensor


class HeunSampler(Sampler):
    """EDM Algorithm 2 (Heun with optional churn; Algorithm 1 when ``s_churn`` = 0): ``steps`` noise
    levels, 2 * steps - 1 network evaluations.

    Args:
        steps: the number of noise levels N >= 2 (sigma_max ... sigma_min, then 0).
        spacing: ``karras`` (EDM eq. 5, rho = 7; the default) or any other spacing of
            :mod:`ddpm.samplers.spacing`; karras and logsnr stay fractional.
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
        timesteps: a custom schedule instead of the spacing's grid (fractional timesteps allowed).
        s_churn: EDM's S_churn: the noise added back before each step, gamma_i = min(S_churn / N, sqrt(2) - 1)
            for noise levels in [s_tmin, s_tmax] (0: deterministic).
        s_tmin: the lowest noise level (EDM's sigma) where churn applies.
        s_tmax: the highest noise level where churn applies (None: no upper bound, as inf).
        s_noise: EDM's S_noise, the std of the added noise relative to the level it restores (EDM: 1.007).
    """

    #: Heun's trapezoidal rule (Karras et al. 2022, EDM sec. 3): second order
    order = 2

    def __init__(
        self,
        steps: int = 10,
        spacing: str = "karras",
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = float("inf"),
        s_noise: float = 1.0,
    ) -> None:
        self._set_spacing(spacing, timesteps)
        self.steps = check_steps(
            len(self.custom_timesteps) if self.custom_timesteps is not None else steps, minimum=2
        )
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self._set_churn(s_churn, s_tmin, s_tmax, s_noise)

    def _set_churn(self, s_churn: float, s_tmin: float, s_tmax: float | None, s_noise: float) -> None:
        s_tmax = math.inf if s_tmax is None else s_tmax  # null in a config: no upper bound
        for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name}={value!r} is invalid; it must be a finite number >= 0")
        if isinstance(s_tmax, bool) or not isinstance(s_tmax, int | float) or not s_tmax >= s_tmin:
            raise ValueError(
                f"s_tmax={s_tmax!r} is invalid; it must be a number >= s_tmin={s_tmin!r} (or inf)"
            )
        self.s_churn, self.s_tmin, self.s_tmax = float(s_churn), float(s_tmin), float(s_tmax)
        self.s_noise = float(s_noise)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # Sampler's class attribute, read-only here
        """Heun draws noise only with churn."""
        return self.s_churn > 0

    def _churn_repr(self) -> str:
        if not self.s_churn:
            return ""
        return (
            f", s_churn={self.s_churn:g}, s_tmin={self.s_tmin:g}, s_tmax={self.s_tmax:g}, "
            f"s_noise={self.s_noise:g}"
        )

    def __repr__(self) -> str:
        return (
            f"HeunSampler(steps={self.steps}, {self._spacing_repr()}{self._churn_repr()}"
            f"{self._guidance_repr()})"
        )

    def noise_levels(self, diffusion: Process) -> list:
        """The N descending times of the noise levels (fractional for karras / logsnr and custom)."""
        return self._grid(diffusion, self.steps, fractional=True)

    def _churned(self, diffusion: Process, levels: list) -> list:
        """Each level's time raised by its churn, t-hat_i (EDM Algorithm 2, lines 4-5); the level itself
        where gamma_i = 0. A chain's last timestep caps it."""
        if not self.s_churn:
            return list(levels)
        gamma = min(self.s_churn / len(levels), math.sqrt(2) - 1)  # EDM Algorithm 2, line 4
        out = []
        for t in levels:
            alpha, sigma = alpha_sigma(diffusion, t)
            level = sigma / alpha
            if not self.s_tmin <= level <= self.s_tmax or gamma == 0:
                out.append(t)
                continue
            # EDM Algorithm 2, line 5: sigma-hat = (1 + gamma) sigma
            raised = float(
                diffusion.time_at_noise_level(torch.tensor(level * (1 + gamma), dtype=torch.float64))
            )
            out.append(min(raised, diffusion.time_range[1]))
        return out

    def timesteps(self, diffusion: Process) -> list:
        """One entry per network evaluation: the Euler step at each (churned) level t-hat_i, then the
        correction at the next level: t-hat_0, t_1, t-hat_1, t_2, ..., t_{N-1}, t-hat_{N-1}."""
        levels = self.noise_levels(diffusion)
        raised = self._churned(diffusion, levels)
        return [raised[0]] + [t for i in range(1, len(levels)) for t in (levels[i], raised[i])]

    def step(
        self,
        diffusion: Process,
        model_output: torch.Tensor,
        t: int | float | torch.Tensor,
        t_prev: int | float | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: HeunState | None = None,
    ) -> StepOutput:
        """Without a pending state: the Euler step t -> t_prev (returning the state its correction needs,
        unless t_prev is the clean data). With one: the correction of that Euler step, whose end point
        ``x_t`` at ``t`` the network has just seen, then the churn up to ``t_prev``, the next Euler step's
        raised level (none when t_prev = t)."""
        alpha, sigma = alpha_sigma(diffusion, t)
        scale, tau = _frame(diffusion, t)  # EDM's frame: s = alpha, tau = sigma / alpha; the flow's: 1, t
        x = x_t / scale  # EDM's x: the sample without its s(t) scaling
        x0 = diffusion.clip(diffusion.x0_from_output(model_output, x_t, alpha, sigma))
        eps = (x_t - alpha * x0) / sigma  # the noise the (clipped) x0 implies (EDM eq. 4)
        da, db = diffusion.ode_slopes
        # EDM Algorithm 2, line 7: d = (x - D(x; sigma)) / sigma = eps in EDM's frame; v = n - x0 in the flow
        # frame
        slope = da * x0 + db * eps
        if state is not None:
            # EDM Algorithm 2, line 11: x_{i+1} = x_i + (sigma_{i+1} - sigma-hat_i) (d_i + d'_i) / 2
            corrected = state.x + (tau - state.sigma) * 0.5 * (state.slope + slope)
            return StepOutput(self._churn(diffusion, corrected * scale, t, t_prev, noise), x0)
        if t_prev == CLEAN:
            return StepOutput(x0, x0)  # EDM Algorithm 2, line 8 onto sigma = 0: x + (0 - sigma) d = D
        scale_next, tau_next = _frame(diffusion, t_prev)
        # EDM Algorithm 2, line 8: the Euler step x_{i+1} = x-hat_i + (sigma_{i+1} - sigma-hat_i) d_i
        euler = x + (tau_next - tau) * slope
        return StepOutput(euler * scale_next, x0, HeunState(x, tau, slope))

    def _churn(
        self,
        diffusion: Process,
        x_t: torch.Tensor,
        t: int | float | torch.Tensor,
        t_prev: int | float | torch.Tensor,
        noise: torch.Tensor | None,
    ) -> torch.Tensor:
        """x_t (time t) raised to the time ``t_prev`` by EDM's churn in the noise level, on the process's
        scale."""
        if t_prev in (CLEAN, t) or noise is None:
            return x_t
        alpha, sigma_vp = alpha_sigma(diffusion, t)
        x, sigma = x_t / alpha, sigma_vp / alpha  # EDM table 1: the unscaled sample and its noise level
        alpha_hat, sigma_vp_hat = alpha_sigma(diffusion, t_prev)
        sigma_hat = sigma_vp_hat / alpha_hat
        # EDM Algorithm 2, line 6: x-hat = x + sqrt(sigma-hat^2 - sigma^2) eps, eps ~ N(0, S_noise^2 I)
        raised = x + math.sqrt(max(0.0, sigma_hat**2 - sigma**2)) * self.s_noise * noise
        return raised * alpha_hat


def _frame(process: Process, t: int | float | torch.Tensor) -> tuple[float, float]:
    """The process's ODE frame (s, tau) at one time given as a number or a one-element tensor."""
    return process.ode_frame(float(t.item() if isinstance(t, torch.Tensor) else t))


class EDMSampler(HeunSampler):
    """EDM's sampler as the paper gives it (Karras et al. 2022, Algorithm 2): Heun with churn on the noise
    levels of eq. 5 between ``sigma_min`` and ``sigma_max`` (:func:`ddpm.edm.karras_sigmas`), starting from
    x = sigma_max z; 2 * steps - 1 network evaluations.

    On EDM's process the levels are its times; on DDPM's chain they become fractional timesteps, with
    ``sigma_min`` and ``sigma_max`` clamped to the chain's own noise levels (on the linear schedule with
    T = 1000: 0.0100 and 157).

    Args:
        steps: the number of noise levels N >= 2 (EDM's CIFAR-10: 18, 35 evaluations).
        sigma_min: the lowest noise level of EDM eq. 5 (table 1: 0.002).
        sigma_max: the highest noise level of EDM eq. 5 (table 1: 80).
        rho: the exponent of EDM eq. 5 (table 1: 7).
        s_churn: EDM's S_churn (table 1 / 5; 0: Algorithm 1, deterministic).
        s_tmin: the lowest noise level churn applies at.
        s_tmax: the highest noise level churn applies at (None: no upper bound).
        s_noise: EDM's S_noise, the std of the added noise relative to the level it restores.
        guidance_scale: classifier-free guidance w when sampling with labels.
    """

    def __init__(
        self,
        steps: int = 18,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = float("inf"),
        s_noise: float = 1.0,
        guidance_scale: float = 1.0,
    ) -> None:
        super().__init__(steps, "karras", guidance_scale, None, s_churn, s_tmin, s_tmax, s_noise)
        karras_sigmas(2, sigma_min, sigma_max, rho)  # checks the three in one line
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def __repr__(self) -> str:
        return (
            f"EDMSampler(steps={self.steps}, sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, "
            f"rho={self.rho:g}{self._churn_repr()}{self._guidance_repr()})"
        )

    def noise_levels(self, diffusion: Process) -> list:
        """The times of EDM eq. 5's N levels, within the process's own noise levels."""
        low, high = diffusion.noise_level_range()
        lo, hi = max(self.sigma_min, low), min(self.sigma_max, high)
        sigmas = karras_sigmas(self.steps, lo, hi, self.rho)[:-1]
        return [float(t) for t in diffusion.time_at_noise_level(sigmas)]
