"""The image datasets on disk: which exist (:data:`IMAGE_DATASETS`), the files torchvision expects, and
each dataset's official training and test splits (:meth:`ImageSplits.load`), the one reader for the
DataModule (:mod:`ddpm.data.images`) and the offline classifier metric (:mod:`ddpm.evaluation.classifier`),
so the metric's held-out images are the ones no run trains on. No Lightning: plain torch and torchvision.

``digits`` is the 1,797-image set bundled with scikit-learn (no download), given here a fixed official
split: a stratified 360 test images and 1,437 training images, the same for every run and seed.

The files torchvision expects, under ``data_dir``:

* MNIST: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the four ``.gz`` files as published
  also work: they are unpacked on first use).
* CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (or
  ``cifar-10-python.tar.gz`` in ``data_dir``, unpacked on first use).
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch

__all__ = [
    "DIGITS_SPLIT_SEED",
    "DIGITS_TEST_SIZE",
    "IMAGE_DATASETS",
    "ImageSplits",
    "default_cache_dir",
    "ensure_files",
    "expected_files",
    "to_unit",
]


def default_cache_dir() -> Path:
    """``$DDPM_LAB_CACHE``, else ``$XDG_CACHE_HOME/ddpm-lab``, else ``~/.cache/ddpm-lab``."""
    if os.environ.get("DDPM_LAB_CACHE"):
        return Path(os.environ["DDPM_LAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ddpm-lab"


@dataclass(frozen=True)
class _Spec:
    channels: int
    size: int
    has_test: bool
    #: the class names, by label (a conditional run's ``--class`` takes a label or one of these)
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))


#: The datasets ``ImageDataModule`` reads: native channels and size, whether an official test split exists.
IMAGE_DATASETS: dict[str, _Spec] = {
    "mnist": _Spec(channels=1, size=28, has_test=True),
    "cifar10": _Spec(
        channels=3,
        size=32,
        has_test=True,
        # torchvision's CIFAR10.classes, in label order
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "digits": _Spec(channels=1, size=8, has_test=True),
}

#: digits' official test split (scikit-learn ships none): 360 of the 1,797 images (20%), stratified by class
#: with a fixed seed, so every run and seed holds out the same images; the other 1,437 are the training split
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


# ----------------------------------------------------------------------------- files
def _one_line(err: BaseException, limit: int = 240) -> str:
    # torchvision's download errors span lines (one per mirror tried); keep them all, on one line.
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def expected_files(dataset: str, data_dir: str | os.PathLike[str]) -> tuple[Path, list[str]]:
    """The folder and file names torchvision reads for ``dataset`` (none for ``digits``)."""
    from torchvision import datasets as tvd

    root = Path(data_dir)
    if dataset == "mnist":
        names = [Path(url).stem for url, _ in tvd.MNIST.resources]  # the unpacked .gz names
        return root / "MNIST" / "raw", names
    if dataset == "cifar10":
        names = [name for name, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list]
        return root / tvd.CIFAR10.base_folder, [*names, tvd.CIFAR10.meta["filename"]]
    return root, []


def _unpack_local_archives(dataset: str, data_dir: Path, folder: Path, names: list[str]) -> None:
    """Unpack archives a user copied in by hand (the published .gz / .tar.gz files)."""
    if dataset == "mnist":
        for name in names:
            target, packed = folder / name, folder / f"{name}.gz"
            if not target.is_file() and packed.is_file():
                tmp = folder / f"{name}.partial-{os.getpid()}"  # several processes may start at once
                with gzip.open(packed, "rb") as src, tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                tmp.replace(target)  # a crash mid-way leaves no half file under the real name
    elif dataset == "cifar10" and not folder.is_dir():
        from torchvision import datasets as tvd
        from torchvision.datasets.utils import extract_archive

        archive = data_dir / tvd.CIFAR10.filename
        if archive.is_file():
            extract_archive(str(archive), str(data_dir))


def ensure_files(dataset: str, data_dir: str | os.PathLike[str], download: bool) -> None:
    """Make sure torchvision's files for ``dataset`` are in ``data_dir``; download them when allowed.

    Raises:
        FileNotFoundError: files are missing and ``download`` is off or failed; the one-line message names
            the folder, the files and how to get them.
    """
    if dataset == "digits":
        return
    root = Path(data_dir)
    folder, names = expected_files(dataset, root)
    _unpack_local_archives(dataset, root, folder, names)
    missing = [n for n in names if not (folder / n).is_file()]
    if not missing:
        return
    archive = (
        "the published .gz files also work" if dataset == "mnist" else f"or cifar-10-python.tar.gz in {root}"
    )
    if download:
        from torchvision import datasets as tvd

        cls = tvd.MNIST if dataset == "mnist" else tvd.CIFAR10
        try:
            cls(str(root), train=True, download=True)
        except Exception as err:  # no network, a proxy, a bad checksum: all end the same way for the user
            raise FileNotFoundError(
                f"data.dataset={dataset}: downloading into {str(folder)!r} failed ({_one_line(err)}); "
                f"copy the files {', '.join(names)} there from a machine with internet ({archive})"
            ) from None
        return
    how = f"set data.download=true on a machine with internet, or copy the files there ({archive})"
    raise FileNotFoundError(
        f"data.dataset={dataset}: {len(missing)} of {len(names)} files missing in {str(folder)!r} "
        f"(expected {', '.join(names)}); {how}"
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 (0..255) divided by 255, float images as they are."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


@dataclass(frozen=True)
class ImageSplits:
    """One dataset's official training and test splits, as :meth:`load` reads them.

    Images are [N, C, H, W]: uint8 (0..255) for MNIST and CIFAR-10, as torchvision reads them, float32 in
    [0, 1] for digits (:meth:`as_float` gives float32 in [0, 1] for all). Labels are int64 [N].
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return cast(tuple[int, int, int], tuple(self.train_x.shape[1:]))  # images are [N, C, H, W]

    def as_float(self) -> ImageSplits:
        """The same splits with the images as float32 in [0, 1]."""
        return replace(self, train_x=to_unit(self.train_x), test_x=to_unit(self.test_x))

    @classmethod
    def load(cls, dataset: str, data_dir: str | os.PathLike[str] | None = None) -> ImageSplits:
        """Read ``dataset``'s official splits: ``digits`` from scikit-learn (the fixed stratified 1,437 /
        360 split, see :data:`DIGITS_TEST_SIZE`), ``mnist`` and ``cifar10`` through torchvision's parsers
        from the files in ``data_dir`` (nothing is downloaded or unpacked here: see :func:`ensure_files`).

        Raises:
            ValueError: an unknown dataset.
            FileNotFoundError: torchvision cannot read the files (missing or corrupted); the one-line
                message names the folder and the files.
        """
        if dataset == "digits":
            return _read_digits()
        if dataset not in IMAGE_DATASETS:
            raise ValueError(f"data.dataset={dataset!r} is unknown; choose one of {sorted(IMAGE_DATASETS)}")
        if data_dir is None:
            raise FileNotFoundError(
                f"data.dataset={dataset}: no data_dir given to read torchvision's files from"
            )
        return _read_torchvision(dataset, Path(data_dir))


