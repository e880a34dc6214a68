"""On a GPU: unet_cifar10 in fp32, bf16-mixed and bf16-mixed + channels_last + torch.compile, against
diffusers' UNet2DModel + DDPMScheduler, and DDIM-100 projected to 50,000 CIFAR-10 images."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .common import Settings, Table, sync
from .plain import TrainingLoss, make_diffusion

#: dense bf16 tensor-core peak FLOP/s by device name fragment (vendor data sheets, SXM parts)
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def images_per_second(
    step: Callable[[], None], batch: int, warmup: int, steps: int, device: torch.device
) -> float:
    """Images/s of ``steps`` calls of a training ``step`` of ``batch`` images, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def flops_per_image(make_net: Callable[[], nn.Module], shape: tuple[int, ...], T: int) -> float:
    """Forward + backward FLOPs of one training image, counted by torch's FlopCounterMode on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    net = make_net()
    training_loss = TrainingLoss(make_diffusion(T))
    x = torch.randn(2, *shape)
    with FlopCounterMode(display=False) as counter:
        training_loss(net, x).backward()
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
    training_loss = TrainingLoss(make_diffusion(T).to(device))
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
            loss = training_loss(model, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    # compile happens in the first steps
    return images_per_second(step, batch, 3 if not variant.endswith("compile") else 5, steps, device)


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

    return images_per_second(step, batch, 5, steps, device)


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
