"""``ddpm-sample``: generate from a trained run with the run's own config.

ddpm-sample outputs/toy2d/runs/2026-11-22_10-00-00                 # the run's sampler, 2000 samples
ddpm-sample RUN --n 10000 sampler=ddim sampler.steps=50            # DDIM with 50 steps
ddpm-sample RUN/checkpoints/best.ckpt sampler=ddpm sampler.steps=100 --out /tmp/s.npz

For image runs the .npz holds uint8 images [N, H, W, C] and the .png a grid of the first 256.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm.cli.common import CONF_DIR, fail
from ddpm.runs import ConfigError, LoadedRun, load_run
from ddpm.samplers import Sampler

__all__ = ["main"]


def _sampler_config(run_sampler: dict, overrides: list[str]) -> dict:
    """The run's sampler config with ``sampler=<option>`` / ``sampler.<key>=<value>`` applied."""
    cfg = OmegaConf.create(run_sampler)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"override {item!r} is not key=value; use e.g. sampler=ddim sampler.steps=50")
        if key == "sampler":
            option = CONF_DIR / "sampler" / f"{value}.yaml"
            if not option.is_file():
                choices = ", ".join(sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml")))
                fail(f"sampler={value} is not an option of config group 'sampler'; choose one of {choices}")
            cfg = OmegaConf.load(option)
        elif key.startswith("sampler."):
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key.removeprefix('sampler.')}={value}"]))
        else:
            fail(f"override {key!r} is not supported here; only sampler=... and sampler.<key>=...")
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpm-sample",
        description="Generate samples from a trained ddpm-lab run (run folder or .ckpt).",
    )
    p.add_argument("run", help="a run folder (uses checkpoints/last.ckpt) or a checkpoint file")
    p.add_argument("overrides", nargs="*", help="sampler=ddim sampler.steps=50 sampler.eta=0.0 ...")
    p.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="sample in chunks of this size")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    p.add_argument(
        "--out", type=Path, default=None, help="output .npz (default: <run>/samples/<sampler>.npz)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot (or image grid)")
    return p


def load_with_sampler(run_path: str, device: str, overrides: list[str]) -> tuple[LoadedRun, Sampler]:
    """A run (folder or checkpoint) with its own config, and its sampler with ``overrides`` applied.

    Exits with a one-line error (status 2) when the run is missing or mismatched, or the sampler does not
    fit its chain (e.g. steps > T), before any sampling.
    """
    try:
        run = load_run(run_path, map_location=device)
        sampler_cfg = _sampler_config(OmegaConf.to_container(run.config.sampler), overrides)  # type: ignore[arg-type]
        try:
            sampler = instantiate(sampler_cfg)
            sampler.timesteps(run.module.diffusion)  # steps > T fails here, before any work
        except ValueError as err:
            raise ConfigError(f"sampler: {err}") from err
    except (ConfigError, FileNotFoundError) as err:
        fail(str(err))
    return run, sampler


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    if args.n < 1:
        fail(f"--n={args.n} is invalid; the number of samples must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        fail(f"--batch-size={args.batch_size} is invalid; it must be >= 1")
    if args.out is not None and args.out.suffix != ".npz":
        fail(f"--out={str(args.out)!r} must end in .npz")
    run, sampler = load_with_sampler(args.run, args.device, args.overrides)
    steps = len(sampler.timesteps(run.module.diffusion))
    print(f"Sampling {args.n} with {sampler!r} ({steps} network evaluations each) from {run.checkpoint}")
    gen = torch.Generator(device=run.module.device).manual_seed(args.seed)
    start = time.perf_counter()
    x = run.module.sample(args.n, sampler=sampler, generator=gen, progress=True, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    samples = run.datamodule.denormalize(x).cpu()

    name = type(sampler).__name__.removesuffix("Sampler").lower() + f"{steps}"
    out = args.out or run.run_dir / "samples" / f"{name}_n{args.n}_seed{args.seed}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    is_image = len(run.data_shape) == 3
    if is_image:
        from ddpm.data.images import save_image_grid, to_uint8

        np.savez_compressed(out, samples=to_uint8(samples))  # uint8 [N, H, W, C], as image tools expect
    else:
        np.savez_compressed(out, samples=samples.numpy())
    print(f"Wrote {out}")
    if is_image and not args.no_plot:
        print(f"Wrote {save_image_grid(samples[:256], out.with_suffix('.png'))}")
    print(f"Throughput: {args.n / seconds:.1f} samples/s ({seconds:.2f} s for {args.n}, {steps} steps)")

    summary: dict = {
        "n": args.n,
        "sampler": repr(sampler),
        "seconds": seconds,
        "samples_per_s": args.n / seconds,
    }
    if hasattr(run.datamodule, "reference_data"):
        from ddpm.metrics import quality_report

        held_out, second = run.datamodule.reference_data(args.n)
        report = quality_report(samples, held_out, second)
        summary.update(report.as_dict())
        print(f"Quality: {report.headline()}")
        if not args.no_plot:
            from ddpm import viz

            fig = viz.plot_samples_vs_data(samples.numpy(), held_out.numpy())
            png = out.with_suffix(".png")
            viz.save_figure(fig, png)
            print(f"Wrote {png}")
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
