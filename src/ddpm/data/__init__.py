"""The data: toy 1D/2D sets and the user's own arrays (:mod:`ddpm.data.toy`), image sets on disk
(:mod:`ddpm.data.image_sets`, :mod:`ddpm.data.images`), and their LightningDataModules
(:mod:`ddpm.data.datamodules`, the only one of them that imports Lightning).

Every data class says what it holds: ``kind`` (``"toy"`` or ``"image"``), ``data_shape``, ``normalize`` /
``denormalize`` between raw units and the network's scale, and ``held_out(n)`` (raw units). A DataModule is
its data class (:class:`ToyData`, :class:`ImageData`) plus the training loaders; a trained run is loaded
with the data class alone (:data:`PLAIN_DATA`).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "IMAGE_DATASETS",
    "PLAIN_DATA",
    "TOY_DATASETS",
    "ImageData",
    "ImageDataModule",
    "ToyData",
    "ToyDataModule",
    "load_array",
    "make_toy_data",
]

#: the data class of each DataModule a config may name (``data._target_``): the same arguments, no loaders
#: and no Lightning, for the commands that only sample and evaluate a trained run
PLAIN_DATA = {
    "ddpm.data.ToyDataModule": "ddpm.data.ToyData",
    "ddpm.data.ImageDataModule": "ddpm.data.ImageData",
}

_EXPORTS = {
    "IMAGE_DATASETS": "ddpm.data.image_sets",
    "ImageData": "ddpm.data.images",
    "ImageDataModule": "ddpm.data.datamodules",
    "TOY_DATASETS": "ddpm.data.toy",
    "ToyData": "ddpm.data.toy",
    "ToyDataModule": "ddpm.data.datamodules",
    "load_array": "ddpm.data.toy",
    "make_toy_data": "ddpm.data.toy",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that reading an image set or a toy set does not import Lightning (only the DataModules do).
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm.data' has no attribute {name!r}")
