"""What every section shares: the sizes of a run, the markdown table writer, the machine description, the
report's header, the device sync and the environment of the commands started as processes."""

from __future__ import annotations

import datetime as dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"


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


def report_header(command: str, device: torch.device, started: dt.datetime, seconds: float) -> list[str]:
    """The report's title and its machine description: the command, the device, the date and the run's
    seconds, then how to read its ratios."""
    return [
        "# Benchmarks",
        "",
        f"- Command: `{command.strip()}`",
        f"- Device: {device_description(device)}",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC ({seconds:.0f} s)",
        "- Ratios are medians over rounds in which the variants ran interleaved in one process; absolute "
        "figures on a shared CPU move from run to run, the ratios much less.",
        "",
    ]


def command_env() -> dict[str, str]:
    """The environment of a command started as a process: W&B offline and silent, matplotlib headless."""
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
