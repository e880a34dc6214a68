"""A diffusion process: how clean data becomes noise, x_t = alpha(t) x0 + sigma(t) n.

EDM (Karras et al. 2022, table 1 and eq. 4) writes every Gaussian diffusion model this way: a scale
alpha(t) (EDM's s(t)) and a noise level sigma(t) along a time t, with n ~ N(0, I) drawn independently of
x0. DDPM's variance-preserving chain is one such process (alpha_t = sqrt(abar_t), sigma_t = sqrt(1 -
abar_t), t an index 0 .. T-1: :class:`ddpm.diffusion.GaussianDiffusion`); EDM's sigma-parameterised
process (alpha = 1, sigma = t) and the straight flow-matching path (alpha = 1 - t, sigma = t) are others.
The losses, the parameterisations and the samplers are written against this interface; a new process is
one subclass.

Plain PyTorch (no Lightning, no Hydra). ``t`` is one time per sample, a tensor [B]; every coefficient is
returned per sample and broadcast over the data's shape by :func:`broadcast`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ddpm.parameterization import Parameterization, X0Prediction

__all__ = ["Process", "broadcast"]


def broadcast(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``values`` [B] shaped [B, 1, ..., 1] to broadcast against ``x`` [B, ...], on x's device."""
    return values.reshape(values.shape[0], *([1] * (x.ndim - 1))).to(x.device)


