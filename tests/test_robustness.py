"""Issue 28's robustness: result files written whole, bounded memory, network sizes checked before anything is
allocated, non-regular and foreign files refused, image folders with dangling links and 16-bit images, and
the inputs that used to end in a traceback.

Each test writes the real file formats (npz, safetensors, PNG, checkpoints, diffusers configs) or runs the
real command in this process; full disks are an ``OSError(ENOSPC)`` raised where the bytes are written.
One test SIGKILLs a real writer process while it writes ``samples.npz``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ddpm import memory, safe_writes
from ddpm.cli.eval import main as eval_main
from ddpm.cli.sample import main as sample_main
from ddpm.config import ConfigError, validate_config
from ddpm.diffusion import GaussianDiffusion
from ddpm.interop import diffusion_config_from_scheduler, unet_kwargs_from_diffusers
from ddpm.models import MLPDenoiser, UNet
from ddpm.network_size import check_network_size, parameter_count
from ddpm.samplers import DDIMSampler, Sampler
from ddpm.sampling_model import draw_samples
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule
from tests.helpers import train_in_process

ROOT = Path(__file__).resolve().parents[1]


def _exit(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command's ``main``; 0 when it returns."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail, instead of hanging, a test whose command would block (a FIFO opened for reading)."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError("the command blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- 1. result files written whole
def test_a_result_is_synced_before_it_replaces_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"replace {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(safe_writes.os, "fsync", fsync)
    monkeypatch.setattr(safe_writes.os, "replace", replace)
    out = tmp_path / "metrics.json"
    safe_writes.write_file(out, lambda path: path.write_text('{"a": 1}\n'))
    partial = f".metrics.partial-{os.getpid()}.json"
    # the data on disk first, then the rename, then the folder entry that the rename changed
    assert events == [f"fsync {partial}", f"replace {partial} -> metrics.json", f"fsync {tmp_path.name}"]
    assert json.loads(out.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == [
        "metrics.json"
    ]


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import numpy as np

    from ddpm.results import save_samples

    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    versions = [rng.standard_normal(4_000_000).astype(np.float32) for _ in range(2)]  # 16 MB, slow to zip
    for i in range(1000):
        print(f"writing {i}", flush=True)
        save_samples(out, samples=versions[i % 2], version=np.array(i % 2))
    """
)


def test_a_sigkill_while_samples_npz_is_written_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "samples.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    partial = tmp_path / f".samples.partial-{proc.pid}.npz"
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # "writing 1": version 0 is complete on disk, version 1 is being written
            if line.strip() == "writing 1":
                break
        deadline = time.monotonic() + 60
        while not partial.exists():  # killed once the new file is being written, before it is renamed
            assert time.monotonic() < deadline and proc.poll() is None, "the writer never started writing"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = sorted(p.name for p in tmp_path.iterdir())
    # the write was cut short (its temporary file is left) and samples.npz is the earlier, complete file
    assert left == [partial.name, "samples.npz"], left
    with np.load(out) as npz:
        assert int(npz["version"]) == 0 and npz["samples"].shape == (4_000_000,)
        expected = np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)
        np.testing.assert_array_equal(npz["samples"], expected)


