"""``ddpm-viz``: the seed demos, and a trained run's reverse process, as PNG and GIF files.

    ddpm-viz schedules                      # beta, abar and log-SNR of linear/cosine/quadratic/sigmoid
    ddpm-viz forward-1d                     # seed 000: a sine wave noised at t = 0, 100, ..., 999
    ddpm-viz forward-2d                     # seed 003: N((2, 2), 0.5^2 I) at t = 0, 25, 50, 75, 99
    ddpm-viz forward-chain                  # seeds 001/004: x0 = 5 through the one-step Markov chain
    ddpm-viz reverse outputs/<task>/runs/<time>   # a trained run: reverse-process figure + GIF

Every value is checked before any work: a bad one gives a one-line error naming it and exit code 2.
That includes sizes whose arrays and figure would need more memory than :func:`memory_limit` allows
(the smaller of 2 GiB and half the memory available), and an output folder that cannot be written. A
write that still fails at the end is a one-line error with exit code 1.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from ddpm.cli.common import seed_problem
from ddpm.safe_writes import WriteError, writable_problem, write_file, write_files
from ddpm.schedules import SCHEDULES

__all__ = ["MAX_BYTES", "build_parser", "main", "memory_limit"]

_T = TypeVar("_T")

PROG = "ddpm-viz"
DEFAULT_DIR = Path("outputs") / "viz"

#: The most memory a command may plan for its arrays and figure (on top of the ~0.6 GB its imports take),
#: unless half the memory available is less (see :func:`memory_limit`).
MAX_BYTES = 2 * 1024**3

# Bytes per unit of each size option, measured on a CPU (peak RSS, figure drawn and written) and rounded up:
# the schedule (betas, abar, the diffusion's buffers, the curves drawn) per timestep; forward-chain's
# one-step tensors kept until they are stacked, per step; one drawn value (data, float64 copies, the
# matplotlib path); one value of a reverse trajectory (float32 chain and x0-hat, their float64 copies); one
# GIF frame (a quantised 512 x 384 image); one pixel of the RGBA canvas.
_PER_T = 200
_PER_CHAIN_STEP = 1000
_PER_POINT = 80
_PER_TRAJECTORY_VALUE = 32
_PER_GIF_FRAME = 256 * 1024
_PER_PIXEL = 4

EPILOG = (
    f"Sizes are checked before the arrays are made: a command whose arrays and figure would need more "
    f"than the smaller of {MAX_BYTES / 1024**3:g} GiB and half the memory available is refused in one line "
    f"naming the options to lower (--T, --n, --draws, --length, --timesteps, --dpi, --frames). The output "
    f"folder is checked for writability first too."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse's own message already names the value)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _BadInput(ValueError):
    """A command-line value that is not allowed; reported in one line with exit code 2."""


def _schedule_options(args: argparse.Namespace) -> dict[str, Any]:
    """The schedule options given on the command line (those left out fall back to the demo's)."""
    given = {
        "beta_start": args.beta_start,
        "beta_end": args.beta_end,
        "s": args.s,
        "max_beta": args.max_beta,
        "scale_to_T": args.scale_to_T,
    }
    return {k: v for k, v in given.items() if v is not None}


def _add_schedule_options(
    p: argparse.ArgumentParser, T: int, seed: int, beta: tuple[float, float] | None
) -> None:
    p.add_argument("--T", type=int, default=T, help=f"chain length (default {T})")
    start, end = (f" (default {b:g}, the seed's)" for b in beta) if beta else ("", "")
    p.add_argument("--beta-start", type=float, help=f"first beta of linear/quadratic/sigmoid{start}")
    p.add_argument("--beta-end", type=float, help=f"last beta of linear/quadratic/sigmoid{end}")
    p.add_argument("--s", type=float, help="cosine offset s (default 0.008)")
    p.add_argument("--max-beta", type=float, help="cosine beta clip (default 0.999)")
    p.add_argument("--scale-to-T", action="store_const", const=True, help="linear: scale both ends by 1000/T")
    p.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    p.add_argument("--dpi", type=int, default=120, help="PNG resolution (default 120)")
    p.add_argument("--out", type=Path, help="output file (default outputs/viz/<command>.png)")
    p.add_argument("--show", action="store_true", help="also open a window, when a display exists")


def build_parser() -> argparse.ArgumentParser:
    """The ``ddpm-viz`` argument parser with its five subcommands."""
    names = ", ".join(sorted(SCHEDULES))
    parser = _Parser(
        prog=PROG, description="Pictures of the diffusion process, written as PNG/GIF files.", epilog=EPILOG
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schedules", help="beta_t, abar_t and log-SNR of several schedules", epilog=EPILOG)
    p.add_argument(
        "--schedule",
        nargs="+",
        dest="schedules",
        default=["linear", "cosine", "quadratic", "sigmoid"],
        metavar="NAME",
        help=f"schedules to compare (from: {names}; default all four)",
    )
    _add_schedule_options(p, T=1000, seed=0, beta=None)
    p.set_defaults(handler=_cmd_schedules)

    p = sub.add_parser("forward-1d", help="seed 000: a sine wave noised by q(x_t | x_0)", epilog=EPILOG)
    p.add_argument("--schedule", default="linear", help=f"one of {names} (default linear)")
    p.add_argument(
        "--timesteps", type=int, nargs="+", metavar="T", help="t to show (default 0, T/10, ..., T-1)"
    )
    p.add_argument("--length", type=int, default=100, help="points in the sine wave (default 100)")
    p.add_argument(
        "--layout", default="panels", help="panels (one per t, the default) or overlay (as seed 000)"
    )
    _add_schedule_options(p, T=1000, seed=0, beta=(1e-4, 0.02))
    p.set_defaults(handler=_cmd_forward_1d)

    p = sub.add_parser(
        "forward-2d", help="seed 003: 2D Gaussian points noised by q(x_t | x_0)", epilog=EPILOG
    )
    p.add_argument("--schedule", default="linear", help=f"one of {names} (default linear)")
    p.add_argument(
        "--timesteps", type=int, nargs="+", metavar="T", help="t to show (default 0, T/4, T/2, 3T/4, T-1)"
    )
    p.add_argument("--n", type=int, default=1000, help="number of points (default 1000)")
    p.add_argument("--mean", type=float, nargs=2, default=[2.0, 2.0], metavar=("X", "Y"), help="data mean")
    p.add_argument("--std", type=float, default=0.5, help="data std per coordinate (default 0.5)")
    p.add_argument("--lim", type=float, default=4.0, help="axes span [-lim, lim] (default 4)")
    _add_schedule_options(p, T=100, seed=3, beta=(1e-3, 0.02))
    p.set_defaults(handler=_cmd_forward_2d)

    p = sub.add_parser(
        "forward-chain", help="seeds 001/004: x0 through the one-step Markov chain", epilog=EPILOG
    )
    p.add_argument("--schedule", default="linear", help=f"one of {names} (default linear)")
    p.add_argument("--x0", type=float, default=5.0, help="starting value (default 5)")
    p.add_argument("--draws", type=int, default=8, help="independent chains (default 8)")
    _add_schedule_options(p, T=50, seed=1, beta=(1e-4, 0.01))
    p.set_defaults(handler=_cmd_forward_chain)

    p = sub.add_parser("reverse", help="a trained run's reverse process: a figure and a GIF", epilog=EPILOG)
    p.add_argument("run_dir", type=Path, help="a run folder written by ddpm-train (or its checkpoint)")
    p.add_argument("--n", type=int, default=16, help="samples to draw (default 16)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--frames", type=int, default=60, help="at most this many GIF frames (default 60)")
    p.add_argument("--fps", type=int, default=10, help="GIF frames per second (default 10)")
    p.add_argument("--no-gif", action="store_true", help="write only the PNG")
    p.add_argument("--dpi", type=int, default=120, help="PNG resolution (default 120)")
    p.add_argument("--out", type=Path, help="PNG path (default outputs/viz/reverse-<run>.png; GIF beside it)")
    p.add_argument("--show", action="store_true", help="also open a window, when a display exists")
    p.set_defaults(handler=_cmd_reverse)
    return parser


# ---------------------------------------------------------------------------- checks (before any work)
def _require(ok: bool, message: str) -> None:
    if not ok:
        raise _BadInput(message)


#: The command-line options that set a viz argument under another name, for viz's messages.
_OPTION_OF = {"n_draws": "--draws", "max_frames": "--frames"}


def _checked(check: Callable[..., _T], *args: Any) -> _T:
    """Run one of viz's own checks; its ValueError becomes the command's one-line error."""
    try:
        return check(*args)
    except ValueError as err:
        raise _BadInput(str(err)) from None


def _check_arguments(args: argparse.Namespace, *names: str) -> None:
    """viz's rules for the arguments ``names``, named in the message as the options that set them."""
    from ddpm import viz

    options = {name: _OPTION_OF.get(name, f"--{name}") for name in names}
    values = {name: getattr(args, option.removeprefix("--")) for name, option in options.items()}
    _checked(viz.check_arguments, values, options)


def _check_schedule(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """The schedule options the demo will use, checked by viz (it builds the betas: cheap, T numbers)."""
    from ddpm import viz

    return _checked(viz.resolve_schedule, args.schedule, args.T, defaults, _schedule_options(args))[1]


def _check_timesteps(timesteps: Sequence[int] | None, T: int) -> list[int] | None:
    from ddpm import viz

    return None if timesteps is None else _checked(viz.check_timesteps, timesteps, T)


def _check_values(args: argparse.Namespace) -> None:
    """Checks every command shares: numbers are finite, the seed fits torch."""
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            shown = " ".join(f"{v:g}" for v in values)
            raise _BadInput(f"--{dest.replace('_', '-')}={shown} is invalid; give finite numbers")
    problem = seed_problem(args.seed)
    if problem is not None:
        raise _BadInput(problem)


def memory_limit() -> int:
    """The most bytes a command may plan for: the smaller of :data:`MAX_BYTES` and half the memory
    available now (Linux ``MemAvailable``; else the free pages; else :data:`MAX_BYTES` alone)."""
    available: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):  # no such sysconf name (macOS, Windows)
            return MAX_BYTES
    return min(MAX_BYTES, available // 2)


def _size(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


def _data_terms(args: argparse.Namespace, run_chain: tuple[int, int] | None = None) -> list[tuple[int, str]]:
    """``(bytes, the options that set them)`` for each large array a command will allocate.

    Reverse needs ``run_chain``, the run's (sampling steps, values per sample), known once it is loaded;
    before that the smallest (1 step, 1 value) gives a lower bound, enough to refuse an absurd ``--n`` early.
    """

    def pos(v: int) -> int:  # a negative size is refused by the command's own checks, not here
        return max(int(v), 0)

    if args.command == "reverse":
        steps, dims = run_chain or (1, 1)
        chain = (steps + 1) * pos(args.n) * dims * _PER_TRAJECTORY_VALUE
        frames = 0 if args.no_gif else min(steps + 1, pos(args.frames)) * _PER_GIF_FRAME
        known = f" (the run's chain: {steps + 1} states of {dims} values per sample)" if run_chain else ""
        return [
            (chain, f"--n={args.n}{known}"),
            (frames, f"--frames={args.frames}"),
        ]
    T = pos(args.T)
    if args.command == "schedules":
        return [(len(args.schedules) * T * _PER_T, f"--T={args.T} ({len(args.schedules)} schedules)")]
    if args.command == "forward-chain":
        return [
            (T * _PER_CHAIN_STEP, f"--T={args.T}"),
            (pos(args.draws) * (T + 1) * _PER_POINT, f"--T={args.T} and --draws={args.draws}"),
        ]
    given = args.timesteps is not None
    shown = len(args.timesteps) if given else 6  # the default timesteps: at most 6 (forward-1d), 5 (2d)
    per_t, what = (args.length, "--length") if args.command == "forward-1d" else (args.n, "--n")
    options = f"{what}={per_t}" + (f" and {shown} --timesteps" if given else "")
    return [(T * _PER_T, f"--T={args.T}"), (shown * pos(per_t) * _PER_POINT, options)]


def _check_memory(terms: list[tuple[int, str]]) -> None:
    """Refuse, in one line naming the options, a plan that needs more than :func:`memory_limit`."""
    need = sum(b for b, _ in terms)
    limit = memory_limit()
    if need > limit:
        _, options = max(terms)
        raise _BadInput(
            f"{options} would need about {_size(need)} of memory, over the limit of {_size(limit)} "
            f"(the smaller of {MAX_BYTES / 1024**3:g} GiB and half the memory available); use smaller values"
        )


def _check_canvas(fig: Any, dpi: int) -> None:
    """The figure's pixels at ``--dpi``, checked before matplotlib allocates them."""
    width, height = fig.get_size_inches()
    pixels = int(width * dpi) * int(height * dpi)
    _check_memory([(pixels * _PER_PIXEL, f"--dpi={dpi} ({int(width * dpi)} x {int(height * dpi)} pixels)")])


def _out_folder(args: argparse.Namespace) -> Path:
    return args.out.parent if args.out is not None else DEFAULT_DIR


def _check_writable(args: argparse.Namespace) -> None:
    if args.out is not None:  # never into another run's folder, nor over the files of reverse's own run
        from ddpm.run_folder import enclosing_run, out_problem

        run_dir = getattr(args, "run_dir", None)
        png = _out_path(args, "")
        own = enclosing_run(run_dir) if run_dir is not None else None
        problem = out_problem(args.out, own, [png, png.with_suffix(".gif")])
        if problem is not None:
            raise _BadInput(problem)
    hint = "" if args.out is not None else "; choose another place with --out"
    problem = writable_problem(_out_folder(args), "the figure", hint)
    if problem is not None:
        raise _BadInput(problem)


def _check_common(args: argparse.Namespace) -> None:
    _require(args.dpi >= 10, f"--dpi={args.dpi} is invalid; use an integer >= 10")
    if args.out is not None:
        _require(
            not args.out.is_dir(), f"--out={str(args.out)!r} is a folder; give a file path such as x.png"
        )


def _out_path(args: argparse.Namespace, name: str) -> Path:
    out = args.out if args.out is not None else DEFAULT_DIR / f"{name}.png"
    return out if out.suffix else out.with_suffix(".png")


def _finish(fig: Any, args: argparse.Namespace, name: str) -> int:
    from ddpm import viz

    _check_canvas(fig, args.dpi)
    path = _out_path(args, name)
    write_file(path, lambda tmp: viz.save_figure(fig, tmp, dpi=args.dpi))
    print(f"wrote {path}")
    if args.show and not viz.show_figure(fig):
        print("--show: no display available; the figure was only written to file", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- commands
def _cmd_schedules(args: argparse.Namespace) -> Callable[[], int]:
    from ddpm import viz

    _check_common(args)
    options = _schedule_options(args)
    _checked(viz.resolve_schedules, args.schedules, args.T, options)

    def run() -> int:
        return _finish(
            viz.plot_schedules(viz.schedule_curves(args.schedules, args.T, **options)), args, "schedules"
        )

    return run


def _cmd_forward_1d(args: argparse.Namespace) -> Callable[[], int]:
    from ddpm import viz

    _check_common(args)
    opts = _check_schedule(args, viz.SINE_DEMO_BETA_RANGE)
    timesteps = _check_timesteps(args.timesteps, args.T)
    _check_arguments(args, "length", "layout")

    def run() -> int:
        signal = viz.sine_wave(args.length)
        data = viz.forward_1d(signal, args.T, args.schedule, timesteps, args.seed, schedule_kwargs=opts)
        return _finish(viz.plot_forward_1d(data, layout=args.layout), args, "forward-1d")

    return run


def _cmd_forward_2d(args: argparse.Namespace) -> Callable[[], int]:
    from ddpm import viz

    _check_common(args)
    opts = _check_schedule(args, viz.GAUSSIAN_DEMO_BETA_RANGE)
    timesteps = _check_timesteps(args.timesteps, args.T)
    _check_arguments(args, "n", "std", "lim")

    def run() -> int:
        data = viz.forward_2d(
            args.n, args.mean, args.std, args.T, args.schedule, timesteps, args.seed, schedule_kwargs=opts
        )
        return _finish(viz.plot_forward_2d(data, lim=args.lim), args, "forward-2d")

    return run


def _cmd_forward_chain(args: argparse.Namespace) -> Callable[[], int]:
    from ddpm import viz

    _check_common(args)
    opts = _check_schedule(args, viz.CHAIN_DEMO_BETA_RANGE)
    _check_arguments(args, "n_draws")

    def run() -> int:
        data = viz.forward_chain(args.x0, args.T, args.schedule, args.draws, args.seed, schedule_kwargs=opts)
        return _finish(viz.plot_forward_chain(data), args, "forward-chain")

    return run


def _cmd_reverse(args: argparse.Namespace) -> Callable[[], int]:
    _check_common(args)
    _require(
        args.run_dir.exists(), f"run_dir={str(args.run_dir)!r} does not exist; give a ddpm-train run folder"
    )
    _require(args.n >= 1, f"--n={args.n} is invalid; draw at least 1 sample")
    _check_arguments(args, "max_frames", "fps")  # the GIF's, checked before the run is loaded and sampled

    def run() -> int:
        # imported here, after the checks: torch and matplotlib (not Lightning: load_run builds plain torch)
        from ddpm.build import load_run
        from ddpm.results import reverse_process_figures
        from ddpm.samplers.base import require_chain

        # load_run(run_dir) rebuilds the run from its own config and weights. It returns an object with
        #   .model       whose .model.sample(n, return_trajectory=True, generator=...) gives a SampleResult
        #                (samples, trajectory [S+1, n, ...] with x_T first, pred_x0 [S, n, ...], timesteps),
        #                on the network's scale;
        #   .data_shape  the shape of one sample: () or (1,) scalar, (L,) signal, (2,) point, (C, H, W) image;
        #   .data        its kind ("toy" / "image") and .denormalize(x), to show toy data in raw units.
        try:
            loaded = load_run(args.run_dir)
        except (FileNotFoundError, ValueError) as err:  # no checkpoint there, or it does not fit its config
            print(f"{PROG} reverse: error: {err}", file=sys.stderr)
            return 2
        model = loaded.model
        sampler = getattr(model, "sampler", None)  # the run's own; without one, DDPM's T steps
        steps = (
            len(sampler.timesteps(model.diffusion))
            if sampler is not None
            else require_chain(model.diffusion, "ddpm-viz reverse without a sampler").num_timesteps
        )
        _check_memory(_data_terms(args, (steps, math.prod(model.data_shape))))
        name = f"reverse-{args.run_dir.resolve().name}"
        png = _out_path(args, name)
        gif = None if args.no_gif else png.with_suffix(".gif")

        def write(tmp: list[Path]) -> None:
            reverse_process_figures(
                model, loaded.data, tmp[0], tmp[1] if gif else None, n=args.n, seed=args.seed,
                fps=args.fps, max_frames=args.frames, dpi=args.dpi,
            )  # fmt: skip

        write_files([png] if gif is None else [png, gif], write)
        print(f"wrote {png}")
        if gif is not None:
            print(f"wrote {gif}")
        if args.show:
            print("--show: reverse writes files only; open the PNG/GIF above", file=sys.stderr)
        return 0

    return run


def main(argv: list[str] | None = None) -> int:
    """Run ``ddpm-viz``; returns the exit code (0 done, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on syntax errors; return its code instead
        return exc.code if isinstance(exc.code, int) else 0
    try:
        _check_values(args)
        _check_memory(_data_terms(args))  # before the commands' own checks: those build the schedule
        run = args.handler(args)
        _check_writable(args)
        return run()
    except _BadInput as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2
    except WriteError as err:  # the checks passed, yet the final write failed (disk full meanwhile, ...)
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
