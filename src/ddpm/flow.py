"""Flow matching (Lipman et al. 2023) and rectified flow (Liu et al. 2023): the straight path between data
and noise, the velocity along it, and minibatch optimal-transport pairs (Tong et al. 2023).

The straight path on ddpm-lab's seams (``docs/architecture.md``, "The design space"):

- the process, :class:`FlowProcess` (``diffusion=flow``): x_t = (1 - t) x0 + t n for t in [0, 1], t = 0 the
  data and t = 1 the noise (the diffusion convention), so alpha(t) = 1 - t and sigma(t) = t: a Gaussian
  path, which every sampler reaches through :class:`~ddpm.process.Process`;
- the parameterisation, :class:`~ddpm.parameterization.FlowVelocityPrediction`: the network predicts the
  velocity v = n - x0 = dx_t / dt, so that sampling integrates dx/dt = v from t = 1 to 0;
- the loss: ``loss=simple`` regresses the velocity (rectified flow eq. 1, the conditional flow-matching
  loss of Lipman et al. 2023 eq. 9 with sigma_min = 0), with the training pairs drawn independently or
  re-paired within each batch by :func:`ot_pairing` (``coupling=minibatch_ot``);
- the training times, ``timestep_sampler=uniform`` or ``logit_normal`` (Esser et al. 2024, SD3 sec. 3.1).

TorchCFM's ``ConditionalFlowMatcher`` writes the same path the other way round: its x0 is our noise, its x1
our data, its t is 1 - our t and its u_t is -v (``tests/test_flow.py`` maps one onto the other).

Plain PyTorch (no Lightning, no Hydra); the assignment is SciPy's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ddpm.parameterization import FlowVelocityPrediction
from ddpm.process import Process, broadcast

__all__ = [
    "COUPLINGS",
    "FLOW_TIME_FLOOR",
    "FlowProcess",
    "TimeScaledNetwork",
    "interpolate",
    "ot_pairing",
    "velocity_target",
]

#: the training pairs of (data, noise): drawn independently, or re-paired by minibatch OT (Tong et al. 2023)
COUPLINGS = ("independent", "minibatch_ot")
#: the distance from t = 1 at which the solvers read the path's coefficients: at t = 1 exactly alpha = 0 and
#: log(alpha / sigma) is -inf. 2**-12 gives the signal-to-noise ratio of a zero-terminal-SNR chain's last
#: step as the solvers see it (``ddpm.diffusion.ZERO_SNR_ABAR`` = 2**-24, diffusers' choice)
FLOW_TIME_FLOOR = 2.0**-12


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise for per-sample times ``t`` [B] in [0, 1] (t = 0: the data)."""
    t = broadcast(t.to(x0.dtype), x0)
    return (1 - t) * x0 + t * noise  # rectified flow eq. 1: X_t = t X_1 + (1 - t) X_0, with t reversed


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = dx_t / dt = noise - x0, the velocity of the straight path (constant along it)."""
    return noise - x0  # rectified flow eq. 1: the drift X_1 - X_0; Lipman et al. 2023 eq. 23 at sigma_min = 0


def ot_pairing(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A permutation ``perm`` [B] (int64, on x0's device) such that ``noise[perm]`` paired with ``x0`` row
    by row has the least total squared distance: the exact optimal-transport plan between the two batches'
    empirical distributions (Tong et al. 2023, sec. 3.2), which for equal sizes and uniform weights is a
    permutation (Birkhoff's theorem), found by SciPy's ``linear_sum_assignment`` (the Jonker-Volgenant
    algorithm, O(B^3)). It gives the same plan as POT's ``emd`` (TorchCFM's ``OTPlanSampler("exact")``) and
    is exact and deterministic, where ``emd``'s plan has to be sampled back into pairs.

    Raises:
        ValueError: the batches differ in size or in the shape of one sample.
    """
    from scipy.optimize import linear_sum_assignment  # only OT runs pay for SciPy's import

    if x0.shape != noise.shape:
        raise ValueError(
            f"ot_pairing needs two batches of one shape, got x0 {tuple(x0.shape)} and noise "
            f"{tuple(noise.shape)}"
        )
    a = x0.detach().reshape(x0.shape[0], -1).cpu().numpy().astype(np.float64)
    b = noise.detach().reshape(noise.shape[0], -1).cpu().numpy().astype(np.float64)
    # Tong et al. 2023, eq. 13: c(x, y) = ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y (NumPy: no torch thread pool)
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[rows] = cols  # row i of x0 takes noise cols[i]
    return torch.from_numpy(perm).long().to(x0.device)


