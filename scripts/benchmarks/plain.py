"""The plain PyTorch loop every variant is measured against, and the pieces all variants share: the
diffusion, the in-memory loader and ddpm-lab's AdamW."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .common import REPO, sync


def make_diffusion(T: int):
    """A cosine-schedule GaussianDiffusion (eps, fixed_large) with T steps (valid for any T)."""
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import make_beta_schedule

    return GaussianDiffusion(make_beta_schedule("cosine", T))


class TrainingLoss:
    """The training step's loss as DiffusionModule computes it: t and its weights from the timestep sampler
    (uniform), the training noise, L_simple per sample (``ddpm.losses.SimpleLoss``), the weighted mean."""

    def __init__(self, diffusion: Any) -> None:
        from ddpm.losses import SimpleLoss
        from ddpm.timestep_sampling import UniformTimesteps

        self.loss, self.timesteps = SimpleLoss(diffusion), UniformTimesteps(diffusion)

    def __call__(self, net: Any, x0: torch.Tensor) -> torch.Tensor:
        t, weights = self.timesteps.sample(x0.shape[0], x0.device)
        return (self.loss(net, x0, t, self.loss.noise(x0)) * weights).mean()


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

    training_loss = TrainingLoss(make_diffusion(T).to(device))
    net = net.to(device)
    opt = adamw(net.parameters())
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.995), use_buffers=True)
    for (x0,) in loader:
        x0 = x0.to(device, non_blocking=True)
        loss = training_loss(net, x0)
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
