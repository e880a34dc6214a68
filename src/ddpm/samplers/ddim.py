"""DDIM (Song et al. 2021): deterministic (eta = 0) to ancestral (eta = 1) on S of the T steps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddpm.process import Process
from ddpm.samplers.base import Sampler, StepOutput, alpha_sigma, check_steps
from ddpm.samplers.guidance import check_guidance_scale

__all__ = ["DDIMSampler"]


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) on S of the T steps; ``eta`` = 0 is deterministic, 1 is ancestral.

    Args:
        steps: number of sampling steps S (1 <= S <= T).
        eta: stochasticity, >= 0.
        spacing: ``linspace``, ``leading``, ``trailing``, ``karras``, ``logsnr`` or ``quadratic``
            (:mod:`ddpm.samplers.spacing`; linspace, leading and quadratic end at t = 0, as diffusers'
            DDIMScheduler does for the first two).
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
    """

    #: DDIM is DPM-Solver-1 (Lu et al. 2022, DPM-Solver sec. 4.1): first order
    order = 1

    def __init__(
        self,
        steps: int = 50,
        eta: float = 0.0,
        spacing: str = "linspace",
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        if not (isinstance(eta, int | float) and math.isfinite(eta)) or eta < 0:
            raise ValueError(f"eta={eta!r} is invalid; eta must be a finite number >= 0")
        self._set_spacing(spacing, timesteps)
        self.steps = len(self.custom_timesteps) if self.custom_timesteps is not None else check_steps(steps)
        self.eta = float(eta)
        self.guidance_scale = check_guidance_scale(guidance_scale)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]  # Sampler's class attribute, read-only here
        """DDIM draws noise only with eta > 0."""
        return self.eta > 0

    def __repr__(self) -> str:
        return (
            f"DDIMSampler(steps={self.steps}, eta={self.eta}, {self._spacing_repr()}{self._guidance_repr()})"
        )

    def timesteps(self, diffusion: Process) -> list:
        """The S descending timesteps (a continuous process's real times)."""
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
        """x_{t_prev} from x_t (DDIM eq. 12) on any process's alpha and sigma; ``t_prev = -1`` for the last
        step (alpha = 1, sigma = 0)."""
        alpha, sigma = alpha_sigma(diffusion, t)
        alpha_prev, sigma_prev = alpha_sigma(diffusion, t_prev)
        x0 = diffusion.x0_from_output(model_output, x_t, alpha, sigma)
        if diffusion.clip_denoised:
            x0 = diffusion.clip(x0)
            eps = (x_t - alpha * x0) / sigma  # re-derive eps so it agrees with clipped x0 (DDIM eq. 9)
        else:
            eps = diffusion.eps_from_output(model_output, x_t, alpha, sigma)
        # DDIM eq. 16 in alpha and sigma: eta times the posterior's std, sigma' sqrt(1 - (alpha sigma' /
        # (alpha' sigma))^2) (eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar') on DDPM's chain)
        ratio = alpha * sigma_prev / (alpha_prev * sigma)
        std = self.eta * sigma_prev * math.sqrt(max(0.0, 1.0 - ratio * ratio))
        # DDIM eq. 12: x' = alpha' x0 + sqrt(sigma'^2 - std^2) eps + std z
        out = alpha_prev * x0 + math.sqrt(max(0.0, sigma_prev**2 - std**2)) * eps
        if std > 0:
            out = out + std * (torch.randn_like(x_t) if noise is None else noise)
        return StepOutput(out, x0)
