"""DDPM's discrete Gaussian diffusion: the forward chain, its posterior and the reverse process's Gaussian.

:class:`GaussianDiffusion` is the variance-preserving process of DDPM as a chain of T steps (any beta
schedule, respaced, with fractional t interpolated in log sigma): a :class:`ddpm.process.Process` with
alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t). It holds stateless process math only: the
coefficient tables, q (one step and closed form), the posterior q(x_{t-1} | x_t, x0), the reverse variance
(fixed or learned: the network output's layout) and p(x_{t-1} | x_t). What the network predicts is its
:mod:`~ddpm.parameterization`; the losses are :mod:`ddpm.losses`, the distribution of training timesteps
:mod:`ddpm.timestep_sampling`.

Plain PyTorch (no Lightning, no Hydra). Every table is computed in float64 from the betas and stored as
float32. ``t`` is one integer index per sample (0-based, ``0 .. T-1``) and every coefficient is gathered per
sample and broadcast over any data shape: a scalar ``[B]``, a sequence ``[B, L]``, a 2D point ``[B, 2]`` or
an image ``[B, C, H, W]``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from ddpm import parameterization
from ddpm.process import Process

__all__ = [
    "ZERO_SNR_ABAR",
    "GaussianDiffusion",
    "Objective",
    "VarianceType",
    "log_sigmas",
    "timestep_at_noise_level",
]

#: abar used in place of an exact 0 (a zero-terminal-SNR schedule's last step) where a formula needs
#: log(abar) or 1 / abar: the noise level sigma = sqrt((1 - abar) / abar) of the solvers and the spacings.
#: diffusers' Euler, DPM-Solver and UniPC schedulers set ``alphas_cumprod[-1] = 2**-24`` for the same reason.
ZERO_SNR_ABAR = 2.0**-24


class Objective(enum.StrEnum):
    """What the network predicts (:data:`ddpm.parameterization.PARAMETERIZATIONS`)."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


class VarianceType(enum.StrEnum):
    """The reverse-process variance sigma_t^2: fixed, or learned by the network (improved DDPM sec. 3.1)."""

    FIXED_LARGE = "fixed_large"
    FIXED_SMALL = "fixed_small"
    LEARNED = "learned"
    LEARNED_RANGE = "learned_range"


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