def _read_digits() -> ImageSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()  # shipped inside scikit-learn: no download
    # Pixel values are counts 0..16 (of a 4x4 block of the 32x32 original), so 16 is full ink.
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=bunch.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return ImageSplits("digits", images[train], labels[train], images[test], labels[test])


def _read_torchvision(dataset: str, data_dir: Path) -> ImageSplits:
    """MNIST or CIFAR-10's two splits through torchvision's parsers, images uint8 [N, C, H, W]."""
    from torchvision import datasets as tvd

    try:
        if dataset == "mnist":
            train, test = (tvd.MNIST(str(data_dir), train=t, download=False) for t in (True, False))
            return ImageSplits(
                dataset, train.data[:, None].contiguous(), train.targets.long(),
                test.data[:, None].contiguous(), test.targets.long(),
            )  # fmt: skip
        train, test = (tvd.CIFAR10(str(data_dir), train=t, download=False) for t in (True, False))

        def images(ds: tvd.CIFAR10) -> torch.Tensor:  # [N, H, W, C] -> [N, C, H, W]
            return torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))

        def labels(ds: tvd.CIFAR10) -> torch.Tensor:
            return torch.as_tensor(ds.targets, dtype=torch.long)

        return ImageSplits(dataset, images(train), labels(train), images(test), labels(test))
    except RuntimeError as err:  # torchvision's "not found or corrupted" (a checksum mismatch)
        folder, names = expected_files(dataset, data_dir)
        raise FileNotFoundError(
            f"data.dataset={dataset}: torchvision cannot read the files in {str(folder)!r} "
            f"({_one_line(err)}); expected {', '.join(names)}; delete them and download again"
        ) from None
