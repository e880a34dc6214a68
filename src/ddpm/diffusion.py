"""Gaussian diffusion: the forward process, the posterior, model parameterisations and the loss.

Plain PyTorch (no Lightning, no Hydra). Every buffer is computed in float64 from the betas and stored
as float32. ``t`` is always one integer index per sample (0-based, ``0 .. T-1``) and every coefficient
is gathered per sample and broadcast over any data shape: a scalar ``[B]``, a sequence ``[B, L]``, a
2D point ``[B, 2]`` or an image ``[B, C, H, W]``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GaussianDiffusion", "LossType", "LossWeighting", "Objective", "VarianceType", "log_sigmas"]


class Objective(enum.StrEnum):
    """What the network predicts."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


class VarianceType(enum.StrEnum):
    """The fixed reverse-process variance sigma_t^2."""

    FIXED_LARGE = "fixed_large"
    FIXED_SMALL = "fixed_small"


class LossType(enum.StrEnum):
    """Per-element distance between the target and the network output."""

    MSE = "mse"
    L1 = "l1"
    HUBER = "huber"


class LossWeighting(enum.StrEnum):
    """Per-timestep weighting of the loss."""

    NONE = "none"
    MIN_SNR = "min_snr"


E = TypeVar("E", bound=enum.StrEnum)


def _parse_enum(cls: type[E], arg: str, value: object) -> E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{arg}={value!r} is unknown; choose one of {allowed}") from None


