"""Opening someone else's run folder runs none of their code.

Two routes could: a checkpoint is a pickle, and a config names classes (``_target_``) that Hydra imports
and calls. So checkpoints are read with ``torch.load(weights_only=True)`` only (tensors, numbers, strings
and containers; any other pickled object is refused), and a config read from a run folder or a checkpoint
is built only if every ``_target_`` in it, after resolving its interpolations, is on :data:`ALLOWED_TARGETS`:
ddpm-lab's own classes and the few library classes its ``conf/`` uses. Anything else is refused in one line
naming the config key and the target, before anything is built.

Your own classes (a network of yours in a config) are added with the environment variable
``DDPM_TRUSTED_TARGETS``: comma-separated full names, or prefixes ending in ``.`` (``mypkg.models.``).
It is read from your environment, never from a run folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ddpm.config import ConfigError, first_line

__all__ = [
    "ALLOWED_TARGETS",
    "TRUSTED_TARGETS_ENV",
    "UntrustedContentError",
    "check_targets",
    "load_checkpoint",
    "resolved_config",
]

#: every class or function a ddpm-lab config may build (tests/test_safe_loading.py checks that each
#: ``_target_`` in conf/ is here and that each of these imports)
ALLOWED_TARGETS = frozenset(
    {
        # ddpm-lab
        "ddpm.callbacks.EMA",
        "ddpm.callbacks.ImageSampleCallback",
        "ddpm.callbacks.LossByTimestepCallback",
        "ddpm.callbacks.SampleQualityCallback",
        "ddpm.checkpointing.AtomicCheckpointIO",
        "ddpm.checkpointing.LastCheckpoint",
        "ddpm.data.ImageDataModule",
        "ddpm.data.ToyDataModule",
        "ddpm.data.images.ImageScale",
        "ddpm.diffusion.GaussianDiffusion",
        "ddpm.models.MLPDenoiser",
        "ddpm.models.UNet",
        "ddpm.optim.warmup_lr",
        "ddpm.samplers.DDIMSampler",
        "ddpm.samplers.DDPMSampler",
        "ddpm.samplers.DPMSolverSampler",
        "ddpm.samplers.HeunSampler",
        "ddpm.samplers.UniPCSampler",
        "ddpm.schedules.make_beta_schedule",
        # optimizers
        "torch.optim.Adam",
        "torch.optim.AdamW",
        # Lightning: the trainer, its callbacks and loggers
        "lightning.pytorch.Trainer",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.callbacks.TQDMProgressBar",
        "lightning.pytorch.loggers.CSVLogger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "lightning.pytorch.loggers.WandbLogger",
    }
)

TRUSTED_TARGETS_ENV = "DDPM_TRUSTED_TARGETS"


class UntrustedContentError(ConfigError):
    """A checkpoint or config would run code that is not on the allow-list; nothing was built."""


def _user_trusted() -> tuple[set[str], tuple[str, ...]]:
    names = [n.strip() for n in os.environ.get(TRUSTED_TARGETS_ENV, "").split(",") if n.strip()]
    return {n for n in names if not n.endswith(".")}, tuple(n for n in names if n.endswith("."))


def _allowed(target: str) -> bool:
    exact, prefixes = _user_trusted()
    return target in ALLOWED_TARGETS or target in exact or (bool(prefixes) and target.startswith(prefixes))


def check_targets(cfg: Any, source: str, key: str = "") -> None:
    """Refuse a config (a resolved mapping or list tree) that names a target not on the allow-list.

    Args:
        cfg: the resolved config, e.g. ``OmegaConf.to_container(cfg, resolve=True)``.
        source: where it came from, for the message (a file or "the checkpoint's stored config").
        key: the dotted key of ``cfg`` within the whole config (for the message).

    Raises:
        UntrustedContentError: ``<key>._target_=<target>`` is not allowed, naming the key, the target and
            ``source``.
    """
    if isinstance(cfg, DictConfig | ListConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        target = cfg.get("_target_")
        where = f"{key}._target_" if key else "_target_"
        if target is not None and (not isinstance(target, str) or not _allowed(target)):
            raise UntrustedContentError(
                f"{where}={target!r} in {source} is not on ddpm-lab's allow-list of classes a config may "
                f"build; refused before anything was built (to trust your own classes, set "
                f"{TRUSTED_TARGETS_ENV}=module.Class)"
            )
        for name, value in cfg.items():
            if not key and name == "hydra":
                continue  # Hydra's own node: ddpm-lab never builds anything from it
            check_targets(value, source, f"{key}.{name}" if key else str(name))
    elif isinstance(cfg, list | tuple):
        for i, value in enumerate(cfg):
            check_targets(value, source, f"{key}[{i}]")


def resolved_config(cfg: DictConfig | Mapping[str, Any], source: str) -> DictConfig:
    """``cfg`` with its interpolations resolved and every target checked against the allow-list.

    Resolving first matters: an interpolation (``${oc.decode:...}``) can produce a ``_target_`` that the
    unresolved text does not show.

    Raises:
        ConfigError: an interpolation cannot be resolved.
        UntrustedContentError: a target is not allowed.
    """
    try:
        node = copy.deepcopy(cfg) if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        with open_dict(node):
            node.pop("hydra", None)  # Hydra's own node (in configs composed by tests): never built
        container = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"the config in {source} cannot be read: {first_line(err)}") from None
    check_targets(container, source)
    out = OmegaConf.create(container)
    assert isinstance(out, DictConfig)
    return out


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A checkpoint's contents, read with ``torch.load(weights_only=True)``.

    Raises:
        UntrustedContentError: the file pickles objects other than tensors and plain containers (it could
            run code when read); nothing of it was executed.
        ConfigError: the file is missing, truncated or not a checkpoint at all.
    """
    import pickle

    import torch

    where = str(Path(path))
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        # torch's message names the refused global (e.g. "Unsupported global: GLOBAL posix.system")
        detail = next((ln.strip() for ln in str(err).splitlines() if "global" in ln.lower()), "")
        raise UntrustedContentError(
            f"checkpoint {where!r} holds pickled objects that could run code when loaded"
            f"{' (' + detail + ')' if detail else ''}; refused, nothing of it was executed"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError) as err:  # truncated, foreign, not a zip
        raise ConfigError(f"checkpoint {where!r} cannot be read: {first_line(err)}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint {where!r} is not a ddpm-lab checkpoint (a {type(obj).__name__})")
    return obj
