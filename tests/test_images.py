"""Image data and runs: torchvision's MNIST/CIFAR-10 loaders on tiny test-written files, digits, the
image experiments end to end, and ddpm-sample on an image checkpoint."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import pickle
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets as tvd

from ddpm.build import build, load_run
from ddpm.cli.sample import main as sample_main
from ddpm.cli.train import train
from ddpm.config import ConfigError
from ddpm.data import ImageDataModule
from ddpm.models import UNet
from ddpm.viz.grid import to_uint8
from tests.digits_classifier import CACHE_DIR, digits_metric
from tests.helpers import compose_cfg, run_train, train_in_process

# A few real steps with a short chain: checkpoints, a validation with a grid, final samples.
SHORT = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "T=20",
    "final_samples=16",
    "callbacks.samples.num_samples=8",
    "callbacks.samples.strip_images=2",
    "sampler.steps=null",  # digits and mnist sample with DDPM-250, more steps than T=20 has
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "print_config=false",
]


# ----------------------------------------------------------------------------- tiny dataset files
def _idx(data: np.ndarray) -> bytes:
    """The IDX format of MNIST: magic 0x0000 08 <ndim> (unsigned bytes), big-endian sizes, the bytes."""
    header = struct.pack(">I", 0x0800 + data.ndim) + b"".join(struct.pack(">I", s) for s in data.shape)
    return header + data.astype(np.uint8).tobytes()


def write_tiny_mnist(root: Path, n_train: int = 40, n_test: int = 12) -> dict[str, np.ndarray]:
    """Gzipped IDX files as published, in <root>/MNIST/raw/. Train images are a ramp of grey levels
    (value = 50 + row), test images a constant 200, so a test can tell which file a batch came from."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    ramp = (50 + np.arange(28, dtype=np.uint8))[:, None].repeat(28, 1)
    arrays = {
        "train-images-idx3-ubyte": np.broadcast_to(ramp, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": np.full((n_test, 28, 28), 200, dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, data in arrays.items():
        with gzip.open(raw / f"{name}.gz", "wb") as fh:
            fh.write(_idx(np.asarray(data)))
    return arrays


def write_tiny_cifar(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 8) -> None:
    """CIFAR-10's python pickles in <root>/cifar-10-batches-py/. Every image is bright on its left half
    and dark on its right half (so a flip is visible), with a different red level per batch.

    torchvision checks each file's md5 against the published ones (CIFAR10._check_integrity); the test
    registers the md5s of its own files in those tables, so the real check and the real parser both run.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    md5 = {}
    for k, name in enumerate(names):
        img = np.zeros((per_batch, 3, 32, 32), dtype=np.uint8)
        img[:, :, :, :16] = 255
        img[:, 0, 0, 0] = 10 * k  # which file an image came from
        entry = {"data": img.reshape(per_batch, -1), "labels": [k] * per_batch, "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(entry))
        md5[name] = hashlib.md5((folder / name).read_bytes()).hexdigest()
    meta = folder / "batches.meta"
    meta.write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[n, md5[n]] for n in names[:5]])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    meta_md5 = hashlib.md5(meta.read_bytes()).hexdigest()
    monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": meta_md5})


def all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


# ----------------------------------------------------------------------------- the DataModule
def test_mnist_from_gzipped_idx_files(tmp_path: Path) -> None:
    arrays = write_tiny_mnist(tmp_path)
    dm = ImageDataModule(
        "mnist", data_dir=str(tmp_path), channels=1, batch_size=8, val_source="test", val_size=5
    )
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # unpacked for torchvision
    assert dm.data_shape == (1, 28, 28)
    x, y = all_batches(dm.train_dataloader())
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    # Every training image is the ramp, scaled [0, 255] -> [-1, 1] (DDPM sec. 3.3), never flipped.
    ramp = torch.from_numpy(arrays["train-images-idx3-ubyte"][0].astype(np.float32)) / 255 * 2 - 1
    assert torch.allclose(x, ramp.expand_as(x), atol=1e-6)
    assert sorted(y.tolist()) == sorted((np.arange(40) % 10).tolist())
    xv, _ = all_batches(dm.val_dataloader())
    assert xv.shape == (5, 1, 28, 28)
    assert torch.allclose(xv, torch.full_like(xv, 200 / 255 * 2 - 1))  # from the test file
    assert torch.allclose(dm.denormalize(xv), torch.full_like(xv, 200 / 255))


def test_mnist_padded_to_32(tmp_path: Path) -> None:
    write_tiny_mnist(tmp_path)
    dm = ImageDataModule("mnist", data_dir=str(tmp_path), image_size=32, resize_mode="pad", val_size=8)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 32, 32)
    assert (x[..., :2, :] == -1).all() and (x[..., :, -2:] == -1).all()  # black borders
    assert (x[..., 2:30, 2:30] > -1).all()


def test_cifar10_through_torchvision_and_flips_only_in_training(tmp_path: Path, monkeypatch) -> None:
    write_tiny_cifar(tmp_path, monkeypatch, per_batch=40)
    dm = ImageDataModule(
        "cifar10", data_dir=str(tmp_path), channels=3, batch_size=16, val_source="test", val_size=40
    )
    assert dm.random_flip  # DDPM's CIFAR-10 default
    assert dm.data_shape == (3, 32, 32)
    x, y = all_batches(dm.train_dataloader())
    assert x.shape == (192, 3, 32, 32)  # 200 training images, the ragged last batch dropped
    assert x.min() == -1 and x.max() == 1
    assert set(y.tolist()) <= {0, 1, 2, 3, 4}  # labels of the five training batches
    left_bright = x[:, 1, :, :16].mean((1, 2)) > 0
    flipped = (~left_bright).float().mean().item()
    assert 0.3 < flipped < 0.7, flipped  # a fair coin per image
    xv, yv = all_batches(dm.val_dataloader())
    assert (yv == 5).all()  # the test batch
    assert (xv[:, 1, :, :16] == 1).all() and (xv[:, 1, :, 16:] == -1).all()  # never flipped
    assert not ImageDataModule("cifar10", data_dir=str(tmp_path), random_flip=False).random_flip


def test_corrupted_cifar_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    write_tiny_cifar(tmp_path, monkeypatch)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_3").open("ab") as fh:
        fh.write(b"garbage")  # the md5 no longer matches
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path), val_size=4)
    with pytest.raises(FileNotFoundError, match="cannot read the files") as exc:
        dm.setup()
    assert len(str(exc.value).splitlines()) == 1


def test_digits(tmp_path: Path) -> None:
    dm = ImageDataModule(
        "digits", data_dir=str(tmp_path), channels=1, image_size=8, batch_size=64, val_size=197
    )
    assert dm.data_shape == (1, 8, 8) and not dm.random_flip
    x, _ = all_batches(dm.train_dataloader())
    xv, yv = all_batches(dm.val_dataloader())
    # val_source=train (the constructor's default): 197 held out of the 1,437 of the training split
    assert x.shape == ((1437 - 197) // 64 * 64, 1, 8, 8) and xv.shape == (197, 1, 8, 8)
    # Pixel counts 0..16 scaled to [-1, 1]: both ends occur, and the levels are multiples of 1/8.
    assert x.min() == -1 and x.max() == 1
    assert torch.allclose((x + 1) * 8, ((x + 1) * 8).round(), atol=1e-5)
    assert set(yv.tolist()) == set(range(10))
    assert dm.kind == "image"  # toy quality figures do not apply to images
    # The split is seeded: same seed, same validation images; another seed, others.
    again, _ = all_batches(ImageDataModule("digits", val_size=197, seed=0).val_dataloader())
    other, _ = all_batches(ImageDataModule("digits", val_size=197, seed=1).val_dataloader())
    assert torch.equal(xv, again) and not torch.equal(xv, other)


def test_digits_enlarged_and_uint8_output() -> None:
    dm = ImageDataModule("digits", image_size=16, resize_mode="bilinear", val_size=100)
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape[1:] == (1, 16, 16) and x.min() >= -1 and x.max() <= 1
    pixels = to_uint8(dm.denormalize(x))
    assert pixels.dtype == np.uint8 and pixels.shape == (x.shape[0], 16, 16, 1)
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0]).reshape(1, 3, 1, 1)).tolist() == [[[[0, 128, 255]]]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "svhn"}, "data.dataset='svhn' is unknown"),
        ({"channels": 3}, r"data\.channels=3 but digits images have 1 channel"),
        ({"image_size": 0}, r"data\.image_size=0"),
        ({"image_size": 11, "resize_mode": "pad"}, r"data\.image_size=11 cannot be reached by padding"),
        ({"batch_size": 0}, r"data\.batch_size=0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageDataModule(**{"dataset": "digits", **kwargs})


def test_val_source_test_needs_an_official_test_split(monkeypatch) -> None:
    from ddpm.data.image_sets import IMAGE_DATASETS

    # Every dataset here has one (digits' is fixed in ddpm.data.image_sets); a dataset without one is refused.
    monkeypatch.setitem(IMAGE_DATASETS, "digits", replace(IMAGE_DATASETS["digits"], has_test=False))
    with pytest.raises(ValueError, match="digits has no official test split"):
        ImageDataModule("digits", val_source="test")


def _image_set(images: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
    """Images with their labels as a sorted list (an order-free multiset that can be compared)."""
    return sorted(zip(map(tuple, images.flatten(1).tolist()), labels.tolist(), strict=True))


def test_digits_runs_validate_on_the_classifier_metrics_held_out_images(tmp_path: Path) -> None:
    """One split of digits: a digits run (conf/data/digits.yaml) trains on the classifier metric's training
    split and validates on exactly its held-out images, whatever the seed; with val_source=train the
    validation images are held out of the training split, and no digits run ever trains on held-out ones."""
    from hydra.utils import instantiate

    data = digits_metric().data
    held_out, train = _image_set(data.test_x, data.test_y), _image_set(data.train_x, data.train_y)
    assert (len(held_out), len(train)) == (360, 1437)
    assert not {x for x, _ in held_out} & {x for x, _ in train}  # disjoint images
    for seed in (0, 1):
        cfg = compose_cfg(tmp_path / str(seed), ["experiment=digits", f"seed={seed}"])
        dm = instantiate(cfg.data)
        dm.setup()
        assert _image_set(*dm.val_set.tensors) == held_out
        assert _image_set(*dm.train_set.tensors) == train
        xv, yv = all_batches(dm.val_dataloader())  # as the run sees them, back on the [0, 1] scale
        assert _image_set(dm.denormalize(xv), yv) == held_out

        own = ImageDataModule("digits", val_source="train", val_size=197, seed=seed)
        own.setup()
        own_val, own_train = _image_set(*own.val_set.tensors), _image_set(*own.train_set.tensors)
        assert (len(own_val), len(own_train)) == (197, 1437 - 197)
        assert sorted(own_val + own_train) == train


@pytest.mark.parametrize(
    ("dataset", "folder", "files"),
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "test_batch", "batches.meta"]),
    ],
)
def test_missing_files_are_one_line_naming_folder_and_files(tmp_path: Path, dataset, folder, files) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        ImageDataModule(dataset, data_dir=str(tmp_path / "data"))
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1
    assert str(tmp_path / "data" / folder) in msg
    assert all(f in msg for f in files)
    assert "data.download=true" in msg and "copy the files there" in msg


def test_cifar_archive_copied_by_hand_is_unpacked(tmp_path: Path, monkeypatch) -> None:
    """Offline: cifar-10-python.tar.gz as published, copied into data_dir, is unpacked on first use."""
    import tarfile

    write_tiny_cifar(tmp_path / "elsewhere", monkeypatch)
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "elsewhere" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dm = ImageDataModule("cifar10", data_dir=str(tmp_path / "data"), val_size=4)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32)


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """torchvision's real download code, pointed at a port where nothing listens (no network needed)."""
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    with pytest.raises(FileNotFoundError) as exc:
        ImageDataModule("mnist", data_dir=str(tmp_path), download=True)
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1
    assert "downloading into" in msg and "failed (" in msg and "train-images-idx3-ubyte" in msg
    assert "from a machine with internet" in msg


def test_missing_files_fail_before_any_run_folder(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, ["experiment=mnist", "trainer=cpu", *SHORT])
    run_dir = Path(cfg.paths.output_dir)
    (run_dir / ".hydra").mkdir(parents=True)  # what Hydra writes before the task starts
    with pytest.raises(ConfigError, match=r"^data: data\.dataset=mnist: 4 of 4 files missing in") as exc:
        train(cfg)
    assert len(str(exc.value).splitlines()) == 1
    assert str(tmp_path / "data" / "MNIST" / "raw") in str(exc.value)
    assert not run_dir.exists()


# ----------------------------------------------------------------------------- configs
def test_cifar10_ddpm_is_the_paper_recipe(tmp_path: Path, monkeypatch) -> None:
    write_tiny_cifar(tmp_path / "data", monkeypatch)
    cfg = compose_cfg(tmp_path, ["experiment=cifar10_ddpm"])
    assert cfg.T == cfg.schedule.T == 1000 and cfg.schedule.name == "linear"
    assert (cfg.schedule.beta_start, cfg.schedule.beta_end) == (1e-4, 0.02)
    assert cfg.diffusion.objective == "eps" and cfg.diffusion.variance == "fixed_large"
    assert cfg.loss.distance == "mse" and cfg.loss.weighting == "none" and cfg.diffusion.clip_denoised is True
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 2e-4
    assert cfg.lr_scheduler.warmup_steps == 5000 and cfg.lr_scheduler.decay == "constant"
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.trainer.max_steps == 800_000
    assert cfg.trainer.accelerator == "auto"  # the GPU where there is one (issue 34)
    assert cfg.callbacks.ema.decay == 0.9999
    assert cfg.data.batch_size == 128 and cfg.data.random_flip is True
    assert cfg.sampler._target_ == "ddpm.samplers.DDPMSampler" and cfg.sampler.steps is None
    datamodule, module = build(cfg)  # the 35.7M UNet with dropout 0.1 on 3x32x32
    assert datamodule.data_shape == (3, 32, 32)
    assert isinstance(module.net, UNet) and module.net.in_channels == 3
    assert abs(sum(p.numel() for p in module.net.parameters()) - 35.7e6) < 0.1e6


@pytest.mark.parametrize("experiment", ["mnist", "cifar10_ddpm"])
def test_image_experiments_run_on_tiny_files(experiment: str, tmp_path: Path, monkeypatch) -> None:
    """Each GPU experiment's data path, callbacks and results, on CPU with the tiny UNet."""
    if experiment == "mnist":
        write_tiny_mnist(tmp_path / "data")
    else:
        write_tiny_cifar(tmp_path / "data", monkeypatch)
    overrides = ["trainer=cpu", "model=unet_tiny", "data.batch_size=4", "data.num_workers=0"]
    overrides += ["data.pin_memory=false", "data.val_size=4"]
    metrics, run_dir = run_train(tmp_path, [f"experiment={experiment}", *overrides, *SHORT])
    assert metrics["global_step"] == 4
    size, channels = (28, 1) if experiment == "mnist" else (32, 3)
    with np.load(run_dir / "samples.npz") as npz:
        assert npz["samples"].shape == (16, size, size, channels) and npz["samples"].dtype == np.uint8
    assert (run_dir / "plots" / "samples_grid.png").is_file()
    assert (run_dir / "plots" / "samples_grid_step0000004.png").is_file()


def _write_image_folder(root: Path) -> Path:
    """Twelve small PNGs of two classes in class subfolders, as a user's folder would hold them."""
    rng = np.random.default_rng(0)
    for k in range(12):
        folder = root / ("light" if k % 2 else "dark")
        folder.mkdir(parents=True, exist_ok=True)
        level = 200 if k % 2 else 50
        pixels = np.clip(level + rng.integers(-20, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    return root


@pytest.mark.parametrize("experiment", ["digits", "mnist", "image_folder"])
def test_image_experiments_start_on_a_machine_without_a_gpu(
    experiment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trainer.accelerator=auto (issue 34): each image preset, with its own network, trains a couple of steps
    on this GPU-less machine's CPU; the large networks (mnist's 6.5M, the 35.7M of image_folder) say in one
    line that it will be slow and what to shrink, digits' tiny UNet says nothing; trainer=gpu is refused."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, which accelerator=auto would use")
    if experiment == "mnist":
        write_tiny_mnist(tmp_path / "data")  # the published gzipped IDX files, 40 training images
    args = [
        f"experiment={experiment}",
        f"paths.root_dir={tmp_path}",
        "data.batch_size=4",
        "data.num_workers=0",
    ]
    if experiment == "image_folder":
        folder = _write_image_folder(tmp_path / "images")
        args += [f"data.path={folder}", f"data.cache_dir={tmp_path / 'cache'}"]
    if experiment != "digits":
        args += ["data.pin_memory=false", "data.val_size=4"]
    args += ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0"]
    args += [
        "trainer.log_every_n_steps=1",
        "sampler.steps=1",
        "final_samples=4",
        "callbacks.samples.num_samples=4",
    ]
    args += ["callbacks.samples.strip_images=0", "callbacks.samples.metric_samples=0", "logger=csv"]
    args += ["print_config=false", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
    run = tmp_path / "run"
    capsys.readouterr()
    assert train_in_process([*args, f"hydra.run.dir={run}"]) == 0
    out, err = capsys.readouterr()
    assert "Trained 2 steps" in out, err[-3000:]
    stored = (run / ".hydra" / "config.yaml").read_text()
    assert "  accelerator: auto\n" in stored
    warned = [ln for ln in err.splitlines() if ln.startswith("warning: no GPU here")]
    if experiment == "digits":
        assert warned == []
    else:
        (line,) = warned
        size = "6.5M" if experiment == "mnist" else "35.7M"
        assert f"trains on the CPU: slow for a {size}-parameter network, batch 4" in line
        assert "model=unet_tiny" in line
    with np.load(run / "samples.npz") as npz:
        assert len(npz["samples"]) == 4

    # a run that asks for a GPU by name still gets the one-line refusal
    capsys.readouterr()
    assert train_in_process([*args, "trainer=gpu", f"hydra.run.dir={tmp_path / 'gpu'}"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert errors == [
        "error: trainer.accelerator=gpu but this machine has no CUDA GPU that torch can use; use trainer=cpu "
        "(or trainer.accelerator=auto)"
    ]


# ----------------------------------------------------------------------------- digits end to end
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A short in-process ``ddpm-train experiment=digits``."""
    tmp = tmp_path_factory.mktemp("digits")
    metric = ["callbacks.samples.metric_samples=64", f"callbacks.samples.cache_dir={CACHE_DIR}"]
    return run_train(tmp, ["experiment=digits", *SHORT, *metric])


def test_digits_run_writes_grid_and_uint8_samples(digits_run) -> None:
    metrics, run_dir = digits_run
    assert metrics["global_step"] == 4 and metrics["final/n"] == 16
    with np.load(run_dir / "samples.npz") as npz:
        samples = npz["samples"]
    assert samples.dtype == np.uint8 and samples.shape == (16, 8, 8, 1)
    grid = Image.open(run_dir / "plots" / "samples_grid.png")
    # 16 images in a 4 x 4 grid of 64 px tiles (8 px enlarged 8x) with 2 px padding.
    assert grid.size == (4 * 66 + 2, 4 * 66 + 2)
    for step in (2, 4):  # the validations at steps 2 and 4
        assert (run_dir / "plots" / f"samples_grid_step{step:07d}.png").is_file()
        assert (run_dir / "plots" / f"denoising_step{step:07d}.png").is_file()
    assert json.loads((run_dir / "metrics.json").read_text())["final/n"] == 16
    assert not (run_dir / "plots" / "samples_vs_data.png").exists()


def test_digits_run_logs_the_classifier_metric_at_validation(digits_run) -> None:
    _, run_dir = digits_run
    rows = [
        r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get("val/classifier_ratio")
    ]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:  # four training steps of a UNet: noise, far from real digits (ratio 1)
        assert float(r["val/classifier_ratio"]) > 3
        assert float(r["val/classifier_frechet"]) > 0 and 0 <= float(r["val/class_balance"]) <= 1


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")  # T=20 on purpose: fast
def test_ddpm_sample_on_an_image_checkpoint(digits_run, tmp_path: Path) -> None:
    _, run_dir = digits_run
    out = tmp_path / "s.npz"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert sample_main([str(ckpt), "sampler=ddim", "sampler.steps=5", "--n", "10", "--out", str(out)]) == 0
    with np.load(out) as npz:
        assert npz["samples"].dtype == np.uint8 and npz["samples"].shape == (10, 8, 8, 1)
    assert Image.open(out.with_suffix(".png")).size == (4 * 66 + 2, 3 * 66 + 2)  # 10 images, 4 per row
    assert json.loads(out.with_suffix(".json").read_text())["n"] == 10
    run = load_run(run_dir)
    assert run.data_shape == (1, 8, 8)


def _train_losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_digits_loss_falls(tmp_path: Path) -> None:
    """CI-sized: 60 steps of 32 digits on CPU; the eps loss starts at 1 (the output layer is zero at
    first, so the prediction is 0 and the loss E[eps^2] = 1) and falls by more than half."""
    overrides = [
        o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "T=", "final"))
    ]
    _, run_dir = run_train(
        tmp_path,
        [
            "experiment=digits",
            *overrides,
            "trainer.max_steps=60",
            "trainer.val_check_interval=60",
            "data.batch_size=32",
            "callbacks.samples=null",
            "final_samples=0",
        ],
    )
    losses = _train_losses(run_dir)
    assert len(losses) == 60
    assert np.mean(losses[:5]) > 0.9
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


@pytest.mark.slow
def test_digits_couple_of_minutes_learns_the_digits(tmp_path: Path) -> None:
    """A couple of minutes on CPU (1000 steps, 100 final samples with all 1000 DDPM steps): the loss falls
    and the samples have the data's pixel statistics (a model that had learnt nothing gives noise, whose
    mean image does not correlate with the digits' mean image)."""
    overrides = [
        o for o in SHORT if not o.startswith(("trainer.max_steps", "trainer.val_check", "T=", "final"))
    ]
    overrides = [o for o in overrides if not o.startswith("callbacks.samples")]
    _, run_dir = run_train(
        tmp_path,
        ["experiment=digits", *overrides, "trainer.max_steps=1000", "trainer.val_check_interval=500"],
    )
    losses = _train_losses(run_dir)
    assert np.mean(losses[-100:]) < 0.15 * np.mean(losses[:5])
    assert (run_dir / "plots" / "samples_grid.png").is_file()
    assert (run_dir / "plots" / "samples_grid_step0001000.png").is_file()
    from sklearn.datasets import load_digits

    data = load_digits().images / 16.0
    with np.load(run_dir / "samples.npz") as npz:
        samples = npz["samples"][..., 0] / 255.0
    assert samples.shape == (100, 8, 8)
    # Bright strokes on black: the samples' mean image matches the data's pixel by pixel (a 2000-step run
    # reaches 0.995), and their overall brightness and contrast match too.
    corr = np.corrcoef(samples.mean(0).ravel(), data.mean(0).ravel())[0, 1]
    assert corr > 0.95, corr
    assert abs(samples.mean() - data.mean()) < 0.05
    assert abs(samples.std() - data.std()) < 0.05


# ----------------------------------------------------------------------------- data held on the device
def test_on_device_batches_are_whole_slices_of_the_same_images() -> None:
    plain = ImageDataModule("digits", val_size=197, batch_size=64, seed=3)
    held = ImageDataModule("digits", val_size=197, batch_size=64, seed=3, on_device=True)
    x_plain, y_plain = all_batches(plain.train_dataloader())
    x_held, y_held = all_batches(held.train_dataloader())
    assert x_held.shape == x_plain.shape == ((1437 - 197) // 64 * 64, 1, 8, 8)
    # the same training images (the same seeded split), each once per epoch, in another order
    key = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
    assert key(x_held) == key(x_plain) and sorted(y_held.tolist()) == sorted(y_plain.tolist())
    xv_plain, _ = all_batches(plain.val_dataloader())
    xv_held, _ = all_batches(held.val_dataloader())
    assert torch.equal(xv_plain, xv_held)  # validation: in order, unchanged


def test_on_device_batched_collate_matches_per_image_collate() -> None:
    from ddpm.data.datamodules import _ToNetwork

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(6)
    collate = _ToNetwork(16, "bilinear", flip=False)
    x_items, y_items = collate([(images[i], labels[i]) for i in range(6)])
    x_batch, y_batch = collate((images, labels))
    assert torch.equal(x_items, x_batch) and torch.equal(y_items, y_batch)
    flipped, _ = _ToNetwork(8, "pad", flip=True)((images, labels))
    plain = images.float() / 255 * 2 - 1
    for i in range(6):  # every image is itself or its mirror image
        assert torch.equal(flipped[i], plain[i]) or torch.equal(flipped[i], plain[i].flip(-1))


def test_on_device_needs_no_workers() -> None:
    with pytest.raises(ValueError, match=r"data.on_device=true needs data.num_workers=0 \(got 2\)"):
        ImageDataModule("digits", on_device=True, num_workers=2)


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_digits_trains_with_data_on_device(tmp_path: Path) -> None:
    metrics, run_dir = run_train(
        tmp_path, ["experiment=digits", *SHORT, "data.on_device=true", "callbacks.samples=null"]
    )
    assert metrics["global_step"] == 4 and (run_dir / "samples.npz").is_file()
