"""Distillation of a trained run into a few-step student: progressive distillation (Salimans & Ho 2022) and
consistency distillation (Song et al. 2023), each a :class:`~ddpm.losses.Loss` on the shared seams.

- :class:`ProgressiveDistillationLoss` (``loss=progressive_distillation``): Salimans & Ho Algorithm 2. In
  each round the student learns to take in one DDIM step what its teacher takes in two, so the number of
  steps halves every round (64 -> 32 -> ... -> 4); the student of one round is the teacher of the next.
  The loss is the distance of the student's x0-hat to the target x-tilde, weighted by max(SNR, 1) (their
  "truncated SNR" weighting) or SNR + 1, whatever the student predicts (v, as they recommend).
- :class:`ConsistencyDistillationLoss` (``loss=consistency_distillation``): Song et al. Algorithm 2: the
  consistency function f(x_{t_{n+1}}, t_{n+1}) of the student is pulled towards f(x-hat_{t_n}, t_n) of its
  EMA target network, where x-hat_{t_n} is one step of the teacher's probability-flow ODE (Heun or Euler,
  in EDM's frame x / alpha against sigma / alpha); :func:`consistency_output` is eq. 7's
  c_skip x + c_out F, whose boundary condition f(x, sigma_min) = x holds exactly.
- :class:`Denoiser`: a network and its process as the x0-prediction a teacher step needs.

Both losses draw their times from the grid they train on (:class:`ddpm.timestep_sampling.GridTimes`, which
reads :meth:`training_times`), and keep their state (the round's teacher, the target network) in the
module's checkpoints through :meth:`~ddpm.losses.Loss.state_dict`; :meth:`~ddpm.losses.Loss.prepare`,
called before every training step, moves to the next round or updates the target network.

Plain PyTorch (no Lightning, no Hydra); :mod:`ddpm.distill` opens the teacher run and builds the student.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ddpm.losses import Loss
from ddpm.process import Process, broadcast

__all__ = [
    "ConsistencyDistillationLoss",
    "Denoiser",
    "ProgressiveDistillationLoss",
    "consistency_grid",
    "consistency_output",
    "consistency_scalings",
    "ddim_step",
    "frozen",
    "frozen_copy",
    "grid_index",
    "progressive_target",
    "student_grid",
]

#: the time of the clean data after the last grid point (the samplers' ``t_prev = -1``)
CLEAN = -1.0
#: consistency models' sigma_data (Song et al. 2023, appendix C: EDM's 0.5)
SIGMA_DATA = 0.5

X0Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _coefficients(process: Process, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) per sample, broadcast against ``like``; t = -1 (:data:`CLEAN`) is (1, 0)."""
    clean = t < 0
    safe = torch.where(clean, torch.zeros_like(t), t)
    alpha = torch.where(clean, torch.ones_like(safe, dtype=torch.float32), process.alpha(safe).float())
    sigma = torch.where(clean, torch.zeros_like(safe, dtype=torch.float32), process.sigma(safe).float())
    return broadcast(alpha, like), broadcast(sigma, like)


class Denoiser(nn.Module):
    """``net`` under ``process`` as an x0-prediction: ``denoiser(x_t, t) -> x0-hat`` (t per sample [B]),
    what a teacher's step needs whatever the teacher's network predicts."""

    def __init__(self, net: nn.Module, process: Process) -> None:
        super().__init__()
        self.net = net
        self.process = process

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0-hat of ``net``'s output at (x_t, t)."""
        alpha, sigma = _coefficients(self.process, t, x_t)
        return self.process.x0_from_output(self.net(x_t, t).float(), x_t, alpha, sigma)


