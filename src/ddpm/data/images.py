"""Image datasets (MNIST, CIFAR-10, scikit-learn's 8x8 digits, or a folder of your own images) as one class,
:class:`ImageData`.

The images come from each dataset's official splits (:mod:`ddpm.data.image_sets`, which also lists the
files torchvision expects), or from a folder prepared once and cached (:mod:`ddpm.data.image_folder`,
``dataset="folder"``). They reach the network scaled to [-1, 1] (DDPM sec. 3.3);
:meth:`ImageData.denormalize` maps the network's scale back to [0, 1]. No loaders and no Lightning here:
training adds them (:class:`ddpm.data.datamodules.ImageDataModule`, the LightningDataModule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ddpm.data.image_folder import FolderListing, PreparedFolder, list_image_folder, prepare_image_folder
from ddpm.data.image_sets import IMAGE_DATASETS, ImageSplits, _Spec, ensure_files, to_unit

__all__ = ["FOLDER", "RESIZE_MODES", "VAL_SOURCES", "ImageData", "ImageScale", "resize"]

#: ``data.dataset`` of a folder of your own images (``data.path``)
FOLDER = "folder"

RESIZE_MODES = ("pad", "bilinear", "nearest")
VAL_SOURCES = ("train", "test")


# ----------------------------------------------------------------------------- sizes
def resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Images [N, C, h, w] to [N, C, size, size] by ``mode`` (one of :data:`RESIZE_MODES`)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "pad":
        # Zero (black) borders: the background of MNIST and digits.
        before = (size - x.shape[-1]) // 2
        after = size - x.shape[-1] - before
        return F.pad(x, (before, after, before, after), value=0.0)
    if mode == "bilinear":
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(x, size=(size, size), mode="nearest")


# ----------------------------------------------------------------------------- the scale
class ImageScale:
    """Images of ``channels`` x ``image_size`` x ``image_size`` on DDPM's [-1, 1] scale, with no images
    behind them: the data of published weights (:func:`ddpm.interop.load_diffusers_pipeline`) when no
    dataset is named, and the base of :class:`ImageData`.
    """

    #: what the data is, for the code that draws and scores samples: ``"toy"`` or ``"image"``
    kind: Literal["image"] = "image"

    def __init__(self, channels: int = 3, image_size: int = 32) -> None:
        super().__init__()  # cooperative: ImageDataModule puts LightningDataModule after this class
        self.channels = int(channels)
        self.image_size = int(image_size)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as the network sees it."""
        return (self.channels, self.image_size, self.image_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the network's [-1, 1] scale."""
        return x * 2.0 - 1.0  # DDPM sec. 3.3: data scaled linearly to [-1, 1]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's [-1, 1] scale -> images in [0, 1], clipped (for saving and plotting)."""
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)  # DDPM sec. 3.3 inverted; samples may overshoot [-1, 1]

    def held_out(self, n: int | None = None) -> torch.Tensor:
        """No images here: a one-line error saying how to name a dataset."""
        from ddpm.config import ConfigError

        raise ConfigError("no held-out images: these weights came without a dataset (pass --dataset NAME)")


