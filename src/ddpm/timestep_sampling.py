"""How training draws its timesteps: uniformly, or by importance sampling on the loss history.

As improved-diffusion's ``resample.py``: :meth:`TimestepDistribution.sample` returns the timesteps and
their importance weights in one call, so the weights always belong to the distribution the timesteps
were drawn from; :meth:`~TimestepDistribution.update` then feeds the per-sample losses back (under DDP:
every rank's, in the same order, so that every rank's history stays equal). The state is tensors only, so
a checkpoint that carries it loads with ``weights_only=True``. EDM's log-normal noise levels and flow
matching's logit-normal t are further subclasses.

Plain PyTorch (no Lightning, no Hydra).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ddpm.edm import EDMProcess
from ddpm.process import Process

__all__ = [
    "HISTORY_PER_TERM",
    "UNIFORM_PROB",
    "GridTimes",
    "LogNormalNoiseLevels",
    "LogitNormalTimes",
    "LossSecondMomentTimesteps",
    "TimestepDistribution",
    "UniformTimesteps",
    "check_loss",
    "default_timesteps",
]

#: improved DDPM sec. 3.3: 10 losses per t kept for the importance sampler, 0.001 of uniform mixed in
HISTORY_PER_TERM = 10
UNIFORM_PROB = 1e-3


def _chain_length(process: Process) -> int:
    T = getattr(process, "num_timesteps", None)
    if not process.discrete or not isinstance(T, int):
        raise ValueError(
            f"{type(process).__name__} is not a chain of timesteps; these samplers draw t in 0 .. T-1"
        )
    return T


class TimestepDistribution:
    """The interface: the distribution training draws t from, with the weights that keep the loss unbiased."""

    #: whether :meth:`update` uses the losses (the training module gathers them across ranks only then)
    uses_losses: bool = False
    #: whether the per-sample losses must be the bound's terms L_t (``loss=vlb`` or ``hybrid``)
    needs_bound_terms: bool = False

    def sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t [B], weights [B]): timesteps and the importance weights 1 / (T p_t), float32 on ``device``."""
        raise NotImplementedError

    def validation_sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """t [B] for the validation loss: a fixed distribution (a history-driven one's base), so that epochs
        compare; the training draw by default."""
        return self.sample(batch, device, generator)[0]

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:  # most keep no history
        """Record the per-sample losses [B] at timesteps ``t`` [B] (nothing for a fixed distribution)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state a resumed run needs (tensors only); empty for a fixed distribution."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # fixed: nothing to load
        """Restore :meth:`state_dict`."""


def check_loss(timestep_sampler: TimestepDistribution, loss: object) -> None:
    """A one-line ValueError when ``timestep_sampler`` learns from terms the ``loss`` does not have, or when
    a loss that trains on a grid of its own (a distillation's) meets another distribution than
    :class:`GridTimes`; a :class:`GridTimes` is given its loss here."""
    grid_loss = callable(getattr(loss, "training_times", None))
    if isinstance(timestep_sampler, GridTimes):
        if not grid_loss:
            raise ValueError(
                f"timestep_sampler=grid draws the times a distillation trains at; {loss!r} has none: use "
                "timestep_sampler=uniform"
            )
        timestep_sampler.follow(loss)
    elif grid_loss:
        raise ValueError(
            f"{loss!r} trains at the times of its own grid; use timestep_sampler=grid, not "
            f"{type(timestep_sampler).__name__}"
        )
    if timestep_sampler.needs_bound_terms and not getattr(loss, "bound_terms", False):
        raise ValueError(
            f"{type(timestep_sampler).__name__} samples t by the bound's per-t terms L_t, which {loss!r} has "
            "none of; use loss=vlb (or hybrid) or timestep_sampler=uniform"
        )


class UniformTimesteps(TimestepDistribution):
    """t uniform over the process's times, every weight 1: on {0, ..., T-1} for a chain (DDPM Algorithm 1),
    on the interval ``time_range`` for a continuous process (flow matching's t ~ U[0, 1], Lipman et al.
    2023 eq. 9)."""

    def __init__(self, process: Process) -> None:
        self.num_timesteps: int | None = _chain_length(process) if process.discrete else None
        self.time_range = process.time_range

    def sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, ones)."""
        if self.num_timesteps is None:
            low, high = self.time_range
            u = torch.rand(batch, device=device, generator=generator)
            return low + (high - low) * u, torch.ones(batch, device=device)
        t = torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)
        return t, torch.ones(batch, device=device)

    def __repr__(self) -> str:
        if self.num_timesteps is None:
            return f"UniformTimesteps(time_range={self.time_range})"
        return f"UniformTimesteps(T={self.num_timesteps})"


