"""Shared pieces of the console entry points: one-line errors, group options, devices, seeds, output
folders checked before the work, and the arguments and loading of the commands that read a trained run."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ddpm.config import CONF_DIR, ConfigError
from ddpm.safe_writes import writable_problem

if TYPE_CHECKING:  # ddpm.build imports torch and Hydra: only the commands that load a run need it
    import torch

    from ddpm.build import LoadedRun

__all__ = [
    "SEED_RANGE",
    "add_run_arguments",
    "check_device",
    "check_group_overrides",
    "check_guidance",
    "check_moved_keys",
    "check_out_owner",
    "check_run_arguments",
    "check_sampler_overrides",
    "check_seed",
    "class_labels",
    "ensure_output_folder",
    "ensure_writable",
    "fail",
    "load_from_args",
    "load_run_or_fail",
    "require_conditional",
    "run_folder",
    "sampler_label",
    "seed_problem",
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _options(group: str) -> list[str] | None:
    folder = CONF_DIR / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))  # _x: a base


def check_moved_keys(argv: list[str]) -> None:
    """Reject an override of a key that has moved (``diffusion.T=...``) or follows another one
    (``schedule.T`` is ``${T}``), naming the key to set instead."""
    from ddpm.config import MOVED_KEYS, MOVED_LOSS

    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+~")
        if sep and key == "diffusion.loss":
            instead = MOVED_LOSS.get(value, "loss=simple|hybrid|vlb (and loss.distance=mse|l1|huber)")
            fail(f"diffusion.loss={value}: the loss is a config group of its own now; set {instead} instead")
        if sep and key in MOVED_KEYS:
            fail(f"{key}={value} cannot be set there; set {MOVED_KEYS[key]}={value} instead")


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=option`` overrides whose option does not exist, naming the group and the choices.

    Hydra would also refuse them, but with a multi-line message; this keeps it to one line. Sweeps
    (``schedule=linear,cosine``) are checked option by option.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if "." in key or key.startswith("hydra/") or not value or "(" in value:
            continue
        options = _options(key)
        if options is None:
            continue
        for choice in value.split(","):
            if choice in ("null", "none") and choice not in options:
                continue
            if choice not in options:
                fail(
                    f"{key}={choice} is not an option of config group '{key}'; "
                    f"choose one of {', '.join(options)}"
                )


def check_device(device: str) -> None:
    """Exit with a one-line error (status 2) unless ``--device`` names a device this machine has.

    Checked before the checkpoint is loaded: torch would otherwise fail inside ``torch.load`` with a
    message about deserialising storages, which reads like a broken checkpoint.
    """
    import torch  # here, not at the top: ddpm-train and ddpm-viz import this module before torch is needed

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"--device={device!r} is not a device; use cpu, cuda, cuda:<index> or mps")
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            fail(f"--device={device} is not available: this machine has no CUDA device; --device cpu works")
        if dev.index is not None and dev.index >= count:
            fail(
                f"--device={device} is not available: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; --device cpu works"
            )
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            fail(f"--device={device} is not available: this machine has no Apple GPU; --device cpu works")
        return
    fail(f"--device={device!r} is not supported here; use cpu, cuda, cuda:<index> or mps")


#: The seeds ``torch.Generator.manual_seed`` takes; others fail deep inside torch with "Overflow when
#: unpacking long long".
SEED_RANGE = (-(2**63), 2**64 - 1)


def seed_problem(seed: int, flag: str = "--seed", draws: int = 1) -> str | None:
    """Why ``seed`` (and the ``draws - 1`` seeds after it) cannot seed torch, in one line; else None."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        return f"{flag}={seed} is out of range; use an integer from 0 to 2**64 - 1"
    if seed + draws - 1 > high:
        return (
            f"{flag}={seed} is too large for {draws} draws (draw k uses {flag.lstrip('-')} + k); "
            f"use at most {high - draws + 1}"
        )
    return None


def check_seed(seed: int, flag: str = "--seed", draws: int = 1) -> None:
    """Exit with a one-line error (status 2) unless torch takes ``seed`` (see :func:`seed_problem`)."""
    problem = seed_problem(seed, flag, draws)
    if problem is not None:
        fail(problem)


# ---------------------------------------------------------------------------- output folders and files
def ensure_writable(folder: Path, what: str, hint: str = "") -> None:
    """Exit with a one-line error (status 2) unless ``what`` can be written to ``folder``.

    Called before any heavy work (loading a checkpoint, sampling), so a read-only place, a file where a
    folder should be or a full disk is found in a second, not after an hour. See :func:`writable_problem`.
    """
    problem = writable_problem(folder, what, hint)
    if problem is not None:
        fail(problem)


