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

One module per section in ``scripts/benchmarks/`` (training, app, threads, sampling, gpu, startup, digits,
targets); ``benchmarks.common`` holds what they share: the sizes of a run, the markdown table writer and
the machine description of the report's header. This file is the entry point.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

if str(Path(__file__).resolve().parent) not in sys.path:  # the sections' package, beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks.app import AppRound, PlainBlocks, compare_app, step_timer
from benchmarks.common import DEFAULT_OUT, Settings, Table, report_header
from benchmarks.coupling import coupling_table
from benchmarks.digits import digits_available, digits_quality
from benchmarks.gpu import gpu_tables, gpu_variant_throughput
from benchmarks.sampling import sampling_table
from benchmarks.startup import startup_tables
from benchmarks.targets import NO_GPU, targets_section
from benchmarks.threads import threads_table
from benchmarks.training import compare_training, ema_update_table

#: what the tests use of this script, besides :func:`run`
__all__ = ["AppRound", "PlainBlocks", "run", "startup_tables", "step_timer"]


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
    tables.append(coupling_table((64,), steps=3, rounds=2) if s.tiny else coupling_table())

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
        needs = "" if digits_available() else " (needs `experiment=digits`)"
        tables.append(
            Table("Digits quality", ["status"], [[f"not run: pass --digits-budget-s SECONDS{needs}"]])
        )

    command = "uv run python scripts/benchmark.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = report_header(command, gpu or cpu, started, time.perf_counter() - t0)
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
