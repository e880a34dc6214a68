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

__all__ = [
    "ZERO_SNR_ABAR",
    "GaussianDiffusion",
    "LossType",
    "LossWeighting",
    "Objective",
    "TimestepSampler",
    "VarianceType",
    "log_sigmas",
]

#: abar used in place of an exact 0 (a zero-terminal-SNR schedule's last step) where a formula needs
#: log(abar) or 1 / abar: the noise level sigma = sqrt((1 - abar) / abar) of the solvers and the spacings.
#: diffusers' Euler, DPM-Solver and UniPC schedulers set ``alphas_cumprod[-1] = 2**-24`` for the same reason.
ZERO_SNR_ABAR = 2.0**-24

#: improved DDPM sec. 3.3: 10 losses per t kept for the importance sampler, 0.001 of uniform mixed in
HISTORY_PER_TERM = 10
UNIFORM_PROB = 1e-3


class Objective(enum.StrEnum):
    """What the network predicts."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


class VarianceType(enum.StrEnum):
    """The reverse-process variance sigma_t^2: fixed, or learned by the network (improved DDPM sec. 3.1)."""

    FIXED_LARGE = "fixed_large"
    FIXED_SMALL = "fixed_small"
    LEARNED = "learned"
    LEARNED_RANGE = "learned_range"


class LossType(enum.StrEnum):
    """The loss: a per-element distance to the target (L_simple for mse), or the variational bound's terms
    alone (``vlb``) or added to L_simple (``hybrid``, improved DDPM sec. 3.1)."""

    MSE = "mse"
    L1 = "l1"
    HUBER = "huber"
    HYBRID = "hybrid"
    VLB = "vlb"


class TimestepSampler(enum.StrEnum):
    """How training draws t: uniformly, or by importance sampling (improved DDPM sec. 3.3)."""

    UNIFORM = "uniform"
    LOSS_SECOND_MOMENT = "loss_second_moment"


class LossWeighting(enum.StrEnum):
    """Per-timestep weighting of the loss."""

    NONE = "none"
    MIN_SNR = "min_snr"


E = TypeVar("E", bound=enum.StrEnum)


def _parse_enum(cls: type[E], arg: str, value: object) -> E:
    try:
        return cls(value)  # type: ignore[arg-type]  # lookup by value takes any object; a miss raises below
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{arg}={value!r} is unknown; choose one of {allowed}") from None


def log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log sigma_t, float64 on the CPU, of the noise levels sigma = sqrt((1 - abar) / abar) of a schedule.

    An abar of exactly 0 (zero terminal SNR) is taken as :data:`ZERO_SNR_ABAR`, so sigma stays finite.
    """
    abar = alphas_cumprod.detach().double().cpu()
    abar = torch.where(abar == 0, ZERO_SNR_ABAR, abar)
    return 0.5 * ((1 - abar) / abar).log()  # VP: sigma^2 = (1 - abar) / abar (EDM table 1)


