"""``data=image_folder``: a folder of the user's images, written here (PNG and JPEG of mixed sizes in class
subfolders, a corrupt file, a text file), prepared once into a cache keyed by the file list, sizes and mtimes.

Each image is one solid colour per class, so what the preparation produced can be checked pixel by pixel: the
labels match the folders, the colours survive the resize and crop (JPEG within its rounding), the corrupt
file is skipped with a count, the text file left out; the cache is reused and rebuilt when a file changes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm.config import ConfigError
from ddpm.data.image_folder import NO_LABEL, list_image_folder, prepare_image_folder
from ddpm.schedules import NotPureNoiseWarning

COLOURS = {"cats": (200, 30, 30), "dogs": (20, 40, 220)}
SIZES = [(20, 12), (9, 30), (16, 16)]  # landscape, portrait, square: all reach 8x8 by resize + crop


def _write_folder(root: Path) -> Path:
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i, size in enumerate(SIZES):
            suffix = "png" if name == "cats" else "jpg"
            Image.new("RGB", size, colour).save(root / name / f"{i}.{suffix}")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "pets")


def test_the_folder_is_prepared_with_labels_from_its_subfolders(folder: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    prepared = prepare_image_folder(folder, 8, 3, tmp_path / "cache", progress=False, log=lines.append)
    assert prepared.classes == ("cats", "dogs") and not prepared.from_cache
    assert prepared.images.dtype == torch.uint8 and prepared.images.shape == (6, 3, 8, 8)
    assert prepared.labels.tolist() == [0, 0, 0, 1, 1, 1] and prepared.skipped == 1
    for image, label in zip(prepared.images, prepared.labels, strict=True):
        colour = torch.tensor(COLOURS[prepared.classes[label]])[:, None, None]
        tolerance = 0 if label == 0 else 8  # PNG is lossless; JPEG's rounding of a flat colour
        assert (image.int() - colour).abs().max() <= tolerance
    assert any("skipped 1 unreadable file(s)" in ln and "broken.png" in ln for ln in lines)
    assert any("left out 1 file(s) that are not images" in ln for ln in lines)
    grey = prepare_image_folder(folder, 8, 1, tmp_path / "cache", progress=False, log=lines.append)
    assert grey.images.shape == (6, 1, 8, 8)


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = prepare_image_folder(folder, 8, 3, cache, progress=False, log=lambda _: None)
    again = prepare_image_folder(folder, 8, 3, cache, progress=False, log=lambda _: None)
    assert again.from_cache and again.cache_file == first.cache_file
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    Image.new("RGB", (8, 8), (0, 255, 0)).save(folder / "cats" / "0.png")  # same name, new content
    os.utime(folder / "cats" / "0.png", ns=(1, 1))  # a different mtime even on a coarse clock
    changed = prepare_image_folder(folder, 8, 3, cache, progress=False, log=lambda _: None)
    assert not changed.from_cache and changed.cache_file != first.cache_file
    assert changed.images[0, :, 0, 0].tolist() == [0, 255, 0]
    bigger = prepare_image_folder(folder, 16, 3, cache, progress=False, log=lambda _: None)
    assert not bigger.from_cache and bigger.images.shape[-1] == 16


def test_images_outside_class_subfolders_have_no_label(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    (root / "more").mkdir(parents=True)
    Image.new("L", (10, 10), 128).save(root / "a.png")
    Image.new("L", (10, 10), 64).save(root / "more" / "b.webp", lossless=True)
    listing = list_image_folder(root)
    assert listing.files == ("a.png", "more/b.webp") and listing.classes == ()
    assert listing.labels == (NO_LABEL, NO_LABEL)


@pytest.mark.parametrize("case", ["missing", "empty", "only_text", "all_corrupt"])
def test_bad_folders_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    root = tmp_path / "images"
    if case != "missing":
        root.mkdir()
    if case == "only_text":
        (root / "a.txt").write_text("x")
    if case == "all_corrupt":
        (root / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(ConfigError) as err:
        prepare_image_folder(root, 8, 3, tmp_path / "cache", progress=False, log=lambda _: None)
    message = str(err.value)
    assert "\n" not in message and f"data.path={str(root)!r}" in message
    expected = {"missing": "does not exist", "empty": "no image files", "only_text": "1 other file(s)",
                "all_corrupt": "none of its 1 image files could be read"}  # fmt: skip
    assert expected[case] in message


def test_the_datamodule_serves_labelled_batches_on_the_image_path(folder: Path, tmp_path: Path) -> None:
    from ddpm.data import ImageDataModule

    dm = ImageDataModule(
        dataset="folder", path=str(folder), cache_dir=str(tmp_path / "cache"), channels=3, image_size=8,
        batch_size=4, val_source="train", val_size=2, random_flip=True, on_device=True,
    )  # fmt: skip
    assert dm.prepared is not None and dm.classes == ("cats", "dogs")  # prepared at construction
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert set(y.tolist()) <= {0, 1}
    held = dm.held_out()
    assert held.shape == (2, 3, 8, 8) and len(dm.train_set) == 4  # type: ignore[arg-type]


def test_a_wrong_channel_count_is_refused_before_any_work(folder: Path) -> None:
    from ddpm.data import ImageData

    with pytest.raises(ValueError, match=r"data.channels=4 is invalid for a folder"):
        ImageData(dataset="folder", path=str(folder), channels=4, image_size=8, val_size=2)


@pytest.mark.slow
def test_ddpm_train_on_an_image_folder_reuses_its_cache(folder: Path, tmp_path: Path) -> None:
    """Two short runs of experiment=image_folder: the second reads the prepared set from the cache."""
    from tests.helpers import run_train

    cache = tmp_path / "cache"
    overrides = ["experiment=image_folder", f"data.path={folder}", f"data.cache_dir={cache}", "trainer=cpu",
                 "model=unet_tiny", "data.image_size=8", "data.val_size=2", "data.batch_size=4", "T=20",
                 "trainer.max_steps=2", "trainer.val_check_interval=1",
                 "trainer.log_every_n_steps=1", "callbacks.samples.num_samples=4",
                 "final_samples=4", "logger=csv", "print_config=false", "sampler.steps=5",
                 "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        _, first = run_train(tmp_path / "one", overrides)
        files = list((cache / "image_folder").glob("*.pt"))
        stamp = files[0].stat().st_mtime_ns
        _, second = run_train(tmp_path / "two", overrides)
    assert len(files) == 1 and files[0].stat().st_mtime_ns == stamp  # read, not written again
    for run in (first, second):
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "samples.npz").is_file()
