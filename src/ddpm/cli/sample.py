"""``ddpm-sample``: generate from a trained run with the run's own config.

ddpm-sample outputs/toy2d/runs/2026-11-22_10-00-00                 # the run's sampler, 2000 samples
ddpm-sample RUN --n 10000 sampler=ddim sampler.steps=50            # DDIM with 50 steps
ddpm-sample RUN/checkpoints/best.ckpt sampler=ddpm sampler.steps=100 --out /tmp/s.npz
ddpm-sample RUN/export/model.safetensors                           # ddpm-export's file, read without pickle
ddpm-sample --pretrained ddpm-cifar10-32 --n 64 sampler=ddim sampler.steps=50  # a diffusers DDPM folder
ddpm-sample COND_RUN --class 3 --guidance 2.0 --n 64                 # a conditional run: 64 of class 3
ddpm-sample COND_RUN --class all --n 100                             # every class, one grid row each
ddpm-sample CIFAR_RUN --class horse                                  # CIFAR-10 classes by name

For image runs the .npz holds uint8 images [N, H, W, C] and the .png a grid of the first 256.

Every value (sampler overrides, ``--device``, ...) and the output folder are checked before the checkpoint
is loaded: a bad one is a one-line error with exit code 2. The throughput and quality figures are printed
before the files are written, so a failing write (exit code 1) never hides them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ddpm.cli.common import (
    add_run_arguments,
    check_guidance,
    check_run_arguments,
    class_labels,
    ensure_output_folder,
    fail,
    load_from_args,
    require_conditional,
    sampler_label,
)
from ddpm.config import ConfigError, first_line
from ddpm.data.toy import ToyData
from ddpm.memory import check_output_fits, sampling_batch_size
from ddpm.safe_writes import WriteError, write_file
from ddpm.samplers import NonFiniteSampleError

__all__ = ["main"]

#: the most samples the toy plot draws (all of them go to the .npz)
PLOT_SAMPLES = 50_000


# ---------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpm-sample",
        description="Generate samples from a trained ddpm-lab run (run folder or .ckpt).",
        epilog="Values and the output folder's writability are checked before the checkpoint is loaded; "
        "the figures are printed before the files are written.",
    )
    add_run_arguments(p, seed_help="RNG seed (default 0)")
    p.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    p.add_argument(
        "--out", type=Path, default=None, help="output .npz (default: <run>/samples/<sampler>.npz)"
    )
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot (or image grid)")
    p.add_argument(
        "--class",
        dest="label",
        default=None,
        help="class-conditional runs: a label (3), a class name (horse) or all (every class equally often, "
        "one grid row each; the default)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale w of a conditional run: 0 unconditional, 1 conditional, > 1 "
        "guided (default: the run's sampler.guidance_scale)",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every value that can be checked without the checkpoint; one-line error (status 2) otherwise."""
    if args.n < 1:
        fail(f"--n={args.n} is invalid; the number of samples must be >= 1")
    if args.out is not None and args.out.suffix != ".npz":
        fail(f"--out={str(args.out)!r} must end in .npz")
    check_guidance(args.guidance)
    check_run_arguments(args)