class Process(nn.Module):
    """The interface of a Gaussian diffusion process, x_t = alpha(t) x0 + sigma(t) n (EDM eq. 4).

    Subclasses give :meth:`alpha`, :meth:`sigma` and :attr:`time_range`; the rest follows from them.
    An ``nn.Module``, so that a process with tabulated coefficients moves with the network.
    """

    #: whether t indexes the steps of a chain (DDPM: the integers 0 .. T-1, fractional t interpolated) or is
    #: a real number of a continuous process
    discrete: bool = True
    #: what the network's output is (:mod:`ddpm.parameterization`); the samplers read x0-hat through it
    parameterization: Parameterization = X0Prediction()
    #: clip x0-hat to ``clip_range`` while sampling (images in [-1, 1])
    clip_denoised: bool = False
    clip_range: tuple[float, float] = (-1.0, 1.0)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t) per sample [B]: the scale of x0 in x_t."""
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) per sample [B]: the standard deviation of the noise in x_t."""
        raise NotImplementedError

    @property
    def time_range(self) -> tuple[float, float]:
        """(the cleanest t, the noisiest t) that training and sampling use."""
        raise NotImplementedError

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """The signal-to-noise ratio alpha(t)^2 / sigma(t)^2 per sample [B] (Kingma et al. 2021, eq. 2)."""
        return (self.alpha(t) / self.sigma(t)).square()  # VDM eq. 2: SNR = alpha^2 / sigma^2

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)) per sample [B], the half log-SNR the solvers step in."""
        return (
            self.alpha(t).log() - self.sigma(t).log()
        )  # DPM-Solver eq. 3: lambda_t = log(alpha_t / sigma_t)

    def noise_level(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's sigma = sigma(t) / alpha(t) per sample [B]: the noise of x_t / alpha(t) = x0 + sigma n, the
        one scale on which every process's noise levels compare (EDM eq. 4 with s(t) divided out)."""
        return self.sigma(t) / self.alpha(t)  # EDM eq. 4: x / s(t) = x0 + sigma(t) n

    def time_at_noise_level(self, level: torch.Tensor) -> torch.Tensor:
        """The t whose :meth:`noise_level` is ``level`` (float64): how a grid of EDM noise levels becomes
        this process's times (a chain clamps it to its ends)."""
        raise NotImplementedError

    def prior_std(self, t: float) -> float:
        """The standard deviation of the noise the reverse process starts from at its first time ``t``: the
        sampling loop's x_T = prior_std * z. sigma(t) for a process whose noise dominates there (EDM
        Algorithm 1, line 1: x_0 = sigma_max z); DDPM's chain overrides it with 1 (DDPM Algorithm 2)."""
        return self.coefficients(t)[1]

    #: d(alpha / s) / d tau and d(sigma / s) / d tau in :meth:`ode_frame`'s variables, constants there: the
    #: slope of the probability-flow ODE is ``ode_slopes[0] * x0 + ode_slopes[1] * eps`` (EDM's frame: eps)
    ode_slopes: tuple[float, float] = (0.0, 1.0)

    def ode_frame(self, t: float) -> tuple[float, float]:
        """(s, tau) at one time: the ODE solvers that step in a time variable (Euler, Heun) integrate
        y = x_t / s against tau, in which x_t / s = (alpha / s) x0 + (sigma / s) n is affine. EDM's frame
        by default: s = alpha, tau = sigma / alpha, where the ODE is dy / dtau = eps (EDM eq. 4 and sec. 3:
        the straightest for a Gaussian); the clean data (``t = -1``) is (1, 0)."""
        if t == -1:
            return 1.0, 0.0
        alpha, sigma = self.coefficients(t)
        return alpha, sigma / alpha  # EDM eq. 4: x / s(t) = x0 + sigma(t) n

    def noise_level_at(self, t: float) -> float:
        """EDM's noise level sigma / alpha at one time as a float, as the solvers read it (through
        :meth:`coefficients`: finite at a pure-noise end)."""
        alpha, sigma = self.coefficients(t)
        return sigma / alpha  # EDM eq. 4: x / s(t) = x0 + sigma(t) n

    def noise_level_range(self) -> tuple[float, float]:
        """The noise levels at the process's cleanest and noisiest times (:attr:`time_range`)."""
        low, high = self.time_range
        return self.noise_level_at(low), self.noise_level_at(high)

    def time_bins(self, t: torch.Tensor, bins: int) -> torch.Tensor:
        """Which of ``bins`` equal parts of log noise level between the process's ends each t falls in, int64
        [B]: the loss by quarter of a continuous process (a chain bins its step index)."""
        low, high = (math.log(level) for level in self.noise_level_range())
        where = (self.noise_level(t.detach()).log() - low) / (high - low)  # on t's device: no host sync
        return (where * bins).floor().long().clamp(0, bins - 1)

    def time_bin_labels(self, bins: int) -> list[str]:
        """The label of each of :meth:`time_bins`' parts, for the loss-by-quarter figure."""
        lo, hi = self.noise_level_range()
        edges = [lo * (hi / lo) ** (q / bins) for q in range(bins + 1)]
        return [f"σ ∈ [{edges[q]:.3g}, {edges[q + 1]:.3g})" for q in range(bins)]

    @property
    def device(self) -> torch.device:
        """Where the process's tables are (a process without tables: the CPU)."""
        return next((b.device for b in self.buffers()), torch.device("cpu"))

    def clip(self, x0: torch.Tensor) -> torch.Tensor:
        """Clip x0-hat to ``clip_range`` when ``clip_denoised`` is on."""
        if not self.clip_denoised:
            return x0
        return x0.clamp(*self.clip_range)

    def prediction(self, model_output: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The part of a network output the parameterisation reads: all of it here (DDPM's chain drops a
        learned variance's channels)."""
        return model_output

    def x0_from_output(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
    ) -> torch.Tensor:
        """x0-hat (not clipped) from the network output at x_t, given alpha(t) and sigma(t) directly (floats
        or tensors that broadcast against x_t): the form the solvers use."""
        return self.parameterization.to_x0(self.prediction(model_output, x_t), x_t, alpha, sigma)

    def eps_from_output(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
    ) -> torch.Tensor:
        """eps-hat, the noise the network output implies at x_t, given alpha(t) and sigma(t) directly."""
        return self.parameterization.to_eps(self.prediction(model_output, x_t), x_t, alpha, sigma)

    def wrap_network(self, net: nn.Module) -> nn.Module:
        """The network as this process trains and samples it: ``net`` itself, or wrapped in the
        preconditioning of a formulation that has one (EDM's :class:`~ddpm.edm.EDMDenoiser`)."""
        return net

    def check_output(self, output_shape: Sequence[int], data_shape: Sequence[int]) -> None:
        """A one-line ValueError when a network's output (batch first) does not have the data's shape."""
        if tuple(output_shape) != tuple(data_shape):
            raise ValueError(
                f"the network outputs {tuple(output_shape)[1:]} per sample for data of shape "
                f"{tuple(data_shape)[1:]}: {type(self).__name__} needs an output of the data's shape "
                "(model.out_mult=1)"
            )

    def coefficients(self, t: float) -> tuple[float, float]:
        """(alpha(t), sigma(t)) at one time as Python floats: the per-step scalars of the solvers, which form
        log-SNR differences and need them in double precision."""
        tt = torch.tensor([t], dtype=torch.float64)
        return float(self.alpha(tt)), float(self.sigma(tt))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t from x0 and the noise n in closed form."""
        # EDM eq. 4 (DDPM eq. 4 for the VP chain): x_t = alpha(t) x0 + sigma(t) n
        return broadcast(self.alpha(t), x0) * x0 + broadcast(self.sigma(t), x0) * noise
