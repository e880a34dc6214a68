"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"), B(h) = e^h - 1 ("bh2", the default) or B(h) = h ("bh1"), in the data-prediction form.

Each step first corrects the current sample with the network output just computed there (UniC, which
costs no extra evaluation: the output is the one the predictor needs anyway), then predicts the next
sample from the corrected one (UniP). Both are built from the exponential integrator of DPM-Solver++ with
coefficients rho solved from the divided differences of the latest x0 predictions (UniPC eqs. 9 and 11,
Algorithms 2 and 3). The reference implementation is diffusers' ``UniPCMultistepScheduler`` with the same
``solver_type``. The UniPC paper (sec. 3.3 and its experiments) recommends bh1 for unconditional sampling
with very few steps and bh2 otherwise; both are order p + 1.
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

__all__ = ["SOLVER_TYPES", "UniPCSampler", "UniPCState"]

#: UniPC's choices of B(h) (sec. 3.3): bh1 = h, bh2 = e^h - 1
SOLVER_TYPES = ("bh1", "bh2")


class UniPCState(NamedTuple):
    """What the next step needs: the latest lambdas and x0 predictions (oldest first), the sample the
    last prediction started from, its timestep, and the order it was made with."""

    lambdas: tuple[float, ...] = ()
    x0s: tuple[torch.Tensor, ...] = ()
    last_sample: torch.Tensor | None = None
    last_t: int | float | None = None
    last_order: int = 0


def _unipc_update(
    x: torch.Tensor,
    lambdas: tuple[float, ...],
    x0s: tuple[torch.Tensor, ...],
    s: tuple[float, float],
    t: tuple[float, float],
    order: int,
    x0_at_t: torch.Tensor | None = None,
    solver_type: str = "bh2",
) -> torch.Tensor:
    """One UniP (``x0_at_t`` None) or UniC step of ``order`` from x at s = (alpha_s, sigma_s) to
    t = (alpha_t, sigma_t); ``lambdas`` / ``x0s`` end with those of s; ``solver_type`` picks B(h)."""
    sigma_s, (alpha_t, sigma_t) = s[1], t
    lambda_s = lambdas[-1]
    h = math.log(alpha_t / sigma_t) - lambda_s
    m0 = x0s[-1]
    rks = [(lambdas[-(i + 1)] - lambda_s) / h for i in range(1, order)]
    d1s = [(x0s[-(i + 1)] - m0) / rk for i, rk in zip(range(1, order), rks, strict=True)]
    rks.append(1.0)
    hh = -h  # data prediction: the integrator runs in -lambda
    h_phi_1 = math.expm1(hh)  # h phi_1(h) = e^h - 1
    b_h = hh if solver_type == "bh1" else math.expm1(hh)  # UniPC sec. 3.3: B(h) = h or e^h - 1
    # UniPC eq. 9: R_p(h) rho = g_p(h) / B(h), g_p from the phi functions phi_{k+1}(h) k!
    h_phi_k, factorial, rows, b = h_phi_1 / hh - 1, 1, [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, g = torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    # UniPC eq. 8 (and eq. 10 for the corrector): the first-order exponential integrator
    base = (sigma_t / sigma_s) * x - (alpha_t * h_phi_1) * m0
    if x0_at_t is None:  # UniP-p, UniPC Algorithm 2
        if order == 1:
            return base
        # order 2: rho = 1/2 (UniPC appendix: the simplified UniP-2, as diffusers)
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], g[:-1]).tolist()
        res = sum(r * d for r, d in zip(rhos, d1s, strict=True))
        return base - (alpha_t * b_h) * res
    # UniC-p, UniPC Algorithm 3: order 1 uses rho = 1/2
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, g).tolist()
    res = sum((r * d for r, d in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(x))
    return base - (alpha_t * b_h) * (res + rhos[-1] * (x0_at_t - m0))


class UniPCSampler(MultistepSampler):
    """UniPC of order 1-3: ``steps`` network evaluations, one corrector per step at no extra cost.

    Args:
        steps: network evaluations, 1 <= steps <= T.
        order: the predictor's order p (1, 2 or 3); the corrector raises it to p + 1.
        spacing: as :class:`~ddpm.samplers.DPMSolverSampler` (linspace, leading and quadratic leave t = 0
            to the clean data).
        lower_order_final: cap the order at the number of steps left (diffusers' default). The last step,
            onto the clean data, is first order regardless.
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
        solver_type: ``bh2`` (B(h) = e^h - 1, the default) or ``bh1`` (B(h) = h), UniPC sec. 3.3.
    """

    def __init__(
        self,
        steps: int = 20,
        order: int = 2,
        spacing: str = "linspace",
        lower_order_final: bool = True,
        guidance_scale: float = 1.0,
        solver_type: str = "bh2",
        timesteps: Sequence[float] | None = None,
    ) -> None:
        super().__init__(steps, order, spacing, lower_order_final, guidance_scale, timesteps)
        if solver_type not in SOLVER_TYPES:
            allowed = ", ".join(SOLVER_TYPES)
            raise ValueError(f"solver_type={solver_type!r} is unknown; choose one of {allowed}")
        self.solver_type = solver_type

    @property
    def convergence_order(self) -> int:
        """p + 1: the corrector raises the predictor's order p by one (Zhao et al. 2023, UniPC sec. 3.1)."""
        return self.order + 1

    def __repr__(self) -> str:
        bh1 = ", solver_type='bh1'" if self.solver_type == "bh1" else ""
        return super().__repr__()[:-1] + bh1 + ")"

    def step(
        self,
        diffusion: Process,
        model_output: torch.Tensor,
        t: int | float | torch.Tensor,
        t_prev: int | float | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: UniPCState | None = None,
    ) -> StepOutput:
        """Correct x at ``t`` with this output, then predict x at ``t_prev`` (one timestep for the batch).

        Returns the prediction, the clipped x0 prediction at ``t`` and the :class:`UniPCState` for the
        next call (pass None on the first step).
        """
        state = state or UniPCState()
        alpha_s, sigma_s = alpha_sigma(diffusion, t)
        # the network saw the uncorrected x_t, so x0 is converted from it (as diffusers does)
        x0 = diffusion.clip(diffusion.x0_from_output(model_output, x_t, alpha_s, sigma_s))
        lambda_s = math.log(alpha_s / sigma_s)
        if t_prev == CLEAN:
            # onto sigma = 0 every order returns the data prediction; the corrected x_t would be unused
            return StepOutput(x0, x0, UniPCState())
        if state.last_sample is not None:
            assert state.last_t is not None  # set with last_sample
            x_t = _unipc_update(
                state.last_sample,
                state.lambdas,
                state.x0s,
                alpha_sigma(diffusion, state.last_t),
                (alpha_s, sigma_s),
                state.last_order,
                x0_at_t=x0,
                solver_type=self.solver_type,
            )
        lambdas = (*state.lambdas, lambda_s)[-self.order :]
        x0s = (*state.x0s, x0)[-self.order :]
        order = self.order
        if self.lower_order_final:
            ts = self.timesteps(diffusion)
            i = step_index(ts, t)
            if i is not None:
                order = min(order, len(ts) - i)
        order = min(order, len(x0s))  # warm-up: order p needs p x0 predictions
        t_next = alpha_sigma(diffusion, t_prev)
        prev = _unipc_update(x_t, lambdas, x0s, (alpha_s, sigma_s), t_next, order, None, self.solver_type)
        t_value = t.item() if isinstance(t, torch.Tensor) else t
        return StepOutput(prev, x0, UniPCState(lambdas, x0s, x_t, t_value, order))
