"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"): the process
x = x0 + sigma n, continuous in sigma, its preconditioned denoiser, and its noise levels.

EDM's formulation on ddpm-lab's seams (``docs/architecture.md``, "The design space"):

- the process, :class:`EDMProcess` (``diffusion=edm``): alpha = 1, sigma(t) = t, so a time *is* a noise
  level (EDM table 1, "ours"); the samplers reach it through :class:`~ddpm.process.Process` like any other;
- the parameterisation, :class:`EDMDenoiser`: it wraps the network F in EDM's preconditioning and is what
  the rest of ddpm-lab calls the network: ``denoiser(x, sigma) = D(x; sigma)``, an x0 prediction;
- the loss, :class:`ddpm.losses.EDMLoss` (``loss=edm``): lambda(sigma) ||D - x0||^2 with lambda = 1 /
  c_out^2, computed as EDM eq. 2 and table 1 write it, on F's own scale;
- the training noise levels, :class:`ddpm.timestep_sampling.LogNormalNoiseLevels` (``timestep_sampler=
  log_normal``): ln sigma ~ N(P_mean, P_std^2);
- the sampler, :class:`ddpm.samplers.EDMSampler` (``sampler=edm``): Algorithm 2 on :func:`karras_sigmas`.

Plain PyTorch (no Lightning, no Hydra).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ddpm.parameterization import X0Prediction
from ddpm.process import Process, broadcast

__all__ = ["EDMDenoiser", "EDMProcess", "karras_sigmas"]

#: EDM table 1 ("ours"): sigma_min, sigma_max, rho and sigma_data of CIFAR-10 scaled to [-1, 1]
SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5


def _positive(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name}={value!r} is invalid; it must be a finite number > 0")
    return float(value)


def karras_sigmas(
    n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """EDM eq. 5: ``n`` noise levels descending from ``sigma_max`` to ``sigma_min``, then a final 0 (n + 1
    values, float64; k-diffusion's ``get_sigmas_karras``).

    Raises:
        ValueError: n < 1, a bound that is not a positive number, sigma_min >= sigma_max, or rho <= 0.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is invalid; the number of noise levels must be an integer >= 1")
    lo, hi, rho = _positive("sigma_min", sigma_min), _positive("sigma_max", sigma_max), _positive("rho", rho)
    if lo >= hi:
        raise ValueError(f"sigma_min={sigma_min!r} must be below sigma_max={sigma_max!r}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    # EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class EDMProcess(Process):
    """x = x0 + sigma n for sigma in [sigma_min, sigma_max] (EDM table 1, "ours": s(t) = 1, sigma(t) = t).

    Time is the noise level itself, continuous; the network the samplers call is an :class:`EDMDenoiser`,
    whose output is x0-hat (:class:`~ddpm.parameterization.X0Prediction`).

    Args:
        sigma_min: the lowest noise level that training and sampling use (EDM: 0.002).
        sigma_max: the highest (EDM: 80); sampling starts from x = sigma_max z.
        sigma_data: the data's standard deviation that the preconditioning assumes (EDM: 0.5 for images in
            [-1, 1]).
        clip_denoised: clip x0-hat to ``clip_range`` while sampling.
        clip_range: (low, high) for ``clip_denoised``.
    """

    discrete = False
    parameterization = X0Prediction()

    def __init__(
        self,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        sigma_data: float = SIGMA_DATA,
        clip_denoised: bool = False,
        clip_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        self.sigma_min = _positive("sigma_min", sigma_min)
        self.sigma_max = _positive("sigma_max", sigma_max)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min={sigma_min!r} must be below sigma_max={sigma_max!r}")
        self.sigma_data = _positive("sigma_data", sigma_data)
        low, high = (float(v) for v in clip_range)
        if not low < high:
            raise ValueError(f"clip_range={tuple(clip_range)!r} must be (low, high) with low < high")
        self.clip_denoised = bool(clip_denoised)
        self.clip_range = (low, high)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """1: EDM's process does not scale x0 (table 1, s(t) = 1)."""
        t = torch.as_tensor(t)
        return torch.ones_like(t if t.is_floating_point() else t.float())

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = t (EDM table 1)."""
        t = torch.as_tensor(t)
        return t if t.is_floating_point() else t.float()

    @property
    def time_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max)."""
        return self.sigma_min, self.sigma_max

    def coefficients(self, t: float) -> tuple[float, float]:
        """(1, t) as floats."""
        return 1.0, float(t)

    def time_at_noise_level(self, level: torch.Tensor) -> torch.Tensor:
        """The noise level itself (float64): EDM's time is its noise level."""
        return torch.as_tensor(level, dtype=torch.float64)

    def wrap_network(self, net: nn.Module) -> nn.Module:
        """``net`` in EDM's preconditioning, :class:`EDMDenoiser` with this process's ``sigma_data``."""
        return EDMDenoiser(net, self.sigma_data)

    def extra_repr(self) -> str:
        """Summary shown by ``print(process)``."""
        return (
            f"sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, sigma_data={self.sigma_data:g}, "
            f"clip_denoised={self.clip_denoised}"
        )


