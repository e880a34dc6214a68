"""Sampling throughput: DDPM (all T steps) and DDIM-50."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from .common import Settings, Table, sync
from .plain import make_diffusion


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
