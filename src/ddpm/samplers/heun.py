"""EDM's deterministic second-order sampler (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Algorithm 1 without churn) on a VP-trained network.

EDM writes the process as x = x0 + sigma n with sigma = sqrt((1 - abar) / abar): that is the VP sample
divided by sqrt(abar) (EDM table 1, VP column), so the network trained on x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps is asked at x_t = sqrt(abar) x and at the timestep whose noise level is sigma, which
the ``karras`` spacing makes fractional. Each interval is an Euler step of the ODE dx/dsigma =
(x - D(x; sigma)) / sigma followed by Heun's trapezoidal correction, except the last one onto sigma = 0:
2N - 1 network evaluations for N noise levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.base import CLEAN, Sampler, StepOutput, alpha_sigma, check_steps
from ddpm.samplers.guidance import check_guidance_scale

__all__ = ["HeunSampler", "HeunState"]


class HeunState(NamedTuple):
    """An Euler step waiting for its correction: where it started (EDM's x and sigma) and its slope."""

    x: torch.Tensor
    sigma: float
    slope: torch.Tensor


class HeunSampler(Sampler):
    """EDM Algorithm 1 (Heun, no churn): ``steps`` noise levels, 2 * steps - 1 network evaluations.

    Args:
        steps: the number of noise levels N >= 2 (sigma_max ... sigma_min, then 0).
        spacing: ``karras`` (EDM eq. 5, rho = 7; the default) or any other spacing of
            :mod:`ddpm.samplers.spacing`; karras and logsnr stay fractional.
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
    """

    #: Heun's trapezoidal rule (Karras et al. 2022, EDM sec. 3): second order
    order = 2

    def __init__(
        self,
        steps: int = 10,
        spacing: str = "karras",
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        self._set_spacing(spacing, timesteps, fractional=True)
        self.steps = check_steps(
            len(self.custom_timesteps) if self.custom_timesteps is not None else steps, minimum=2
        )
        self.guidance_scale = check_guidance_scale(guidance_scale)

    def __repr__(self) -> str:
        return f"HeunSampler(steps={self.steps}, {self._spacing_repr()}{self._guidance_repr()})"

    def noise_levels(self, diffusion: GaussianDiffusion) -> list:
        """The N descending timesteps of the noise levels (fractional for karras / logsnr and custom)."""
        return self._grid(diffusion, self.steps, fractional=True)

    def timesteps(self, diffusion: GaussianDiffusion) -> list:
        """One entry per network evaluation: s0, s1, s1, s2, s2, ..., s_{N-1} (Euler, then correction)."""
        levels = self.noise_levels(diffusion)
        return [levels[0]] + [t for t in levels[1:] for _ in range(2)]

    def step(
        self,
        diffusion: GaussianDiffusion,
        model_output: torch.Tensor,
        t: int | float | torch.Tensor,
        t_prev: int | float | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: HeunState | None = None,
    ) -> StepOutput:
        """Without a pending state: the Euler step t -> t_prev (returning the state its correction needs,
        unless t_prev is the clean data). With one: the correction of that Euler step, whose end point
        ``x_t`` at ``t`` the network has just seen; ``t_prev`` is then ignored."""
        alpha, sigma_vp = alpha_sigma(diffusion, t)
        sigma = sigma_vp / alpha  # EDM table 1 (VP): sigma = sqrt((1 - abar) / abar)
        x = x_t / alpha  # EDM's x: the VP sample without its sqrt(abar) scaling
        x0 = diffusion.clip(diffusion.x0_from_output(model_output, x_t, alpha, sigma_vp))
        slope = (x - x0) / sigma  # EDM Algorithm 1, line 4: d = (x - D(x; sigma)) / sigma
        if state is not None:
            # EDM Algorithm 1, line 8: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2
            corrected = state.x + (sigma - state.sigma) * 0.5 * (state.slope + slope)
            return StepOutput(corrected * alpha, x0)
        if t_prev == CLEAN:
            return StepOutput(x0, x0)  # EDM Algorithm 1, line 5 onto sigma = 0: x + (0 - sigma) d = D
        alpha_next, sigma_vp_next = alpha_sigma(diffusion, t_prev)
        sigma_next = sigma_vp_next / alpha_next
        # EDM Algorithm 1, line 5: the Euler step x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i
        euler = x + (sigma_next - sigma) * slope
        return StepOutput(euler * alpha_next, x0, HeunState(x, sigma, slope))
