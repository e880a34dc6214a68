"""A folder of the user's own images (PNG, JPEG, WebP, found recursively), decoded once into a cached set.

The images are decoded, converted to RGB or grey, resized so the short side is ``image_size`` and centre-
cropped to a square, then kept as one uint8 tensor [N, C, S, S] in a cache file. The file's name is a hash of
the folder's file list with each file's size and modification time, the size and the channels, so a second
run on the same folder reads the prepared set in a second, and any added, removed or changed file (or another
size) prepares it again. With class subfolders (every image inside a first-level subfolder), the subfolders'
names, sorted, are the classes and their indices the labels; otherwise every label is -1 (no class).

Files with other extensions are left out with a count; files that cannot be decoded are skipped with a count
and the first reason; dangling symlinks and names that are not regular files (a FIFO would block the
decoder) are skipped with a count, printed once; a folder with no readable image is a one-line error.
16-bit images (PNG's 16-bit greyscale, Pillow's ``I;16`` and ``I`` modes) are scaled from their full range
to 8 bits, not clipped. The cache file is written whole (a temporary file renamed into place), and a cache
folder that cannot be written only costs the next run the decoding. No Lightning: PIL, torch, tqdm.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm.config import ConfigError, first_line
from ddpm.data.image_sets import default_cache_dir
from ddpm.safe_writes import WriteError, write_file

__all__ = [
    "IMAGE_SUFFIXES",
    "NO_LABEL",
    "FolderListing",
    "PreparedFolder",
    "default_cache_dir",
    "list_image_folder",
    "prepare_image_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: the label of an image that lies in no class subfolder
NO_LABEL = -1
#: bump when the decoding or resizing changes, so old cache files are not reused (2: 16-bit images scaled)
CACHE_VERSION = 2
#: Pillow's modes of 16-bit greyscale images ("I": 32-bit integers, which a 16-bit PNG opens as in some
#: Pillow versions); converted to "L" they would be clipped at 255, nearly white
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass(frozen=True)
class FolderListing:
    """The image files of a folder (sorted relative paths), their labels, the classes, what was left out."""

    root: Path
    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    other_files: int
    key: str  # the hash of the file list, sizes and mtimes
    dangling_links: int = 0  # image names whose symlink points nowhere
    not_regular: int = 0  # image names that are a FIFO, a device or a socket

    def skipped_lines(self) -> list[str]:
        """What the listing skipped, as lines to print once (none when nothing was)."""
        lines = []
        for count, what in (
            (self.dangling_links, "dangling symlink"),
            (self.not_regular, "non-regular file"),
        ):
            if count:
                lines.append(f"Image folder {self.root}: skipped {count} {what}{'s' if count > 1 else ''}")
        return lines

    def cache_key(self, image_size: int, channels: int) -> str:
        """The cache file's name for these files at this size and channel count."""
        text = json.dumps([CACHE_VERSION, self.key, int(image_size), int(channels)])
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def list_image_folder(path: str | os.PathLike[str]) -> FolderListing:
    """The image files under ``path`` (recursively) and their labels; cheap (no decoding).

    Raises:
        ConfigError: the folder is missing, not a folder, or holds no PNG / JPEG / WebP file.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise ConfigError(f"data.path={str(path)!r} does not exist; give the folder of your images")
    if not root.is_dir():
        raise ConfigError(f"data.path={str(path)!r} is a file, not a folder; give the folder of your images")
    files: list[tuple[str, int, int]] = []
    other = dangling = not_regular = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            full = Path(folder) / name
            if full.suffix.lower() not in IMAGE_SUFFIXES:
                other += 1
                continue
            try:
                st = full.stat()  # follows a symlink; never opens the file
            except OSError:  # a symlink to nothing (or a loop of them); or a file removed meanwhile
                if full.is_symlink():
                    dangling += 1
                else:
                    not_regular += 1
                continue
            if not stat.S_ISREG(st.st_mode):
                not_regular += 1
                continue
            files.append((full.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    if not files:
        skipped = f", {dangling} dangling symlink(s)" if dangling else ""
        skipped += f", {not_regular} non-regular file(s)" if not_regular else ""
        raise ConfigError(
            f"data.path={str(path)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}, searched "
            f"recursively; {other} other file(s){skipped})"
        )
    files.sort()
    tops = [rel.split("/", 1) for rel, _, _ in files]
    if all(len(parts) == 2 for parts in tops):  # every image in a first-level subfolder: its class
        classes = tuple(sorted({parts[0] for parts in tops}))
        index = {name: i for i, name in enumerate(classes)}
        labels = tuple(index[parts[0]] for parts in tops)
    else:
        classes, labels = (), tuple(NO_LABEL for _ in files)
    key = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return FolderListing(root, tuple(f[0] for f in files), labels, classes, other, key, dangling, not_regular)


@dataclass(frozen=True)
class PreparedFolder:
    """The decoded set: ``images`` uint8 [N, C, S, S], ``labels`` int64 [N] (-1: no class), ``classes``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    skipped: int  # image files that could not be decoded
    cache_file: Path
    from_cache: bool


