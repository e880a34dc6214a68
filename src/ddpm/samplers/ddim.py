"""DDIM (Song et al. 2021): deterministic (eta = 0) to ancestral (eta = 1) on S of the T steps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers.base import CLEAN, Sampler, StepOutput, check_steps
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

    def timesteps(self, diffusion: GaussianDiffusion) -> list[int]:
        """The S descending timesteps for this diffusion's T."""
        return self._grid(diffusion, self.steps)

    def step(
        self,
        diffusion: GaussianDiffusion,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: None = None,
    ) -> StepOutput:
        """x_{t_prev} from x_t (DDIM eq. 12); ``t_prev = -1`` for the last step (abar_prev = 1)."""
        abar = diffusion.extract(diffusion.alphas_cumprod, t, x_t)
        t_prev_b = diffusion.timesteps_for_batch(t_prev, x_t.shape[0], diffusion.betas.device)
        abar_ext = torch.cat([diffusion.alphas_cumprod.new_ones(1), diffusion.alphas_cumprod])
        abar_prev = diffusion.extract(abar_ext, t_prev_b - CLEAN, x_t)  # index -1 -> abar = 1
        x0 = diffusion.predict_x0(x_t, t, model_output)
        if diffusion.clip_denoised:
            x0 = diffusion.clip(x0)
            eps = diffusion.eps_from_x0(x_t, t, x0)  # re-derive eps so it agrees with clipped x0
        else:
            eps = diffusion.predict_eps(x_t, t, model_output)
        # DDIM eq. 16: sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar').
        sigma = self.eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).clamp(min=0).sqrt()
        if noise is None:
            noise = torch.randn_like(x_t)
        # DDIM eq. 12: x' = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z.
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        return StepOutput(abar_prev.sqrt() * x0 + direction + sigma * noise, x0)