class LossSecondMomentTimesteps(UniformTimesteps):
    """t drawn with probability proportional to sqrt(E[L_t^2]) over the last 10 losses at each t (improved
    DDPM sec. 3.3, eq. 18; improved-diffusion's ``LossSecondMomentResampler``), uniform until every t has
    its 10 (drawn as :class:`UniformTimesteps` draws it); for losses made of the bound's terms (``loss=vlb``
    or ``hybrid``).

    The history lives on the CPU in float64, outside any ``state_dict`` the EMA averages.
    """

    uses_losses = True
    needs_bound_terms = True

    num_timesteps: int

    def __init__(self, process: Process) -> None:
        self.num_timesteps = _chain_length(process)  # a history per timestep: a chain's
        self.time_range = process.time_range
        self.loss_history = torch.zeros(self.num_timesteps, HISTORY_PER_TERM, dtype=torch.float64)
        self.loss_counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    @property
    def warm(self) -> bool:
        """Whether every t holds its 10 losses (before that, t is uniform)."""
        return bool((self.loss_counts == HISTORY_PER_TERM).all())

    def probabilities(self) -> torch.Tensor:
        """p_t [T] (float64, CPU): sqrt(E[L_t^2]) normalised and mixed with 0.001 of uniform once warm."""
        T = self.num_timesteps
        if not self.warm:
            return torch.full((T,), 1.0 / T, dtype=torch.float64)
        weights = self.loss_history.square().mean(dim=1).sqrt()  # improved DDPM eq. 18: sqrt(E[L_t^2])
        weights = weights / weights.sum()
        return weights * (1 - UNIFORM_PROB) + UNIFORM_PROB / T

    def sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, 1 / (T p_t)): the weights make the weighted losses average to the uniform-t mean."""
        if not self.warm:
            return super().sample(batch, device, generator)
        p = self.probabilities()
        t = torch.multinomial(p, batch, replacement=True, generator=generator)
        # improved DDPM sec. 3.3: L_t / p_t keeps the estimate of L_vlb unbiased
        weights = (1.0 / (self.num_timesteps * p[t])).float()
        return t.to(device), weights.to(device)

    def validation_sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform t: the validation loss must not move with the loss history."""
        return UniformTimesteps.sample(self, batch, device, generator)[0]

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each loss to its t's history, in order (the oldest shifted out once a t holds 10)."""
        history, counts = self.loss_history, self.loss_counts
        for ti, loss in zip(t.cpu().tolist(), losses.detach().double().cpu().tolist(), strict=True):
            n = int(counts[ti])
            if n == HISTORY_PER_TERM:  # improved-diffusion: shift out the oldest loss
                history[ti, :-1] = history[ti, 1:].clone()
                history[ti, -1] = loss
            else:
                history[ti, n] = loss
                counts[ti] = n + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The loss history (the checkpoint's ``timestep_sampler`` entry)."""
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: a history of another T.
        """
        history, counts = state["loss_history"], state["loss_counts"]
        if tuple(history.shape) != tuple(self.loss_history.shape) or counts.shape != self.loss_counts.shape:
            raise ValueError(
                f"the checkpoint's timestep-sampler history has shape {tuple(history.shape)}; "
                f"this run's is {tuple(self.loss_history.shape)}"
            )
        self.loss_history = history.detach().double().cpu().clone()
        self.loss_counts = counts.detach().long().cpu().clone()

    def __repr__(self) -> str:
        return f"LossSecondMomentTimesteps(T={self.num_timesteps}, warm={self.warm})"


class LogNormalNoiseLevels(TimestepDistribution):
    """EDM's training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, sec. 5 and table 1),
    unweighted; for a process whose time is its noise level (``diffusion=edm``).

    Args:
        process: the continuous process (:class:`ddpm.edm.EDMProcess`).
        p_mean: the mean of ln(sigma) (EDM: -1.2).
        p_std: its standard deviation (EDM: 1.2).
    """

    def __init__(self, process: Process, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        if process.discrete:
            raise ValueError(
                "timestep_sampler=log_normal draws EDM's continuous noise levels; "
                f"{type(process).__name__} is a chain of timesteps 0 .. T-1: use diffusion=edm, or "
                "timestep_sampler=uniform"
            )
        if isinstance(p_mean, bool) or not isinstance(p_mean, int | float) or not math.isfinite(p_mean):
            raise ValueError(f"p_mean={p_mean!r} is invalid; it must be a finite number (EDM: -1.2)")
        if isinstance(p_std, bool) or not isinstance(p_std, int | float) or not 0 < p_std < math.inf:
            raise ValueError(f"p_std={p_std!r} is invalid; it must be a finite number > 0 (EDM: 1.2)")
        self.p_mean = float(p_mean)
        self.p_std = float(p_std)

    def sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [B], ones [B])."""
        z = torch.randn(batch, device=device, generator=generator)
        sigma = (self.p_mean + self.p_std * z).exp()  # EDM table 1: ln(sigma) ~ N(P_mean, P_std^2)
        return sigma, torch.ones(batch, device=device)

    def __repr__(self) -> str:
        return f"LogNormalNoiseLevels(p_mean={self.p_mean:g}, p_std={self.p_std:g})"


class LogitNormalTimes(TimestepDistribution):
    """Flow matching's logit-normal times (Esser et al. 2024, SD3 sec. 3.1, eq. 19): t = sigmoid(u) with
    u ~ N(mean, scale^2), mapped onto the process's ``time_range`` (the flow's [0, 1]), unweighted: more
    training in the middle of the path, where the velocity is hardest to predict.

    Args:
        process: a continuous process (:class:`ddpm.flow.FlowProcess`).
        mean: the mean m of the logit (SD3: 0).
        scale: its standard deviation s (SD3: 1).
    """

    def __init__(self, process: Process, mean: float = 0.0, scale: float = 1.0) -> None:
        if process.discrete:
            raise ValueError(
                "timestep_sampler=logit_normal draws times in a continuous interval; "
                f"{type(process).__name__} is a chain of timesteps 0 .. T-1: use diffusion=flow, or "
                "timestep_sampler=uniform"
            )
        if isinstance(mean, bool) or not isinstance(mean, int | float) or not math.isfinite(mean):
            raise ValueError(f"mean={mean!r} is invalid; it must be a finite number (SD3: 0)")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < math.inf:
            raise ValueError(f"scale={scale!r} is invalid; it must be a finite number > 0 (SD3: 1)")
        self.mean, self.scale = float(mean), float(scale)
        self.time_range = process.time_range

    def sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t [B], ones [B])."""
        u = self.mean + self.scale * torch.randn(batch, device=device, generator=generator)
        low, high = self.time_range
        return low + (high - low) * torch.sigmoid(u), torch.ones(batch, device=device)  # SD3 eq. 19

    def __repr__(self) -> str:
        return f"LogitNormalTimes(mean={self.mean:g}, scale={self.scale:g})"


class GridTimes(TimestepDistribution):
    """t uniform over the times a distillation trains at (:meth:`training_times` of its loss, which change
    by round): the student's grid points of progressive distillation (Salimans & Ho Algorithm 2, line 5),
    t_{n+1} of consistency distillation (Song et al. Algorithm 2, n ~ U[1, N - 1]); every weight 1."""

    def __init__(self, process: Process) -> None:
        self.discrete = process.discrete
        self.loss: Any = None

    def follow(self, loss: Any) -> None:
        """Draw the times of ``loss`` (anything with ``training_times() -> tensor``)."""
        self.loss = loss

    def sample(
        self, batch: int, device: torch.device | str | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, ones)."""
        if self.loss is None:
            raise ValueError(
                "GridTimes has no loss to draw the times of: check_loss(sampler, loss) gives it one"
            )
        times = self.loss.training_times()
        gen_device = generator.device if generator is not None else device
        index = torch.randint(0, len(times), (batch,), generator=generator, device=gen_device)
        t = times.to(index.device)[index]
        t = t.round().long() if self.discrete else t.float()
        return t.to(device), torch.ones(batch, device=device)

    def __repr__(self) -> str:
        return "GridTimes()"


def default_timesteps(process: Process) -> TimestepDistribution:
    """The training times of a config without a ``timestep_sampler`` node: EDM's log-normal noise levels
    on EDM's process, uniform on any other (a chain's timesteps, the flow's [0, 1])."""
    return LogNormalNoiseLevels(process) if isinstance(process, EDMProcess) else UniformTimesteps(process)
