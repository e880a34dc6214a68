"""A trained run distilled into a few-step student: ``ddpm-train experiment=<x>_distill_progressive
teacher=RUN`` or ``<x>_distill_consistency`` (the losses: :mod:`ddpm.distillation`).

:func:`ddpm.build.build` builds the student from its own config, checks it (:func:`check_student`: no
labels, the sampler that samples what the loss trains), opens the teacher as any run folder is opened
(:func:`ddpm.build.load_run`: weights only, its config plain data), checks that the two share what a student
must share (:func:`check_teacher`: the data, T and the schedule, the network's architecture; the student may
predict another quantity, e.g. v), and starts the student from the teacher's weights (Salimans & Ho
Algorithm 2, line 3; Song et al. sec. 4) with the teacher as the loss's first teacher
(:func:`attach_teacher`). Nothing else of the teacher's config reaches the student; the result is a
normal run folder.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from ddpm.config import ConfigError
from ddpm.distillation import ConsistencyDistillationLoss, Denoiser, ProgressiveDistillationLoss
from ddpm.reflow import check_teacher_data
from ddpm.samplers import ConsistencySampler, DDIMSampler

__all__ = ["attach_teacher", "check_student", "check_teacher", "is_distillation"]


def is_distillation(loss: object) -> bool:
    """Whether ``loss`` distils a teacher (it needs ``teacher=RUN``)."""
    return isinstance(loss, ProgressiveDistillationLoss | ConsistencyDistillationLoss)


def check_student(cfg: DictConfig, loss: Any, sampler: Any) -> None:
    """A one-line ConfigError unless the student samples what its loss trains, without labels, for long
    enough: progressive distillation with DDIM (eta 0) at the last round's steps on the loss's spacing and
    ``trainer.max_steps`` covering every round; consistency distillation with ``sampler=consistency`` and
    the loss's sigma_data. Checked before the teacher is read."""
    if cfg.get("conditional"):
        raise ConfigError("conditional=true with a teacher: the distillations here are unconditional")
    if isinstance(loss, ProgressiveDistillationLoss):
        fits = (
            isinstance(sampler, DDIMSampler)
            and sampler.eta == 0
            and sampler.custom_timesteps is None
            and sampler.steps == loss.student_steps
            and sampler.spacing.value == loss.spacing
        )
        if not fits:
            raise ConfigError(
                f"sampler={sampler!r} does not sample what loss=progressive_distillation trains; use "
                f"sampler=ddim sampler.eta=0 sampler.steps={loss.student_steps} "
                f"sampler.spacing={loss.spacing}"
            )
        max_steps = int(cfg.trainer.get("max_steps") or -1)
        if max_steps < loss.total_steps:
            raise ConfigError(
                f"trainer.max_steps={max_steps} is shorter than the distillation's {loss.rounds} rounds of "
                f"loss.round_steps={loss.round_steps}; give trainer.max_steps={loss.total_steps}"
            )
    elif isinstance(loss, ConsistencyDistillationLoss) and (
        not isinstance(sampler, ConsistencySampler) or sampler.sigma_data != loss.sigma_data
    ):
        raise ConfigError(
            f"sampler={sampler!r} does not sample what loss=consistency_distillation trains; use "
            f"sampler=consistency sampler.sigma_data={loss.sigma_data:g}"
        )


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def check_teacher(cfg: DictConfig, teacher: DictConfig, teacher_path: str) -> None:
    """A one-line ConfigError unless the student shares with the teacher what it must: the data, T, the
    schedule, the process (its objective aside: a student may predict v where the teacher predicts eps) and
    the network's architecture (it starts from the teacher's weights). The first key that differs is named
    with the value that would match."""
    check_teacher_data(cfg, teacher, teacher_path)
    student_diffusion = {k: v for k, v in (_plain(cfg.diffusion) or {}).items() if k != "objective"}
    teacher_diffusion = {
        k: v for k, v in (_plain(teacher.get("diffusion")) or {}).items() if k != "objective"
    }
    chain = student_diffusion.get("_target_") == "ddpm.diffusion.GaussianDiffusion"  # only it reads schedule
    teacher_schedule = _plain(teacher.get("schedule")) or {}
    teacher_model = _plain(teacher.get("model")) or {}
    pairs = [
        ("T", cfg.get("T"), teacher.get("T")),
        *(
            (f"schedule.{k}", v, teacher_schedule.get(k))
            for k, v in sorted((_plain(cfg.get("schedule")) or {}).items())
            if chain and k != "T"  # the schedule's T is the root's
        ),
        *(
            (f"diffusion.{k}", student_diffusion.get(k), teacher_diffusion.get(k))
            for k in sorted(set(student_diffusion) | set(teacher_diffusion))
        ),
        *((f"model.{k}", v, teacher_model.get(k)) for k, v in sorted((_plain(cfg.model) or {}).items())),
    ]
    for key, mine, theirs in pairs:
        if mine != theirs:
            raise ConfigError(
                f"{key}={mine!r} differs from the teacher's {theirs!r} ({teacher_path}): the student shares "
                f"the teacher's data, process and network; give {key}={theirs!r}"
            )


def attach_teacher(net: nn.Module, loss: Any, teacher: Any) -> None:
    """Start the student ``net`` from the teacher's weights and give the loss its teacher (``teacher``: a
    :class:`~ddpm.build.LoadedRun`, its EMA weights when it had EMA)."""
    net.load_state_dict(teacher.model.net.state_dict())
    loss.use_teacher(Denoiser(teacher.model.net, teacher.model.diffusion))
