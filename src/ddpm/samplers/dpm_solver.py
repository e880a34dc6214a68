"""Multistep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), orders 1-3, in its data-prediction form.

The probability-flow ODE is solved exactly in its linear part and by a Taylor expansion of the data
prediction x0_theta in lambda = log(alpha / sigma) (half the log-SNR): with h = lambda_t - lambda_s,

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0 + (higher-order terms in D1, D2),

where D0 is the current x0 prediction and D1, D2 are divided differences of earlier ones (the multistep
history, carried in :class:`DPMSolverState`). Order 1 is DDIM with eta = 0. The reference implementation
is diffusers' ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint")``; with
the same steps and spacing this sampler visits the same timesteps and, fed the same model outputs, gives
the same samples within float32 rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ddpm.process import Process
from ddpm.samplers.base import (
    CLEAN,
    MultistepSampler,
    StepOutput,
    alpha_sigma,
    step_index,
)

__all__ = ["MULTISTEP_LOWER_ORDER_BELOW", "DPMSolverSampler", "DPMSolverState"]

#: below this many steps, ``lower_order_final`` also caps the second-to-last step at order 2 (diffusers)
MULTISTEP_LOWER_ORDER_BELOW = 15


class DPMSolverState(NamedTuple):
    """The multistep history: lambda = log(alpha / sigma) and the x0 prediction of the latest steps,
    oldest first (at most ``order - 1`` of them are needed by the next step)."""

    lambdas: tuple[float, ...] = ()
    x0s: tuple[torch.Tensor, ...] = ()


class DPMSolverSampler(MultistepSampler):
    """Multistep DPM-Solver++ of order 1, 2 (2M) or 3 (3M): ``steps`` network evaluations.

    Args:
        steps: network evaluations, 1 <= steps <= T.
        order: 1 (DDIM), 2 (DPM-Solver++ 2M, Algorithm 2) or 3 (its third-order counterpart).
        algorithm: ``dpmsolver++`` (the data-prediction form; the only one offered).
        spacing: ``linspace``, ``leading``, ``trailing``, ``karras``, ``logsnr`` or ``quadratic``
            (:mod:`ddpm.samplers.spacing`; linspace, leading and quadratic leave t = 0 to the clean data).
        lower_order_final: with fewer than 15 steps, cap the second-to-last step at order 2; it steadies
            few-step sampling (diffusers' default). The last step, onto the clean data (sigma = 0), is
            always first order: a divided difference over an infinite h is undefined.
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
    """

    ALGORITHMS = ("dpmsolver++",)

    def __init__(
        self,
        steps: int = 20,
        order: int = 2,
        algorithm: str = "dpmsolver++",
        spacing: str = "linspace",
        lower_order_final: bool = True,
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        super().__init__(steps, order, spacing, lower_order_final, guidance_scale, timesteps)
        if algorithm not in self.ALGORITHMS:
            raise ValueError(
                f"algorithm={algorithm!r} is unknown; choose one of {', '.join(self.ALGORITHMS)}"
            )
        self.algorithm = algorithm

    def order_at(self, diffusion: Process, t: object, t_prev: object, history: int) -> int:
        """The order of the step t -> t_prev given ``history`` earlier x0 predictions."""
        if t_prev == CLEAN:
            return 1
        order = min(self.order, history + 1)  # warm-up: a k-step method needs k - 1 earlier points
        ts = self.timesteps(diffusion)
        i = step_index(ts, t)
        if self.lower_order_final and len(ts) < MULTISTEP_LOWER_ORDER_BELOW and i == len(ts) - 2:
            order = min(order, 2)
        return order

    def step(
        self,
        diffusion: Process,
        model_output: torch.Tensor,
        t: int | float | torch.Tensor,
        t_prev: int | float | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: DPMSolverState | None = None,
    ) -> StepOutput:
        """x at ``t_prev`` from x at ``t`` (one timestep for the whole batch) and the network output.

        Returns the next sample, the clipped x0 prediction, and the :class:`DPMSolverState` for the next
        call (pass None on the first step).
        """
        state = state or DPMSolverState()
        alpha_s, sigma_s = alpha_sigma(diffusion, t)
        alpha_t, sigma_t = alpha_sigma(diffusion, t_prev)
        x0 = diffusion.clip(diffusion.x0_from_output(model_output, x_t, alpha_s, sigma_s))
        lambda_s = math.log(alpha_s / sigma_s)
        keep = self.order - 1
        new_state = DPMSolverState(
            (*state.lambdas, lambda_s)[-keep:] if keep else (),
            (*state.x0s, x0)[-keep:] if keep else (),
        )
        if sigma_t == 0.0:
            # the limit h -> inf of every order: the last step returns the data prediction
            return StepOutput(x0, x0, new_state)
        order = self.order_at(diffusion, t, t_prev, len(state.x0s))
        h = math.log(alpha_t / sigma_t) - lambda_s
        phi1 = math.expm1(-h)  # e^{-h} - 1
        # DPM-Solver++ eq. 9 with the first-order term: (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D0
        x = (sigma_t / sigma_s) * x_t - (alpha_t * phi1) * x0
        if order == 2:
            r0 = (lambda_s - state.lambdas[-1]) / h
            d1 = (x0 - state.x0s[-1]) / r0
            # DPM-Solver++ Algorithm 2 (2M, midpoint): - 0.5 alpha_t (e^{-h} - 1) D1
            x = x - (0.5 * alpha_t * phi1) * d1
        elif order == 3:
            h0, h1 = lambda_s - state.lambdas[-1], state.lambdas[-1] - state.lambdas[-2]
            r0, r1 = h0 / h, h1 / h
            d1_0 = (x0 - state.x0s[-1]) / r0
            d1_1 = (state.x0s[-1] - state.x0s[-2]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            # DPM-Solver++ 3M (DPM-Solver eq. 3.3 transposed to data prediction, as diffusers):
            # + alpha_t ((e^{-h} - 1) / h + 1) D1 - alpha_t ((e^{-h} - 1 + h) / h^2 - 1/2) D2
            x = x + (alpha_t * (phi1 / h + 1.0)) * d1 - (alpha_t * ((phi1 + h) / h**2 - 0.5)) * d2
        return StepOutput(x, x0, new_state)