# ---------------------------------------------------------------------------- commands that read a run
def add_run_arguments(parser: argparse.ArgumentParser, seed_help: str) -> None:
    """The arguments of every command that reads a trained run: the run (or ``--pretrained`` weights),
    sampler overrides, ``--seed``, ``--batch-size`` and ``--device``."""
    parser.add_argument(
        "run",
        nargs="?",
        default=None,
        help="a run folder (uses checkpoints/last.ckpt), a checkpoint file or a ddpm-export .safetensors",
    )
    parser.add_argument("overrides", nargs="*", help="sampler=ddim sampler.steps=50 sampler.eta=0.0 ...")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per network call (default: chosen from free memory: a quarter of the memory available "
        "on the device over one sample's measured activations, a power of two, at most 16384; printed "
        "when sampling starts). The samples a seed draws depend on it",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ... (default cpu)")
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH",
        help="a diffusers DDPM pipeline folder (e.g. google/ddpm-cifar10-32) instead of a run; its sampler "
        "is DDPM over all T steps unless sampler=... says otherwise",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="with --pretrained: the image set the weights were trained on (digits, mnist, cifar10), for "
        "the metrics that compare with it",
    )
    parser.add_argument("--data-dir", default="data", help="with --dataset: where its files are")


def check_run_arguments(args: argparse.Namespace, draws: int = 1, overrides: bool = True) -> None:
    """Check what :func:`add_run_arguments` adds before the checkpoint is read (``draws`` seeds from
    ``--seed`` on); a one-line error (status 2) otherwise. ``overrides=False`` leaves the sampler overrides
    to the caller (``ddpm-eval --compare-samplers`` reads them as comma lists)."""
    _check_source(args)
    if args.batch_size is not None and args.batch_size < 1:
        fail(f"--batch-size={args.batch_size} is invalid; it must be an integer >= 1")
    check_seed(args.seed, draws=draws)
    check_device(args.device)
    if overrides:
        check_sampler_overrides(args.overrides)


def _check_source(args: argparse.Namespace) -> None:
    """A run or ``--pretrained`` weights, not both; with ``--pretrained`` the positional RUN, if any, is the
    first sampler override (``--pretrained P sampler=ddim``)."""
    if args.pretrained is None:
        if args.run is None:
            fail("give a run folder or checkpoint, or --pretrained PATH (a diffusers pipeline folder)")
        if args.dataset is not None:
            fail(f"--dataset={args.dataset} goes with --pretrained; a run knows its own data")
        return
    from ddpm.data.image_sets import IMAGE_DATASETS
    from ddpm.interop import is_diffusers_folder

    if args.run is not None:
        if "=" not in args.run:
            fail(f"give either a run ({args.run!r}) or --pretrained {args.pretrained}, not both")
        args.overrides = [args.run, *args.overrides]
        args.run = None
    if not is_diffusers_folder(args.pretrained):
        fail(
            f"--pretrained={args.pretrained!r} is not a diffusers pipeline folder "
            "(expected model_index.json or unet/config.json in it)"
        )
    if args.dataset is not None and args.dataset not in IMAGE_DATASETS:
        fail(f"--dataset={args.dataset!r} is unknown; choose one of {', '.join(sorted(IMAGE_DATASETS))}")


def check_guidance(value: float | None, flag: str = "--guidance") -> None:
    """A classifier-free guidance scale: a number in [0, :data:`ddpm.config.MAX_GUIDANCE_SCALE`], or a
    one-line error (status 2). Larger scales overflow float32 while sampling, after all the work."""
    from ddpm.config import MAX_GUIDANCE_SCALE

    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_GUIDANCE_SCALE):
        fail(
            f"{flag}={value:g} is invalid; the guidance scale must be >= 0 and <= {MAX_GUIDANCE_SCALE:g} "
            "(0: unconditional, 1: conditional, > 1: guided)"
        )


def require_conditional(run: LoadedRun, flag: str) -> None:
    """A one-line error (status 2) when ``flag`` was given for a run trained without class labels."""
    if not run.model.num_classes:
        fail(
            f"{flag} needs a class-conditional run, and {str(run.run_dir)!r} is unconditional (trained with "
            "conditional=false); train one with conditional=true, e.g. experiment=toy2d_cond"
        )