def _check_drop_prob(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise ValueError(
            f"cond_drop_prob={p!r} is outside [0, 1); it is the probability of training a sample without its "
            "label (0.1 in Ho & Salimans 2022)"
        )
    return float(p)


class GaussianDiffusion(nn.Module):
    """The DDPM forward process q and the Gaussian reverse process p for a fixed beta schedule.

    Args:
        betas: beta_t for t = 0 .. T-1, each in (0, 1); see :func:`ddpm.schedules.make_beta_schedule`.
        objective: what the network predicts: ``eps`` (DDPM), ``x0`` or ``v`` (Salimans & Ho).
        variance: reverse variance: ``fixed_large`` (beta_t, DDPM's CIFAR-10 choice), ``fixed_small``
            (the posterior variance), or learned by the network, which then outputs twice the data's
            channels (:attr:`output_multiplier`): ``learned_range`` (improved DDPM eq. 15: the second half
            v in [-1, 1] interpolates log sigma^2 between log beta-tilde_t and log beta_t) or ``learned``
            (the second half is log sigma^2 itself).
        clip_denoised: clip the predicted x0 to ``clip_range`` before forming the posterior mean.
        clip_range: (low, high) for ``clip_denoised``; (-1, 1) for images scaled to [-1, 1].
        loss: ``mse`` (L_simple), ``l1``, ``huber``, ``hybrid`` (L_simple + ``vlb_weight`` L_vlb with the
            mean's gradient stopped in L_vlb: it trains the learned variance, improved DDPM sec. 3.1) or
            ``vlb`` (L_vlb alone). L_vlb's terms are :func:`ddpm.likelihood.vb_terms_nats`, the bound
            ``ddpm-eval --bpd`` reports.
        loss_weighting: ``none`` or ``min_snr`` (Hang et al. 2023) with ``min_snr_gamma``.
        min_snr_gamma: the gamma of min-SNR weighting.
        vlb_weight: lambda of the hybrid loss (improved DDPM: 0.001).
        vlb_decoder: L_0's decoder in the training loss: ``discretized`` (images), ``gaussian``, or
            ``auto``: discretised with the levels :func:`ddpm.likelihood.infer_bins` finds in the first
            training batch, else Gaussian (as ``ddpm-eval --bpd`` decides on held-out data).
        timestep_sampler: ``uniform`` (DDPM Algorithm 1) or ``loss_second_moment``: t drawn with
            probability proportional to sqrt(E[L_t^2]) over the last 10 losses at each t, uniform until
            every t has 10 (improved DDPM sec. 3.3); for losses with the bound's terms (``vlb``, ``hybrid``).
        offset_noise: the std of a per-sample, per-channel constant added to the training noise (offset
            noise, Guttenberg 2023), images only; 0 turns it off.
        cond_drop_prob: label dropout for class-conditional training (Ho & Salimans 2022, sec. 3.2): the
            probability that a sample's label is replaced by the null label, so one network learns both
            p(x | y) and p(x) for classifier-free guidance. Used only when ``training_loss`` gets labels.
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
        vlb_weight: float = 1e-3,
        vlb_decoder: str = "auto",
        timestep_sampler: str = "uniform",
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.objective = _parse_enum(Objective, "objective", objective)
        self.variance = _parse_enum(VarianceType, "variance", variance)
        self.loss_type = _parse_enum(LossType, "loss", loss)
        self.loss_weighting = _parse_enum(LossWeighting, "loss_weighting", loss_weighting)
        self.timestep_sampler = _parse_enum(TimestepSampler, "timestep_sampler", timestep_sampler)
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma={min_snr_gamma!r} must be > 0")
        if not (isinstance(vlb_weight, int | float) and vlb_weight > 0):
            raise ValueError(f"vlb_weight={vlb_weight!r} is invalid; it must be a number > 0")
        if vlb_decoder not in ("auto", "discretized", "gaussian"):
            raise ValueError(
                f"vlb_decoder={vlb_decoder!r} is unknown; choose 'auto', 'discretized' or 'gaussian'"
            )
        if not (isinstance(offset_noise, int | float) and offset_noise >= 0):
            raise ValueError(f"offset_noise={offset_noise!r} is invalid; it must be a number >= 0 (0: off)")
        if self.loss_type is LossType.HYBRID and not self.learns_variance:
            raise ValueError(
                f"loss=hybrid with variance={self.variance.value}: its L_vlb term trains only the variance "
                "(the mean's gradient is stopped there); use variance=learned_range or learned, or loss=vlb"
            )
        if self.loss_type is LossType.VLB and self.loss_weighting is not LossWeighting.NONE:
            raise ValueError(
                f"loss_weighting={self.loss_weighting.value} with loss=vlb: the bound's terms have their own "
                "weights; use loss_weighting=none"
            )
        if self.timestep_sampler is TimestepSampler.LOSS_SECOND_MOMENT and not self.uses_vlb:
            raise ValueError(
                f"timestep_sampler=loss_second_moment with loss={self.loss_type.value}: it samples t by the "
                "bound's per-t terms L_t, which this loss has none of; use loss=vlb (or hybrid) or "
                "timestep_sampler=uniform"
            )
        self.vlb_weight = float(vlb_weight)
        self.vlb_decoder = vlb_decoder
        #: the decoder and levels ``auto`` settled on (from the first training batch)
        self._vlb_decoder_found: tuple[str, int] | None = None
        self.offset_noise = float(offset_noise)
        low, high = (float(v) for v in clip_range)
        if not low < high:
            raise ValueError(f"clip_range={tuple(clip_range)!r} must be (low, high) with low < high")
        self.clip_denoised = bool(clip_denoised)
        self.clip_range = (low, high)
        self.min_snr_gamma = float(min_snr_gamma)
        self.cond_drop_prob = _check_drop_prob(cond_drop_prob)

        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a 1D tensor with T >= 1 entries, got shape {tuple(b.shape)}")
        # a last beta of exactly 1 is a zero-terminal-SNR schedule (Lin et al. 2023): abar[T-1] = 0
        self.zero_terminal_snr = b.numel() > 1 and float(b[-1]) == 1.0
        inner = b[:-1] if self.zero_terminal_snr else b
        if not bool(((inner > 0) & (inner < 1)).all()):
            raise ValueError(
                f"betas span [{b.min().item():.3g}, {b.max().item():.3g}]; all must lie in (0, 1) "
                "(the last may be 1: zero terminal SNR)"
            )
        if self.zero_terminal_snr and self.objective is Objective.EPS:
            raise ValueError(
                "objective=eps with a zero-terminal-SNR schedule (abar[T-1] = 0): at t = T-1 x_t is pure "
                "noise, so eps says nothing about x0 (x0 = (x_t - eps) / 0); use objective=v or x0"
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
        if self.zero_terminal_snr:  # 1 / abar and log abar are infinite at t = T-1 by design
            checked = {k: v[:-1] for k, v in buffers.items()}
            abar_checked = abar[:-1]
        else:
            checked, abar_checked = buffers, abar
        if abar_checked[-1] < tiny or any(not bool(v.float().isfinite().all()) for v in checked.values()):
            last_ok = int((abar >= tiny).sum())
            raise ValueError(
                f"T={b.numel()} is too long for this schedule: abar[T-1]={abar[-1].item():.3g} is below "
                f"float32's normal range ({tiny:.3g}) from t={last_ok} on, so its coefficients overflow; the "
                "chain is pure noise long before: use a smaller T or schedule.scale_to_T=true"
            )
        # Derived from the betas, so they are not saved in checkpoints (persistent=False).
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)
        # improved DDPM sec. 3.3's loss history, on the CPU in float64; in checkpoints through
        # timestep_sampler_state (the training module's hook), not the state_dict the EMA averages
        self._loss_history = torch.zeros(self.num_timesteps, HISTORY_PER_TERM, dtype=torch.float64)
        self._loss_counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    # ------------------------------------------------------------------ helpers
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
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

    @property
    def learns_variance(self) -> bool:
        """Whether the network outputs the reverse variance (``learned`` or ``learned_range``)."""
        return self.variance in (VarianceType.LEARNED, VarianceType.LEARNED_RANGE)

    @property
    def uses_vlb(self) -> bool:
        """Whether the loss holds the variational bound's per-t terms (``vlb`` or ``hybrid``)."""
        return self.loss_type in (LossType.VLB, LossType.HYBRID)

    @property
    def output_multiplier(self) -> int:
        """The network's output channels per data channel: 2 with a learned variance (the mean's target,
        then the variance), else 1."""
        return 2 if self.learns_variance else 1

    def output_shape(self, data_shape: Sequence[int]) -> tuple[int, ...]:
        """The network output's shape for data of ``data_shape`` (batch first): the channel axis (axis 1)
        doubled with a learned variance; scalar data [B] gives [B, 2]."""
        shape = tuple(int(s) for s in data_shape)
        if not self.learns_variance:
            return shape
        if len(shape) == 1:
            return (shape[0], 2)
        return (shape[0], 2 * shape[1], *shape[2:])

    def check_output(self, output_shape: Sequence[int], data_shape: Sequence[int]) -> None:
        """A one-line ValueError when a network's output does not fit this diffusion (checked at build)."""
        expected = self.output_shape(data_shape)
        if tuple(output_shape) != expected:
            what = (
                f"variance={self.variance.value} needs the network to output {self.output_multiplier}x the "
                "data's channels (the mean's target, then the variance: model.out_mult=2)"
                if self.learns_variance
                else f"variance={self.variance.value} needs an output of the data's shape (model.out_mult=1)"
            )
            raise ValueError(
                f"the network outputs {tuple(output_shape)[1:]} per sample for data of shape "
                f"{tuple(data_shape)[1:]}, expected {expected[1:]}: {what}"
            )

    def check_data(self, data_shape: Sequence[int]) -> None:
        """A one-line ValueError when this diffusion's options do not fit data of ``data_shape`` (batch
        first): ``offset_noise`` needs a channel axis and positions (images)."""
        if self.offset_noise and len(data_shape) < 3:
            raise ValueError(
                f"offset_noise={self.offset_noise} needs data with channels and positions (images "
                f"[B, C, H, W]), got samples of shape {tuple(data_shape)[1:]}; use offset_noise=0"
            )

    def split_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the objective's prediction, the variance values or None) of a network output.

        With a learned variance the output is [B, 2C, ...] (scalar data: [B, 2]) and is split along the
        channel axis, as improved-diffusion does; an output already of x_t's shape is the prediction alone.

        Raises:
            ValueError: an output of neither shape.
        """
        if model_output.shape == x_t.shape:
            return model_output, None
        if self.learns_variance and tuple(model_output.shape) == self.output_shape(x_t.shape):
            if x_t.ndim == 1:
                return model_output[:, 0], model_output[:, 1]
            mean_part, var_part = model_output.chunk(2, dim=1)
            return mean_part, var_part
        raise ValueError(
            f"model output shape {tuple(model_output.shape)} does not fit data of shape {tuple(x_t.shape)} "
            f"under variance={self.variance.value} (expected {self.output_shape(x_t.shape)})"
        )

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
        and ``sigma`` are floats or tensors that broadcast against ``x_t``. A learned variance's channels
        are ignored (:meth:`split_output`).
        """
        model_output = self.split_output(model_output, x_t)[0]
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
        """eps-hat from the network output under this objective (a learned variance's channels ignored)."""
        model_output = self.split_output(model_output, x_t)[0]
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
        eps = (self.extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self.extract(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )
        if not self.zero_terminal_snr:
            return eps
        # at abar = 0 the form above is inf / inf; DDPM eq. 4 gives eps = x_t there
        last = self.extract(self.alphas_cumprod, t, x_t) == 0
        return torch.where(last, x_t, eps)

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

    def reverse_variance(
        self, t: torch.Tensor | int, x_t: torch.Tensor, var_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_t^2, log sigma_t^2) of p(x_{t-1} | x_t), broadcast against x_t.

        ``var_values`` is the variance half of a network output (:meth:`split_output`), required with a
        learned variance.
        """
        if self.learns_variance:
            if var_values is None:
                raise ValueError(f"variance={self.variance.value} needs the network's variance output")
            var_values = var_values.float()
            if self.variance is VarianceType.LEARNED:
                log_var = var_values  # improved-diffusion's LEARNED: the output is log sigma^2
            else:
                min_log = self.extract(self.posterior_log_variance_clipped, t, x_t)
                max_log = self.extract(self.betas, t, x_t).log()
                # improved DDPM eq. 15: sigma^2 = exp(v log beta_t + (1 - v) log beta-tilde_t), v in [0, 1]
                # from the output in [-1, 1] (improved-diffusion's LEARNED_RANGE)
                frac = (var_values + 1) / 2
                log_var = frac * max_log + (1 - frac) * min_log
            return log_var.exp(), log_var
        if self.variance is VarianceType.FIXED_SMALL:
            var, log_var = self.posterior_variance, self.posterior_log_variance_clipped
        else:
            # DDPM sec. 3.2, sigma^2 = beta; the t=0 entry uses post_var[1], as DDPM's code and
            # improved-diffusion's FIXED_LARGE do: it gives a better decoder log-likelihood.
            var = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
            log_var = var.log()
        return self.extract(var, t, x_t), self.extract(log_var, t, x_t)

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        clip_denoised: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Mean and variance of p(x_{t-1} | x_t) plus the (clipped) x0 prediction.

        ``clip_denoised`` overrides the diffusion's own setting (None keeps it); a learned variance is
        read from the output's second half.
        """
        prediction, var_values = self.split_output(model_output, x_t)
        x0 = self.predict_x0(x_t, t, prediction)
        if self.clip_denoised if clip_denoised is None else clip_denoised:
            x0 = x0.clamp(*self.clip_range)
        # Clip x0 BEFORE the posterior mean (clipping the mean afterwards would do nothing).
        mean, _, _ = self.q_posterior(x0, x_t, t)
        var, log_var = self.reverse_variance(t, x_t, var_values)
        return {"mean": mean, "variance": var, "log_variance": log_var, "pred_x0": x0}

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self,
        batch: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """t, one per sample: uniform on {0, ..., T-1} (DDPM Algorithm 1), or with ``loss_second_moment``
        drawn from :meth:`timestep_probabilities` (improved DDPM sec. 3.3)."""
        if not self.importance_sampling:
            return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)
        t = torch.multinomial(self.timestep_probabilities(), batch, replacement=True, generator=generator)
        return t.to(device)

    @property
    def importance_sampling(self) -> bool:
        """Whether t is drawn by the loss history (``loss_second_moment``, once every t has its 10 losses)."""
        return self.timestep_sampler is TimestepSampler.LOSS_SECOND_MOMENT and bool(
            (self._loss_counts == HISTORY_PER_TERM).all()
        )

    def timestep_probabilities(self) -> torch.Tensor:
        """p_t [T] (float64, CPU) with which training draws t.

        ``loss_second_moment`` (improved DDPM sec. 3.3, eq. 18): p_t proportional to sqrt(E[L_t^2]) over the
        last 10 losses at t, mixed with 0.001 of uniform (improved-diffusion's ``LossSecondMomentResampler``);
        uniform until every t has 10 losses, and with ``uniform``.
        """
        T = self.num_timesteps
        if not self.importance_sampling:
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        weights = self._loss_history.square().mean(dim=1).sqrt()  # improved DDPM eq. 18: sqrt(E[L_t^2])
        weights = weights / weights.sum()
        return weights * (1 - UNIFORM_PROB) + UNIFORM_PROB / T

    def importance_weights(self, t: torch.Tensor) -> torch.Tensor:
        """1 / (T p_t) per sample [B], float32 on t's device: the losses times these weights average to the
        uniform-t mean, so the estimate stays unbiased (1 everywhere under uniform sampling)."""
        p = self.timestep_probabilities()
        return (1.0 / (self.num_timesteps * p[t.cpu().long()])).float().to(t.device)

    def update_timestep_sampler(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Add the per-sample losses [B] at timesteps ``t`` [B] to the history, in order (oldest dropped
        once a t holds 10); ``uniform`` keeps none. Under DDP give every rank's losses, in the same order
        on every rank, so that their histories stay equal (the training module gathers them)."""
        if self.timestep_sampler is not TimestepSampler.LOSS_SECOND_MOMENT:
            return
        history, counts = self._loss_history, self._loss_counts
        for ti, loss in zip(t.cpu().tolist(), losses.detach().double().cpu().tolist(), strict=True):
            n = int(counts[ti])
            if n == HISTORY_PER_TERM:  # improved-diffusion: shift out the oldest loss
                history[ti, :-1] = history[ti, 1:].clone()
                history[ti, -1] = loss
            else:
                history[ti, n] = loss
                counts[ti] = n + 1

    def timestep_sampler_state(self) -> dict[str, torch.Tensor]:
        """The loss history, for a checkpoint (tensors only: loadable with ``weights_only=True``)."""
        return {"loss_history": self._loss_history.clone(), "loss_counts": self._loss_counts.clone()}

    def load_timestep_sampler_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`timestep_sampler_state`.

        Raises:
            ValueError: a history of another T.
        """
        history, counts = state["loss_history"], state["loss_counts"]
        if tuple(history.shape) != tuple(self._loss_history.shape) or counts.shape != self._loss_counts.shape:
            raise ValueError(
                f"the checkpoint's timestep-sampler history has shape {tuple(history.shape)}; "
                f"this diffusion's is {tuple(self._loss_history.shape)}"
            )
        self._loss_history = history.detach().double().cpu().clone()
        self._loss_counts = counts.detach().long().cpu().clone()

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

    def training_noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """eps ~ N(0, I) of x0's shape, plus ``offset_noise`` times a per-sample, per-channel constant
        (offset noise, Guttenberg 2023: lets a model change an image's mean brightness)."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.offset_noise:
            if x0.ndim < 3:
                raise ValueError(f"offset_noise needs images [B, C, H, W], got shape {tuple(x0.shape)}")
            shape = (*x0.shape[:2], *([1] * (x0.ndim - 2)))
            offset = torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)
            noise = noise + self.offset_noise * offset  # offset noise: one constant per (sample, channel)
        return noise

    def _vlb_decoder_for(self, x0: torch.Tensor) -> tuple[str, int]:
        """(decoder, bins) of L_0 in the training loss; ``auto`` decides once, on the first batch."""
        if self.vlb_decoder != "auto":
            return self.vlb_decoder, 256
        if self._vlb_decoder_found is None:
            from ddpm.likelihood import infer_bins  # the likelihood module imports this one

            bins = infer_bins(x0.detach())
            self._vlb_decoder_found = ("discretized", bins) if bins else ("gaussian", 256)
        return self._vlb_decoder_found

    def vlb_estimate_bpd(
        self,
        output: torch.Tensor,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        stop_mean_gradient: bool = False,
    ) -> torch.Tensor:
        """T * L_t per sample [B] in bits/dim: the one-draw estimate of the bound's diffusion and decoder
        terms (the prior, which has no parameters, left out), from a network output already computed at
        x_t = q_sample(x0, t, noise). The terms are :func:`ddpm.likelihood.vb_terms_nats`, the bound of
        ``ddpm-eval --bpd``, without clipping x0 (as improved-diffusion trains).

        ``stop_mean_gradient``: the hybrid loss's L_vlb, whose gradient reaches only the variance
        (improved DDPM sec. 3.1).
        """
        from ddpm.likelihood import LN2, vb_terms_nats

        if stop_mean_gradient:
            x_t = self.q_sample(x0, t, noise)
            prediction, var_values = self.split_output(output, x_t)
            if var_values is not None:  # improved-diffusion's frozen_out: the mean part detached
                output = (
                    torch.stack([prediction.detach(), var_values], dim=1)
                    if x_t.ndim == 1
                    else torch.cat([prediction.detach(), var_values], dim=1)
                )
            else:
                output = output.detach()
        decoder, bins = self._vlb_decoder_for(x0)
        nats = vb_terms_nats(self, lambda *_: output, x0, t, noise, decoder, bins, clip_denoised=False)
        dims = x0[0].numel()
        # improved DDPM sec. 3.1: L_vlb = L_0 + ... + L_T, estimated by T L_t for uniform t (in bits/dim,
        # improved-diffusion's RESCALED_KL); the importance weights correct for other p_t
        return (nats / (dims * LN2) * self.num_timesteps).float()

    def training_loss(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        reduction: str = "mean",
        y: torch.Tensor | None = None,
        cond_drop_prob: float | None = None,
        num_classes: int | None = None,
    ) -> torch.Tensor:
        """The training loss: L_simple for eps + mse (DDPM eq. 14), or with ``hybrid`` / ``vlb`` the
        variational bound's terms (improved DDPM sec. 3.1).

        The per-sample losses are those of uniform t; the importance weights of ``loss_second_moment``
        (:meth:`importance_weights`) are applied by the caller, who also feeds the history.

        Args:
            model: ``model(x_t, t) -> output`` of :meth:`output_shape`; with ``y``, a class-conditional
                network ``model(x_t, t, y)`` whose ``num_classes`` is the null label.
            x0: clean data [B, ...].
            t: per-sample timesteps [B]; drawn by :meth:`sample_timesteps` when None.
            noise: the noise of x0's shape; :meth:`training_noise` (with any offset noise) when None.
            reduction: ``mean`` for a scalar, ``none`` for the per-sample losses [B].
            y: class labels [B] (None: the unconditional loss, and no random draw beyond t and noise).
            cond_drop_prob: label dropout for this call (None: the diffusion's ``cond_drop_prob``; 0 for a
                validation loss that is conditional throughout).
            num_classes: the null label (None: ``model.num_classes``).
        """
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction={reduction!r} is unknown; choose 'mean' or 'none'")
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device)
        if noise is None:
            noise = self.training_noise(x0)
        x_t = self.q_sample(x0, t, noise)
        if y is None:
            raw = model(x_t, t)
        else:
            num_classes = getattr(model, "num_classes", 0) if num_classes is None else num_classes
            if not num_classes:
                raise ValueError(
                    "training_loss got labels y but the model has no num_classes (unconditional)"
                )
            p = self.cond_drop_prob if cond_drop_prob is None else _check_drop_prob(cond_drop_prob)
            if p > 0:
                # Ho & Salimans 2022, Algorithm 1: c <- null with probability p_uncond
                drop = torch.rand(y.shape[0], device=y.device) < p
                y = torch.where(drop, torch.full_like(y, num_classes), y)
            raw = model(x_t, t, y)
        if tuple(raw.shape) != self.output_shape(x0.shape):
            raise ValueError(
                f"model output shape {tuple(raw.shape)} does not match data shape {tuple(x0.shape)}"
                + (
                    f" (variance={self.variance.value} expects {self.output_shape(x0.shape)})"
                    if self.learns_variance
                    else ""
                )
            )
        # Keep the loss in float32 even when the network ran under autocast.
        raw = raw.float()
        if self.loss_type is LossType.VLB:
            per_sample = self.vlb_estimate_bpd(raw, x0, t, noise)
            return per_sample.mean() if reduction == "mean" else per_sample
        output = self.split_output(raw, x_t)[0]
        target = self.training_target(x0, t, noise).float()
        if self.loss_type in (LossType.MSE, LossType.HYBRID):
            per_elem = F.mse_loss(output, target, reduction="none")
        elif self.loss_type is LossType.L1:
            per_elem = F.l1_loss(output, target, reduction="none")
        else:
            per_elem = F.huber_loss(output, target, reduction="none")
        per_sample = per_elem.reshape(per_elem.shape[0], -1).mean(dim=1)
        per_sample = per_sample * self.loss_weights(t).to(per_sample.device)
        if self.loss_type is LossType.HYBRID:
            # improved DDPM sec. 3.1: L_hybrid = L_simple + lambda L_vlb, the mean's gradient stopped in L_vlb
            per_sample = per_sample + self.vlb_weight * self.vlb_estimate_bpd(
                raw, x0, t, noise, stop_mean_gradient=True
            )
        return per_sample.mean() if reduction == "mean" else per_sample

    def extra_repr(self) -> str:
        """Summary shown by ``print(diffusion)``."""
        return (
            f"T={self.num_timesteps}, objective={self.objective.value}, "
            f"variance={self.variance.value}, clip_denoised={self.clip_denoised}, "
            f"loss={self.loss_type.value}, loss_weighting={self.loss_weighting.value}, "
            f"cond_drop_prob={self.cond_drop_prob:g}"
            + (f", timestep_sampler={self.timestep_sampler.value}" if self.uses_vlb else "")
            + (f", offset_noise={self.offset_noise}" if self.offset_noise else "")
            + (", zero_terminal_snr=True" if self.zero_terminal_snr else "")
        )
