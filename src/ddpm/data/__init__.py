"""LightningDataModules: toy 1D/2D data, the user's own arrays, and images."""

from ddpm.data.images import IMAGE_DATASETS, ImageDataModule
from ddpm.data.toy import TOY_DATASETS, ToyDataModule, load_array, make_toy_data

__all__ = [
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "ImageDataModule",
    "ToyDataModule",
    "load_array",
    "make_toy_data",
]
