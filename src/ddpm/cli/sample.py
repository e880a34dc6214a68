"""``ddpm-sample``: generate from a trained run with the run's own config.

ddpm-sample outputs/toy2d/runs/2026-11-22_10-00-00                 # the run's sampler, 2000 samples
ddpm-sample RUN --n 10000 sampler=ddim sampler.steps=50            # DDIM with 50 steps
ddpm-sample RUN/checkpoints/best.ckpt sampler=ddpm sampler.steps=100 --out /tmp/s.npz

For image runs the .npz holds uint8 images [N, H, W, C] and the .png a grid of the first 256.

Every value (sampler overrides, ``--device``, ...) and the output folder are checked before the checkpoint
is loaded: a bad one is a one-line error with exit code 2. The throughput and quality figures are printed
before the files are written, so a failing write (exit code 1) never hides them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm.cli.common import (
    CONF_DIR,
    WriteError,
    check_device,
    check_seed,
    ensure_writable,
    fail,
    write_file,
)
from ddpm.run_folder import run_dir_of
from ddpm.runs import ConfigError, LoadedRun, find_checkpoint, load_run
from ddpm.samplers import Sampler

__all__ = ["check_sampler_overrides", "load_with_sampler", "main", "run_folder"]


# ---------------------------------------------------------------------------- sampler overrides
def _sampler_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))


def _option_config(option: str) -> dict[str, Any]:
    """``conf/sampler/<option>.yaml`` as a dict; a one-line error when there is no such option."""
    path = CONF_DIR / "sampler" / f"{option}.yaml"
    if not path.is_file():
        choices = ", ".join(_sampler_options())
        fail(f"sampler={option} is not an option of config group 'sampler'; choose one of {choices}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


@cache
def _init_params(cls: type) -> tuple[str, ...]:
    """The keyword arguments a sampler class takes: the keys its config may set."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


@cache
def _option_classes() -> tuple[type, ...]:
    """The sampler classes of ``conf/sampler/*.yaml`` (what a run's sampler is, unless customised)."""
    return tuple(get_class(_option_config(option)["_target_"]) for option in _sampler_options())


def _split_overrides(overrides: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """``sampler=<option>`` (or None) and the ``(key, raw value)`` pairs of ``sampler.<key>=<value>``.

    Like Hydra, the option is applied first and the keys on top, whatever their order on the command line.
    """
    option: str | None = None
    keys: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"override {item!r} is not key=value; use e.g. sampler=ddim sampler.steps=50")
        if key == "sampler":
            if option is not None and option != value:
                fail(f"sampler= is given twice (sampler={option}, sampler={value}); give one")
            option = value
        elif key.startswith("sampler.") and key != "sampler.":
            keys.append((key.removeprefix("sampler."), value))
        else:
            fail(f"override {key!r} is not supported here; only sampler=... and sampler.<key>=...")
    return option, keys


def _parse_value(key: str, raw: str) -> Any:
    """A command-line value with the types a Hydra override would give it (``5`` int, ``null`` None)."""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=True)["v"]  # type: ignore[index]
    except OmegaConfBaseException as err:
        fail(f"sampler.{key}={raw} cannot be read: {str(err).strip().splitlines()[0]}")


def _value_problem(cls: type, key: str, raw: str, value: Any) -> str | None:
    """Why ``cls(key=value)`` is refused, in one line naming ``sampler.<key>=<raw>``; None when it is not."""
    try:
        cls(**{key: value})
    except (ValueError, TypeError) as err:
        message = str(err).strip().splitlines()[0]
        own = f"{key}={value!r} "  # the sampler names the value itself: say it as it was typed instead
        if message.startswith(own):
            return f"sampler.{key}={raw} {message.removeprefix(own)}"
        return f"sampler.{key}={raw} is invalid: {message}"
    return None


def _unknown_key(cls_names: str, key: str, raw: str, takes: list[str]) -> str:
    return (
        f"sampler.{key}={raw} is not an option of {cls_names}; it takes {', '.join(takes)} "
        f"(choose another sampler with sampler=<{'|'.join(_sampler_options())}>)"
    )


def check_sampler_overrides(overrides: list[str]) -> None:
    """Check ``sampler=<option>`` / ``sampler.<key>=<value>`` before the run is loaded.

    Each key must be an argument of the sampler class and each value one it accepts (the class's own
    checks decide). With ``sampler=<option>`` the class is known; without, the run's sampler is not known
    before its checkpoint is read, so a key or value passes when any sampler of ``conf/sampler/`` takes it
    and :func:`load_with_sampler` checks the rest. Exits with a one-line error (status 2) otherwise.
    """
    option, keys = _split_overrides(overrides)
    classes = (get_class(_option_config(option)["_target_"]),) if option else _option_classes()
    for key, raw in keys:
        takers = [cls for cls in classes if key in _init_params(cls)]
        if not takers:
            names = " or ".join(cls.__name__ for cls in classes)
            takes = sorted({p for cls in classes for p in _init_params(cls)})
            fail(_unknown_key(names, key, raw, takes))
        value = _parse_value(key, raw)
        problems = [_value_problem(cls, key, raw, value) for cls in takers]
        if all(problems):
            fail(problems[0])  # type: ignore[arg-type]


