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

import torch
from torch import nn

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

    def coefficients(self, t: float) -> tuple[float, float]:
        """(alpha(t), sigma(t)) at one time as Python floats: the per-step scalars of the solvers, which form
        log-SNR differences and need them in double precision."""
        tt = torch.tensor([t], dtype=torch.float64)
        return float(self.alpha(tt)), float(self.sigma(tt))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t from x0 and the noise n in closed form."""
        # EDM eq. 4 (DDPM eq. 4 for the VP chain): x_t = alpha(t) x0 + sigma(t) n
        return broadcast(self.alpha(t), x0) * x0 + broadcast(self.sigma(t), x0) * noise