def log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log sigma_t, float64 on the CPU, of the noise levels sigma = sqrt((1 - abar) / abar) of a schedule."""
    abar = alphas_cumprod.detach().double().cpu()
    return 0.5 * ((1 - abar) / abar).log()  # VP: sigma^2 = (1 - abar) / abar (EDM table 1)


class GaussianDiffusion(nn.Module):
    """The DDPM forward process q and the Gaussian reverse process p for a fixed beta schedule.

    Args:
        betas: beta_t for t = 0 .. T-1, each in (0, 1); see :func:`ddpm.schedules.make_beta_schedule`.
        objective: what the network predicts: ``eps`` (DDPM), ``x0`` or ``v`` (Salimans & Ho).
        variance: reverse variance: ``fixed_large`` (beta_t, DDPM's CIFAR-10 choice) or
            ``fixed_small`` (the posterior variance).
        clip_denoised: clip the predicted x0 to ``clip_range`` before forming the posterior mean.
        clip_range: (low, high) for ``clip_denoised``; (-1, 1) for images scaled to [-1, 1].
        loss: ``mse`` (L_simple), ``l1`` or ``huber``.
        loss_weighting: ``none`` or ``min_snr`` (Hang et al. 2023) with ``min_snr_gamma``.
        min_snr_gamma: the gamma of min-SNR weighting.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    log_alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    snr: torch.Tensor

    def __init__(
        self,
        betas: torch.Tensor | Sequence[float],
        objective: str = "eps",
        variance: str = "fixed_large",
        clip_denoised: bool = False,
        clip_range: tuple[float, float] = (-1.0, 1.0),
        loss: str = "mse",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        super().__init__()
        self.objective = _parse_enum(Objective, "objective", objective)
        self.variance = _parse_enum(VarianceType, "variance", variance)
        self.loss_type = _parse_enum(LossType, "loss", loss)
        self.loss_weighting = _parse_enum(LossWeighting, "loss_weighting", loss_weighting)
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma={min_snr_gamma!r} must be > 0")
        low, high = (float(v) for v in clip_range)
        if not low < high:
            raise ValueError(f"clip_range={tuple(clip_range)!r} must be (low, high) with low < high")
        self.clip_denoised = bool(clip_denoised)
        self.clip_range = (low, high)
        self.min_snr_gamma = float(min_snr_gamma)

        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a 1D tensor with T >= 1 entries, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError(
                f"betas span [{b.min().item():.3g}, {b.max().item():.3g}]; all must lie in (0, 1)"
            )
        self.num_timesteps = b.numel()

        alphas = 1.0 - b
        abar = torch.cumprod(alphas, 0)  # DDPM eq. 4: abar_t = prod_{s<=t} alpha_s
        abar_prev = torch.cat([b.new_ones(1), abar[:-1]])
        post_var = b * (1.0 - abar_prev) / (1.0 - abar)  # DDPM eq. 7: beta-tilde_t
        # improved-diffusion: post_var[0] = 0, so its log is taken from post_var[1] (clipped log).
        post_var_for_log = torch.cat([post_var[1:2], post_var[1:]]) if b.numel() > 1 else b
        buffers = {
            "betas": b,
            "alphas_cumprod": abar,
            # log abar from float64: a jump's beta, 1 - abar_t / abar_s = -expm1(log abar_t - log abar_s),
            # keeps its relative precision even for one step of beta ~ 1e-4 (the float32 ratio would not)
            "log_alphas_cumprod": torch.cumsum(torch.log1p(-b), 0),
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": abar.rsqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_var_for_log.log(),
            # DDPM eq. 7: mu-tilde = coef1 * x0 + coef2 * x_t.
            "posterior_mean_coef1": b * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "snr": abar / (1.0 - abar),
        }
        # float32 holds abar down to ~1e-45 and 1/sqrt(abar) up to ~3e38: a chain that runs far past
        # pure noise (e.g. T=18000 on the linear schedule) would otherwise train, then sample inf/NaN.
        tiny = torch.finfo(torch.float32).tiny
        if abar[-1] < tiny or any(not bool(v.float().isfinite().all()) for v in buffers.values()):
            last_ok = int((abar >= tiny).sum())
            raise ValueError(
                f"T={b.numel()} is too long for this schedule: abar[T-1]={abar[-1].item():.3g} is below "
                f"float32's normal range ({tiny:.3g}) from t={last_ok} on, so its coefficients overflow; the "
                "chain is pure noise long before: use a smaller T or schedule.scale_to_T=true"
            )
        # Derived from the betas, so they are not saved in checkpoints (persistent=False).
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    # ------------------------------------------------------------------ helpers
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):  # type: ignore[override]
        """Move buffers with the module but keep them float32 (``.half()`` / ``bf16-true``)."""
        super()._apply(fn, recurse)
        for name, buf in self._buffers.items():
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                self._buffers[name] = buf.float()
        return self

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return self.num_timesteps

    def timesteps_for_batch(self, t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
        """``t`` as int64 [batch] on ``device``: one timestep for all, or one per sample.

        Raises:
            TypeError: a floating-point ``t``.
        """
        t = torch.as_tensor(t, device=device)
        if t.is_floating_point():
            raise TypeError(f"t must be an integer tensor, got {t.dtype}")
        if t.ndim == 0:
            t = t.expand(batch)
        return t.long()

    def alphas_cumprod_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """abar at real-valued timesteps ``t`` in [0, T-1], float64, shaped like ``t``.

        Exact at the integers. Between them log sigma, sigma = sqrt((1 - abar) / abar), is interpolated
        linearly: the inverse of the sigma-to-timestep map of the ``karras`` and ``logsnr`` spacings (as
        diffusers' ``_sigma_to_t``), so a network evaluated at a fractional t sees the noise level it was
        asked for.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        if bool(((t < 0) | (t > self.num_timesteps - 1)).any()):
            raise ValueError(f"t must lie in [0, T-1] = [0, {self.num_timesteps - 1}]")
        log_sigma = log_sigmas(self.alphas_cumprod)
        low = t.floor().long().clamp(max=self.num_timesteps - 1)
        high = (low + 1).clamp(max=self.num_timesteps - 1)
        w = t - low
        ls = (1 - w) * log_sigma[low] + w * log_sigma[high]
        return 1 / (1 + (2 * ls).exp())  # abar = 1 / (1 + sigma^2)

    def extract(self, buffer: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """Gather ``buffer[t]`` per sample and shape it [B, 1, ..., 1] to broadcast against ``x``."""
        t = self.timesteps_for_batch(t, x.shape[0], buffer.device)
        out = buffer.gather(0, t)
        return out.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.device)

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in closed form."""
        if noise is None:
            noise = torch.randn_like(x0)
        # DDPM eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
        return (
            self.extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self.extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_step(
        self, x_prev: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One Markov step x_{t-1} -> x_t of q (with 0-based t: applies beta[t] to x_{t-1}).

        Starting from x_0 and applying t = 0, 1, ..., k gives x_k, distributed as ``q_sample(x0, k)``.
        """
        if noise is None:
            noise = torch.randn_like(x_prev)
        beta = self.extract(self.betas, t, x_prev)
        # DDPM eq. 2: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps.
        return (1.0 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), broadcast to x_t."""
        # DDPM eqs. 6-7: mu-tilde_t = coef1 x_0 + coef2 x_t, beta-tilde_t.
        mean = (
            self.extract(self.posterior_mean_coef1, t, x_t) * x0
            + self.extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = self.extract(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = self.extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    # ------------------------------------------------------------------ parameterisations
    def predict_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, model_output: torch.Tensor
    ) -> torch.Tensor:
        """x0-hat from the network output under this objective (not clipped)."""
        alpha = self.extract(self.sqrt_alphas_cumprod, t, x_t)
        sigma = self.extract(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        return self.x0_from_output(model_output, x_t, alpha, sigma)

    def x0_from_output(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
    ) -> torch.Tensor:
        """x0-hat (not clipped) given alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t) directly.

        This is the form the solvers use, whose timesteps may lie between the integers (Heun); ``alpha``
        and ``sigma`` are floats or tensors that broadcast against ``x_t``.
        """
        if self.objective is Objective.EPS:
            # DDPM eq. 4 solved for x0: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
            return (x_t - sigma * model_output) / alpha
        if self.objective is Objective.X0:
            return model_output
        # Salimans & Ho, progressive distillation eq. (v): x0 = sqrt(abar) x_t - sqrt(1 - abar) v.
        return alpha * x_t - sigma * model_output

    def predict_eps(
        self, x_t: torch.Tensor, t: torch.Tensor | int, model_output: torch.Tensor
    ) -> torch.Tensor:
        """eps-hat from the network output under this objective."""
        if self.objective is Objective.EPS:
            return model_output
        if self.objective is Objective.X0:
            return self.eps_from_x0(x_t, t, model_output)
        # Salimans & Ho: eps = sqrt(abar) v + sqrt(1 - abar) x_t.
        return (
            self.extract(self.sqrt_alphas_cumprod, t, x_t) * model_output
            + self.extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        )

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """The eps that maps x0 to x_t (DDPM eq. 4 solved for eps)."""
        # eps = (sqrt(1/abar) x_t - x0) / sqrt(1/abar - 1)
        return (self.extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self.extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def training_target(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """What the network should output for (x0, t, noise) under this objective."""
        if self.objective is Objective.EPS:
            return noise
        if self.objective is Objective.X0:
            return x0
        # Salimans & Ho: v = sqrt(abar) eps - sqrt(1 - abar) x0.
        return (
            self.extract(self.sqrt_alphas_cumprod, t, x0) * noise
            - self.extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    # ------------------------------------------------------------------ reverse process
    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """Clip x0-hat to ``clip_range`` when ``clip_denoised`` is on."""
        if not self.clip_denoised:
            return x0
        return x0.clamp(*self.clip_range)

    def reverse_variance(self, t: torch.Tensor | int, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_t^2, log sigma_t^2) of p(x_{t-1} | x_t), broadcast against x_t."""
        if self.variance is VarianceType.FIXED_SMALL:
            var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
        else:
            # DDPM sec. 3.2, sigma^2 = beta; the t=0 entry uses post_var[1], as DDPM's code and
            # improved-diffusion's FIXED_LARGE do: it gives a better decoder log-likelihood.
            var = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
            log_var = var.log()
        return self.extract(var, t, x_t), self.extract(log_var, t, x_t)

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> dict[str, torch.Tensor]:
        """Mean and variance of p(x_{t-1} | x_t) plus the (clipped) x0 and eps predictions."""
        x0 = self.clip(self.predict_x0(x_t, t, model_output))
        # Clip x0 BEFORE the posterior mean (clipping the mean afterwards would do nothing).
        mean, _, _ = self.q_posterior(x0, x_t, t)
        var, log_var = self.reverse_variance(t, x_t)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": x0}

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self,
        batch: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """t ~ Uniform{0, ..., T-1}, one per sample (DDPM Algorithm 1)."""
        return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights [B] for the configured weighting (1 for ``none``)."""
        if self.loss_weighting is LossWeighting.NONE:
            return torch.ones(t.shape[0], device=self.snr.device)
        snr = self.snr.gather(0, t.to(self.snr.device).long())
        clipped = snr.clamp(max=self.min_snr_gamma)
        # Min-SNR-gamma (Hang et al. 2023, eq. 8) expressed for each objective.
        if self.objective is Objective.EPS:
            return clipped / snr
        if self.objective is Objective.X0:
            return clipped
        return clipped / (snr + 1.0)

    def training_loss(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The denoising loss (L_simple for eps + mse, DDPM eq. 14).

        Args:
            model: ``model(x_t, t) -> output`` of x0's shape.
            x0: clean data [B, ...].
            t: per-sample timesteps [B]; drawn uniformly when None.
            noise: eps ~ N(0, I) of x0's shape; drawn when None.
            reduction: ``mean`` for a scalar, ``none`` for the per-sample losses [B].
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction={reduction!r} is unknown; choose 'mean' or 'none'")
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        x_t = self.q_sample(x0, t, noise)
        output = model(x_t, t)
        if output.shape != x0.shape:
            raise ValueError(
                f"model output shape {tuple(output.shape)} does not match data shape {tuple(x0.shape)}"
            )
        # Keep the loss in float32 even when the network ran under autocast.
        output = output.float()
        target = self.training_target(x0, t, noise).float()
        if self.loss_type is LossType.MSE:
            per_elem = F.mse_loss(output, target, reduction="none")
        elif self.loss_type is LossType.L1:
            per_elem = F.l1_loss(output, target, reduction="none")
        else:
            per_elem = F.huber_loss(output, target, reduction="none")
        per_sample = per_elem.reshape(per_elem.shape[0], -1).mean(dim=1)
        per_sample = per_sample * self.loss_weights(t).to(per_sample.device)
        return per_sample.mean() if reduction == "mean" else per_sample

    def extra_repr(self) -> str:
        """Summary shown by ``print(diffusion)``."""
        return (
            f"T={self.num_timesteps}, objective={self.objective.value}, "
            f"variance={self.variance.value}, clip_denoised={self.clip_denoised}, "
            f"loss={self.loss_type.value}, loss_weighting={self.loss_weighting.value}"
        )
