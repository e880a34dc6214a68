"""Minibatch optimal-transport pairs: what ``coupling=minibatch_ot`` adds to a flow-matching training step.

Run alone for the table in ``docs/benchmarks.md``: ``uv run python -m scripts.benchmarks.coupling``.
"""

from __future__ import annotations

import statistics
import time

import torch

from .common import Table


def _step_ms(coupling: str, batch: int, steps: int, seed: int) -> float:
    """ms per training step of the toy MLP on the flow (velocity loss, AdamW) with ``coupling``."""
    from ddpm.flow import FlowProcess
    from ddpm.losses import SimpleLoss
    from ddpm.models import MLPDenoiser

    torch.manual_seed(seed)
    process = FlowProcess()
    net = process.wrap_network(MLPDenoiser(data_dim=2, hidden=128, depth=3))
    loss = SimpleLoss(process, coupling=coupling)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x0 = torch.randn(batch, 2)
    started = time.perf_counter()
    for _ in range(steps):
        t = torch.rand(batch)
        value = loss(net, x0, t, loss.noise(x0)).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return 1000 * (time.perf_counter() - started) / steps


def coupling_table(batches: tuple[int, ...] = (256, 512, 1024), steps: int = 50, rounds: int = 5) -> Table:
    """Independent against minibatch-OT pairs, interleaved round by round; medians and their ratio."""
    table = Table(
        f"Flow matching's pairs: the toy MLP's training step ({steps} steps, median of {rounds})",
        ["batch", "independent: ms/step", "minibatch OT: ms/step", "OT / independent"],
    )
    for batch in batches:
        times: dict[str, list[float]] = {"independent": [], "minibatch_ot": []}
        for r in range(rounds):
            order = ("independent", "minibatch_ot") if r % 2 == 0 else ("minibatch_ot", "independent")
            for coupling in order:
                times[coupling].append(_step_ms(coupling, batch, steps, seed=r))
        a, b = (statistics.median(times[c]) for c in ("independent", "minibatch_ot"))
        table.rows.append([batch, f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}x"])
    table.notes.append(
        "The pairs are SciPy's exact assignment on the batch's squared distances (ddpm.flow.ot_pairing, "
        "O(B^3)), on the CPU whatever the device; toy2d_flow_ot trains at batch 256."
    )
    return table


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(coupling_table().markdown())