class EDMDenoiser(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise): a network F in EDM's preconditioning (EDM eq. 7
    and table 1), so that F's input and training target have unit variance at every noise level.

    The wrapped ``net`` is called as ``net(c_in * x, c_noise)`` (``net(c_in * x, c_noise, y)`` when class
    conditional) with c_noise = ln(sigma) / 4 per sample: ddpm-lab's MLP and UNet embed a real-valued time,
    so they take it unchanged. ``num_classes`` is the wrapped network's.

    Args:
        net: the network F.
        sigma_data: the data's standard deviation (EDM: 0.5).
    """

    def __init__(self, net: nn.Module, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.net = net
        self.sigma_data = _positive("sigma_data", sigma_data)

    @property
    def num_classes(self) -> int:
        """The wrapped network's class labels (0: unconditional)."""
        return int(getattr(self.net, "num_classes", 0))

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) per sample [B] at noise levels ``sigma`` [B] (EDM table 1)."""
        sd2 = self.sigma_data**2
        total = sigma.square() + sd2
        c_skip = sd2 / total  # EDM table 1: c_skip = sd^2 / (sigma^2 + sd^2)
        c_out = sigma * self.sigma_data / total.sqrt()  # EDM table 1: c_out = sigma sd / sqrt(sigma^2 + sd^2)
        c_in = 1 / total.sqrt()  # EDM table 1: c_in = 1 / sqrt(sigma^2 + sd^2)
        c_noise = sigma.log() / 4  # EDM table 1: c_noise = ln(sigma) / 4
        return c_skip, c_out, c_in, c_noise

    def _inner(
        self, x: torch.Tensor, c_in: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None
    ) -> torch.Tensor:
        inp = broadcast(c_in, x) * x
        return self.net(inp, c_noise) if y is None else self.net(inp, c_noise, y)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma), the denoised x0-hat, for x at noise levels ``sigma`` [B] (labels ``y`` when
        conditional)."""
        sigma = _per_sample(sigma, x)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        # EDM eq. 7: D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)
        return broadcast(c_skip, x) * x + broadcast(c_out, x) * self._inner(x, c_in, c_noise, y).float()

    def loss(
        self, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The per-sample loss [B]: mean((F - (x0 - c_skip x) / c_out)^2) at x = x0 + sigma noise, which is
        lambda(sigma) ||D - x0||^2 with lambda = 1 / c_out^2 (EDM eq. 2 and table 1), on F's scale. No random
        draw: ``sigma`` and ``noise`` are given."""
        sigma = _per_sample(sigma, x0)
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        x = x0 + broadcast(sigma, x0) * noise  # EDM eq. 2: y + n with n ~ N(0, sigma^2 I)
        target = (x0 - broadcast(c_skip, x0) * x) / broadcast(c_out, x0)  # EDM table 1: F's effective target
        output = self._inner(x, c_in, c_noise, y).float()
        return (output - target).square().reshape(x0.shape[0], -1).mean(1)

    def extra_repr(self) -> str:
        """Summary shown by ``print(denoiser)``."""
        return f"sigma_data={self.sigma_data:g}"


def _per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as float32 [B] on x's device (one level for the batch broadcast to every sample)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0]).float()