def _fills_up(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, room: int = 100) -> None:
    """``module.name(data, path, ...)`` writes ``room`` bytes of its file, then the disk is full."""

    def full(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"\0" * room)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(module, name, full)


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_a_failed_safetensors_export_keeps_the_earlier_export(
    toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    from ddpm.build import load_run
    from ddpm.interop import export_safetensors

    run = load_run(toy_run)
    out = tmp_path / "model.safetensors"
    export_safetensors(run, out)
    before = out.read_bytes()
    _fills_up(monkeypatch, safetensors.torch, "save_file")
    with pytest.raises(safe_writes.WriteError, match=f"could not write {out}: no space left on device"):
        export_safetensors(run, out)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    monkeypatch.undo()
    state = safetensors.torch.load_file(str(out))
    assert state.keys() == run.model.state_dict().keys()


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_a_failed_diffusers_export_keeps_every_earlier_file(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpm.build import load_run
    from ddpm.interop import export_diffusers, load_diffusers_unet

    run = load_run(digits_run)
    out = tmp_path / "pipe"
    export_diffusers(run, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 4
    real_write_text = Path.write_text

    def full(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(".scheduler_config.partial-"):  # the third of the four files
            real_write_text(self, text[:10])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(safe_writes.WriteError, match="no space left on device"):
        export_diffusers(run, out)
    monkeypatch.undo()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # no file replaced, no temporary file left
    net = load_diffusers_unet(out)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in run.model.net.parameters())


# ---------------------------------------------------------------------------- 2. bounded memory
def test_the_default_batch_size_follows_free_memory() -> None:
    net = MLPDenoiser(2, hidden=64, depth=2)
    per_sample = memory.bytes_per_sample(net, (2,))
    assert per_sample > 64 * 4  # at least the hidden layer's activations
    for room in (10, 100, 1000, 3000):
        available = int(room * per_sample / memory.MEMORY_FRACTION)
        batch, seen = memory.default_batch_size(net, (2,), available=available)
        assert seen == available and batch & (batch - 1) == 0  # a power of two
        assert batch <= room < 2 * batch  # the largest power of two within the budget
    assert memory.default_batch_size(net, (2,), available=10**15)[0] == memory.MAX_BATCH
    assert memory.default_batch_size(net, (2,), available=1)[0] == 1
    # the samples held for the output come off the budget first
    batch, _ = memory.default_batch_size(
        net, (2,), n=10**6, available=int(1000 * per_sample / 0.25) + 8 * 10**6
    )
    assert batch == 512
    # a conditional network evaluates both guidance branches: twice the activations
    cond = MLPDenoiser(2, hidden=64, depth=2, num_classes=3)
    sampler_copies = memory.SAMPLER_COPIES * 4 * 2
    assert memory.bytes_per_sample(cond, (2,)) - sampler_copies >= 2 * (per_sample - sampler_copies)


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_batched_sampling_is_the_batches_drawn_in_turn() -> None:
    torch.manual_seed(0)
    net = MLPDenoiser(2, hidden=16, depth=1)
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 20))
    sampler = DDIMSampler(steps=3)
    batched = draw_samples(
        net, diffusion, sampler, (2,), 10, batch_size=4, generator=torch.Generator().manual_seed(5)
    )
    gen = torch.Generator().manual_seed(5)
    parts = [sampler.sample(net, diffusion, (size, 2), generator=gen) for size in (4, 4, 2)]
    assert isinstance(batched, torch.Tensor)
    torch.testing.assert_close(batched, torch.cat(parts), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_ddpm_sample_draws_in_several_batches_by_default(
    toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpm.build import load_run

    n, budget = 2000, 700  # samples' worth of memory for the batches: the default batch is 512
    net = load_run(toy_run).model.net
    per_sample = memory.bytes_per_sample(net, (2,))
    available = int(budget * per_sample / memory.MEMORY_FRACTION) + 8 * n
    monkeypatch.setattr(memory, "available_memory", lambda device=None: available)
    calls: list[int] = []
    forward = MLPDenoiser.forward

    def spy(self: MLPDenoiser, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(int(x.shape[0]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(MLPDenoiser, "forward", spy)
    out = tmp_path / "s.npz"
    argv = [str(toy_run), "sampler=ddim", "sampler.steps=2", "--n", str(n), "--out", str(out), "--no-plot"]
    code, stdout, _ = _exit(sample_main, argv, capsys)
    assert code == 0
    assert "in batches of 512 (chosen from" in stdout
    # one sample measured the activations; then four batches of two steps each
    assert calls[0] == 1 and [c for c in calls if c > 1] == [512] * 6 + [464] * 2
    with np.load(out) as npz:
        assert npz["samples"].shape == (n, 2) and np.isfinite(npz["samples"]).all()
    assert json.loads(out.with_suffix(".json").read_text())["batch_size"] == 512


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_samples_that_cannot_fit_are_one_line_before_sampling(
    toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda device=None: 10**9)
    monkeypatch.setattr(Sampler, "sample", lambda *a, **k: pytest.fail("sampling started"))
    out = tmp_path / "s.npz"
    code, _, err = _exit(sample_main, [str(toy_run), "--n", "1000000000", "--out", str(out)], capsys)
    line = _one_line(err)
    assert code == 2 and "--n=1000000000 is too large" in line and "16.0 GB" in line and "1.0 GB" in line
    assert not out.exists()


# ---------------------------------------------------------------------------- 3. network sizes
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (UNet, {}),  # DDPM's CIFAR-10 network
        (
            UNet,
            {
                "in_channels": 1,
                "image_size": 8,
                "base_channels": 16,
                "channel_mult": [1, 2],
                "norm_groups": 8,
                "attn_resolutions": [4],
            },
        ),
        (
            UNet,
            {
                "base_channels": 32,
                "channel_mult": [1, 3, 2],
                "num_res_blocks": 3,
                "attn_resolutions": [32, 8],
            },
        ),
        (
            UNet,
            {
                "base_channels": 32,
                "channel_mult": [2],
                "out_mult": 2,
                "num_classes": 10,
                "attn_resolutions": [],
            },
        ),
        (UNet, {"base_channels": 32, "channel_mult": [1, 1], "out_channels": 5, "num_heads": 4}),
        (MLPDenoiser, {"data_dim": 2}),
        (
            MLPDenoiser,
            {"data_dim": 7, "hidden": 33, "depth": 5, "time_embed_dim": 16, "out_mult": 2, "num_classes": 4},
        ),
    ],
)
def test_the_parameter_count_is_the_built_networks(cls: type, kwargs: dict[str, Any]) -> None:
    built = sum(p.numel() for p in cls(**kwargs).parameters())
    assert parameter_count(cls.__name__, kwargs) == built
    assert parameter_count(f"ddpm.models.{cls.__name__}", {"_target_": "x", **kwargs}) == built


def test_a_network_larger_than_memory_is_refused_in_one_line() -> None:
    kwargs = {"base_channels": 128, "channel_mult": [1, 2, 2, 2], "num_res_blocks": 100_000}
    with pytest.raises(ConfigError) as err:
        check_network_size("UNet", kwargs, where="model", available=8 * 10**9)
    count = parameter_count("UNet", kwargs)
    assert str(err.value) == (
        f"model: the network would have {count:,} parameters ({memory.format_bytes(4 * count)} as float32), "
        "which exceed the 8.0 GB of memory available; refused before building it"
    )
    assert check_network_size("UNet", {}, available=8 * 10**9) == 35_746_307  # DDPM's CIFAR-10 network fits
    with pytest.raises(ConfigError, match=r"model.num_res_blocks='2' is invalid; it must be an integer >= 1"):
        parameter_count("UNet", {"num_res_blocks": "2"})


TINY_UNET = {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 32],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "attention_head_dim": 8,
}
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 50, "beta_schedule": "linear"}


def _pipeline(folder: Path, unet: dict[str, Any], scheduler: dict[str, Any] | None = None) -> Path:
    """A diffusers pipeline folder with configs only (no weights: a bad config is refused before them)."""
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps(unet))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or SCHEDULER))
    return folder


