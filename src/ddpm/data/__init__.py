"""LightningDataModules: toy 1D/2D data, the user's own arrays, and images."""

from ddpm.data.toy import TOY_DATASETS, ToyDataModule, load_array, make_toy_data

__all__ = ["TOY_DATASETS", "ToyDataModule", "load_array", "make_toy_data"]
