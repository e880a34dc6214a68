"""Config checks that run before anything heavy is imported or any run folder is filled.

Kept free of torch and Lightning so that ``ddpm-train`` rejects a bad value in a second or two.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# the configs' resolvers (ddpm.out_mult, ddpm.slurm_tasks_per_node), registered by `import ddpm`
from ddpm.resolvers import LEARNED_VARIANCES, output_multiplier, slurm_tasks_per_node

__all__ = [
    "CONF_DIR",
    "LEARNED_VARIANCES",
    "MAX_GUIDANCE_SCALE",
    "MOVED_KEYS",
    "MOVED_LOSS",
    "ConfigError",
    "find_conf_dir",
    "first_line",
    "output_multiplier",
    "remove_unstarted_run_dir",
    "root_cause",
    "slurm_tasks_per_node",
    "validate_config",
]


def find_conf_dir() -> Path:
    """The ``conf/`` folder: the repository's (editable install) or a copy shipped inside the package."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"ddpm-lab's conf/ folder was not found near {here}")


#: the config groups ``ddpm-train`` composes from (``conf/train.yaml`` and one folder per group)
CONF_DIR = find_conf_dir()


class ConfigError(ValueError):
    """A bad config value, reported in one line before any work starts."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its type's name when the message is empty)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def root_cause(err: BaseException) -> BaseException:
    """The error Hydra's InstantiationException wraps (the class's own message names the bad value)."""
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


#: ``model`` keys that say how the DiffusionModule runs the network; runs before 2026-12 kept them under
#: ``model``, today they are under ``module`` so that the ``model`` node builds the network on its own
MODULE_KEYS = ("compile", "channels_last")

#: keys of earlier layouts (and schedule.T, which follows T) and the key to set instead, so that an old
#: command line gets a one-line answer
MOVED_KEYS = {
    "diffusion.T": "T",
    "schedule.T": "T",
    "model.compile": "module.compile",
    "model.channels_last": "module.channels_last",
    # the loss and the training timesteps became groups of their own (2026-12)
    "diffusion.loss_weighting": "loss.weighting",
    "diffusion.min_snr_gamma": "loss.min_snr_gamma",
    "diffusion.vlb_weight": "loss.vlb_weight",
    "diffusion.vlb_decoder": "loss.decoder",
    "diffusion.offset_noise": "loss.offset_noise",
    "diffusion.cond_drop_prob": "loss.cond_drop_prob",
    "diffusion.timestep_sampler": "timestep_sampler",
}

#: ``diffusion.loss``'s values of the earlier layout, and today's overrides for each
MOVED_LOSS = {
    "mse": "loss=simple",
    "l1": "loss=simple loss.distance=l1",
    "huber": "loss=simple loss.distance=huber",
    "hybrid": "loss=hybrid",
    "vlb": "loss=vlb",
}


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {first_line(err)}") from None


#: the largest classifier-free guidance scale taken (published ones are below 30): far larger ones overflow
#: float32 in the sampler and end in non-finite samples after all the work
MAX_GUIDANCE_SCALE = 1000.0


def validate_config(cfg: DictConfig) -> None:
    """Check the values people get wrong, naming the key, before anything is built or written."""
    T = _get(cfg, "T")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"T={T!r} is invalid; T must be an integer >= 1")
    lr = _get(cfg, "optimizer.lr")
    if lr is not None and (not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0):
        raise ConfigError(f"optimizer.lr={lr!r} is invalid; the learning rate must be a number > 0")
    steps = _get(cfg, "sampler.steps")
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= T):
        raise ConfigError(f"sampler.steps={steps!r} is invalid; it must be an integer in [1, T={T}]")
    w = _get(cfg, "sampler.guidance_scale")
    if w is not None and (
        isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= MAX_GUIDANCE_SCALE
    ):
        raise ConfigError(
            f"sampler.guidance_scale={w!r} is invalid; it must be a number in [0, {MAX_GUIDANCE_SCALE:g}] "
            "(0: unconditional, 1: conditional, > 1: guided)"
        )
    decay = _get(cfg, "callbacks.ema.decay")
    if decay is not None and (
        isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1
    ):
        # 1 would freeze the average at the initial weights: the run's result would be untrained
        raise ConfigError(
            f"callbacks.ema.decay={decay!r} is invalid; it must be a number in [0, 1) (e.g. 0.999)"
        )
    conditional = cfg.get("conditional")
    if conditional is not None and not isinstance(conditional, bool):
        raise ConfigError(f"conditional={conditional!r} is invalid; use true or false")
    eta = _get(cfg, "sampler.eta")
    if eta is not None and eta < 0:
        raise ConfigError(f"sampler.eta={eta!r} is invalid; eta must be >= 0")
    max_steps = _get(cfg, "trainer.max_steps")
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise ConfigError(f"trainer.max_steps={max_steps!r} is invalid; use an integer >= 1 (or -1)")
    seed = _get(cfg, "seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed!r} is invalid; it must be an integer in [0, 2**32)")
    val_every = _get(cfg, "trainer.val_check_interval")
    if val_every is not None and (
        isinstance(val_every, bool)
        or not isinstance(val_every, int | float)
        or (isinstance(val_every, int) and val_every < 1)
        or (isinstance(val_every, float) and not 0.0 < val_every <= 1.0)
    ):
        raise ConfigError(
            f"trainer.val_check_interval={val_every!r} is invalid; use an integer >= 1 (steps) or a "
            "fraction in (0, 1] of an epoch"
        )
    every = cfg.get("checkpoint_every_n_steps")
    if every not in (None, "auto") and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(
            f"checkpoint_every_n_steps={every!r} is invalid; use an integer >= 1, auto, or null (0) to "
            "save only at validations, SIGTERM and the end"
        )
    threads = cfg.get("cpu_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(
            f"cpu_threads={threads!r} is invalid; use an integer >= 1, or null for torch's default"
        )
    final = _get(cfg, "final_samples")
    if not isinstance(final, int) or final < 0:
        raise ConfigError(f"final_samples={final!r} is invalid; it must be an integer >= 0")
    batch = _get(cfg, "data.batch_size")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"data.batch_size={batch!r} is invalid; it must be an integer >= 1")
    if _get(cfg, "data.dataset") == "array":
        path = _get(cfg, "data.path")
        if not Path(path).is_file():
            raise ConfigError(f"data.path={path!r} does not exist; give a .npy or .csv file of shape [N, D]")


def remove_unstarted_run_dir(path: Path) -> bool:
    """Undo what this process wrote at the start of a run that did not start: a config error found before
    training leaves no half-made run behind, and nothing that was there before is touched.

    Only a folder this process claimed (:func:`ddpm.run_folder.claim_folder`) is cleaned, and only when all
    it gained since the claim is what a start writes (``.hydra/``, a log, the claim and lock files): those
    entries go, and the folder itself only if this process created it. A folder found existing (a resume, a
    user's folder with their own files) keeps everything it held; a folder that gained anything else (a
    checkpoint, results) is left as it is. Returns whether the folder itself was removed.
    """
    from ddpm.run_folder import CLAIM_FILE, LOCK_FILE, forget_start, release_run_lock, start_record

    start = start_record(path)
    if start is None or not path.is_dir():
        return False  # not this process's folder: another run's, a user's, or made by a caller
    gained = [e for e in path.iterdir() if e.name not in start.before]
    if not all(
        e.name in (".hydra", CLAIM_FILE, LOCK_FILE) or (e.suffix == ".log" and e.is_file()) for e in gained
    ):
        return False
    forget_start(path)
    for entry in gained:
        if entry.name == LOCK_FILE:
            continue  # removed last, while still held
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    new_lock = LOCK_FILE not in start.before
    if not release_run_lock(path, remove=new_lock) and new_lock:
        (path / LOCK_FILE).unlink(missing_ok=True)  # made, not held: a file system without locks
    if not start.created:
        return False
    try:
        path.rmdir()  # only when empty: a file that appeared meanwhile is kept, with its folder
    except OSError:
        return False
    return True
