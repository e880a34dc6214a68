"""LightningDataModules: toy 1D/2D data, the user's own arrays, and images."""

from ddpm.data.images import IMAGE_DATASETS, ImageDataModule, image_grid, save_image_grid, to_uint8
from ddpm.data.toy import TOY_DATASETS, ToyDataModule, load_array, make_toy_data

__all__ = [
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "ImageDataModule",
    "ToyDataModule",
    "image_grid",
    "load_array",
    "make_toy_data",
    "save_image_grid",
    "to_uint8",
]
