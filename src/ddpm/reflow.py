"""Reflow (Liu et al. 2023, "Flow Straight and Fast", sec. 2.2 and Algorithm 1): a flow trained on the
(noise, sample) pairs a trained run's ODE draws, its 2-rectified flow, whose paths are straighter than its
teacher's, so that one or two Euler steps sample it.

``ddpm-train experiment=toy2d_reflow teacher=RUN``: :func:`ddpm.build.build` checks the student
(:func:`check_student`) and opens the teacher as any run folder is opened (:func:`ddpm.build.load_run`:
weights only, its config plain data, none of which configures the student); :func:`teacher_pairs` draws
``reflow.pairs`` pairs with the teacher's own deterministic sampler from x_T = z, and caches them on disk
(keyed by the teacher's checkpoint bytes, its sampler, the number and the seed); the student's training
batches are these fixed pairs (:meth:`ddpm.data.datamodules.ToyDataModule.use_pairs`), and the result is
a normal run folder. With ``reflow.init=teacher`` (the default) the student starts from the teacher's
weights, as the reference implementation's 2-rectified flow fine-tunes the 1-rectified flow's checkpoint
(gnobitab/RectifiedFlow, "Reflow to get 2-Rectified Flow"); the teacher must then be a flow run with the
student's network. ``reflow.init=scratch`` trains a fresh network on the pairs.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from ddpm.config import ConfigError
from ddpm.flow import FlowProcess
from ddpm.safe_writes import write_file
from ddpm.stored_config import DATA_MACHINE_KEYS

__all__ = ["check_student", "check_teacher_data", "options", "pairs_cache_path", "teacher_pairs"]

#: data keys that only say how batches are loaded or where a machine keeps the files: a student on another
#: machine, or loading its batches its own way, still learns the teacher's data
LOADER_KEYS = frozenset({"batch_size", "data_dir", *DATA_MACHINE_KEYS})
#: the reflow options a ``reflow`` node may hold, with their defaults
DEFAULTS = {
    "pairs": 20000,
    "seed": 0,
    "batch": 2000,
    "cache_dir": None,
    "init": "teacher",
    "teacher_steps": None,
}
#: where the student's weights start: the teacher's (the reference's fine-tuning) or a fresh network
INITS = ("teacher", "scratch")


def options(cfg: DictConfig) -> dict[str, Any]:
    """The run's ``reflow`` options over :data:`DEFAULTS`, checked.

    Raises:
        ConfigError: in one line: an unknown option or a bad value, named with what is allowed.
    """
    node = cfg.get("reflow") or {}
    given = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    assert isinstance(given, dict)
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"reflow.{unknown[0]} is unknown; the reflow options are {', '.join(DEFAULTS)}")
    chosen = {**DEFAULTS, **given}
    for key in ("pairs", "batch"):
        value = chosen[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"reflow.{key}={value!r} is invalid; it must be an integer >= 1")
    if isinstance(chosen["seed"], bool) or not isinstance(chosen["seed"], int):
        raise ConfigError(f"reflow.seed={chosen['seed']!r} is invalid; it must be an integer")
    steps = chosen["teacher_steps"]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(
            f"reflow.teacher_steps={steps!r} is invalid; it must be an integer >= 1, or null for the "
            "teacher's own sampler as it is"
        )
    if chosen["init"] not in INITS:
        raise ConfigError(f"reflow.init={chosen['init']!r} is invalid; it must be one of {', '.join(INITS)}")
    return chosen


def check_teacher_data(student: DictConfig, teacher: DictConfig, teacher_path: str) -> None:
    """A one-line ConfigError unless the student's ``data`` node is the teacher's (the pairs are samples
    of the teacher's data, on its normalisation), how batches are loaded and where the files are aside:
    the first key that differs is named."""
    mine = OmegaConf.to_container(student.data, resolve=True)
    theirs = OmegaConf.to_container(teacher.data, resolve=False)
    assert isinstance(mine, dict) and isinstance(theirs, dict)
    for key in sorted((set(mine) | set(theirs)) - LOADER_KEYS):
        if mine.get(key) != theirs.get(key):  # the first difference, named with what would match
            raise ConfigError(
                f"data.{key}={mine.get(key)!r} differs from the teacher's {theirs.get(key)!r} "
                f"({teacher_path}): the student learns the teacher's data; "
                f"give data.{key}={theirs.get(key)!r}"
            )


def pairs_cache_path(cache_dir: Path, checkpoint: Path, sampler: object, n: int, seed: int) -> Path:
    """Where the pairs of one teacher checkpoint, sampler, number and seed are cached."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(f"{sampler!r}|{n}|{seed}".encode())
    return cache_dir / "reflow" / f"{digest.hexdigest()[:24]}.npz"


def teacher_pairs(cfg: DictConfig, run: Any, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, noise) of ``reflow.pairs`` pairs from the ODE of the teacher ``run`` (``cfg.teacher``
    opened by :func:`ddpm.build.load_run`), float32 [N, *data_shape] on the teacher's normalised scale:
    x_T = prior_std z, the samples where the teacher's sampler takes it (with ``reflow.teacher_steps``
    steps when given), and z itself as the student's noise at t = 1 (rectified flow Algorithm 1, line 2).

    Raises:
        ConfigError: in one line, before any sampling: a stochastic teacher sampler, or other data than the
            student's.
    """
    chosen = options(cfg)
    teacher = str(cfg.teacher)
    check_teacher_data(cfg, run.config, teacher)
    steps = chosen["teacher_steps"]
    # the reference draws its pairs with an adaptive RK45 solve (gnobitab/RectifiedFlow's reflow data
    # config): the teacher's own sampler with more steps comes closer to the flow the teacher learned
    sampler = run.sampler if steps is None else run.make_sampler([f"sampler.steps={steps}"])
    if getattr(sampler, "stochastic", False):
        raise ConfigError(
            f"teacher={teacher!r} samples with {sampler!r}, which draws noise: reflow pairs come from "
            "the teacher's ODE (a run whose sampler is euler, heun, ddim with eta 0, dpm_solver or unipc)"
        )
    cache_dir = Path(chosen["cache_dir"] or Path.home() / ".cache" / "ddpm-lab").expanduser()
    cache = pairs_cache_path(cache_dir, run.checkpoint, sampler, chosen["pairs"], chosen["seed"])
    if cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            return torch.from_numpy(stored["samples"]), torch.from_numpy(stored["noise"])
    shape = run.data_shape
    generator = torch.Generator().manual_seed(chosen["seed"])
    noise = torch.randn((chosen["pairs"], *shape), generator=generator)
    process = run.model.diffusion
    first = sampler.timesteps(process)[0]
    samples = []
    batches = math.ceil(chosen["pairs"] / chosen["batch"])
    for i in tqdm(range(batches), desc=f"reflow pairs from {teacher}", disable=not progress):
        z = noise[i * chosen["batch"] : (i + 1) * chosen["batch"]]
        x_T = z * process.prior_std(first)  # EDM Algorithm 1, line 1; 1 on DDPM's chain and the flow
        samples.append(sampler.sample(run.model, process, z.shape, x_T=x_T, progress=False).cpu())
    out = torch.cat(samples).float()
    cache.parent.mkdir(parents=True, exist_ok=True)

    def write(path: Path) -> None:
        with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to the temporary name
            np.savez(f, samples=out.numpy(), noise=noise.numpy())

    write_file(cache, write)
    return out, noise


def check_student(cfg: DictConfig, process: object) -> None:
    """A one-line ConfigError unless the student can learn from a teacher: the straight path
    (``diffusion=flow``), no class labels, valid ``reflow`` options; checked before the teacher is read."""
    if not isinstance(process, FlowProcess):
        raise ConfigError(
            f"teacher=... trains a rectified flow on the teacher's pairs; this run's process is "
            f"{type(process).__name__}: use diffusion=flow (experiment=toy2d_reflow)"
        )
    if cfg.get("conditional"):
        raise ConfigError(
            "conditional=true with a teacher: reflow draws unconditional pairs; use conditional=false"
        )
    options(cfg)
