"""CPU threads: the toy step with one thread and with one per core, idle and beside a busy process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from .common import Table
from .plain import in_memory_loader, plain_train


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
