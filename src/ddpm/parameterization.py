"""What the network predicts, and how its output becomes x0, the noise and the training target.

A parameterisation reads the network's output F at x_t = alpha x0 + sigma n (:mod:`ddpm.process`) as one
of the quantities the process is made of: the noise (DDPM's eps), the clean data x0, or the velocity
v = alpha n - sigma x0 (Salimans & Ho 2022, sec. 4). Each one says, in the process's alpha and sigma, how
to get x0 and n back (:meth:`Parameterization.to_x0`, :meth:`~Parameterization.to_eps`), what the network
is trained to output (:meth:`~Parameterization.target`) and the min-SNR weight of its loss (Hang et al.
2023). EDM's preconditioning and flow matching's velocity are further subclasses.

Plain PyTorch. ``alpha`` and ``sigma`` are floats or tensors that broadcast against ``x_t``.
"""

from __future__ import annotations

import torch

__all__ = [
    "PARAMETERIZATIONS",
    "EpsPrediction",
    "FlowVelocityPrediction",
    "Parameterization",
    "VPrediction",
    "X0Prediction",
    "find",
]

Scale = torch.Tensor | float


class Parameterization:
    """The interface: subclasses say what the network's output F is."""

    #: the ``objective`` text configs name it by
    name: str = ""

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """x0-hat (not clipped) from the network output at x_t."""
        raise NotImplementedError

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """eps-hat, the noise n the output implies at x_t."""
        raise NotImplementedError

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """What the network should output for x_t = alpha x0 + sigma noise."""
        raise NotImplementedError

    def min_snr_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """The min-SNR-gamma weight per sample (Hang et al. 2023, eq. 8) of this output's squared error."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsPrediction(Parameterization):
    """F = eps-hat, the noise (DDPM sec. 3.2)."""

    name = "eps"

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """x0 = (x_t - sigma eps) / alpha."""
        return (x_t - sigma * output) / alpha  # DDPM eq. 4 solved for x0

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """The output itself."""
        return output

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """The noise (DDPM eq. 14)."""
        return noise

    def min_snr_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """min(SNR, gamma) / SNR."""
        return snr.clamp(max=gamma) / snr  # Hang et al. 2023, eq. 8 for eps: the x0 loss is SNR times eps's


class X0Prediction(Parameterization):
    """F = x0-hat, the clean data."""

    name = "x0"

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """The output itself."""
        return output

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """eps = (x_t - alpha x0) / sigma, exact at alpha = 0 (zero terminal SNR: eps = x_t)."""
        return (x_t - alpha * output) / sigma  # DDPM eq. 4 solved for eps

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """The clean data."""
        return x0

    def min_snr_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """min(SNR, gamma)."""
        return snr.clamp(max=gamma)  # Hang et al. 2023, eq. 8


class VPrediction(Parameterization):
    """F = v-hat, v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4 and appendix D)."""

    name = "v"

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """x0 = alpha x_t - sigma v."""
        return (
            alpha * x_t - sigma * output
        )  # Salimans & Ho 2022, eq. (v) solved for x0 (alpha^2 + sigma^2 = 1)

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """eps = alpha v + sigma x_t."""
        return alpha * output + sigma * x_t  # Salimans & Ho 2022, appendix D (alpha^2 + sigma^2 = 1)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """v = alpha eps - sigma x0."""
        return alpha * noise - sigma * x0  # Salimans & Ho 2022, sec. 4: v = alpha eps - sigma x

    def min_snr_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """min(SNR, gamma) / (SNR + 1)."""
        return snr.clamp(max=gamma) / (snr + 1.0)  # Hang et al. 2023, eq. 8 for v


class FlowVelocityPrediction(Parameterization):
    """F = v-hat, the velocity v = n - x0 = dx_t / dt of the straight path x_t = (1 - t) x0 + t n (rectified
    flow, flow matching with sigma_min = 0; :class:`ddpm.flow.FlowProcess`), where alpha + sigma = 1.

    Not one of a chain's ``objective`` options: its conversions hold on the straight path only.
    """

    name = "velocity"

    def to_x0(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """x0 = x_t - sigma v."""
        return x_t - sigma * output  # x_t = x0 + sigma (n - x0) on the straight path (alpha = 1 - sigma)

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """n = x_t + alpha v."""
        return x_t + alpha * output  # x_t = n - alpha (n - x0) on the straight path (sigma = 1 - alpha)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
        """v = n - x0."""
        return noise - x0  # rectified flow eq. 1: the drift X_1 - X_0 (t reversed: n at t = 1)

    def min_snr_weight(self, snr: torch.Tensor, gamma: float) -> torch.Tensor:
        """min(SNR, gamma) sigma^2, with sigma = 1 / (1 + sqrt(SNR)) on the straight path."""
        # Hang et al. 2023, eq. 8: the x0 loss is sigma^2 times the velocity's (x0 = x_t - sigma v)
        return snr.clamp(max=gamma) / (1.0 + snr.sqrt()).square()


#: ``objective`` text -> its parameterisation
PARAMETERIZATIONS: dict[str, Parameterization] = {
    p.name: p for p in (EpsPrediction(), X0Prediction(), VPrediction())
}


def find(objective: object) -> Parameterization:
    """The parameterisation an ``objective`` names, or a one-line ValueError naming the choices."""
    if isinstance(objective, str) and objective in PARAMETERIZATIONS:
        return PARAMETERIZATIONS[objective]
    allowed = ", ".join(repr(k) for k in PARAMETERIZATIONS)
    raise ValueError(f"objective={objective!r} is unknown; choose one of {allowed}")
