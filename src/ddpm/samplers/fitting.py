"""A step schedule fitted to a model: GITS's dynamic programming over a teacher trajectory.

Chen et al. 2024 ("On the Trajectory Regularity of ODE-based Diffusion Sampling", GITS, sec. 4): the
sampling trajectories of one model share their shape, so the timesteps of a few-step sampler can be chosen
for that model once. A teacher trajectory is drawn on a fine grid of candidate timesteps (here UniPC-3 on
the grid, for a batch of x_T); the cost of jumping from grid point i to a later point j is the mean squared
distance between one first-order step (DDIM, DPM-Solver-1) from the teacher's x_i, with the teacher's data
prediction there, and the teacher's x_j; dynamic programming then finds the path of ``steps`` jumps from the
noisiest point to the clean data with the least total cost. The jumps need no network evaluation beyond the
teacher's own. The schedule is a list of timesteps for ``sampler.timesteps=[...]``; any sampler takes it.

Plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.process import Process
from ddpm.samplers.base import CLEAN, alpha_sigma, check_steps, require_chain
from ddpm.samplers.spacing import make_timesteps
from ddpm.samplers.unipc import UniPCSampler

__all__ = ["GRID_STEPS", "FittedSchedule", "fit_timesteps"]

#: the teacher's grid: candidate timesteps, logsnr-spaced
GRID_STEPS = 100
#: later grid points whose jumps are formed at once
JUMP_CHUNK = 32

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FittedSchedule(list):
    """The fitted timesteps (a list, descending), the total cost of their path (``cost``) and the teacher's
    grid of candidate timesteps they were chosen among (``grid``)."""

    cost: float
    grid: list[int]


def _jump_costs(
    diffusion: GaussianDiffusion, states: torch.Tensor, x0s: torch.Tensor, grid: list[int]
) -> torch.Tensor:
    """cost[i, j] (j > i): mean over the batch of ||DDIM(x_i: grid i -> j) - x_j||^2 / dim; inf elsewhere.
    Index len(grid) is the clean data."""
    K = len(grid)
    times = [*grid, CLEAN]
    alphas, sigmas = (
        torch.tensor(c, dtype=torch.float64)
        for c in zip(*(alpha_sigma(diffusion, t) for t in times), strict=True)
    )
    cost = torch.full((K + 1, K + 1), float("inf"), dtype=torch.float64)
    batch, dims = states.shape[1], states[0, 0].numel()
    shape = (-1, *[1] * (states.ndim - 1))
    for i in range(K):
        x_i, x0_i = states[i].double(), x0s[i].double()
        eps_i = (x_i - alphas[i] * x0_i) / sigmas[i]  # DDPM eq. 4 solved for eps, at the teacher's x0
        for start in range(i + 1, K + 1, JUMP_CHUNK):  # the later points in chunks: memory stays bounded
            j = torch.arange(start, min(start + JUMP_CHUNK, K + 1))
            # DDIM eq. 12 with eta = 0 (DPM-Solver-1): x_j = alpha_j x0_i + sigma_j eps_i
            jumps = alphas[j].reshape(shape) * x0_i + sigmas[j].reshape(shape) * eps_i
            cost[i, j] = (jumps - states[j].double()).square().flatten(1).sum(1) / (dims * batch)
    return cost


def _cheapest_path(cost: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """The path 0 -> K of exactly ``steps`` jumps with the least total cost (GITS's dynamic programming)."""
    K = cost.shape[0] - 1
    best = torch.full((steps + 1, K + 1), float("inf"), dtype=torch.float64)
    parent = torch.full((steps + 1, K + 1), -1, dtype=torch.long)
    best[0, 0] = 0.0
    for n in range(1, steps + 1):
        # best[n, j] = min_i best[n - 1, i] + cost[i, j]
        total = best[n - 1][:, None] + cost
        best[n], parent[n] = total.min(dim=0)
    path, node = [K], K
    for n in range(steps, 0, -1):
        node = int(parent[n, node])
        path.append(node)
    return path[::-1], float(best[steps, K])


@torch.no_grad()
def fit_timesteps(
    model: Model,
    diffusion: Process,
    steps: int,
    shape: tuple[int, ...],
    grid_steps: int = GRID_STEPS,
    generator: torch.Generator | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> FittedSchedule:
    """``steps`` timesteps fitted to ``model`` (GITS): see the module docstring.

    Args:
        model: the network, ``model(x_t, t)`` under the diffusion's objective.
        diffusion: the process it was trained on.
        steps: the evaluations of the fitted schedule, 1 <= steps <= the grid's points.
        shape: [B, ...] of the teacher's batch of x_T (a few hundred samples suffice: the cost is a mean).
        grid_steps: the candidate timesteps: the teacher's grid (``logsnr``, ``grid_steps`` points, at most
            T; rounding may merge a few near t = 0).
        generator: RNG of the teacher's x_T.
        progress: show the teacher's progress bar.
        device: where the teacher samples (default: the diffusion's).

    Raises:
        ValueError: steps < 1 or more than the grid's points.
    """
    check_steps(steps)
    diffusion = require_chain(diffusion, "fitting a step schedule (GITS)")
    grid_steps = min(grid_steps, diffusion.num_timesteps)  # a short chain: all of its timesteps
    grid = make_timesteps(
        diffusion.num_timesteps, grid_steps, "logsnr", alphas_cumprod=diffusion.alphas_cumprod
    )
    if steps > len(grid):
        raise ValueError(
            f"steps={steps} > {len(grid)}, the teacher's grid points the schedule is chosen among"
        )
    teacher = UniPCSampler(order=3, timesteps=grid)
    run = teacher.sample(
        model, diffusion, shape, generator=generator, return_trajectory=True, progress=progress
    )
    # trajectory[k] is x at grid[k] (k < K) and, at k = K, the clean data; pred_x0[k] the x0 prediction there
    cost = _jump_costs(diffusion, run.trajectory, run.pred_x0, run.timesteps)
    path, total = _cheapest_path(cost, steps)
    fitted = FittedSchedule(run.timesteps[i] for i in path[:-1])
    fitted.cost, fitted.grid = total, list(run.timesteps)
    return fitted