def test_a_diffusers_unet_too_large_is_refused_before_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _pipeline(tmp_path / "pipe", {**TINY_UNET, "layers_per_block": 100_000})
    monkeypatch.setattr(UNet, "__init__", lambda *a, **k: pytest.fail("the network was built"))
    code, _, err = _exit(sample_main, ["--pretrained", str(folder), "--n", "4"], capsys)
    line = _one_line(err)
    assert code == 2 and f"{folder / 'unet' / 'config.json'}: the network would have " in line
    assert "parameters (" in line and "exceed the" in line and "of memory available" in line
    assert sorted(p.name for p in folder.iterdir()) == ["model_index.json", "scheduler", "unet"]


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("block_out_channels", ["a"], 'block_out_channels=["a"] is invalid; it must be a list of integers'),
        ("block_out_channels", [0, 32], "block_out_channels=[0, 32] is invalid"),
        ("layers_per_block", 0, "layers_per_block=0 is invalid; it must be an integer >= 1"),
        ("layers_per_block", "2", 'layers_per_block="2" is invalid; it must be an integer >= 1'),
        ("norm_num_groups", 0, "norm_num_groups=0 is invalid; it must be an integer >= 1"),
        ("attention_head_dim", 0, "attention_head_dim=0 is invalid"),
        ("in_channels", "3", 'in_channels="3" is invalid'),
        ("dropout", "x", 'dropout="x" is invalid; it must be a number in [0, 1)'),
        ("norm_eps", 0, "norm_eps=0 is invalid; it must be a number > 0"),
        ("down_block_types", 5, "down_block_types=5 is invalid; it must be a list of block names"),
        ("flip_sin_to_cos", "yes", 'flip_sin_to_cos="yes" is invalid; it must be true or false'),
        ("sample_size", 10**9, "sample_size=1000000000 is not supported by ddpm-lab's UNet (one image's"),
        ("sample_size", [8, "8"], 'sample_size=[8, "8"] is not supported'),
    ],
)
def test_bad_diffusers_unet_values_are_one_line(key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        unet_kwargs_from_diffusers({**TINY_UNET, key: value}, "unet/config.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("unet/config.json: ") and says in message


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("num_train_timesteps", 0, "num_train_timesteps=0 is not supported (an integer from 1 to 1000000"),
        ("num_train_timesteps", 10**12, "num_train_timesteps=1000000000000 is not supported"),
        ("num_train_timesteps", "1000", 'num_train_timesteps="1000" is not supported'),
        ("beta_start", "a", 'beta_start="a" is invalid; it must be a number in (0, 1)'),
        ("beta_end", 0, "beta_end=0 is invalid"),
        ("clip_sample_range", "x", 'clip_sample_range="x" is invalid; it must be a number > 0'),
        ("clip_sample", "yes", 'clip_sample="yes" is invalid; it must be true or false'),
        ("beta_schedule", ["linear"], 'beta_schedule=["linear"] is not supported (choose one of'),
        ("prediction_type", 3, "prediction_type=3 is not supported"),
    ],
)
def test_bad_diffusers_scheduler_values_are_one_line(key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        diffusion_config_from_scheduler({**SCHEDULER, key: value}, "scheduler_config.json")
    message = str(err.value)
    assert "\n" not in message and message.startswith("scheduler_config.json: ") and says in message


def test_the_published_configs_still_read() -> None:
    kwargs = unet_kwargs_from_diffusers(TINY_UNET)
    assert kwargs["num_res_blocks"] == 1 and kwargs["num_heads"] == 4 and kwargs["flip_sin_to_cos"] is True
    with_nulls = {**TINY_UNET, "dropout": None, "norm_eps": None, "freq_shift": None, "in_channels": None}
    assert unet_kwargs_from_diffusers(with_nulls)["norm_eps"] == 1e-5
    T, schedule, diffusion = diffusion_config_from_scheduler({**SCHEDULER, "clip_sample_range": 2}, "s")
    assert T == 50 and schedule["beta_start"] == 1e-4 and diffusion["clip_range"] == [-2.0, 2.0]


# ---------------------------------------------------------------------------- 4. non-regular, foreign files
def test_a_fifo_named_last_ckpt_is_refused_without_opening_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], deadline: None
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    os.mkfifo(run / "checkpoints" / "last.ckpt")
    code, _, err = _exit(sample_main, [str(run), "--n", "4"], capsys)
    line = _one_line(err)
    assert (
        code == 2
        and "last.ckpt" in line
        and "not a regular file" in line
        and "refused before opening" in line
    )
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello, this is my notes file\n", "is not a PyTorch checkpoint (a file that begins with b'hell'"),
        (b"", "is not a PyTorch checkpoint (an empty file"),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00ah", "cannot be read: it is damaged or not a checkpoint"),
    ],
    ids=["text", "empty", "damaged-pickle"],
)
def test_a_file_that_is_no_checkpoint_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str
) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(content)
    code, _, err = _exit(sample_main, [str(ckpt), "--n", "4"], capsys)
    line = _one_line(err)
    assert code == 2 and f"checkpoint {str(ckpt)!r} " in line and says in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_a_device_is_no_checkpoint(capsys: pytest.CaptureFixture[str], deadline: None) -> None:
    from ddpm.safe_loading import load_checkpoint

    with pytest.raises(ConfigError, match=r"checkpoint '/dev/zero' is not a regular file"):
        load_checkpoint("/dev/zero")
    code, _, err = _exit(sample_main, ["/dev/zero", "--n", "4"], capsys)
    assert code == 2 and "'/dev/zero'" in _one_line(err)


