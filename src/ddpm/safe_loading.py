"""Opening someone else's checkpoint runs none of their code.

A checkpoint is a pickle: it is read with ``torch.load(weights_only=True)`` only (tensors, numbers, strings
and containers; any other pickled object is refused in one line, and nothing of it runs). The config it
carries is plain data too: :mod:`ddpm.stored_config` reads it without resolving anything and
:mod:`ddpm.registry` builds ddpm-lab's own classes from its checked values; no name in it is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ddpm.config import ConfigError, first_line

__all__ = ["SAFETENSORS_CONFIG_KEY", "UntrustedContentError", "load_checkpoint", "read_safetensors_run"]

#: the metadata key of a ``ddpm-export`` safetensors file that holds the run's config (JSON)
SAFETENSORS_CONFIG_KEY = "ddpm_config"


class UntrustedContentError(ConfigError):
    """A checkpoint would run code when loaded (it pickles objects other than plain data); nothing ran."""


#: how a file torch.save wrote begins: a zip archive (torch >= 1.6), or a pickle's protocol opcode (older)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> dict:
    """A checkpoint's contents, read with ``torch.load(weights_only=True)``.

    The path must be a regular file (:func:`ddpm.stored_config.require_regular_file`: a FIFO or a device is
    refused before it is opened) that begins as torch's files do (a zip archive, or a pickle for the legacy
    format); anything else, such as a text file, is refused in one line before torch reads it.

    Raises:
        UntrustedContentError: the file pickles objects other than tensors and plain containers (it could
            run code when read); nothing of it was executed.
        ConfigError: the file is missing, not a regular file, truncated or not a checkpoint at all.
    """
    import pickle

    import torch

    from ddpm.stored_config import require_regular_file

    where = str(Path(path))
    require_regular_file(path, "checkpoint")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        raise ConfigError(f"checkpoint {where!r} cannot be read: {first_line(err)}") from None
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        what = "an empty file" if not head else f"a file that begins with {head!r}"
        raise ConfigError(
            f"checkpoint {where!r} is not a PyTorch checkpoint ({what}; torch.save writes a zip archive)"
        )
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
    except (KeyError, IndexError, TypeError, AttributeError, MemoryError, RecursionError) as err:
        # the weights-only unpickler's own failures on a damaged pickle (a memo key it never stored, ...)
        raise ConfigError(
            f"checkpoint {where!r} cannot be read: it is damaged or not a checkpoint "
            f"({type(err).__name__}: {first_line(err)})"
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint {where!r} is not a ddpm-lab checkpoint (a {type(obj).__name__})")
    return obj


def read_safetensors_run(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the run config, the state dict) of a file :func:`ddpm.interop.export_safetensors` wrote; no pickle
    involved, and the config read as plain data (:func:`ddpm.stored_config.read_json`).

    Raises:
        ConfigError: the file cannot be read or carries no ddpm-lab config.
    """
    from safetensors import safe_open

    from ddpm.stored_config import read_json, require_regular_file

    require_regular_file(path, "weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # safetensors raises its own error types for foreign or truncated files
        raise ConfigError(f"{path} cannot be read as safetensors: {first_line(err)}") from None
    if SAFETENSORS_CONFIG_KEY not in metadata:
        raise ConfigError(
            f"{path} carries no ddpm-lab config (metadata key {SAFETENSORS_CONFIG_KEY!r}); "
            "write it with ddpm-export RUN --format safetensors"
        )
    return read_json(metadata[SAFETENSORS_CONFIG_KEY], f"the config stored in {str(path)!r}"), state