def ddim_step(
    process: Process, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM step from t to t_next per sample (t_next = -1: the clean data), given x0-hat."""
    alpha, sigma = _coefficients(process, t, x_t)
    alpha_next, sigma_next = _coefficients(process, t_next, x_t)
    # DDIM eq. 12, eta = 0 (Salimans & Ho Alg. 2, lines 8-9): z' = alpha' x + sigma' / sigma (z - alpha x)
    return alpha_next * x0 + sigma_next / sigma * (x_t - alpha * x0)


@torch.no_grad()
def progressive_target(
    teacher: X0Model,
    process: Process,
    x_t: torch.Tensor,
    t: torch.Tensor,
    t_mid: torch.Tensor,
    t_next: torch.Tensor,
) -> torch.Tensor:
    """The x0 target x-tilde of Salimans & Ho Algorithm 2: the x0 with which one DDIM step of the student
    from t lands where two DDIM steps of the teacher (t -> t_mid -> t_next) do."""
    z_mid = ddim_step(process, teacher(x_t, t), x_t, t, t_mid)
    z_next = ddim_step(process, teacher(z_mid, t_mid), z_mid, t_mid, t_next)
    alpha, sigma = _coefficients(process, t, x_t)
    alpha_next, sigma_next = _coefficients(process, t_next, x_t)
    ratio = sigma_next / sigma
    # Salimans & Ho Alg. 2, line 10: x~ = (z'' - (sigma'' / sigma) z) / (alpha'' - (sigma'' / sigma) alpha)
    return (z_next - ratio * x_t) / (alpha_next - ratio * alpha)


def grid_index(grid: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Where each t [B] lies in a distillation's ``grid`` (its training times), or a ValueError for a t off
    it: the targets are defined at those times only."""
    match = t.detach().double().cpu()[:, None] == grid[None, :]
    if not bool(match.any(dim=1).all()):
        off = t.detach().cpu()[~match.any(dim=1)][0].item()
        raise ValueError(f"t={off!r} is not one of the times this distillation trains at")
    return match.float().argmax(dim=1)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; it must be an integer >= 1")
    return value


def student_grid(process: Process, steps: int, spacing: str = "linspace") -> list:
    """The ``steps`` times a DDIM sampler of that spacing evaluates on ``process`` (what ``ddpm-sample
    sampler=ddim sampler.steps=<steps>`` visits), descending; the step after the last lands on the data."""
    from ddpm.samplers.ddim import DDIMSampler  # the samplers' own grid, so training and sampling agree

    return DDIMSampler(steps=steps, spacing=spacing).timesteps(process)


def _midpoint(process: Process, a: float, b: float) -> float:
    """The time halfway between two grid points (b = -1: the cleanest time); an integer on a chain."""
    low = process.time_range[0] if b == CLEAN else b
    mid = (a + low) / 2
    return float(round(mid)) if process.discrete else mid


def frozen(net: nn.Module) -> nn.Module:
    """``net`` itself, no longer trained (no gradients, eval mode): a teacher."""
    net.requires_grad_(False)
    return net.eval()


def frozen_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` that is not trained (a round's teacher, the target network)."""
    return frozen(copy.deepcopy(net))


def _on_device(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` on ``device``, moved only when it is elsewhere (a check of its first tensor, not a walk
    over all of them on every training step)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return module if first is None or first.device == device else module.to(device)


class ProgressiveDistillationLoss(Loss):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2): ``rounds`` rounds of ``round_steps``
    optimizer steps, the student's DDIM steps halving each round from ``teacher_steps / 2`` to
    ``student_steps``; the teacher of round 0 is the trained run (:meth:`use_teacher`), of each later round
    the student as it ended the round before.

    Args:
        diffusion: the student's process (the teacher's, with the student's parameterisation: v).
        teacher_steps: the DDIM steps of the first teacher (a power of two times ``student_steps``).
        student_steps: the student's steps after the last round.
        round_steps: optimizer steps per round.
        spacing: the DDIM spacing of every round's grid (the student's sampler's).
        weighting: ``truncated_snr`` (max(SNR, 1)) or ``snr_plus_one`` (SNR + 1, what the v loss weighs
            x0 by): the weight of ||x-tilde - x0-hat||^2 (Salimans & Ho sec. 4).
        offset_noise: the training noise's offset (:class:`~ddpm.losses.Loss`).
        cond_drop_prob: label dropout (:class:`~ddpm.losses.Loss`); the students here are unconditional.
        coupling: how the training noise is paired with the data (:class:`~ddpm.losses.Loss`).
    """

    def __init__(
        self,
        diffusion: Process,
        teacher_steps: int = 64,
        student_steps: int = 4,
        round_steps: int = 500,
        spacing: str = "linspace",
        weighting: str = "truncated_snr",
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        super().__init__(diffusion, offset_noise, cond_drop_prob, coupling)
        if weighting not in ("truncated_snr", "snr_plus_one"):
            raise ValueError(f"weighting={weighting!r} is unknown; choose truncated_snr or snr_plus_one")
        self.weighting = weighting
        self.teacher_steps = _positive_int("teacher_steps", teacher_steps)
        self.student_steps = _positive_int("student_steps", student_steps)
        self.round_steps = _positive_int("round_steps", round_steps)
        ratio = teacher_steps / student_steps
        if ratio < 2 or not float(math.log2(ratio)).is_integer():
            raise ValueError(
                f"teacher_steps={teacher_steps} over student_steps={student_steps} must be 2, 4, 8, ...: "
                "each round halves the steps"
            )
        self.rounds = int(math.log2(ratio))
        self.spacing = spacing
        for k in range(self.rounds):  # every round's grid exists on this process (steps <= T, the spacing)
            student_grid(diffusion, self.steps_in_round(k), spacing)
        self.round = -1
        self.teacher: nn.Module | None = None
        self._first_teacher: nn.Module | None = None
        self._grid = torch.zeros(0)
        self._mid = torch.zeros(0)
        self._next = torch.zeros(0)

    def __repr__(self) -> str:
        return (
            f"ProgressiveDistillationLoss(teacher_steps={self.teacher_steps}, "
            f"student_steps={self.student_steps}, round_steps={self.round_steps}, spacing={self.spacing!r})"
        )

    @property
    def total_steps(self) -> int:
        """Optimizer steps of all rounds together."""
        return self.rounds * self.round_steps

    def steps_in_round(self, k: int) -> int:
        """The student's DDIM steps in round ``k`` (0-based)."""
        return self.teacher_steps // 2 ** (k + 1)

    def use_teacher(self, teacher: nn.Module) -> None:
        """The first round's teacher: an x0-prediction ``teacher(x_t, t)`` (:class:`Denoiser` of the trained
        run)."""
        self._first_teacher = frozen(teacher)

    def _set_round(self, k: int, teacher: nn.Module) -> None:
        self.round = k
        self.teacher = teacher
        grid = student_grid(self.diffusion, self.steps_in_round(k), self.spacing)
        nxt = [*grid[1:], CLEAN]
        # the teacher's own grid (twice the steps) where it holds the student's: the teacher steps at the
        # times it was trained at; else halfway between the student's (a spacing whose grids do not nest)
        fine = student_grid(self.diffusion, 2 * len(grid), self.spacing)
        nested = len(fine) == 2 * len(grid) and fine[::2] == grid
        mids = (
            fine[1::2]
            if nested
            else [_midpoint(self.diffusion, a, b) for a, b in zip(grid, nxt, strict=True)]
        )
        self._grid = torch.tensor(grid, dtype=torch.float64)
        self._mid = torch.tensor(mids, dtype=torch.float64)
        self._next = torch.tensor(nxt, dtype=torch.float64)
        if not bool(((self._mid < self._grid) & ((self._mid > self._next) | (self._next == CLEAN))).all()):
            raise ValueError(
                f"round {k}'s {len(grid)} steps leave no teacher step between two of their times; "
                "give fewer teacher_steps"
            )

    def prepare(self, step: int, net: nn.Module) -> None:
        """Before optimizer step ``step``: the round it belongs to; on entering a round the teacher becomes
        a frozen copy of the student (``net``) as it is now (Algorithm 2, line 3: the student starts from
        it)."""
        k = min(step // self.round_steps, self.rounds - 1)
        if k == self.round:
            assert self.teacher is not None
            _on_device(self.teacher, next(net.parameters()).device)  # a resumed round's teacher: CPU
            return
        if k == 0:
            if self._first_teacher is None:
                raise ValueError("progressive distillation needs its first teacher: call use_teacher(...)")
            teacher = self._first_teacher
        else:
            teacher = Denoiser(frozen_copy(net), self.diffusion)
        self._set_round(k, _on_device(teacher, next(net.parameters()).device))

    def training_times(self) -> torch.Tensor:
        """The student's times of this round (those :class:`~ddpm.timestep_sampling.GridTimes` draws)."""
        if self.round < 0:
            raise ValueError("the distillation has not started: call prepare(step, net) first")
        return self._grid

    def progress(self) -> dict[str, float]:
        """What the training step logs: the round and the student's steps in it."""
        return {"distill/round": float(self.round), "distill/student_steps": float(len(self._grid))}

    def _lookup(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        where = grid_index(self._grid, t)
        mid, nxt = self._mid[where], self._next[where]
        return mid.to(t.device, t.dtype), nxt.to(t.device, t.dtype)

    def from_output(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The squared distance of the output to the parameterisation's target for x-tilde [B]."""
        if self.teacher is None:
            raise ValueError("the distillation has not started: call prepare(step, net) first")
        t_mid, t_next = self._lookup(t)
        d = self.diffusion
        x_tilde = progressive_target(self.teacher, d, x_t, t, t_mid, t_next)
        alpha, sigma = _coefficients(d, t, x_t)
        x_hat = d.x0_from_output(output, x_t, alpha, sigma)
        snr = d.snr(t).float().to(x_t.device)
        # Salimans & Ho sec. 4, Algorithm 2 line 11: w(lambda) ||x~ - x-hat||^2, w = max(SNR, 1) or SNR + 1
        weight = snr.clamp_min(1.0) if self.weighting == "truncated_snr" else snr + 1.0
        return (x_hat - x_tilde).square().reshape(x0.shape[0], -1).mean(dim=1) * weight

    def state_dict(self) -> dict[str, Any]:
        """The round and, past the first, its teacher's weights (a resumed run goes on with them)."""
        if self.round <= 0 or self.teacher is None:
            return {"round": self.round}
        return {"round": self.round, "teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any], net: nn.Module) -> None:
        """Restore :meth:`state_dict` (``net``: the student, whose copy holds the teacher's weights)."""
        k = int(state.get("round", -1))
        if k <= 0:
            self.round = -1  # round 0's teacher is the trained run: prepare() takes it again
            return
        teacher = Denoiser(frozen_copy(net), self.diffusion)
        teacher.load_state_dict(state["teacher"])
        self._set_round(k, _on_device(teacher, next(net.parameters()).device))


def consistency_scalings(
    sigma: torch.Tensor, sigma_min: float, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of a consistency model at noise levels ``sigma`` (Song et al. 2023, eq. 7 and
    appendix C): c_skip(sigma_min) = 1 and c_out(sigma_min) = 0, so f(x, sigma_min) = x exactly."""
    shifted = sigma - sigma_min
    c_skip = sigma_data**2 / (shifted.square() + sigma_data**2)  # CM appendix C
    c_out = sigma_data * shifted / (sigma_data**2 + sigma.square()).sqrt()  # CM appendix C
    return c_skip, c_out


def consistency_output(
    process: Process,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    sigma_data: float = SIGMA_DATA,
) -> torch.Tensor:
    """The consistency function f(x_t, t) (on the data's scale) from a network's output at (x_t, t), any
    process and parameterisation: the network's x0-hat D gives EDM's raw output F = (D - c_skip^EDM y) /
    c_out^EDM on y = x_t / alpha, and f = c_skip y + c_out F (CM eq. 7) with the consistency model's
    scalings, whose c_out vanishes at the process's cleanest time."""
    alpha, sigma = _coefficients(process, t, x_t)
    level = sigma / alpha  # EDM eq. 4: y = x_t / alpha = x0 + sigma' n
    y = x_t / alpha
    low = process.time_range[0]
    sigma_min = process.noise_level_at(low)
    d = process.x0_from_output(model_output, x_t, alpha, sigma)
    # EDM table 1: D = c_skip y + c_out F, so F = (D - c_skip y) / c_out (c_out > 0 above level 0)
    e_skip = sigma_data**2 / (level.square() + sigma_data**2)
    e_out = level * sigma_data / (level.square() + sigma_data**2).sqrt()
    raw = (d - e_skip * y) / e_out.clamp_min(torch.finfo(torch.float32).tiny)
    c_skip, c_out = consistency_scalings(level, sigma_min, sigma_data)
    f = c_skip * y + c_out * raw  # CM eq. 7
    return torch.where(broadcast(t <= low, x_t), y, f)  # CM eq. 7's boundary: f(x, sigma_min) = x


def consistency_grid(process: Process, n: int, rho: float = 7.0) -> list:
    """``n`` descending times of the consistency model's discretisation (Song et al. 2023, sec. 3: EDM's
    eq. 5 with rho = 7) between the process's noisiest time and its cleanest one (the boundary, last); on a
    chain, its integer timesteps (repeats dropped)."""
    n = _positive_int("n", n)
    if n < 2:
        raise ValueError(f"n={n} is invalid; the consistency grid needs at least 2 times")
    low, high = process.time_range
    bottom, top = process.noise_level_range()
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    levels = (top ** (1 / rho) + ramp * (bottom ** (1 / rho) - top ** (1 / rho))) ** rho  # EDM eq. 5
    times = process.time_at_noise_level(levels[1:-1])
    inner = times.round().tolist() if process.discrete else times.tolist()
    grid = sorted({float(high), *(float(v) for v in inner), float(low)}, reverse=True)
    return grid


class ConsistencyDistillationLoss(Loss):
    """Consistency distillation (Song et al. 2023, Algorithm 2) with the trained run's probability-flow ODE
    as the teacher and squared l2 as the distance.

    Args:
        diffusion: the student's process (the teacher's).
        grid_points: N, the points of the discretisation (:func:`consistency_grid`; their sec. 3, N = 18).
        ode: the teacher's ODE step, ``heun`` (their choice with EDM) or ``euler``.
        target_decay: mu, the EMA rate of the target network theta^- (CM Algorithm 2, last line).
        sigma_data: the consistency scalings' sigma_data (:func:`consistency_scalings`); the student's
            sampler (``sampler=consistency``) must have the same.
        offset_noise: the training noise's offset (:class:`~ddpm.losses.Loss`).
        cond_drop_prob: label dropout (:class:`~ddpm.losses.Loss`); the students here are unconditional.
        coupling: how the training noise is paired with the data (:class:`~ddpm.losses.Loss`).
    """

    def __init__(
        self,
        diffusion: Process,
        grid_points: int = 18,
        ode: str = "heun",
        target_decay: float = 0.95,
        sigma_data: float = SIGMA_DATA,
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        super().__init__(diffusion, offset_noise, cond_drop_prob, coupling)
        if ode not in ("heun", "euler"):
            raise ValueError(f"ode={ode!r} is unknown; choose heun or euler")
        if isinstance(target_decay, bool) or not isinstance(target_decay, int | float):
            raise ValueError(f"target_decay={target_decay!r} is invalid; it must be a number in [0, 1)")
        if not 0 <= target_decay < 1:
            raise ValueError(f"target_decay={target_decay!r} is invalid; it must be in [0, 1)")
        if isinstance(sigma_data, bool) or not isinstance(sigma_data, int | float) or sigma_data <= 0:
            raise ValueError(f"sigma_data={sigma_data!r} is invalid; it must be a number > 0")
        self.grid_points = _positive_int("grid_points", grid_points)
        self.ode = ode
        self.target_decay = float(target_decay)
        self.sigma_data = float(sigma_data)
        grid = consistency_grid(diffusion, self.grid_points)
        self._grid = torch.tensor(grid, dtype=torch.float64)
        self.teacher: nn.Module | None = None
        self.target: nn.Module | None = None
        #: the step whose update the target network has had (-1: none yet)
        self.prepared_step = -1

    def __repr__(self) -> str:
        return (
            f"ConsistencyDistillationLoss(grid_points={self.grid_points}, ode={self.ode!r}, "
            f"target_decay={self.target_decay:g}, sigma_data={self.sigma_data:g})"
        )

    def use_teacher(self, teacher: nn.Module) -> None:
        """The teacher: an x0-prediction ``teacher(x_t, t)`` (:class:`Denoiser` of the trained run)."""
        self.teacher = frozen(teacher)

    def training_times(self) -> torch.Tensor:
        """t_{n+1} for n = 1 .. N - 1: every grid time but the cleanest (what GridTimes draws)."""
        return self._grid[:-1]

    def progress(self) -> dict[str, float]:
        """Nothing to log beyond the loss."""
        return {}

    @torch.no_grad()
    def prepare(self, step: int, net: nn.Module) -> None:
        """Before optimizer step ``step``: theta^- <- mu theta^- + (1 - mu) theta (CM Algorithm 2,
        last line), the student's weights after the previous step; theta^- = theta at the first step."""
        if self.teacher is None:
            raise ValueError("consistency distillation needs its teacher: call use_teacher(...)")
        device = next(net.parameters()).device
        _on_device(self.teacher, device)
        if step == self.prepared_step:  # a validation and the training step at the same step: one update
            return
        self.prepared_step = step
        if self.target is None:
            self.target = frozen_copy(net)
            return
        _on_device(self.target, device)  # a resumed run's target network: CPU
        target: list[torch.Tensor] = list(self.target.parameters())
        torch._foreach_lerp_(target, [p.detach() for p in net.parameters()], 1.0 - self.target_decay)

    def _teacher_step(self, x_t: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """x at t_next from x at t: one step of the teacher's probability-flow ODE in EDM's frame (EDM
        Algorithm 1, lines 4-8: Euler, with Heun's correction where sigma_next > 0)."""
        assert self.teacher is not None
        d = self.diffusion
        alpha, sigma = _coefficients(d, t, x_t)
        alpha_next, sigma_next = _coefficients(d, t_next, x_t)
        level, level_next = sigma / alpha, sigma_next / alpha_next
        y = x_t / alpha
        slope = (
            y - self.teacher(x_t, t)
        ) / level  # EDM eq. 4 / Algorithm 1 line 4: dy/dsigma = (y - D) / sigma
        y_next = y + (level_next - level) * slope
        if self.ode == "heun":
            corrected = (y_next - self.teacher(alpha_next * y_next, t_next)) / level_next.clamp_min(1e-12)
            heun = y + (level_next - level) * (slope + corrected) / 2  # EDM Algorithm 1, line 8
            y_next = torch.where(level_next > 0, heun, y_next)
        return alpha_next * y_next

    def from_output(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """||f_theta(x_{t_{n+1}}, t_{n+1}) - f_theta^-(x-hat_{t_n}, t_n)||^2 per sample [B] (CM Algorithm 2,
        lambda = 1)."""
        if self.target is None:
            raise ValueError("the distillation has not started: call prepare(step, net) first")
        where = grid_index(self._grid[:-1], t)
        t_next = self._grid[where + 1].to(t.device, t.dtype)
        with torch.no_grad():
            x_next = self._teacher_step(x_t, t, t_next)
            target = consistency_output(
                self.diffusion, self.target(x_next, t_next).float(), x_next, t_next, self.sigma_data
            )
        online = consistency_output(self.diffusion, output, x_t, t, self.sigma_data)
        return (online - target).square().reshape(x0.shape[0], -1).mean(dim=1)

    def state_dict(self) -> dict[str, Any]:
        """The target network's weights (a resumed run goes on with them)."""
        if self.target is None:
            return {}
        return {"target": self.target.state_dict(), "prepared_step": self.prepared_step}

    def load_state_dict(self, state: dict[str, Any], net: nn.Module) -> None:
        """Restore :meth:`state_dict`."""
        self.prepared_step = int(state.get("prepared_step", -1))
        if "target" in state:
            self.target = frozen_copy(net)
            self.target.load_state_dict(state["target"])
