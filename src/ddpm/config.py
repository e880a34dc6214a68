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

__all__ = ["ConfigError", "first_line", "remove_unstarted_run_dir", "root_cause", "validate_config"]


class ConfigError(ValueError):
    """A bad config value, reported in one line before any work starts."""


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def root_cause(err: BaseException) -> BaseException:
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return err


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key}: {first_line(err)}") from None


def validate_config(cfg: DictConfig) -> None:
    """Check the values people get wrong, naming the key, before anything is built or written."""
    T = _get(cfg, "diffusion.T")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ConfigError(f"diffusion.T={T!r} is invalid; T must be an integer >= 1")
    lr = _get(cfg, "optimizer.lr")
    if lr is not None and (not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0):
        raise ConfigError(f"optimizer.lr={lr!r} is invalid; the learning rate must be a number > 0")
    steps = _get(cfg, "sampler.steps")
    if steps is not None and (not isinstance(steps, int) or not 1 <= steps <= T):
        raise ConfigError(f"sampler.steps={steps!r} is invalid; it must be an integer in [1, T={T}]")
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
    """Delete a run folder that holds only what was written at start (``.hydra/``, a log, the claim file).

    A config error found before training leaves no half-made run behind; anything else is kept.
    """
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    from ddpm.run_folder import CLAIM_FILE

    if all(e.name in (".hydra", CLAIM_FILE) or (e.suffix == ".log" and e.is_file()) for e in entries):
        shutil.rmtree(path)
        return True
    return False