def timestep_at_noise_level(level: torch.Tensor | float, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The real-valued timestep whose noise level sqrt((1 - abar) / abar) is ``level``, float64: log sigma
    interpolated linearly between the integers (diffusers' ``_sigma_to_t``; the inverse of
    :meth:`GaussianDiffusion.alphas_cumprod_at`), clamped to [0, T - 1]."""
    levels = log_sigmas(alphas_cumprod)
    log_level = torch.as_tensor(level, dtype=torch.float64).clamp(min=1e-10).log()
    # index of the last log sigma <= the target; log sigma rises with t
    low = (torch.searchsorted(levels, log_level, right=True) - 1).clamp(0, len(levels) - 2)
    lo, hi = levels[low], levels[low + 1]
    w = ((log_level - lo) / (hi - lo)).clamp(0, 1)
    return low + w


class GaussianDiffusion(Process):
    """The DDPM forward process q and the Gaussian reverse process p for a fixed beta schedule.

    Args:
        betas: beta_t for t = 0 .. T-1, each in (0, 1); see :func:`ddpm.schedules.make_beta_schedule`.
        objective: what the network predicts: ``eps`` (DDPM), ``x0`` or ``v`` (Salimans & Ho); its
            :attr:`parameterization`.
        variance: reverse variance: ``fixed_large`` (beta_t, DDPM's CIFAR-10 choice), ``fixed_small``
            (the posterior variance), or learned by the network, which then outputs twice the data's
            channels (:attr:`output_multiplier`): ``learned_range`` (improved DDPM eq. 15: the second half
            v in [-1, 1] interpolates log sigma^2 between log beta-tilde_t and log beta_t) or ``learned``
            (the second half is log sigma^2 itself).
        clip_denoised: clip the predicted x0 to ``clip_range`` before forming the posterior mean.
        clip_range: (low, high) for ``clip_denoised``; (-1, 1) for images scaled to [-1, 1].
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
    snr_by_step: torch.Tensor

    def __init__(
        self,
        betas: torch.Tensor | Sequence[float],
        objective: str = "eps",
        variance: str = "fixed_large",
        clip_denoised: bool = False,
        clip_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.objective = _parse_enum(Objective, "objective", objective)
        self.parameterization = parameterization.find(self.objective.value)
        self.variance = _parse_enum(VarianceType, "variance", variance)
        low, high = (float(v) for v in clip_range)
        if not low < high:
            raise ValueError(f"clip_range={tuple(clip_range)!r} must be (low, high) with low < high")
        self.clip_denoised = bool(clip_denoised)
        self.clip_range = (low, high)

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
            "snr_by_step": abar / (1.0 - abar),
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
        self.check_output(tuple(model_output.shape), tuple(x_t.shape))
        raise AssertionError("check_output accepts only the two layouts handled above")  # unreachable

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

    # ------------------------------------------------------------------ the process interface
    def _coefficient(
        self, table: torch.Tensor, t: torch.Tensor, fractional: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        t = torch.as_tensor(t)
        if not t.is_floating_point():
            return table.gather(0, t.to(table.device).long().reshape(-1)).reshape(t.shape)
        # a fractional t (the solvers' noise levels): abar interpolated in log sigma
        return fractional(self.alphas_cumprod_at(t.detach().cpu())).float().to(table.device)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_t = sqrt(abar_t) per timestep (integer t from the table, fractional t interpolated)."""
        return self._coefficient(self.sqrt_alphas_cumprod, t, torch.sqrt)  # DDPM eq. 4

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma_t = sqrt(1 - abar_t) per timestep."""
        return self._coefficient(self.sqrt_one_minus_alphas_cumprod, t, lambda abar: (1 - abar).sqrt())

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t / (1 - abar_t) per timestep, from the float64 table at integer t."""
        return self._coefficient(self.snr_by_step, t, lambda abar: abar / (1 - abar))  # VDM eq. 2

    def coefficients(self, t: float) -> tuple[float, float]:
        """(alpha_t, sigma_t) at one timestep, in float64 from the float32 abar (fractional t:
        :meth:`alphas_cumprod_at`). At abar = 0 (zero terminal SNR) abar is taken as :data:`ZERO_SNR_ABAR`,
        since log(alpha / sigma) and sigma / alpha need alpha > 0 (diffusers sets the same 2**-24)."""
        if float(t).is_integer():
            abar = float(self.alphas_cumprod[int(t)])
        else:
            abar = float(self.alphas_cumprod_at(float(t)))
        abar = abar or ZERO_SNR_ABAR
        return math.sqrt(abar), math.sqrt(1.0 - abar)  # DDPM eq. 4: x_t = alpha_t x0 + sigma_t eps

    @property
    def time_range(self) -> tuple[float, float]:
        """(0, T - 1): the chain's first and last step."""
        return 0.0, float(self.num_timesteps - 1)

    def time_at_noise_level(self, level: torch.Tensor) -> torch.Tensor:
        """The real-valued timestep whose EDM noise level is ``level`` (:func:`timestep_at_noise_level`)."""
        return timestep_at_noise_level(level, self.alphas_cumprod)

    def prior_std(self, t: float) -> float:
        """1: DDPM Algorithm 2 starts from x_T ~ N(0, I) (sigma_{T-1} = 0.99998 on the linear schedule)."""
        return 1.0

    def time_bins(self, t: torch.Tensor, bins: int) -> torch.Tensor:
        """Which of ``bins`` equal parts of 0 .. T - 1 each step index falls in."""
        return t * bins // self.num_timesteps

    def extract(self, buffer: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """Gather ``buffer[t]`` per sample and shape it [B, 1, ..., 1] to broadcast against ``x``."""
        t = self.timesteps_for_batch(t, x.shape[0], buffer.device)
        out = buffer.gather(0, t)
        return out.reshape(t.shape[0], *([1] * (x.ndim - 1))).to(x.device)

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) in closed form (DDPM eq. 4); ``t`` may be one index for the batch."""
        if noise is None:
            noise = torch.randn_like(x0)
        return super().q_sample(x0, self.timesteps_for_batch(t, x0.shape[0], x0.device), noise)

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
    def _alpha_sigma(self, t: torch.Tensor | int, x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) at timestep ``t`` (one or one per sample), shaped to broadcast against x_t."""
        return self.extract(self.sqrt_alphas_cumprod, t, x_t), self.extract(
            self.sqrt_one_minus_alphas_cumprod, t, x_t
        )

    def predict_x0(
        self, x_t: torch.Tensor, t: torch.Tensor | int, model_output: torch.Tensor
    ) -> torch.Tensor:
        """x0-hat from the network output at timestep ``t`` (not clipped; a learned variance's channels
        ignored)."""
        alpha, sigma = self._alpha_sigma(t, x_t)
        return self.x0_from_output(model_output, x_t, alpha, sigma)

    def prediction(self, model_output: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The objective's prediction of a network output: a learned variance's channels dropped
        (:meth:`split_output`), so ``x0_from_output`` / ``eps_from_output`` read only the mean's target."""
        return self.split_output(model_output, x_t)[0]

    def predict_eps(
        self, x_t: torch.Tensor, t: torch.Tensor | int, model_output: torch.Tensor
    ) -> torch.Tensor:
        """eps-hat from the network output at timestep ``t`` (a learned variance's channels ignored)."""
        alpha, sigma = self._alpha_sigma(t, x_t)
        return self.parameterization.to_eps(self.split_output(model_output, x_t)[0], x_t, alpha, sigma)

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """The eps that maps x0 to x_t at timestep ``t`` (exact at zero terminal SNR too: eps = x_t)."""
        alpha, sigma = self._alpha_sigma(t, x_t)
        return parameterization.PARAMETERIZATIONS["x0"].to_eps(x0, x_t, alpha, sigma)

    # ------------------------------------------------------------------ reverse process
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

    def extra_repr(self) -> str:
        """Summary shown by ``print(diffusion)``."""
        return (
            f"T={self.num_timesteps}, objective={self.objective.value}, "
            f"variance={self.variance.value}, clip_denoised={self.clip_denoised}"
            + (", zero_terminal_snr=True" if self.zero_terminal_snr else "")
        )
