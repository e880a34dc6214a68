"""Ancestral sampling (DDPM Algorithm 2), on all T steps or a respaced subsequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpm.diffusion import GaussianDiffusion, VarianceType
from ddpm.process import Process
from ddpm.samplers.base import CLEAN, Sampler, StepOutput, check_steps, require_chain
from ddpm.samplers.guidance import check_guidance_scale

__all__ = ["DDPMSampler"]


class DDPMSampler(Sampler):
    """Ancestral sampling (DDPM Algorithm 2) with the diffusion's variance, fixed or learned.

    A learned variance is read from the network's output on each jump as improved-diffusion's respacing
    does: ``learned_range`` interpolates between the jump's own log beta' and log beta-tilde', ``learned``
    is taken as the log-variance itself.

    Args:
        steps: None for all T steps; S < T runs ancestral sampling on a respaced subsequence: each jump
            t -> t_prev is one DDPM step of beta' = 1 - abar[t] / abar[t_prev] (improved-diffusion's
            respacing), computed in the step.
        spacing: how the subsequence is chosen when ``steps`` is given (:mod:`ddpm.samplers.spacing`).
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
    """

    stochastic = True
    #: ancestral sampling: first order (an Euler-Maruyama step of the reverse SDE, Song et al. 2021)
    order = 1

    def __init__(
        self,
        steps: int | None = None,
        spacing: str = "linspace",
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        self._set_spacing(spacing, timesteps)
        if self.custom_timesteps is not None:
            steps = len(self.custom_timesteps)
        elif steps is not None:
            try:
                check_steps(steps)
            except ValueError:
                raise ValueError(
                    f"steps={steps!r} is invalid; use None (all T steps) or an integer >= 1"
                ) from None
        self.steps = steps
        self.guidance_scale = check_guidance_scale(guidance_scale)

    def __repr__(self) -> str:
        return f"DDPMSampler(steps={self.steps}, {self._spacing_repr()}{self._guidance_repr()})"

    def timesteps(self, diffusion: Process) -> list[int]:
        """All T steps, or the respaced subsequence."""
        diffusion = require_chain(diffusion, "sampler=ancestral (DDPM Algorithm 2)")
        if self.custom_timesteps is None and (self.steps is None or self.steps == diffusion.num_timesteps):
            return list(range(diffusion.num_timesteps - 1, -1, -1))
        return self._grid(diffusion, self.steps or diffusion.num_timesteps)

    def step(
        self,
        diffusion: Process,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: None = None,
    ) -> StepOutput:
        """x_{t_prev} ~ p(x_{t_prev} | x_t): the posterior mean at the clipped x0-hat plus sigma z.

        ``t`` and ``t_prev`` are one timestep for all samples or one per sample; ``t_prev = -1`` is the
        last step, which adds no noise and returns x0-hat.
        """
        diffusion = require_chain(diffusion, "sampler=ancestral (DDPM Algorithm 2)")
        batch = x_t.shape[0]
        t_b = diffusion.timesteps_for_batch(t, batch, diffusion.betas.device)
        prev_b = diffusion.timesteps_for_batch(t_prev, batch, diffusion.betas.device)
        last = prev_b == CLEAN
        log_abar = diffusion.extract(diffusion.log_alphas_cumprod, t_b, x_t)
        log_abar_prev = diffusion.extract(diffusion.log_alphas_cumprod, prev_b.clamp(min=0), x_t)
        log_abar_prev = torch.where(last.reshape(log_abar.shape).to(x_t.device), 0.0, log_abar_prev)
        # 1 - abar as -expm1(log abar): near t = 0 the float32 difference would lose most of its digits
        abar_prev, one_minus_abar, one_minus_abar_prev = (
            log_abar_prev.exp(),
            -log_abar.expm1(),
            -log_abar_prev.expm1(),
        )
        # improved-diffusion respacing: the jump t_prev -> t is one step of beta' = 1 - abar_t / abar_prev
        beta = -torch.expm1(log_abar - log_abar_prev)
        prediction, var_values = diffusion.split_output(model_output, x_t)
        x0 = diffusion.clip(diffusion.predict_x0(x_t, t_b, prediction))
        # DDPM eq. 7 on the jump: mu = (sqrt(abar') beta' x0 + sqrt(1 - beta') (1 - abar') x_t) / (1 - abar)
        mean = (abar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * one_minus_abar_prev * x_t) / one_minus_abar
        if diffusion.variance is VarianceType.FIXED_SMALL:
            var = beta * one_minus_abar_prev / one_minus_abar  # DDPM eq. 7: beta-tilde of the jump
        elif diffusion.variance is VarianceType.LEARNED:
            assert var_values is not None  # split_output: a learned variance's half of the output
            var = var_values.float().exp()  # improved-diffusion's LEARNED: the output is log sigma^2
        elif diffusion.variance is VarianceType.LEARNED_RANGE:
            assert var_values is not None
            var = self._learned_range(diffusion, var_values, t_b, prev_b, beta, one_minus_abar, x_t)
        else:
            var = beta  # DDPM sec. 3.2: sigma^2 = beta
        if noise is None:
            noise = torch.randn_like(x_t)
        nonzero = (~last).float().reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.device)
        # DDPM Algorithm 2, line 4: x_{t-1} = mu_theta(x_t, t) + sigma_t z, z = 0 at the last step.
        return StepOutput(mean + nonzero * var.sqrt() * noise, x0)

    @staticmethod
    def _learned_range(
        diffusion: GaussianDiffusion,
        var_values: torch.Tensor,
        t: torch.Tensor,
        t_prev: torch.Tensor,
        beta: torch.Tensor,
        one_minus_abar: torch.Tensor,
        x_t: torch.Tensor,
    ) -> torch.Tensor:
        """sigma^2 of ``learned_range`` on the jump t -> t_prev, as improved-diffusion's respaced process.

        Between log beta-tilde' of the jump (its posterior variance, clipped at its first step as
        ``posterior_log_variance_clipped``) and log beta'. All T steps give the diffusion's own
        :meth:`~ddpm.diffusion.GaussianDiffusion.reverse_variance`.
        """
        if bool((t_prev == t - 1).all()):  # no respacing: the diffusion's own range
            return diffusion.reverse_variance(t, x_t, var_values)[0]
        last = (t_prev == CLEAN).reshape(beta.shape).to(x_t.device)
        # DDPM eq. 7 on the jump: beta-tilde' = beta' (1 - abar_prev) / (1 - abar); at the last jump it is 0,
        # and the clipped log takes no noise there anyway: beta' itself keeps the log finite
        log_abar_prev = diffusion.extract(diffusion.log_alphas_cumprod, t_prev.clamp(min=0), x_t)
        post = beta * -log_abar_prev.expm1() / one_minus_abar
        min_log = torch.where(last, beta.log(), post.clamp(min=torch.finfo(post.dtype).tiny).log())
        max_log = beta.log()
        frac = (var_values.float() + 1) / 2  # improved DDPM eq. 15
        return (frac * max_log + (1 - frac) * min_log).exp()