def _sampler_config(run_sampler: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The run's sampler config with ``sampler=<option>`` / ``sampler.<key>=<value>`` applied."""
    option, keys = _split_overrides(overrides)
    cfg = dict(_option_config(option) if option else run_sampler)
    cls = get_class(cfg["_target_"])
    takes = _init_params(cls)
    for key, raw in keys:
        if key not in takes:
            source = f"sampler={option}" if option else "the run's sampler"
            fail(_unknown_key(f"{cls.__name__} ({source})", key, raw, list(takes)))
        cfg[key] = _parse_value(key, raw)
    return cfg


def run_folder(run_path: str) -> Path:
    """The run folder of a run folder or checkpoint path (where ``samples/`` and ``eval/`` go), found
    without reading the checkpoint; a one-line error (status 2) when there is no checkpoint there."""
    try:
        ckpt = find_checkpoint(run_path)
    except FileNotFoundError as err:
        fail(str(err))
    # As load_run: a checkpoint in <run>/checkpoints/ belongs to <run>, any other to its own folder.
    return run_dir_of(ckpt) or ckpt.parent


def load_with_sampler(run_path: str, device: str, overrides: list[str]) -> tuple[LoadedRun, Sampler]:
    """A run (folder or checkpoint) with its own config, and its sampler with ``overrides`` applied.

    Exits with a one-line error (status 2) when the run is missing or mismatched, or the sampler does not
    fit its chain (e.g. steps > T, or a key the run's sampler does not take), before any sampling. Call
    :func:`check_sampler_overrides` and :func:`~ddpm.cli.common.check_device` first to refuse bad values
    before the checkpoint is read.
    """
    try:
        run = load_run(run_path, map_location=device)
        sampler_cfg = _sampler_config(OmegaConf.to_container(run.config.sampler), overrides)  # type: ignore[arg-type]
        try:
            sampler = instantiate(sampler_cfg)
            sampler.timesteps(run.module.diffusion)  # steps > T fails here, before any work
        except InstantiationException as err:  # Hydra wraps the sampler's own error; report that one
            cause = err.__cause__ if isinstance(err.__cause__, ValueError | TypeError) else err
            raise ConfigError(f"sampler: {str(cause).strip().splitlines()[-1]}") from err
        except ValueError as err:
            raise ConfigError(f"sampler: {err}") from err
    except (ConfigError, FileNotFoundError) as err:
        fail(str(err))
    return run, sampler


# ---------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpm-sample",
        description="Generate samples from a trained ddpm-lab run (run folder or .ckpt).",
        epilog="Values and the output folder's writability are checked before the checkpoint is loaded; "
        "the figures are printed before the files are written.",
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


def _check_args(args: argparse.Namespace) -> None:
    """Every value that can be checked without the checkpoint; one-line error (status 2) otherwise."""
    if args.n < 1:
        fail(f"--n={args.n} is invalid; the number of samples must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        fail(f"--batch-size={args.batch_size} is invalid; it must be >= 1")
    if args.out is not None and args.out.suffix != ".npz":
        fail(f"--out={str(args.out)!r} must end in .npz")
    check_seed(args.seed)
    check_device(args.device)
    check_sampler_overrides(args.overrides)


def _write_outputs(
    out: Path,
    samples: torch.Tensor,
    held_out: torch.Tensor | None,
    summary: dict[str, Any],
    image: bool,
    plot: bool,
) -> None:
    """The .npz, the .png (image grid, or samples against held-out data) and the .json, each whole.

    Raises:
        WriteError: a file could not be written.
    """
    if image:
        from ddpm.viz.grid import save_image_grid, to_uint8

        images = to_uint8(samples)  # uint8 [N, H, W, C], as image tools expect
        write_file(out, lambda path: np.savez_compressed(path, samples=images))
    else:
        write_file(out, lambda path: np.savez_compressed(path, samples=samples.numpy()))
    print(f"Wrote {out}")
    png = out.with_suffix(".png")
    if image and plot:
        write_file(png, lambda path: save_image_grid(samples[:256], path))
        print(f"Wrote {png}")
    elif held_out is not None and plot:
        from ddpm import viz

        fig = viz.plot_samples_vs_data(samples.numpy(), held_out.numpy())
        write_file(png, lambda path: viz.save_figure(fig, path))
        print(f"Wrote {png}")
    text = json.dumps(summary, indent=2) + "\n"
    write_file(out.with_suffix(".json"), lambda path: path.write_text(text))
    print(f"Wrote {out.with_suffix('.json')}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    _check_args(args)
    if args.out is not None:
        ensure_writable(args.out.parent, "samples")
    else:
        ensure_writable(run_folder(args.run) / "samples", "samples", "; choose another place with --out")
    run, sampler = load_with_sampler(args.run, args.device, args.overrides)
    steps = len(sampler.timesteps(run.module.diffusion))
    print(f"Sampling {args.n} with {sampler!r} ({steps} network evaluations each) from {run.checkpoint}")
    gen = torch.Generator(device=run.module.device).manual_seed(args.seed)
    start = time.perf_counter()
    x = run.module.sample(args.n, sampler=sampler, generator=gen, progress=True, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    samples = run.datamodule.denormalize(x).cpu()

    # The figures first: they are on screen even if a write below fails.
    print(f"Throughput: {args.n / seconds:.1f} samples/s ({seconds:.2f} s for {args.n}, {steps} steps)")
    summary: dict[str, Any] = {
        "n": args.n,
        "sampler": repr(sampler),
        "seconds": seconds,
        "samples_per_s": args.n / seconds,
    }
    held_out = None
    if hasattr(run.datamodule, "reference_data"):
        from ddpm.metrics import quality_report

        held_out, second = run.datamodule.reference_data(args.n)
        report = quality_report(samples, held_out, second)
        summary.update(report.as_dict())
        print(f"Quality: {report.headline()}")

    name = type(sampler).__name__.removesuffix("Sampler").lower() + f"{steps}"
    out = args.out or run.run_dir / "samples" / f"{name}_n{args.n}_seed{args.seed}.npz"
    try:
        _write_outputs(out, samples, held_out, summary, image=len(run.data_shape) == 3, plot=not args.no_plot)
    except WriteError as err:
        fail(str(err), code=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