# ----------------------------------------------------------------------------- the data
class ImageData(ImageScale):
    """MNIST, CIFAR-10 or scikit-learn's 8x8 digits, scaled to [-1, 1], with a seeded train/val split.

    Missing MNIST/CIFAR-10 files are reported at construction, before any run folder, logger or training
    exists. It takes the arguments of the config's ``data`` node, loader options included, so one node builds
    it or the training :class:`~ddpm.data.datamodules.ImageDataModule`, whose batches are
    ``(images [B, C, H, W] in [-1, 1], labels [B])``.

    Args:
        dataset: ``mnist``, ``cifar10``, ``digits``, or ``folder``: the images under ``path``, decoded once
            (resized on the short side to ``image_size``, centre-cropped) and cached, labelled by their class
            subfolders if every image is in one (else -1); validation takes ``val_size`` of them.
        data_dir: where torchvision's files are (see the module docstring); unused for digits.
        download: let torchvision download missing files (needs internet).
        channels: image channels, stated by the config so the model can read them; must match the dataset
            (1 for mnist and digits, 3 for cifar10). None takes the dataset's.
        image_size: side of the square images the network sees; None keeps the native size (28, 32, 8).
        resize_mode: how to reach ``image_size``: ``pad`` (black borders, e.g. MNIST 28 -> 32),
            ``bilinear`` or ``nearest`` (e.g. digits 8 -> 16 or 32).
        batch_size: images per training step.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (for GPU training).
        val_source: where validation images come from: ``train`` holds ``val_size`` images out of the
            training split (a seeded permutation), ``test`` takes a seeded subset of the official test split
            and trains on the whole training split (DDPM's setting; for digits, the 360 held-out images the
            classifier metric compares with).
        val_size: number of validation images; None with ``val_source=test`` takes the whole test split.
        random_flip: random horizontal flips of training images (never of validation images); None turns
            them on for cifar10 only (flipping a digit makes a different symbol).
        seed: seeds the split and the shuffling.
        on_device: hold the (uint8) images on the training device, e.g. the GPU: whole batches are indexed,
            scaled and flipped there, with no per-image collation, no workers and no host-to-device copy
            per step (MNIST is 47 MB, CIFAR-10 150 MB). Needs ``num_workers=0``.
        path: ``dataset=folder``: the folder of images (PNG, JPEG, WebP, searched recursively).
        cache_dir: ``dataset=folder``: where the prepared set is cached (None: ``$DDPM_LAB_CACHE`` or
            ``~/.cache/ddpm-lab``), under ``image_folder/<hash of the file list, sizes and mtimes>.pt``.
    """

    #: what the data is, for the code that draws and scores samples: ``"toy"`` or ``"image"``
    kind: Literal["image"] = "image"

    def __init__(
        self,
        dataset: str = "digits",
        data_dir: str = "data",
        download: bool = False,
        channels: int | None = None,
        image_size: int | None = None,
        resize_mode: str = "bilinear",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_source: str = "train",
        val_size: int | None = 1000,
        random_flip: bool | None = None,
        seed: int = 0,
        on_device: bool = False,
        path: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(channels or 1, 1)  # both set again below, once checked
        if on_device and num_workers:
            raise ValueError(
                f"data.on_device=true needs data.num_workers=0 (got {num_workers!r}): the batches are cut "
                "on the device, not in worker processes"
            )
        self.listing: FolderListing | None = None
        self.prepared: PreparedFolder | None = None
        if dataset == FOLDER:
            if not path:
                raise ValueError("data.dataset=folder needs data.path=/abs/path/to/your/images")
            if channels not in (1, 3):
                raise ValueError(
                    f"data.channels={channels!r} is invalid for a folder; choose 1 (grey) or 3 (RGB)"
                )
            if image_size is None:
                raise ValueError("data.dataset=folder needs data.image_size (the side the images are cut to)")
            self.listing = list_image_folder(path)  # cheap: an empty or missing folder fails here
            spec = _Spec(channels=channels, size=image_size, has_test=False)
        elif dataset not in IMAGE_DATASETS:
            choices = [*sorted(IMAGE_DATASETS), FOLDER]
            raise ValueError(f"data.dataset={dataset!r} is unknown; choose one of {choices}")
        else:
            spec = IMAGE_DATASETS[dataset]
        if channels is not None and channels != spec.channels:
            raise ValueError(
                f"data.channels={channels!r} but {dataset} images have {spec.channels} channel(s); "
                f"set data.channels={spec.channels}"
            )
        image_size = spec.size if image_size is None else image_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"data.image_size={image_size!r} is invalid; it must be an integer >= 1")
        if resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"data.resize_mode={resize_mode!r} is unknown; choose one of {list(RESIZE_MODES)}"
            )
        if resize_mode == "pad" and (image_size < spec.size or (image_size - spec.size) % 2):
            raise ValueError(
                f"data.image_size={image_size} cannot be reached by padding {dataset}'s "
                f"{spec.size}x{spec.size} images evenly; use a size >= {spec.size} that differs by an even "
                "number, or data.resize_mode=bilinear"
            )
        for arg, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"data.{arg}={value!r} is invalid; it must be an integer >= {low}")
        if val_source not in VAL_SOURCES:
            raise ValueError(f"data.val_source={val_source!r} is unknown; choose one of {list(VAL_SOURCES)}")
        if val_source == "test" and not spec.has_test:
            raise ValueError(
                f"data.val_source=test but {dataset} has no official test split; use data.val_source=train"
            )
        if val_size is None and val_source == "train":
            raise ValueError(
                "data.val_size=null needs data.val_source=test; give the number of images to hold out"
            )
        if val_size is not None and (
            isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 1
        ):
            raise ValueError(f"data.val_size={val_size!r} is invalid; it must be an integer >= 1")
        self.dataset = dataset
        self.data_dir = Path(data_dir)
        self.download = bool(download)
        self.channels = spec.channels
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = bool(pin_memory)
        self.val_source = val_source
        self.val_size = val_size
        self.random_flip = dataset == "cifar10" if random_flip is None else bool(random_flip)
        self.seed = int(seed)
        self.on_device = bool(on_device)
        self.path = path
        self.cache_dir = cache_dir
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        # Cheap (file checks), and it makes missing files fail before any run folder or logger.
        if dataset != FOLDER:
            ensure_files(dataset, self.data_dir, self.download)

    @property
    def classes(self) -> tuple[str, ...]:
        """A folder's class names (its subfolders), label i being ``classes[i]``; () when unlabelled."""
        return self.listing.classes if self.listing is not None else ()

    def prepare_folder(self) -> PreparedFolder:
        """``dataset=folder``: decode the images once, or read them from the cache (see
        :func:`~ddpm.data.image_folder.prepare_image_folder`)."""
        if self.prepared is None:
            assert self.path is not None
            self.prepared = prepare_image_folder(self.path, self.image_size, self.channels, self.cache_dir)
        return self.prepared

    # ------------------------------------------------------------------ the interface the app uses
    @property
    def num_classes(self) -> int:
        """The number of class labels the batches carry (10 for the named datasets, a folder's subfolders;
        0 for a folder without them)."""
        return len(self.class_names)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The name of each label, e.g. CIFAR-10's ``horse`` for 7."""
        if self.dataset == FOLDER:
            return self.classes
        return IMAGE_DATASETS[self.dataset].classes

    def held_out_labels(self, n: int | None = None) -> torch.Tensor:
        """The labels of :meth:`held_out`'s images."""
        self.setup()
        assert self.val_set is not None
        return self.val_set.tensors[1][:n]

    def held_out(self, n: int | None = None) -> torch.Tensor:
        """Up to ``n`` (default all) validation images in [0, 1], at the size the network sees, unflipped."""
        self.setup()
        assert self.val_set is not None
        images = self.val_set.tensors[0][:n]
        # the validation batches' resize, without their [-1, 1] scaling; clipped like denormalize's output
        return resize(to_unit(images), self.image_size, self.resize_mode).clamp(0.0, 1.0)

    def training_images(self, n: int | None = None) -> torch.Tensor:
        """Up to ``n`` (default all) training images in [0, 1] at the size the network sees, unflipped: the
        reference side of FID during training."""
        self.setup()
        assert self.train_set is not None
        images = self.train_set.tensors[0][:n]
        return resize(to_unit(images), self.image_size, self.resize_mode).clamp(0.0, 1.0)

    def identity(self) -> list:
        """What names this data's images in a cache key: the dataset, the folder's file list (its hash), the
        size, channels and the split."""
        folder = self.listing.key if self.listing is not None else None
        return [self.dataset, folder, self.image_size, self.channels, self.resize_mode, self.seed,
                self.val_source, self.val_size]  # fmt: skip

    # ------------------------------------------------------------------ the splits
    def setup(self, stage: str | None = None) -> None:
        """Read the official splits (:meth:`ImageSplits.load`) and pick the seeded validation images.

        Training images only ever come from the training split.
        """
        if self.train_set is not None:
            return
        gen = torch.Generator().manual_seed(self.seed)
        if self.dataset == FOLDER:
            prepared = self.prepare_folder()
            splits = None
            images, labels = prepared.images, prepared.labels
        else:
            splits = ImageSplits.load(self.dataset, self.data_dir)
            images, labels = splits.train_x, splits.train_y
        if self.val_source == "train":
            assert self.val_size is not None
            if self.val_size >= len(images):
                raise ValueError(
                    f"data.val_size={self.val_size} leaves no training images: {self.dataset} has "
                    f"{len(images)} in its training split"
                )
            perm = torch.randperm(len(images), generator=gen)
            val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
            self.train_set = TensorDataset(images[train_idx], labels[train_idx])
            self.val_set = TensorDataset(images[val_idx], labels[val_idx])
            return
        assert splits is not None  # a folder has no test split (checked at construction)
        test_images, test_labels = splits.test_x, splits.test_y
        n_val = len(test_images) if self.val_size is None else self.val_size
        if n_val > len(test_images):
            raise ValueError(
                f"data.val_size={n_val} is more than the {len(test_images)} images of "
                f"{self.dataset}'s test split"
            )
        idx = torch.randperm(len(test_images), generator=gen)[:n_val]
        self.train_set = TensorDataset(images, labels)
        self.val_set = TensorDataset(test_images[idx], test_labels[idx])