# ---------------------------------------------------------------------------- 5. image folders
def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_a_dangling_symlink_in_an_image_folder_is_skipped_with_a_count(tmp_path: Path) -> None:
    from ddpm.data.image_folder import prepare_image_folder

    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, picture in enumerate(pictures):
        _png(folder / f"{i}.png", picture)
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    (folder / "zz.png").symlink_to(folder / "0.png")  # a working link is an image like any other
    lines: list[str] = []
    prepared = prepare_image_folder(
        folder, 8, 3, cache_dir=tmp_path / "cache", progress=False, log=lines.append
    )
    assert lines[0] == f"Image folder {folder}: skipped 1 dangling symlink"
    assert sum("skipped" in line for line in lines) == 1
    assert prepared.images.shape == (4, 3, 8, 8) and prepared.skipped == 0
    for got, want in zip(prepared.images, [*pictures, pictures[0]], strict=True):
        assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1))


def test_a_16_bit_greyscale_png_keeps_its_grey_levels(tmp_path: Path) -> None:
    from PIL import Image

    from ddpm.data.image_folder import prepare_image_folder

    levels = np.linspace(0, 65535, 64).round().astype(np.uint16).reshape(8, 8)
    path = tmp_path / "images" / "grey16.png"
    _png(path, levels)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # Pillow reads it back as a 16-bit (or 32-bit) integer image
    expected = np.round(levels / 257).astype(np.uint8)  # 65535 -> 255, 32768 -> 128
    grey = prepare_image_folder(
        path.parent, 8, 1, cache_dir=tmp_path / "c1", progress=False, log=lambda s: None
    )
    np.testing.assert_array_equal(grey.images[0, 0].numpy(), expected)
    rgb = prepare_image_folder(
        path.parent, 8, 3, cache_dir=tmp_path / "c3", progress=False, log=lambda s: None
    )
    for channel in range(3):
        np.testing.assert_array_equal(rgb.images[0, channel].numpy(), expected)
    assert int(grey.images.float().mean()) in range(126, 130)  # mid-grey on average, not nearly white


