"""Throughput benchmarks: training and sampling, ddpm-lab's Lightning step against a plain PyTorch loop.

    uv run python scripts/benchmark.py                  # the CPU tables (and the GPU ones on a GPU)
    uv run python scripts/benchmark.py --tiny           # seconds: the same code paths on tiny settings
    uv run python scripts/benchmark.py --digits-budget-s 300   # + train experiment=digits for 5 minutes
                                                               #   and report the offline Fréchet ratio

Writes a markdown report (``docs/benchmarks.md`` unless ``--out``) with the command, device and date, and
prints the same tables. Machines running these are noisy (a shared 2-core CPU here), so comparisons are
RATIOS of variants measured side by side in one process, interleaved round by round (the order alternates),
and each figure is the median over rounds.

What is measured:

* Toy MLP on CPU: training samples/s of a plain hand-written loop, of Lightning running a minimal
  LightningModule doing the same math, and of ddpm-lab's ``DiffusionModule`` (its per-step loss-by-quarter
  metrics and gradient-norm logging included); all three with AdamW, gradient clipping at 1.0 and an EMA of
  the weights, on the same DataLoader. Sampling samples/s for DDPM (all T steps) and DDIM-50.
* A small UNet (``ddpm.models.UNet``, unet_tiny's settings) on 8x8 images on CPU, the same way.
* The real app: ``ddpm-train``'s default run in this process (every default callback and logger) against
  the plain loop, also with the CSV logger alone (W&B off), and where its extra time goes: every step is
  timed, and the difference is split into the median step, the checkpoint and logging steps, the rest and
  the validations. Here the plain loop runs in blocks of 10 steps between the app's, inside its fit, so
  that both are timed under the same load: whole runs one after the other moved by +-10% with the load.
* On a GPU only: unet_cifar10 at batch 128, fp32 vs bf16-mixed vs bf16-mixed + channels_last +
  torch.compile (images/s, model FLOP utilisation against the device's bf16 peak), diffusers' UNet2DModel +
  DDPMScheduler with the same settings when the ``bench`` extra is installed, and DDIM-100 throughput
  projected to 50,000 CIFAR-10 images.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
#: dense bf16 tensor-core peak FLOP/s by device name fragment (vendor data sheets, SXM parts)
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}
#: the targets the report checks
LIGHTNING_OVERHEAD_TARGET = 0.10
GPU_MFU_TARGET = 0.35
GPU_IMAGES_PER_S_TARGET = 9000
DIFFUSERS_SPEEDUP_TARGET = 1.5
DDIM100_50K_MINUTES_TARGET = 3.0
NO_GPU = "pending: no GPU was lent to this task"
#: the real app's step (default callbacks, logging, validation) against the plain loop's
APP_STEP_TARGET = 1.2
#: whole-command seconds on a 2-core CPU, by the start of the command's row name
WHOLE_COMMAND_TARGETS = {"`ddpm-train`": 30.0, "`ddpm-sample": 5.0, "`ddpm-eval": 8.0}


@dataclass
class Settings:
    """Sizes of one benchmark run (``--tiny`` shrinks everything)."""

    tiny: bool
    rounds: int
    warmup: int
    steps: int
    toy_batch: int
    toy_T: int
    sample_n: int
    unet_batch: int
    unet_sample_n: int
    gpu_batch: int = 128
    gpu_steps: int = 20
    gpu_sample_batch: int = 1000

    @classmethod
    def make(cls, tiny: bool, rounds: int | None) -> Settings:
        """The full or the tiny settings."""
        if tiny:
            return cls(
                True,
                rounds or 2,
                warmup=1,
                steps=3,
                toy_batch=64,
                toy_T=10,
                sample_n=32,
                unet_batch=8,
                unet_sample_n=8,
            )
        return cls(
            False,
            rounds or 5,
            warmup=20,
            steps=150,
            toy_batch=256,
            toy_T=1000,
            sample_n=2000,
            unet_batch=64,
            unet_sample_n=256,
        )


@dataclass
class Table:
    """One markdown table with a title and notes."""

    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        """The table as markdown."""

        def cell(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
            return str(v)

        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- device
def device_description(device: torch.device) -> str:
    """GPU name, or CPU model and core count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that a timestamp means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- training: plain vs Lightning
def make_diffusion(T: int):
    """A cosine-schedule GaussianDiffusion (eps, fixed_large) with T steps (valid for any T)."""
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import make_beta_schedule

    return GaussianDiffusion(make_beta_schedule("cosine", T))


def in_memory_loader(x: torch.Tensor, batch: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """ddpm-lab's in-memory loader: whole shuffled batches indexed at once (as ``ToyDataModule``)."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    ds = TensorDataset(x)
    gen = torch.Generator().manual_seed(seed)
    sampler = BatchSampler(RandomSampler(ds, replacement=True, num_samples=10**9, generator=gen), batch, True)
    return DataLoader(ds, sampler=sampler, batch_size=None)


def plain_steps(
    net: nn.Module, loader: torch.utils.data.DataLoader, T: int, device: torch.device
) -> Iterator[None]:
    """A hand-written loop doing ddpm-lab's step: L_simple, backward, clip 1.0, AdamW, EMA; one step (its
    batch's fetch included) per ``next()``, so that it can also run in blocks between the app's steps."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    diffusion = make_diffusion(T).to(device)
    net = net.to(device)
    opt = adamw(net.parameters())
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.995), use_buffers=True)
    for (x0,) in loader:
        x0 = x0.to(device, non_blocking=True)
        loss = diffusion.training_loss(net, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        ema.update_parameters(net)
        yield


def plain_train(
    net: nn.Module,
    loader: torch.utils.data.DataLoader,
    T: int,
    warmup: int,
    steps: int,
    device: torch.device,
) -> float:
    """:func:`plain_steps` for ``steps`` iterations after ``warmup``; returns their seconds."""
    loop = plain_steps(net, loader, T, device)
    for _ in range(warmup):
        next(loop)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(loop)
    sync(device)
    return time.perf_counter() - start


def adamw(params: Any) -> torch.optim.Optimizer:
    """ddpm-lab's AdamW as ``conf/optimizer/adamw.yaml`` builds it (fused), lr 2e-3; every variant uses it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(REPO / "conf" / "optimizer" / "adamw.yaml"), lr=2e-3)(params=params)


def ema_callback(decay: float) -> Any:
    """ddpm-lab's EMA callback as ``conf/callbacks/ema.yaml`` builds it (Lightning's EMAWeightAveraging)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "callbacks" / "ema.yaml").ema
    cfg.decay = decay
    return instantiate(cfg)


