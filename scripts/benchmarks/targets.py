"""The targets the report checks, and the report's section saying where each stands."""

from __future__ import annotations

from typing import Any

from .common import Table

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