# ---------------------------------------------------------------------------- 6. one line, not a traceback
@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (sample_main, ["--guidance", "1e308"]),
        (eval_main, ["--guidance", "0,1e308"]),
        (sample_main, ["--guidance", "1001"]),
    ],
    ids=["sample", "eval", "sample-1001"],
)
def test_a_huge_guidance_scale_is_one_line_before_any_work(
    fake_run: Path, capsys: pytest.CaptureFixture[str], main: Any, argv: list[str]
) -> None:
    code, _, err = _exit(main, [str(fake_run), *argv], capsys)
    line = _one_line(err)
    assert code == 2 and "is invalid; the guidance scale must be >= 0 and <= 1000" in line


@pytest.mark.parametrize("decay", [2, -1, 1, 1.5, "0.9x", True])
def test_an_ema_decay_outside_0_1_is_refused(decay: Any) -> None:
    cfg = OmegaConf.create({"T": 10, "seed": 0, "final_samples": 0, "callbacks": {"ema": {"decay": decay}}})
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert (
        str(err.value)
        == f"callbacks.ema.decay={decay!r} is invalid; it must be a number in [0, 1) (e.g. 0.999)"
    )
    validate_config(OmegaConf.create({**cfg, "callbacks": {"ema": {"decay": 0.999}}}))  # the default passes


@pytest.mark.parametrize("decay", ["2", "-1"])
def test_ddpm_train_with_a_bad_ema_decay_is_one_line_and_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], decay: str
) -> None:
    run = tmp_path / "run"
    capsys.readouterr()
    code = train_in_process([f"callbacks.ema.decay={decay}", f"hydra.run.dir={run}", "logger=csv"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        _one_line(err)
        == f"error: callbacks.ema.decay={decay} is invalid; it must be a number in [0, 1) (e.g. 0.999)"
    )
    assert not run.exists() and list(tmp_path.iterdir()) == []


class _FillsUp:
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: Any) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


TRAIN = [
    "T=50",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "final_samples=0",
    "callbacks.samples=null",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "print_config=false",
]


def test_a_full_disk_during_a_checkpoint_save_or_a_resume_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ddpm.safe_loading import load_checkpoint

    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        # every checkpoint after step 2 meets a full disk, 4 KB into the file, as torch writes it
        if isinstance(obj, dict) and obj.get("global_step", 0) > 2 and not isinstance(f, str | os.PathLike):
            return real_save(obj, _FillsUp(f, 4096), *args, **kwargs)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    resume = [o for o in TRAIN if not o.startswith("trainer.max_steps=")] + ["trainer.max_steps=6"]
    for argv in ([*TRAIN, f"hydra.run.dir={run}"], [*resume, f"ckpt_path={run}"]):
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotPureNoiseWarning)
            code = train_in_process(argv)
        line = _one_line(capsys.readouterr().err)
        assert code == 1
        assert line.startswith(f"error: could not write the checkpoint {run / 'checkpoints'}/")
        assert "at step 4: no space left on device; any earlier" in line and "kept as it was" in line
        # the step-2 checkpoint is whole and is what a resume starts from; no temporary file is left
        assert load_checkpoint(last)["global_step"] == 2
        assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
