"""Training throughput: the plain loop, a minimal LightningModule and ddpm-lab's DiffusionModule, interleaved
over rounds; and the cost of one EMA update."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .common import REPO, Settings, Table, sync
from .plain import TrainingLoss, adamw, in_memory_loader, make_diffusion, plain_train


def ema_callback(decay: float) -> Any:
    """ddpm-lab's EMA callback as ``conf/callbacks/ema/default.yaml`` builds it (Lightning's
    EMAWeightAveraging)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "callbacks" / "ema" / "default.yaml")
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
                self.training_loss = TrainingLoss(diffusion)

            def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
                return self.training_loss(self.net, batch_data(batch))

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