def _decode(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as uint8 [C, size, size]: converted, the short side resized to ``size``, centre-cropped."""
    from PIL import Image

    with Image.open(path) as opened:
        img: Image.Image = opened
        if img.mode in SIXTEEN_BIT_MODES:
            # 0 .. 65535 onto 0 .. 255 (65535 / 257 = 255); "I" holds 16-bit values in 32-bit integers
            wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
            img = Image.fromarray(((wide + 128) // 257).astype(np.uint8), mode="L")
        img = img.convert("RGB" if channels == 3 else "L")
        w, h = img.size
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def prepare_image_folder(
    path: str | os.PathLike[str],
    image_size: int,
    channels: int,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    log=print,
) -> PreparedFolder:
    """The folder's images decoded at ``image_size`` with ``channels``: from the cache when the folder has
    not changed, else decoded now (with a progress bar) and cached.

    Raises:
        ConfigError: no image files, or none of them readable.
    """
    if channels not in (1, 3):
        raise ConfigError(
            f"data.channels={channels!r} is invalid for an image folder; choose 1 (grey) or 3 (RGB)"
        )
    listing = list_image_folder(path)
    for line in listing.skipped_lines():
        log(line)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache_file = cache / "image_folder" / f"{listing.cache_key(image_size, channels)}.pt"
    if cache_file.is_file():
        try:
            stored = torch.load(cache_file, map_location="cpu", weights_only=True)
            return PreparedFolder(
                stored["images"], stored["labels"], tuple(stored["classes"]), int(stored["skipped"]),
                cache_file, from_cache=True,
            )  # fmt: skip
        except Exception as err:  # a truncated or foreign file: prepare it again
            log(f"Image folder cache {cache_file} unreadable ({first_line(err)}); preparing again")
    from tqdm.auto import tqdm

    images, labels, bad = [], [], []
    files = tqdm(listing.files, desc=f"Preparing {listing.root.name}", disable=not progress, leave=False)
    for rel, label in zip(files, listing.labels, strict=True):
        try:
            images.append(_decode(listing.root / rel, image_size, channels))
            labels.append(label)
        except Exception as err:  # PIL raises many types for corrupt or truncated files
            bad.append(f"{rel}: {first_line(err)}")
    if not images:
        raise ConfigError(
            f"data.path={str(path)!r}: none of its {len(listing.files)} image files could be read "
            f"(first: {bad[0]})"
        )
    if bad:
        log(f"Image folder {listing.root}: skipped {len(bad)} unreadable file(s) (first: {bad[0]})")
    if listing.other_files:
        log(f"Image folder {listing.root}: left out {listing.other_files} file(s) that are not images")
    images_t, labels_t = torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)
    prepared = {
        "images": images_t,
        "labels": labels_t,
        "classes": list(listing.classes),
        "skipped": len(bad),
    }
    # whole or not at all (two runs may prepare the same folder at once); a cache that cannot be written
    # costs the next run the decoding, not this run its data
    try:
        write_file(cache_file, lambda tmp: torch.save(prepared, tmp))
        where = f"cached in {cache_file}"
    except (WriteError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError
        where = f"not cached ({first_line(err)})"
    log(f"Image folder {listing.root}: {len(images)} images prepared at {image_size}x{image_size}, {where}")
    return PreparedFolder(images_t, labels_t, listing.classes, len(bad), cache_file, from_cache=False)