def _write_outputs(
    out: Path,
    samples: torch.Tensor,
    held_out: torch.Tensor | None,
    summary: dict[str, Any],
    image: bool,
    plot: bool,
    labels: torch.Tensor | None = None,
    rows: int | None = None,
) -> None:
    """The .npz, the .png (image grid, or samples against held-out data) and the .json, each whole.

    Raises:
        WriteError: a file could not be written.
    """
    if image:
        from ddpm.viz.grid import save_image_grid, to_uint8

        arrays = {"samples": to_uint8(samples)}  # uint8 [N, H, W, C], as image tools expect
    else:
        arrays = {"samples": samples.numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    named = cast(dict[str, Any], arrays)  # not **np.ndarray: to mypy one could be savez's allow_pickle
    write_file(out, lambda path: np.savez_compressed(path, **named))
    print(f"Wrote {out}")
    png = out.with_suffix(".png")
    if image and plot:
        shown = samples[:256] if rows is None else samples  # one row per class: every sample
        nrow = None if rows is None else len(samples) // rows
        write_file(png, lambda path: save_image_grid(shown, path, nrow=nrow))
        print(f"Wrote {png}")
    elif held_out is not None and plot:
        from ddpm import viz

        # a scatter of millions of points takes minutes and says no more than PLOT_SAMPLES of them
        fig = viz.plot_samples_vs_data(samples[:PLOT_SAMPLES].numpy(), held_out.numpy())
        write_file(png, lambda path: viz.save_figure(fig, path))
        print(f"Wrote {png}")
    text = json.dumps(summary, indent=2) + "\n"
    write_file(out.with_suffix(".json"), lambda path: path.write_text(text))
    print(f"Wrote {out.with_suffix('.json')}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    # intermixed, as ddpm-eval: sampler overrides may follow options (RUN --n 2000 sampler=euler)
    args = _parser().parse_intermixed_args(argv)
    _check_args(args)
    ensure_output_folder(args, "samples", "samples")
    run = load_from_args(args, args.overrides)
    labels, label_name = None, None
    for flag, given in (("--class", args.label), ("--guidance", args.guidance)):
        if given is not None:
            require_conditional(run, flag)
    if run.model.num_classes:
        labels, label_name = class_labels(args.label or "all", run, args.n)
    sampler = run.sampler
    steps = len(sampler.timesteps(run.model.diffusion))
    guidance = sampler.guidance_scale if args.guidance is None else args.guidance
    what = "" if labels is None else f" of class {label_name} at guidance scale {guidance:g}"
    model = run.model
    try:  # the samples themselves must fit; the batches are sized to what is left
        check_output_fits(args.n, model.data_shape, model.device)
    except ConfigError as err:
        fail(str(err))
    batch_size, batches = sampling_batch_size(
        args.batch_size, model.net, model.data_shape, model.device, args.n
    )
    print(
        f"Sampling {args.n}{what} with {sampler!r} ({steps} network evaluations each) in {batches} from "
        f"{run.checkpoint}"
    )
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    start = time.perf_counter()
    try:
        x = model.sample(
            args.n,
            sampler=sampler,
            generator=gen,
            progress=True,
            batch_size=batch_size,
            y=labels,
            guidance_scale=args.guidance,
        )
    except NonFiniteSampleError as err:  # the run's weights or schedule, not a value given here
        fail(f"{first_line(err)}; nothing was written", code=1)
    seconds = time.perf_counter() - start
    samples = run.data.denormalize(x).cpu()
    del x  # only the data-scale copy is kept: with --n in the millions, each copy counts

    # The figures first: they are on screen even if a write below fails.
    print(f"Throughput: {args.n / seconds:.1f} samples/s ({seconds:.2f} s for {args.n}, {steps} steps)")
    summary: dict[str, Any] = {
        "n": args.n,
        "sampler": repr(sampler),
        "seconds": seconds,
        "samples_per_s": args.n / seconds,
        "batch_size": batch_size,
    }
    if labels is not None:
        summary.update({"class": label_name, "guidance_scale": guidance})
    held_out = None
    data = run.data
    if isinstance(data, ToyData):
        from ddpm.metrics import quality_report

        held_out, pool = data.held_out(), data.training_data()
        if label_name not in (None, "all"):  # one class: compared with that class's data
            held_out = held_out[data.held_out_labels() == int(label_name)]
            pool = pool[data.train_labels == int(label_name)]
        held_out = held_out[: args.n]
        report = quality_report(samples, held_out, pool[: len(held_out)])
        summary.update(report.as_dict())
        print(f"Quality: {report.headline()}")

    name = f"{sampler_label(sampler, steps)}_n{args.n}_seed{args.seed}.npz"
    if labels is not None:
        name = name.replace(".npz", f"_class{label_name}_w{guidance:g}.npz")
    out = args.out or run.run_dir / "samples" / name
    try:
        image = run.data.kind == "image"
        # a grid with one row per class when every class is drawn equally often
        rows = run.model.num_classes if label_name == "all" and args.n % run.model.num_classes == 0 else None
        _write_outputs(
            out, samples, held_out, summary, image=image, plot=not args.no_plot, labels=labels, rows=rows
        )
    except WriteError as err:
        fail(str(err), code=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