def lightning_train(
    net: nn.Module,
    loader: torch.utils.data.DataLoader,
    T: int,
    warmup: int,
    steps: int,
    device: torch.device,
    bare: bool,
) -> float:
    """The same step under a Lightning Trainer: ddpm-lab's ``DiffusionModule`` or, with ``bare``, a minimal
    LightningModule (loss only: Lightning's own cost). Seconds for ``steps`` steps after ``warmup``."""
    import lightning as L

    from ddpm.lit_module import DiffusionModule, batch_data
    from ddpm.samplers import DDIMSampler

    diffusion = make_diffusion(T)
    stamps: dict[str, float] = {}

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step in (warmup, warmup + steps):
                sync(device)
                stamps[str(trainer.global_step)] = time.perf_counter()

    if bare:

        class Bare(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net, self.diffusion = net, diffusion

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return self.diffusion.training_loss(self.net, batch_data(batch))

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return adamw(self.net.parameters())

        module: L.LightningModule = Bare()
    else:
        module = DiffusionModule(
            net=net,
            diffusion=diffusion,
            sampler=DDIMSampler(steps=10),
            optimizer=adamw,
            data_shape=tuple(next(iter(loader))[0].shape[1:]),
        )
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=warmup + steps,
        gradient_clip_val=1.0,
        callbacks=[ema_callback(0.995), Timer()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no validation loop", "few workers": expected here
        trainer.fit(module, train_dataloaders=loader)
    return stamps[str(warmup + steps)] - stamps[str(warmup)]


def compare_training(
    name: str,
    make_net: Callable[[], nn.Module],
    data: torch.Tensor,
    batch: int,
    T: int,
    s: Settings,
    device: torch.device,
) -> Table:
    """Plain loop vs Lightning (bare) vs ddpm-lab's DiffusionModule, interleaved over rounds."""
    variants: dict[str, Callable[[], float]] = {
        "plain PyTorch loop": lambda: plain_train(
            make_net(), in_memory_loader(data, batch), T, s.warmup, s.steps, device
        ),
        "Lightning, minimal module": lambda: lightning_train(
            make_net(), in_memory_loader(data, batch), T, s.warmup, s.steps, device, bare=True
        ),
        "Lightning, ddpm-lab DiffusionModule": lambda: lightning_train(
            make_net(), in_memory_loader(data, batch), T, s.warmup, s.steps, device, bare=False
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(s.rounds):
        for key in names if r % 2 == 0 else names[::-1]:  # alternate the order: drift cancels
            times[key].append(variants[key]())
    base = times[names[0]]
    table = Table(
        f"Training throughput: {name} (batch {batch}, {device.type})",
        [
            "variant",
            "samples/s (median)",
            "ms/step (median)",
            "time / plain loop (median of rounds)",
            "overhead",
        ],
    )
    for key in names:
        ratios = [t / b for t, b in zip(times[key], base, strict=True)]
        ratio = statistics.median(ratios)
        median = statistics.median(times[key])
        table.rows.append(
            [key, batch * s.steps / median, 1000 * median / s.steps, ratio, f"{100 * (ratio - 1):+.1f}%"]
        )
    table.notes.append(
        f"{s.rounds} rounds of {s.steps} steps after {s.warmup} warm-up steps, variants interleaved; every "
        "variant: L_simple, backward, gradient clipping at 1.0, fused AdamW, EMA of the weights (decay "
        "0.995; foreach, as ddpm-lab's EMA callback)."
    )
    return table


def ema_update_table(make_net: Callable[[], nn.Module], T: int, repeats: int) -> Table:
    """The cost of one EMA update: Lightning's EMAWeightAveraging by default (a per-tensor ``avg_fn`` over
    the whole LightningModule, parameters and buffers), torch's foreach ``multi_avg_fn`` through
    ``AveragedModel.update_parameters`` (which regroups the tensors at every call), ddpm-lab's ``EMA``
    callback (foreach, groups built once) and the plain loop's (foreach, network only), interleaved."""
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_ema_multi_avg_fn

    from ddpm.callbacks import EMA
    from ddpm.lit_module import DiffusionModule
    from ddpm.samplers import DDIMSampler

    net = make_net()
    module = DiffusionModule(
        net, make_diffusion(T), DDIMSampler(steps=10), lambda params: torch.optim.AdamW(params)
    )
    callback = EMA(decay=0.995)
    callback.setup(None, module, "fit")  # type: ignore[arg-type]  # builds its AveragedModel, as in a fit
    callback._update(module)  # the first update copies the weights
    lightning_default = AveragedModel(module, use_buffers=True, avg_fn=get_ema_avg_fn(0.995))
    foreach = AveragedModel(module, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.995))
    plain = AveragedModel(net, use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(0.995))
    variants: dict[str, Callable[[], None]] = {
        "EMAWeightAveraging's default update (per tensor, whole module)": lambda: (
            lightning_default.update_parameters(module)
        ),
        "foreach multi_avg_fn through AveragedModel.update_parameters (whole module)": lambda: (
            foreach.update_parameters(module)
        ),
        "ddpm-lab's EMA callback (foreach, tensor groups built once; whole module)": lambda: callback._update(
            module
        ),
        "plain loop's update (foreach through AveragedModel, network only)": lambda: plain.update_parameters(
            net
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for key, update in variants.items():
            start = time.perf_counter()
            for _ in range(50):
                update()
            times[key].append((time.perf_counter() - start) / 50)
    table = Table("One EMA update of the toy MLP (CPU)", ["implementation", "ms per update (median)"])
    table.rows = [[key, 1000 * statistics.median(v)] for key, v in times.items()]
    table.notes.append("Part of the per-step gap between the Lightning variants and the plain loop above.")
    return table


# ----------------------------------------------------------------------------- the real app
def _compose_app(out_dir: Path, overrides: list[str]) -> Any:
    """conf/train.yaml composed as ``ddpm-train`` composes it, its run folder ``out_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ddpm.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[f"hydra.run.dir={out_dir}", f"paths.root_dir={out_dir.parent}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@dataclass
class PlainBlocks:
    """The plain loop (:func:`plain_steps`) run in blocks between the app's steps: ``every`` of its steps
    after the app's steps ``phase``, ``every + phase``, ``2 * every + phase`` ..., each step's seconds
    appended to ``seconds``. With ``every`` 10 and ``phase`` 3 a block never follows a step that logs or
    saves (multiples of 5 in the default run), whose work left to other threads (W&B's sender) or to the
    OS would otherwise fall into the plain loop's time."""

    steps: Iterator[None]
    every: int = 10
    phase: int = 3
    seconds: list[float] = field(default_factory=list)

    def run(self, n: int) -> None:
        """Run ``n`` plain steps (on CPU: no device sync needed around them)."""
        last = time.perf_counter()
        for _ in range(n):
            next(self.steps)
            now = time.perf_counter()
            self.seconds.append(now - last)
            last = now


def step_timer(records: list[tuple[str, float]], plain: PlainBlocks | None = None) -> Any:
    """A Lightning callback appending ``(kind, seconds)`` to ``records`` for every training step: the time
    from one step's end to the next (its batch's fetch and every hook included, validation excluded), of
    kind ``checkpoint`` on the steps ``LastCheckpoint`` saves at, ``logging`` on those the loggers write at
    (``log_every_n_steps``), ``other`` elsewhere; and ``("validation", seconds)`` for every validation but
    the sanity check. With ``plain``, its blocks run between the app's steps (their time is not the
    app's), up to as many plain steps as the app takes in all."""
    import lightning as L

    from ddpm.checkpointing import LastCheckpoint

    class StepTimer(L.Callback):
        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            saver = next((c for c in trainer.callbacks if isinstance(c, LastCheckpoint)), None)
            self.every = saver.interval(trainer.max_steps) if saver is not None else None
            self.last, self.in_validation, self.steps = time.perf_counter(), 0.0, 0

        def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.validation_start = time.perf_counter()

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if not trainer.sanity_checking:
                seconds = time.perf_counter() - self.validation_start
                records.append(("validation", seconds))
                self.in_validation += seconds

        def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
            now, step = time.perf_counter(), trainer.global_step
            kind = "other"
            if self.every and step % self.every == 0:
                kind = "checkpoint"
            elif step % trainer.log_every_n_steps == 0:
                kind = "logging"
            records.append((kind, now - self.last - self.in_validation))
            self.steps += 1
            if plain is not None and self.steps % plain.every == plain.phase % plain.every:
                plain.run(min(plain.every, trainer.max_steps - len(plain.seconds)))
                now = time.perf_counter()
            self.last, self.in_validation = now, 0.0

        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if plain is not None:  # the steps after the last block
                plain.run(max(0, self.steps - len(plain.seconds)))

    return StepTimer()


def app_train(
    steps: int,
    overrides: list[str],
    step_records: list[tuple[str, float]],
    plain: PlainBlocks | None = None,
) -> None:
    """``ddpm-train``'s default run, in this process, for ``steps`` steps with every default callback and
    logger on (W&B offline), its output swallowed. ``step_records`` receives :func:`step_timer`'s
    ``(kind, seconds)`` of every step, and ``plain`` runs in blocks between them."""
    import contextlib
    import io

    from ddpm.cli.train import finish, fit, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _compose_app(
            Path(tmp) / "run", [f"trainer.max_steps={steps}", "print_config=false", *overrides]
        )
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = prepare(cfg)
            # before the last callback, the validation timer, which times the others' validation work
            run.trainer.callbacks.insert(len(run.trainer.callbacks) - 1, step_timer(step_records, plain))
            fit(run)
            finish(run)


@dataclass
class AppRound:
    """One round of :func:`compare_app`: the app's :func:`step_timer` records and the plain loop's step
    seconds from the blocks run between them, for the default run and for the run with W&B off."""

    app: list[tuple[str, float]]
    plain: list[float]
    no_wandb: list[tuple[str, float]]
    no_wandb_plain: list[float]

    def ratio(self, validation: bool, wandb: bool = True) -> float:
        """The app's seconds (its steps, and its validations with ``validation``) over the plain loop's
        for as many steps."""
        records, plain = (self.app, self.plain) if wandb else (self.no_wandb, self.no_wandb_plain)
        return sum(t for k, t in records if validation or k != "validation") / sum(plain)

    def median_steps(self) -> tuple[float, float]:
        """The app's and the plain loop's median step, in seconds (validations are not steps)."""
        app_steps = [t for k, t in self.app if k != "validation"]
        return statistics.median(app_steps), statistics.median(self.plain)

    def gap_parts(self) -> dict[str, float]:
        """The app's extra seconds over the plain loop (its steps and validations minus the plain loop's
        steps), by where they arise: the median step's difference over all steps, the excess over the
        app's median step of the checkpoint and logging steps, that of the other steps beyond the plain
        loop's own excess over its median, and the validations. They add up to the whole difference."""
        med_app, med_plain = self.median_steps()
        app_steps = sum(1 for k, _ in self.app if k != "validation")

        def excess(kind: str) -> float:
            return sum(t - med_app for k, t in self.app if k == kind)

        return {
            "median step": app_steps * med_app - len(self.plain) * med_plain,
            "checkpoint steps": excess("checkpoint"),
            "logging steps": excess("logging"),
            "other steps": excess("other") - sum(t - med_plain for t in self.plain),
            "validations": sum(t for k, t in self.app if k == "validation"),
        }


def compare_app(
    data: torch.Tensor, steps: int, val_every: int, rounds: int, block: int = 10
) -> tuple[Table, Table, list[AppRound]]:
    """The default run (``experiment=toy2d``: moons, MLP 128 x 3, batch 256) against the plain loop doing
    the same steps in blocks of ``block`` between the app's (:class:`PlainBlocks`): per-step time of the
    app's training alone and with its validations (EMA sampling, the quality figure and its plot, the best
    checkpoint) counted in, and of the app with the CSV logger alone (W&B off). The second table splits the
    app's extra time by where it arises, from every step's time (:func:`step_timer`)."""
    from ddpm.models import MLPDenoiser

    overrides = [
        f"trainer.val_check_interval={val_every}",
        "final_samples=0",  # final sampling and figures are phases of their own (start-up section)
        f"cpu_threads={torch.get_num_threads()}",  # the plain loop's thread count
    ]
    results: list[AppRound] = []
    for _ in range(rounds):
        measured: dict[str, tuple[list[tuple[str, float]], list[float]]] = {}
        for variant, extra in (("app", []), ("no W&B", ["logger=csv"])):
            net = MLPDenoiser(data_dim=2, hidden=128, depth=3)
            loop = plain_steps(net, in_memory_loader(data, 256), 1000, torch.device("cpu"))
            plain = PlainBlocks(loop, every=block, phase=3)
            plain.run(1)  # builds the optimizer and the average before the first timed step
            plain.seconds.clear()
            records: list[tuple[str, float]] = []
            app_train(steps, [*overrides, *extra], records, plain)
            measured[variant] = (records, plain.seconds)
        results.append(AppRound(*measured["app"], *measured["no W&B"]))

    plain_s = [sum(r.plain) for r in results]
    table = Table(
        f"The real app vs the plain loop: ddpm-train's default run, {steps} steps (CPU)",
        [
            "variant",
            "ms/step (median)",
            "time / plain loop (median of rounds)",
            "overhead",
            "range of rounds",
        ],
    )
    table.rows.append(["plain PyTorch loop", 1000 * statistics.median(plain_s) / steps, 1.0, "+0.0%", "-"])
    for name, validation, wandb in (
        ("the real app: training steps (default callbacks, logging)", False, True),
        ("the real app (default callbacks, logging, validation)", True, True),
        ("the real app with the CSV logger only (W&B off): training steps", False, False),
    ):
        ratios = [r.ratio(validation, wandb) for r in results]
        ratio = statistics.median(ratios)
        per_step = statistics.median(p * x for p, x in zip(plain_s, ratios, strict=True)) / steps
        table.rows.append(
            [
                name,
                1000 * per_step,
                ratio,
                f"{100 * (ratio - 1):+.1f}%",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
            ]
        )
    table.notes.append(
        f"{rounds} rounds. The app is `ddpm-train` in this process with its default callbacks (EMA, "
        f"checkpoints every {max(50, min(5000, steps // 10))} steps and the best at validations, progress "
        "bar, learning-rate monitor, loss by timestep, validation samples and plot) and loggers (W&B "
        f"offline, CSV), validating every {val_every} steps. The plain loop does the same math (L_simple, "
        "clipping, fused AdamW, foreach EMA) on the same data, in the same process and at the same time: "
        f"a callback runs {block} steps of the plain loop after every {block} steps of the app (after its "
        "steps 3, 13, 23 ..., not after one that logs or saves), so that both see the same load on a shared "
        "machine. The app's time is every step's from the end of the one "
        "before (hooks, logging, checkpoints and the batch's fetch included, the plain block excluded), "
        "plus its validations; the fit's set-up and the final samples are not counted."
    )

    parts = [r.gap_parts() for r in results]
    med_app, med_plain = zip(*(r.median_steps() for r in results), strict=True)
    counts = {kind: sum(1 for k, _ in results[0].app if k == kind) for kind in ("checkpoint", "logging")}
    split = Table(
        f"Where the real app's extra time goes ({steps} steps, median of rounds)",
        ["part", "seconds per run", "ms per step", "% of the plain loop's time"],
    )
    app_ms, plain_ms = 1000 * statistics.median(med_app), 1000 * statistics.median(med_plain)
    step_ratio = statistics.median(a / p for a, p in zip(med_app, med_plain, strict=True))
    labels = {
        "median step": f"the median step (app {app_ms:.2f} ms vs plain {plain_ms:.2f} ms: {step_ratio:.2f}x)",
        "checkpoint steps": f"the {counts['checkpoint']} checkpoint steps' excess over the median step",
        "logging steps": f"the {counts['logging']} logging steps' excess over the median step",
        "other steps": "the other steps' excess over the median, beyond the plain loop's own",
        "validations": "the validations",
    }
    for key, label in labels.items():
        seconds = statistics.median(p[key] for p in parts)
        share = statistics.median(p[key] / b for p, b in zip(parts, plain_s, strict=True))
        split.rows.append([label, seconds, 1000 * seconds / steps, f"{100 * share:+.1f}%"])
    split.notes.append(
        "From every step's time in the rounds above (the default run with W&B). Checkpoint steps save "
        "`last.ckpt`; logging steps write to the loggers (every `trainer.log_every_n_steps`). In each round "
        "the parts add up to the app's steps and validations minus the plain loop's steps; each figure is "
        "the median over rounds."
    )
    return table, split, results


# ----------------------------------------------------------------------------- CPU threads
def threads_table(data: torch.Tensor, steps: int) -> Table:
    """The toy step (plain loop) with 1 thread and with one per core, on an idle CPU and beside one busy
    process (a Python busy loop: what a browser tab or a second job does to a laptop)."""
    from ddpm.models import MLPDenoiser

    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    before = torch.get_num_threads()
    table = Table(
        f"CPU threads: the toy MLP's training step (plain loop, batch 256, {steps} steps)",
        ["threads", "idle CPU: ms/step", "beside 1 busy process: ms/step"],
    )
    try:
        rows = {n: [] for n in counts}
        for busy in (False, True):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                for n in counts:
                    torch.set_num_threads(n)
                    net = MLPDenoiser(data_dim=2, hidden=128, depth=3)
                    seconds = plain_train(
                        net, in_memory_loader(data, 256), 1000, 10, steps, torch.device("cpu")
                    )
                    rows[n].append(1000 * seconds / steps)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    finally:
        torch.set_num_threads(before)
    table.rows = [[n, *rows[n]] for n in counts]
    table.notes.append(
        f"{cores} cores. torch's default is one thread per core; `ddpm-train cpu_threads=1` sets one. "
        "Small ops split over threads wait for the slowest thread, which another process can delay."
    )
    return table


# ----------------------------------------------------------------------------- start-up and end to end
#: the phases of a ddpm-train run, in the order the run goes through them (``timings.json``)
PHASES = (
    "start-up",
    "imports",
    "set-up",
    "training",
    "validation",
    "loss-by-timestep figure",
    "final samples",
    "reverse process figures",
    "loggers",
)


def whole_command(argv: list[str], cwd: Path) -> float:
    """Seconds from starting ``argv`` as a new process to its exit (it must succeed)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {' / '.join(tail)}")
    return seconds


def startup_tables(repeats: int, tiny: bool) -> list[Table]:
    """Each command's whole-process time (median of ``repeats``) and the default run's phases.

    ``ddpm-train`` (the README's quick start; tiny: 20 steps) runs ``repeats`` times, each in a fresh run
    folder; the other commands then run on its last run folder. Commands start from this environment's
    entry points (``uv run`` adds its own start-up: the ``uv run`` row).
    """
    import shutil

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_args = (
            ["trainer.max_steps=20", "trainer.val_check_interval=10", "final_samples=200"] if tiny else []
        )
        runs: list[Path] = []
        times: dict[str, list[float]] = {}
        phases: list[dict[str, float]] = []
        for r in range(repeats):
            run = root / f"run{r}"
            cmd = [str(bin_dir / "ddpm-train"), f"hydra.run.dir={run}", f"paths.root_dir={root}", *train_args]
            times.setdefault("`ddpm-train` (the default run: train, sample, plots, W&B)", []).append(
                whole_command(cmd, root)
            )
            runs.append(run)
            phases.append(json.loads((run / "timings.json").read_text())["phases_s"])
        run = runs[-1]
        commands = {
            "`python -c 'import torch'` (for reference)": [sys.executable, "-c", "import torch"],
            "`python -c 'import lightning'` (for reference)": [sys.executable, "-c", "import lightning"],
            "`ddpm-sample RUN sampler=ddim sampler.steps=50 --n 2000`": [
                str(bin_dir / "ddpm-sample"),
                str(run),
                "sampler=ddim",
                "sampler.steps=50",
                "--n",
                "2000",
            ],
            "`ddpm-eval RUN`": [str(bin_dir / "ddpm-eval"), str(run)],
            "`ddpm-viz reverse RUN`": [
                str(bin_dir / "ddpm-viz"),
                "reverse",
                str(run),
                "--out",
                str(root / "r.png"),
            ],
            "`ddpm-viz schedules`": [str(bin_dir / "ddpm-viz"), "schedules", "--out", str(root / "s.png")],
        }
        uv = shutil.which("uv")
        if uv is not None:
            commands["`uv run python -c pass` (uv's own start-up)"] = [uv, "run", "python", "-c", "pass"]
        for _ in range(repeats):
            for name, cmd in commands.items():
                times.setdefault(name, []).append(whole_command(cmd, REPO if "uv" in name else root))
    whole = Table(
        f"Start-up and end to end: whole commands (median of {repeats})",
        ["command", "seconds (median)", "runs"],
        [[name, statistics.median(v), " / ".join(f"{x:.1f}" for x in v)] for name, v in times.items()],
    )
    whole.notes.append(
        "Each command is a new process started from this environment's entry points, timed from start to "
        "exit; RUN is a default run trained just before."
        + (" Tiny mode: ddpm-train runs 20 steps." if tiny else "")
    )
    names = [p for p in PHASES if any(p in ph for ph in phases)]
    split = Table(
        f"The default run's phases (`ddpm-train`, median of {repeats}, from its `timings.json`)",
        ["phase", "seconds (median)", "share of the in-process total"],
    )
    totals = statistics.median(sum(ph.values()) for ph in phases)
    for name in names:
        value = statistics.median(ph.get(name, 0.0) for ph in phases)
        split.rows.append([name, value, f"{100 * value / totals:.0f}%"])
    split.rows.append(["in-process total", totals, "100%"])
    split.notes.append(
        "start-up: from the entry point to the run (Hydra's composition, config checks); imports: torch, "
        "Lightning and the training modules; set-up: data, model, loggers (W&B starts here), trainer; "
        "training: the fit without its validations and figures; validation: the validation loops with their "
        "samples, plots and best checkpoint; loss-by-timestep figure: drawn when the fit ends; final "
        "samples: sampling, quality figure, samples.npz and plot; loggers: closing W&B and CSV. The whole "
        "command also pays the interpreter's start before the entry point."
    )
    return [whole, split]


# ----------------------------------------------------------------------------- sampling
def sampling_table(
    name: str, net: nn.Module, shape: tuple[int, ...], T: int, n: int, s: Settings, device: torch.device
) -> Table:
    """Samples/s of DDPM (all T steps) and DDIM-50, and network evaluations/s."""
    from ddpm.samplers import DDIMSampler, DDPMSampler

    diffusion = make_diffusion(T).to(device)
    net = net.to(device).eval()
    table = Table(
        f"Sampling throughput: {name} ({device.type}, T={T})",
        ["sampler", "n", "seconds (median)", "samples/s", "network evals/s (x batch)"],
    )
    for sampler in (DDPMSampler(), DDIMSampler(steps=min(50, T))):
        steps = len(sampler.timesteps(diffusion))
        secs = []
        for r in range(max(1, s.rounds // 2)):
            gen = torch.Generator(device=device).manual_seed(r)
            sync(device)
            start = time.perf_counter()
            sampler.sample(net, diffusion, (n, *shape), generator=gen, progress=False, device=device)
            sync(device)
            secs.append(time.perf_counter() - start)
        sec = statistics.median(secs)
        table.rows.append([f"{type(sampler).__name__}({steps} steps)", n, sec, n / sec, steps / sec])
    table.notes.append("Untrained weights: sampling cost does not depend on what the network learned.")
    return table


# ----------------------------------------------------------------------------- GPU
def flops_per_image(make_net: Callable[[], nn.Module], shape: tuple[int, ...], T: int) -> float:
    """Forward + backward FLOPs of one training image, counted by torch's FlopCounterMode on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    net = make_net()
    diffusion = make_diffusion(T)
    x = torch.randn(2, *shape)
    with FlopCounterMode(display=False) as counter:
        diffusion.training_loss(net, x).backward()
    return counter.get_total_flops() / 2


def gpu_variant_throughput(
    make_net: Callable[[], nn.Module],
    shape: tuple[int, ...],
    batch: int,
    T: int,
    steps: int,
    device: torch.device,
    variant: str,
) -> float:
    """Images/s of the plain training step under ``variant``: fp32, bf16-mixed, or bf16-mixed +
    channels_last + torch.compile. Runs on CPU too (autocast bf16 on CPU) for a check of the code path."""
    diffusion = make_diffusion(T).to(device)
    net = make_net().to(device)
    if variant.startswith("bf16+cl"):
        net = net.to(memory_format=torch.channels_last)
    model: Callable = torch.compile(net) if variant.endswith("compile") else net
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=device.type == "cuda")
    x0 = torch.randn(batch, *shape, device=device)
    if variant.startswith("bf16+cl"):
        x0 = x0.contiguous(memory_format=torch.channels_last)
    use_bf16 = variant != "fp32"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = diffusion.training_loss(model, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    for _ in range(3 if not variant.endswith("compile") else 5):  # compile happens in the first steps
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def diffusers_throughput(batch: int, steps: int, device: torch.device, compile_: bool) -> float:
    """Images/s of diffusers' UNet2DModel (DDPM's CIFAR-10 layout) + DDPMScheduler, bf16 + channels_last."""
    from diffusers import DDPMScheduler, UNet2DModel

    net = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1,
    ).to(device, memory_format=torch.channels_last)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    model = torch.compile(net) if compile_ else net
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4, fused=device.type == "cuda")
    x0 = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            pred = model(scheduler.add_noise(x0, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    for _ in range(5):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def ddim100_50k_minutes(
    make_net: Callable[[], nn.Module], batch: int, device: torch.device, timed_steps: int
) -> float:
    """Minutes for DDIM-100 over 50,000 CIFAR-10 images, projected from ``timed_steps`` timed network
    evaluations at ``batch`` (bf16 autocast, channels_last, compiled)."""
    net = make_net().to(device, memory_format=torch.channels_last).eval()
    model = torch.compile(net)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for _ in range(3):
            model(x, t)
        sync(device)
        start = time.perf_counter()
        for _ in range(timed_steps):
            model(x, t)
        sync(device)
    per_eval = (time.perf_counter() - start) / timed_steps
    return per_eval * 100 * (50_000 / batch) / 60


def gpu_tables(s: Settings, device: torch.device) -> tuple[list[Table], dict[str, Any]]:
    """unet_cifar10 variants, diffusers, DDIM-100 projection (needs ddpm.models.UNet)."""
    import importlib.util

    from ddpm.models import UNet

    def make_net() -> nn.Module:
        return UNet(in_channels=3, image_size=32)  # unet_cifar10's settings are UNet's defaults

    results: dict[str, Any] = {}
    flops = flops_per_image(make_net, (3, 32, 32), 1000)
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in BF16_PEAK.items() if k in name), None)
    table = Table(
        f"unet_cifar10 training, batch {s.gpu_batch}, {name}",
        ["variant", "images/s", "model TFLOP/s", "MFU (bf16 peak)"],
    )
    for variant in ("fp32", "bf16-mixed", "bf16+cl+compile"):
        ips = gpu_variant_throughput(make_net, (3, 32, 32), s.gpu_batch, 1000, s.gpu_steps, device, variant)
        results[variant] = ips
        mfu = f"{100 * ips * flops / peak:.1f}%" if peak else "unknown peak"
        table.rows.append([variant, ips, ips * flops / 1e12, mfu])
    table.notes.append(
        f"{flops / 1e9:.1f} GFLOP per image forward + backward (torch FlopCounterMode); plain training step; "
        f"bf16 peak {peak / 1e12:.0f} TFLOP/s"
        if peak
        else "bf16 peak of this device unknown"
    )
    results["mfu"] = results["bf16+cl+compile"] * flops / peak if peak else None
    if importlib.util.find_spec("diffusers") is not None:
        d = diffusers_throughput(s.gpu_batch, s.gpu_steps, device, compile_=True)
        results["diffusers"] = d
        table.rows.append(["diffusers UNet2DModel + DDPMScheduler, bf16+cl+compile", d, "", ""])
        table.notes.append(f"ddpm-lab / diffusers: {results['bf16+cl+compile'] / d:.2f}x")
    else:
        table.notes.append("diffusers: not installed (uv sync --extra bench)")
    minutes = ddim100_50k_minutes(make_net, s.gpu_sample_batch, device, timed_steps=10)
    results["ddim100_minutes"] = minutes
    sampling = Table(
        "DDIM-100 of 50,000 CIFAR-10 images (unet_cifar10, bf16, channels_last, compiled)",
        ["batch", "projected minutes"],
        [[s.gpu_sample_batch, minutes]],
        ["Projected from 10 timed network evaluations: 100 steps x 50,000 / batch evaluations."],
    )
    return [table, sampling], results


# ----------------------------------------------------------------------------- digits quality mode
def digits_quality(budget_s: int, out_dir: Path) -> Table:
    """Train experiment=digits for ``budget_s`` seconds of wall time, then ddpm-eval it (DDIM-100)."""
    table = Table(f"Digits quality after {budget_s} s of training (CPU)", ["figure", "value"])
    if not (REPO / "conf" / "experiment" / "digits.yaml").is_file():
        table.notes.append("skipped: this mode needs `experiment=digits` (conf/experiment/digits.yaml)")
        return table
    bin_dir = Path(sys.executable).parent
    run_dir = out_dir / "digits_run"
    d, rem = divmod(budget_s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    train = subprocess.run(
        [str(bin_dir / "ddpm-train"), "experiment=digits", "trainer.max_steps=-1",
         f"+trainer.max_time={d:02d}:{h:02d}:{m:02d}:{sec:02d}", "logger=csv", "print_config=false",
         f"hydra.run.dir={run_dir}"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if train.returncode != 0:
        table.notes.append(f"training failed: {(train.stderr.strip().splitlines() or ['?'])[-1]}")
        return table
    out = out_dir / "digits_eval.json"
    ev = subprocess.run(
        [str(bin_dir / "ddpm-eval"), str(run_dir), "sampler=ddim", "sampler.steps=100", "--repeats", "3",
         "--out", str(out)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if ev.returncode != 0:
        table.notes.append(f"ddpm-eval failed: {(ev.stderr.strip().splitlines() or ['?'])[-1]}")
        return table
    result = json.loads(out.read_text())
    images = result["images"]
    steps = next((line for line in train.stdout.splitlines() if line.startswith("Trained ")), "")
    table.rows += [
        ["training", steps.split(". Run folder")[0]],
        [
            "classifier Fréchet distance (DDIM-100)",
            f"{images['frechet']['mean']:.3g} ± {images['frechet']['std']:.2g}",
        ],
        ["data-vs-data floor (held-out digits)", f"{images['floor']['frechet']['mean']:.3g}"],
        ["ratio to the floor", f"{images['ratio']['mean']:.3g} ± {images['ratio']['std']:.2g}"],
        ["class balance (1 = uniform)", f"{images['class_entropy']['mean']:.3f}"],
        ["mean confidence", f"{images['confidence']['mean']:.3f}"],
    ]
    table.notes.append(f"n = {images['n']} per draw, {images['repeats']} draws; classifier held-out accuracy "
                       f"{images['classifier']['held_out_accuracy']:.3f}")  # fmt: skip
    return table


# ----------------------------------------------------------------------------- report
def startup_targets(app: Table | None, startup: list[Table] | None) -> list[str]:
    """The start-up and real-app targets (issue 17) against the figures of this run."""
    lines = []
    if app is not None:
        ratio = float(app.rows[2][2])
        verdict = "met" if ratio <= APP_STEP_TARGET else "NOT met"
        lines.append(
            f"- The real app (default callbacks, logging, validation) within {APP_STEP_TARGET}x of the plain "
            f"loop, toy MLP: {ratio:.2f}x ({verdict})."
        )
    if startup is not None:
        whole = {row[0]: float(row[1]) for row in startup[0].rows}
        for prefix, limit in WHOLE_COMMAND_TARGETS.items():
            name = next((k for k in whole if k.startswith(prefix)), None)
            if name is not None:
                verdict = "met" if whole[name] <= limit else "NOT met"
                lines.append(f"- {name} in <= {limit:g} s: {whole[name]:.1f} s ({verdict}).")
    return lines


def targets_section(
    lightning_ratio: float | None,
    gpu: dict[str, Any] | None,
    app: Table | None = None,
    startup: list[Table] | None = None,
) -> str:
    """Where each target stands."""
    lines = ["## Targets", "", *startup_targets(app, startup)]
    if lightning_ratio is None:
        lines.append("- Lightning overhead within 10% of the plain loop on CPU: not measured in this run.")
    else:
        over = lightning_ratio - 1
        verdict = "met" if over <= LIGHTNING_OVERHEAD_TARGET else "NOT met"
        lines.append(
            f"- Lightning (ddpm-lab's DiffusionModule) within 10% of the plain loop on CPU, toy MLP: "
            f"{100 * over:+.1f}% ({verdict})."
        )
    if gpu is None:
        lines += [
            f"- H100: unet_cifar10 > 35% of bf16 peak (about 9,000 images/s): {NO_GPU}.",
            f"- H100: >= 1.5x diffusers' UNet2DModel + DDPMScheduler: {NO_GPU}.",
            f"- H100: DDIM-100 of 50,000 CIFAR-10 images in < 3 minutes: {NO_GPU}.",
        ]
    else:
        best = gpu["bf16+cl+compile"]
        mfu = gpu.get("mfu")
        mfu_text = f"{100 * mfu:.1f}% MFU" if mfu is not None else "MFU unknown"
        verdict = "met" if mfu is not None and mfu > GPU_MFU_TARGET else "NOT met"
        lines.append(f"- unet_cifar10 > 35% of bf16 peak: {best:,.0f} images/s, {mfu_text} ({verdict}).")
        if "diffusers" in gpu:
            ratio = best / gpu["diffusers"]
            verdict = "met" if ratio >= DIFFUSERS_SPEEDUP_TARGET else "NOT met"
            lines.append(f"- >= 1.5x diffusers: {ratio:.2f}x ({verdict}).")
        else:
            lines.append(
                "- >= 1.5x diffusers: not measured (diffusers not installed: uv sync --extra bench)."
            )
        minutes = gpu["ddim100_minutes"]
        verdict = "met" if minutes < DDIM100_50K_MINUTES_TARGET else "NOT met"
        lines.append(f"- DDIM-100 of 50k CIFAR-10 < 3 min: {minutes:.2f} min projected ({verdict}).")
    return "\n".join(lines) + "\n"


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks; returns the tables and the headline figures (also written as markdown)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes: runs in seconds (used by the tests)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; tiny 2)")
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="markdown report (default docs/benchmarks.md)"
    )
    p.add_argument("--digits-budget-s", type=int, default=0, help="also train experiment=digits this long")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument(
        "--no-app",
        action="store_true",
        help="skip the real app vs plain loop table",
    )
    p.add_argument(
        "--no-startup", action="store_true", help="skip the start-up and end-to-end section (whole commands)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a CPU shared with other jobs, two threads of small ops wait "
        "on each other and run 5-20x slower, which would swamp the ratios)",
    )
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(threads)  # the tests call run() in their own process


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    # Lightning's per-fit banners ("GPU available", tips) would bury the tables; it sets its logger's level
    # when imported, so import it first.
    import lightning.pytorch  # noqa: F401

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    s = Settings.make(args.tiny, args.rounds)
    cpu = torch.device("cpu")
    gpu = torch.device("cuda") if args.device in ("auto", "cuda") and torch.cuda.is_available() else None
    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    torch.manual_seed(0)

    from ddpm.data.toy import make_toy_data
    from ddpm.models import MLPDenoiser

    tables: list[Table] = []
    moons = torch.from_numpy(make_toy_data("moons", 20_000, seed=0))
    moons = (moons - moons.mean(0)) / moons.std(0)

    def mlp() -> nn.Module:
        return MLPDenoiser(data_dim=2, hidden=128, depth=3)

    toy = compare_training("toy MLP (moons, 128 x 3)", mlp, moons, s.toy_batch, s.toy_T, s, cpu)
    tables.append(toy)
    lightning_ratio = float(toy.rows[2][3])
    app, app_rounds = None, []
    if not args.no_app:
        app, app_split, app_rounds = compare_app(
            moons, *((6, 3, 1, 4) if s.tiny else (1500, 750, s.rounds, 10))
        )
        tables += [app, app_split]
    tables.append(ema_update_table(mlp, s.toy_T, repeats=s.rounds))
    tables.append(threads_table(moons, 5 if s.tiny else 100))
    tables.append(sampling_table("toy MLP", mlp(), (2,), s.toy_T, s.sample_n, s, cpu))

    try:
        from ddpm.models import UNet
    except ImportError:
        UNet = None  # the image models are not in this checkout
    if UNet is not None:
        from sklearn.datasets import load_digits

        digits = torch.from_numpy(load_digits().images).float()[:, None] / 16 * 2 - 1

        def unet() -> nn.Module:  # conf/model/unet_tiny.yaml's settings on 8x8 digits
            return UNet(1, 8, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(),
                        dropout=0.0, norm_groups=8)  # fmt: skip

        tables.append(compare_training("tiny UNet (digits 8x8)", unet, digits, s.unet_batch, s.toy_T, s, cpu))
        tables.append(
            sampling_table("tiny UNet (digits 8x8)", unet(), (1, 8, 8), s.toy_T, s.unet_sample_n, s, cpu)
        )
    else:
        tables.append(
            Table("Small UNet on CPU", ["variant"], notes=["skipped: ddpm.models.UNet is not available"])
        )

    gpu_results = None
    if gpu is not None and UNet is not None:
        gpu_tabs, gpu_results = gpu_tables(s, gpu)
        tables += gpu_tabs
    elif args.tiny and UNet is not None:
        # No GPU: run the precision-variant code path on CPU with the tiny UNet (no compile), as a check.
        check = Table("GPU precision-variant code path, checked on CPU (tiny UNet)", ["variant", "images/s"])
        for variant in ("fp32", "bf16-mixed"):
            check.rows.append([variant, gpu_variant_throughput(unet, (1, 8, 8), 8, 20, 2, cpu, variant)])
        tables.append(check)
    gpu_note = Table(
        "GPU: unet_cifar10 batch 128 (fp32, bf16-mixed, bf16 + channels_last + compile), diffusers, DDIM-100",
        ["status"],
        [[NO_GPU if gpu is None else "measured above"]],
    )
    if gpu is None:
        tables.append(gpu_note)

    startup = None
    if not args.no_startup:
        startup = startup_tables(repeats=1 if s.tiny else 3, tiny=s.tiny)
        tables += startup
    if args.digits_budget_s > 0:
        with tempfile.TemporaryDirectory() as tmp:
            tables.append(digits_quality(args.digits_budget_s, Path(tmp)))
    elif not args.tiny:
        needs = (
            "" if (REPO / "conf" / "experiment" / "digits.yaml").is_file() else " (needs `experiment=digits`)"
        )
        tables.append(
            Table("Digits quality", ["status"], [[f"not run: pass --digits-budget-s SECONDS{needs}"]])
        )

    command = "uv run python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        "# Benchmarks",
        "",
        f"- Command: `{command.strip()}`",
        f"- Device: {device_description(gpu or cpu)}",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC ({time.perf_counter() - t0:.0f} s)",
        "- Ratios are medians over rounds in which the variants ran interleaved in one process; absolute "
        "figures on a shared CPU move from run to run, the ratios much less.",
        "",
    ]
    report = "\n".join(header) + "\n" + "\n".join(t.markdown() for t in tables) + "\n"
    report += targets_section(lightning_ratio, gpu_results, app, startup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    print(f"Wrote {args.out}")
    return {
        "tables": tables,
        "lightning_ratio": lightning_ratio,
        "gpu": gpu_results,
        "report": report,
        "app": app,
        "app_rounds": app_rounds,
        "startup": startup,
    }


if __name__ == "__main__":
    run()