def class_labels(value: str, run: LoadedRun, n: int) -> tuple[torch.Tensor, str]:
    """``--class`` as ``n`` labels and a name for files: a label number, a class name (CIFAR-10's
    ``horse``) or ``all`` (every class equally often, in order); a one-line error (status 2) otherwise."""
    import torch

    from ddpm.sampling_model import balanced_labels

    classes = run.model.num_classes
    names = [str(name).lower() for name in getattr(run.data, "class_names", range(classes))]
    text = value.strip().lower()
    if text == "all":
        return balanced_labels(n, classes), "all"
    if text in names:
        k = names.index(text)
    elif text.lstrip("-").isdigit():
        k = int(text)
        if not 0 <= k < classes:
            fail(f"--class {value} is out of range; this run's classes are 0 .. {classes - 1} (or all)")
    else:
        shown = ", ".join(names) if any(not name.isdigit() for name in names) else f"0 .. {classes - 1}"
        fail(f"--class {value!r} is not a class of this run; choose one of {shown} or all")
    return torch.full((n,), k, dtype=torch.long), str(k)


#: the files a command may write beside its ``--out`` (ddpm-sample: .npz, .png, .json; ddpm-eval: .json,
#: .md, .png; ddpm-viz: .png, .gif): each is checked against the run folders it would land in
BESIDE_OUT = (".npz", ".png", ".json", ".md", ".gif")


def check_out_owner(out: Path, source: str | Path | None, beside: bool = True) -> None:
    """Exit with a one-line error (status 2) when ``--out``, or a file written beside it, lies inside the
    folder of another run than the one the command reads (``source``: a run folder, a checkpoint, weights;
    None for none), or would replace what training wrote in its own (``samples.npz``, ``metrics.json``,
    ``checkpoints/``, ...; see :func:`ddpm.run_folder.out_problem`). Checked before the checkpoint is read.
    """
    from ddpm.run_folder import enclosing_run, out_problem

    own = enclosing_run(Path(source)) if source is not None else None
    written = [out, *(out.with_suffix(s) for s in BESIDE_OUT)] if beside and out.suffix else [out]
    problem = out_problem(out, own, written)
    if problem is not None:
        fail(problem)


def ensure_output_folder(args: argparse.Namespace, subfolder: str, what: str) -> Path:
    """Exit with a one-line error (status 2) unless ``what`` can be written where it goes: ``--out``'s
    folder (outside any other run's folder: :func:`check_out_owner`), else ``<run>/<subfolder>``. Returns
    the run folder (found without reading the checkpoint)."""
    pretrained = getattr(args, "pretrained", None)
    run_dir = Path(pretrained) if pretrained else run_folder(args.run)
    if args.out is not None:
        check_out_owner(args.out, pretrained or args.run)
        ensure_writable(args.out.parent, what)
    else:
        ensure_writable(run_dir / subfolder, what, "; choose another place with --out")
    return run_dir


def sampler_label(sampler: Any, steps: int) -> str:
    """A sampler and its number of steps as a file-name part: ``ddim50``, ``ddpm1000``."""
    return type(sampler).__name__.removesuffix("Sampler").lower() + str(steps)


def check_sampler_overrides(overrides: list[str]) -> None:
    """:func:`ddpm.sampler_overrides.check_sampler_overrides`, as a one-line error (status 2)."""
    from ddpm.sampler_overrides import check_sampler_overrides as check

    try:
        check(overrides)
    except ConfigError as err:
        fail(str(err))


def run_folder(run_path: str) -> Path:
    """The run folder of a run folder or checkpoint path (where ``samples/`` and ``eval/`` go), found
    without reading the checkpoint; a one-line error (status 2) when there is no checkpoint there."""
    from ddpm.run_folder import find_checkpoint, run_dir_of

    try:
        ckpt = find_checkpoint(run_path)
    except FileNotFoundError as err:
        fail(str(err))
    # As load_run: a checkpoint in <run>/checkpoints/ belongs to <run>, any other to its own folder.
    return run_dir_of(ckpt) or ckpt.parent


def load_from_args(args: argparse.Namespace, overrides: list[str]) -> LoadedRun:
    """The run of :func:`add_run_arguments`' arguments: ``--pretrained`` weights
    (:func:`ddpm.interop.load_diffusers_pipeline`) or the run; a one-line error (status 2) if it fails."""
    if args.pretrained is None:
        return load_run_or_fail(args.run, args.device, overrides)
    from ddpm.interop import load_diffusers_pipeline

    try:
        return load_diffusers_pipeline(
            args.pretrained, args.device, overrides, dataset=args.dataset, data_dir=args.data_dir
        )
    except (ConfigError, FileNotFoundError) as err:
        fail(str(err))


def load_run_or_fail(run_path: str, device: str, overrides: list[str]) -> LoadedRun:
    """:func:`ddpm.build.load_run` with sampler overrides, a missing or mismatched run being a one-line
    error (status 2) before any sampling. Call :func:`check_run_arguments` first to refuse bad values before
    the checkpoint is read."""
    from ddpm import build

    try:
        return build.load_run(run_path, map_location=device, sampler_overrides=overrides)
    except (ConfigError, FileNotFoundError) as err:
        fail(str(err))
