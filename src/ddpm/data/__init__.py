"""The data: toy 1D/2D sets and the user's own arrays (:mod:`ddpm.data.toy`), image sets on disk
(:mod:`ddpm.data.image_sets`), and their LightningDataModules.

Every DataModule says what it holds: ``kind`` (``"toy"`` or ``"image"``), ``data_shape``, ``normalize`` /
``denormalize`` between raw units and the network's scale, and ``held_out(n)`` (raw units).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "ImageDataModule",
    "ToyDataModule",
    "load_array",
    "make_toy_data",
]

_EXPORTS = {
    "IMAGE_DATASETS": "ddpm.data.image_sets",
    "ImageDataModule": "ddpm.data.images",
    "TOY_DATASETS": "ddpm.data.toy",
    "ToyDataModule": "ddpm.data.toy",
    "load_array": "ddpm.data.toy",
    "make_toy_data": "ddpm.data.toy",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that reading an image set (ddpm.data.image_sets) does not import Lightning.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm.data' has no attribute {name!r}")