class TimeScaledNetwork(nn.Module):
    """A network that takes times in [0, 1] as the ones its time embedding was made for (0 .. 1000, as
    DDPM's timesteps): ``net(x, t * time_scale)`` (SD3 feeds 1000 t the same way). Labels pass through."""

    def __init__(self, net: nn.Module, time_scale: float = 1000.0) -> None:
        super().__init__()
        self.net = net
        self.time_scale = float(time_scale)

    @property
    def num_classes(self) -> int:
        """The wrapped network's number of classes (0: unconditional), its null label."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network output at times ``t`` [B] in [0, 1] (labels ``y`` when conditional)."""
        scaled = t.float() * self.time_scale
        return self.net(x, scaled) if y is None else self.net(x, scaled, y)

    def extra_repr(self) -> str:
        """Summary shown by ``print(network)``."""
        return f"time_scale={self.time_scale:g}"


class FlowProcess(Process):
    """The straight path x_t = (1 - t) x0 + t n, t in [0, 1] (rectified flow; flow matching with
    sigma_min = 0): alpha(t) = 1 - t, sigma(t) = t, continuous, the network predicting v = n - x0.

    Args:
        time_scale: the factor the network's time input is multiplied by (1000: t in [0, 1] reaches the
            embedding as DDPM's timesteps 0 .. 1000 do); the model is wrapped in a
            :class:`TimeScaledNetwork` at build.
        clip_denoised: clip x0-hat to ``clip_range`` while sampling.
        clip_range: (low, high) for ``clip_denoised``.
    """

    discrete = False
    parameterization = FlowVelocityPrediction()

    def __init__(
        self,
        time_scale: float = 1000.0,
        clip_denoised: bool = False,
        clip_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if (
            isinstance(time_scale, bool)
            or not isinstance(time_scale, int | float)
            or not 0 < time_scale < math.inf
        ):
            raise ValueError(f"time_scale={time_scale!r} is invalid; it must be a finite number > 0")
        self.time_scale = float(time_scale)
        low, high = (float(v) for v in clip_range)
        if not low < high:
            raise ValueError(
                f"clip_range={list(clip_range)!r} is invalid; it must be [low, high] with low < high"
            )
        self.clip_denoised = bool(clip_denoised)
        self.clip_range = (low, high)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """1 - t."""
        return 1 - t  # rectified flow eq. 1: the data's weight falls linearly to 0 at t = 1

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """t."""
        return t  # rectified flow eq. 1: the noise's weight rises linearly to 1 at t = 1

    @property
    def time_range(self) -> tuple[float, float]:
        """(0, 1): t = 0 is the data itself (the samplers' last step lands there), t = 1 pure noise."""
        return 0.0, 1.0

    def coefficients(self, t: float) -> tuple[float, float]:
        """(1 - t, t) at one time, with t at most 1 - :data:`FLOW_TIME_FLOOR`: the solvers step in
        log(alpha / sigma) and EDM's x / alpha, both infinite at t = 1 (a zero-terminal-SNR chain's last
        step is read the same way)."""
        t = min(float(t), 1.0 - FLOW_TIME_FLOOR)
        return 1.0 - t, t

    #: d(1 - t) / dt and dt / dt: the slope of the ODE in t is v = n - x0 (:meth:`ode_frame`)
    ode_slopes = (-1.0, 1.0)

    def ode_frame(self, t: float) -> tuple[float, float]:
        """(1, t): Euler and Heun step in t itself, dx / dt = v (rectified flow's ODE), where the straight
        path is straight; the clean data (``t = -1``) is t = 0."""
        return 1.0, max(self.coefficients(t)[1], 0.0)  # t as the solvers read it (the floor at t = 1)

    def time_at_noise_level(self, level: torch.Tensor) -> torch.Tensor:
        """t = sigma / (1 + sigma): the time whose noise level t / (1 - t) is ``level`` (float64)."""
        level = level.double()
        return level / (1 + level)  # EDM eq. 4 with s = 1 - t, sigma(t) = t / (1 - t), solved for t

    def time_bins(self, t: torch.Tensor, bins: int) -> torch.Tensor:
        """Equal parts of t in [0, 1] (the loss by quarter): t itself is the natural scale of the path."""
        return (t.detach() * bins).floor().long().clamp(0, bins - 1)

    def time_bin_labels(self, bins: int) -> list[str]:
        """ "t ∈ [a, b)" for each of :meth:`time_bins`' parts."""
        return [f"t ∈ [{q / bins:.3g}, {(q + 1) / bins:.3g})" for q in range(bins)]

    def wrap_network(self, net: nn.Module) -> nn.Module:
        """The model taking t in [0, 1] scaled by ``time_scale`` (:class:`TimeScaledNetwork`)."""
        return TimeScaledNetwork(net, self.time_scale)

    def extra_repr(self) -> str:
        """Summary shown by ``print(process)``."""
        return f"time_scale={self.time_scale:g}" + (", clip_denoised=True" if self.clip_denoised else "")
