"""Consistency models' multistep sampler (Song et al. 2023, Algorithm 1) for a consistency-distilled run."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddpm.distillation import SIGMA_DATA, consistency_output
from ddpm.process import Process
from ddpm.samplers.base import CLEAN, Sampler, StepOutput, alpha_sigma, check_steps
from ddpm.samplers.guidance import check_guidance_scale

__all__ = ["ConsistencySampler"]


class ConsistencySampler(Sampler):
    """Song et al. 2023, Algorithm 1: x = f(x_T, T), then at each further time tau of the schedule
    x = f(x + sqrt(tau^2 - sigma_min^2) z, tau), one network evaluation each. The network's output is read as
    the consistency function f = c_skip x + c_out F of their eq. 7
    (:func:`ddpm.distillation.consistency_output`), so it samples what ``loss=consistency_distillation``
    trained.

    Args:
        steps: network evaluations (1: one step from pure noise).
        spacing: where the further times lie (:mod:`ddpm.samplers.spacing`), or a ``timesteps`` list.
        sigma_data: the consistency scalings' sigma_data (the loss's).
        guidance_scale: classifier-free guidance w for labelled sampling.
        timesteps: a custom schedule: a strictly decreasing list of times from the noisiest.
    """

    order = 1

    def __init__(
        self,
        steps: int = 1,
        spacing: str = "linspace",
        sigma_data: float = SIGMA_DATA,
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, int | float) or sigma_data <= 0:
            raise ValueError(f"sigma_data={sigma_data!r} is invalid; it must be a number > 0")
        self._set_spacing(spacing, timesteps)
        self.steps = len(self.custom_timesteps) if self.custom_timesteps is not None else check_steps(steps)
        self.sigma_data = float(sigma_data)
        self.guidance_scale = check_guidance_scale(guidance_scale)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # Sampler's class attribute, read-only here
        """Every step after the first adds fresh noise."""
        return self.steps > 1

    def __repr__(self) -> str:
        return (
            f"ConsistencySampler(steps={self.steps}, {self._spacing_repr()}, sigma_data={self.sigma_data:g}"
            f"{self._guidance_repr()})"
        )

    def timesteps(self, diffusion: Process) -> list:
        """The descending times, the first at the process's noisiest."""
        return self._grid(diffusion, self.steps)

    def step(
        self,
        diffusion: Process,
        model_output: torch.Tensor,
        t: int | float | torch.Tensor,
        t_prev: int | float | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: None = None,
    ) -> StepOutput:
        """f(x_t, t), then (unless ``t_prev`` is the clean data) noised to t_prev (Algorithm 1, line 5)."""
        t_value = t.item() if isinstance(t, torch.Tensor) else t
        times = torch.full((x_t.shape[0],), float(t_value), device=x_t.device)
        x0 = consistency_output(diffusion, model_output, x_t, times, self.sigma_data)
        t_prev = t_prev.item() if isinstance(t_prev, torch.Tensor) else t_prev
        if t_prev == CLEAN:
            return StepOutput(x0, x0)
        alpha, sigma = alpha_sigma(diffusion, t_prev)
        level, floor = sigma / alpha, diffusion.noise_level_at(diffusion.time_range[0])
        z = torch.randn_like(x_t) if noise is None else noise
        # CM Algorithm 1, line 5: x_tau = x + sqrt(tau^2 - eps^2) z, on the process's scale alpha(tau) x_tau
        return StepOutput(alpha * (x0 + math.sqrt(max(0.0, level**2 - floor**2)) * z), x0)
