"""Pictures of the diffusion process and of training runs, drawn from arrays with matplotlib only.

Every demo comes in two halves: a data function that returns numpy arrays (so the numbers can be tested
against the closed forms) and a plot function that returns a :class:`matplotlib.figure.Figure`::

    from ddpm import viz

    data = viz.forward_2d()                      # seed 003: N((2, 2), 0.5^2 I), T = 100
    viz.save_figure(viz.plot_forward_2d(data), "outputs/viz/forward-2d.png")

Figures are built with ``Figure()`` rather than pyplot, so drawing and saving never needs a display or a
GUI backend; :func:`show_figure` is the one place pyplot is imported.

Timesteps follow the library's 0-based convention: ``abar[t] = prod_{s<=t} (1 - beta[s])`` and
``q_sample(x0, t)`` uses ``abar[t]``, so ``t = 0`` has already taken one (tiny) noising step. The reverse
plots place a sampler's states on the paper's 1-based axis instead (x_T = pure noise at ``T``, the final
sample at ``0``); see :func:`reverse_positions`.

None of these functions emit :class:`~ddpm.schedules.NotPureNoiseWarning`: the seed demos deliberately use
short chains that end far from noise (seed 003 ends at abar = 0.35), and every figure states abar itself.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import SCHEDULES, alphas_cumprod, make_beta_schedule

__all__ = [
    "check_timesteps",
    "default_timesteps",
    "forward_1d",
    "forward_2d",
    "forward_chain",
    "plot_denoising_strip",
    "plot_forward_1d",
    "plot_forward_2d",
    "plot_forward_chain",
    "plot_loss_by_quartile",
    "plot_reverse_1d",
    "plot_reverse_2d",
    "plot_samples_vs_data",
    "plot_schedules",
    "resolve_schedule_kwargs",
    "reverse_positions",
    "save_figure",
    "save_reverse_gif",
    "schedule_curves",
    "show_figure",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

#: dpi used by :func:`save_figure`: a 6.4 x 4.8 in figure comes out 768 x 576 px.
DEFAULT_DPI = 120

#: The seeds' settings, used when a caller gives no schedule options of its own.
SEED_000_SCHEDULE = {"beta_start": 1e-4, "beta_end": 0.02}
SEED_003_SCHEDULE = {"beta_start": 1e-3, "beta_end": 0.02}
SEED_001_SCHEDULE = {"beta_start": 1e-4, "beta_end": 0.01}

#: Where the default timesteps sit as fractions of T (the last one is always T - 1). With T = 1000 the
#: first gives seed 000's 0, 100, 250, 500, 750, 999; with T = 100 the second seed 003's 0, 25, 50, 75, 99.
FORWARD_1D_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75)
FORWARD_2D_FRACTIONS = (0.0, 0.25, 0.5, 0.75)

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


# ------------------------------------------------------------ helpers
def _np(x: ArrayLike) -> np.ndarray:
    """A float64 numpy copy of a tensor or array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _schedule_label(name: str, kwargs: Mapping[str, Any]) -> str:
    opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({opts})" if opts else name


def resolve_schedule_kwargs(
    name: str, defaults: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Options for ``make_beta_schedule(name, ...)``: the ``defaults`` it accepts, updated by ``overrides``.

    Defaults a schedule does not take (``beta_start`` for ``cosine``) are dropped, so a demo's seed settings
    do not break another schedule; an override it does not take is an error.

    Raises:
        ValueError: ``name`` is not a registered schedule, or an override is not one of its options.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is unknown; choose one of {sorted(SCHEDULES)}")
    accepted = [p for p in inspect.signature(SCHEDULES[name]).parameters if p != "T"]
    for key in overrides or {}:
        if key not in accepted:
            raise ValueError(f"schedule {name!r} has no option {key!r}; its options are {accepted}")
    out = {k: v for k, v in (defaults or {}).items() if k in accepted}
    out.update(overrides or {})
    return out


def _betas(name: str, T: int, kwargs: Mapping[str, Any]) -> torch.Tensor:
    # warn=False: the demos' short chains end away from pure noise on purpose, and the figures show abar.
    return make_beta_schedule(name, T, warn=False, **kwargs)


def default_timesteps(T: int, fractions: Sequence[float] = FORWARD_1D_FRACTIONS) -> list[int]:
    """``round(f * T)`` for each fraction, then ``T - 1``; ascending, without repeats, all in [0, T)."""
    ts = [min(round(f * T), T - 1) for f in fractions] + [T - 1]
    return sorted(set(ts))


def check_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    """Return ``timesteps`` as a list of ints, or raise ``ValueError`` naming the first one outside [0, T)."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise ValueError("timesteps is empty; give at least one t in [0, T)")
    for t in ts:
        if not 0 <= t < T:
            raise ValueError(f"timestep t={t} is outside [0, {T - 1}]; with T={T} each t must be in [0, T)")
    return ts


def _abar_label(abar: float) -> str:
    if abar >= 0.99:  # so abar[0] = 0.9999 does not print as 1.000
        return f"{abar:.4f}"
    return f"{abar:.3f}" if abar >= 1e-3 else f"{abar:.1e}"


def reverse_positions(timesteps: Sequence[int]) -> np.ndarray:
    """Where each state of a sampler's trajectory sits on the paper's 1-based t axis.

    ``trajectory[i]`` (``i < S``) is the input to the step at ``timesteps[i]``, i.e. a sample at noise level
    ``abar[timesteps[i]]`` = the paper's x_{t+1}; ``trajectory[S]`` is the final sample x_0. For all T
    ancestral steps this is ``T, T-1, ..., 1, 0``; for DDIM (T=1000, S=10) ``1000, 889, ..., 1, 0``.
    """
    return np.asarray([int(t) + 1 for t in timesteps] + [0], dtype=np.int64)


def _evenly(n_total: int, k: int) -> list[int]:
    """``k`` indices spread over ``0 .. n_total-1``, always including both ends."""
    k = max(1, min(k, n_total))
    if k == 1:
        return [n_total - 1]
    return sorted({round(i * (n_total - 1) / (k - 1)) for i in range(k)})


def _check_trajectory(trajectory: ArrayLike, timesteps: Sequence[int]) -> np.ndarray:
    traj = _np(trajectory)
    if traj.ndim < 2:
        raise ValueError(f"trajectory must be [S+1, N, ...], got shape {traj.shape}")
    if traj.shape[0] != len(timesteps) + 1:
        raise ValueError(
            f"trajectory has {traj.shape[0]} states but timesteps has {len(timesteps)} entries; "
            "expected len(trajectory) == len(timesteps) + 1 (index 0 holds x_T)"
        )
    return traj


def _to_unit(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    return np.clip((images - low) / (high - low), 0.0, 1.0)


def _image_grid(images: np.ndarray, nrow: int, value_range: tuple[float, float]) -> np.ndarray:
    """[B, C, H, W] -> an [H', W', 3] grid in [0, 1] laid out by torchvision's make_grid."""
    from torchvision.utils import make_grid  # torchvision is slow to import and only images need it

    unit = torch.from_numpy(_to_unit(images, value_range)).float()
    grid = make_grid(unit, nrow=nrow, padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def _data_kind(shape: tuple[int, ...]) -> Literal["scalar", "signal", "points", "image"]:
    """What one item of a batch is, from the batch shape [N, ...]."""
    item = shape[1:]
    if len(item) == 0 or (len(item) == 1 and item[0] == 1):
        return "scalar"
    if len(item) == 1:
        return "points" if item[0] == 2 else "signal"
    if len(item) == 3:
        return "image"
    raise ValueError(
        f"cannot tell what items of shape {item} are; expected a scalar [N] or [N, 1], a 1D signal [N, L], "
        "a 2D point [N, 2] or an image [N, C, H, W]"
    )


# ------------------------------------------------------------ schedules
def schedule_curves(
    names: Sequence[str] = ("linear", "cosine", "quadratic", "sigmoid"), T: int = 1000, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """beta_t, abar_t and log-SNR_t = log(abar / (1 - abar)) for each schedule, t = 0 .. T-1.

    Args:
        names: registered schedule names.
        T: chain length.
        **kwargs: schedule options (``beta_start``, ``s``, ...); each schedule gets the ones it accepts.

    Returns:
        ``{name: {"t", "beta", "abar", "log_snr": float64 arrays [T], "kwargs": the options used}}``.

    Raises:
        ValueError: an unknown name, T < 1, bad options, or an option no listed schedule accepts.
    """
    if not names:
        raise ValueError("names is empty; give at least one schedule")
    used: set[str] = set()
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        opts = resolve_schedule_kwargs(name, defaults=kwargs)
        used.update(opts)
        betas = _betas(name, T, opts)
        abar = alphas_cumprod(betas)
        out[name] = {
            "t": np.arange(T),
            "beta": betas.numpy(),
            "abar": abar.numpy(),
            # log(abar) - log1p(-abar) keeps precision where abar is within 1e-5 of 1 (cosine at t = 0).
            "log_snr": (abar.log() - torch.log1p(-abar)).numpy(),
            "kwargs": opts,
        }
    unused = sorted(set(kwargs) - used)
    if unused:
        raise ValueError(f"schedule option(s) {unused} are not taken by any of {list(names)}")
    return out


def plot_schedules(curves: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Three panels against t: beta_t (log scale), abar_t and log-SNR_t, one line per schedule.

    Args:
        curves: the output of :func:`schedule_curves`.
    """
    fig = _new_figure(13.0, 4.4)
    ax_beta, ax_abar, ax_snr = fig.subplots(1, 3)
    for name, c in curves.items():
        final = float(c["abar"][-1])
        label = rf"{_schedule_label(name, c.get('kwargs', {}))}: $\bar\alpha_{{T-1}}$={_abar_label(final)}"
        (line,) = ax_beta.plot(c["t"], c["beta"], lw=1.6)
        ax_abar.plot(c["t"], c["abar"], lw=1.6, color=line.get_color(), label=label)
        ax_snr.plot(c["t"], c["log_snr"], lw=1.6, color=line.get_color())
    T = len(next(iter(curves.values()))["t"])
    ax_beta.set(yscale="log", title=r"$\beta_t$ (log scale)", ylabel=r"$\beta_t$")
    ax_abar.set(title=r"$\bar\alpha_t$: signal kept", ylabel=r"$\bar\alpha_t$", ylim=(-0.02, 1.02))
    ax_snr.set(title=r"log-SNR = log($\bar\alpha_t$ / (1 - $\bar\alpha_t$))", ylabel="log-SNR")
    ax_snr.axhline(0.0, color="0.5", lw=0.8, ls=":")
    for ax in (ax_beta, ax_abar, ax_snr):
        ax.set_xlabel("t")
        ax.set_xlim(0, T - 1)
        ax.grid(True, alpha=0.3)
    ax_abar.legend(fontsize="small", loc="upper right")
    fig.suptitle(f"Noise schedules, T = {T}")
    return fig


# ------------------------------------------------------------ forward demos
def forward_1d(
    signal: ArrayLike | None = None,
    T: int = 1000,
    schedule: str = "linear",
    timesteps: Sequence[int] | None = None,
    seed: int = 0,
    schedule_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seed 000: a 1D signal noised by the closed form q(x_t | x_0) at a few timesteps.

    Args:
        signal: x0 of shape [L]; default ``sin(linspace(0, 4 pi, 100))``.
        T: chain length.
        schedule: schedule name.
        timesteps: 0-based t to show; default 0, T/10, T/4, T/2, 3T/4, T-1 (seed 000's for T = 1000).
        seed: torch seed for the noise (one independent draw per t).
        schedule_kwargs: schedule options; ``beta_start=1e-4, beta_end=0.02`` fill in where accepted.

    Returns:
        ``{"x": positions [L], "x0": [L], "timesteps": [K], "xt": [K, L], "abar": [K], "schedule": label}``.
    """
    x0 = np.sin(np.linspace(0.0, 4.0 * math.pi, 100)) if signal is None else _np(signal)
    if x0.ndim != 1:
        raise ValueError(f"signal must be 1D [L], got shape {x0.shape}")
    opts = resolve_schedule_kwargs(schedule, SEED_000_SCHEDULE, schedule_kwargs)
    diffusion = GaussianDiffusion(_betas(schedule, T, opts))
    ts = check_timesteps(default_timesteps(T) if timesteps is None else timesteps, T)
    gen = torch.Generator().manual_seed(seed)
    x0_batch = torch.from_numpy(x0).float().expand(len(ts), -1)
    noise = torch.randn(x0_batch.shape, generator=gen)
    xt = diffusion.q_sample(x0_batch, torch.tensor(ts), noise)
    return {
        "x": np.arange(x0.size),
        "x0": x0,
        "timesteps": np.asarray(ts),
        "xt": _np(xt),
        "abar": _np(diffusion.alphas_cumprod[ts]),
        "schedule": _schedule_label(schedule, opts),
        "T": T,
    }


def plot_forward_1d(data: Mapping[str, Any], layout: Literal["overlay", "panels"] = "overlay") -> Figure:
    """The noised signals x_t against position, with the clean x0 highlighted.

    Args:
        data: the output of :func:`forward_1d`.
        layout: ``overlay`` draws one line per t on one axes (dark to light as noise grows) under a thick
            x0, as seed 000 does; ``panels`` gives each t its own panel over a thin x0, easier to read.
    """
    ts, cmap = data["timesteps"], colormaps["plasma"]
    colors = [cmap(0.1 + 0.75 * i / max(1, len(ts) - 1)) for i in range(len(ts))]
    labels = [rf"t = {t}, $\bar\alpha$ = {_abar_label(a)}" for t, a in zip(ts, data["abar"], strict=True)]
    if layout == "overlay":
        fig = _new_figure(9.5, 4.8)
        ax = fig.subplots()
        for xt, color, label in zip(data["xt"], colors, labels, strict=True):
            ax.plot(data["x"], xt, color=color, lw=1.2, alpha=0.85, label=label)
        ax.plot(data["x"], data["x0"], color="#1f4fd1", lw=3.0, label=r"$x_0$ (clean)", zorder=5)
        ax.set(xlabel="position in the signal", ylabel="value")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    elif layout == "panels":
        ncols = min(3, len(ts))
        nrows = math.ceil(len(ts) / ncols)
        fig = _new_figure(4.0 * ncols, 2.6 * nrows + 0.6)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True)).ravel()
        for ax, xt, color, label in zip(axes, data["xt"], colors, labels, strict=False):
            ax.plot(data["x"], data["x0"], color="#1f4fd1", lw=1.5, alpha=0.6)
            ax.plot(data["x"], xt, color=color, lw=1.1)
            ax.set_title(label, fontsize="medium")
            ax.grid(True, alpha=0.3)
        for ax in axes[len(ts) :]:
            ax.set_visible(False)
        for ax in axes[(nrows - 1) * ncols :]:
            ax.set_xlabel("position")
        for ax in axes[::ncols]:
            ax.set_ylabel("value")
    else:
        raise ValueError(f"layout={layout!r} is unknown; choose 'overlay' or 'panels'")
    fig.suptitle(f"Forward process $q(x_t | x_0)$ on a 1D signal\n{data['schedule']}, T = {data['T']}")
    return fig


def forward_2d(
    n: int = 1000,
    mean: Sequence[float] = (2.0, 2.0),
    std: float = 0.5,
    T: int = 100,
    schedule: str = "linear",
    timesteps: Sequence[int] | None = None,
    seed: int = 3,
    schedule_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seed 003: n points of N(mean, std^2 I) noised by the closed form at a few timesteps.

    Seed 003 itself uses ``abar[t-1]`` and shows the clean data at t = 0; here t is the library's 0-based
    index throughout, so t = 0 is one step in (abar = 0.999) and t = 99 is the chain's end (abar = 0.347).

    Args:
        n: number of points.
        mean: the data mean (2 numbers).
        std: the data standard deviation per coordinate.
        T: chain length.
        schedule: schedule name.
        timesteps: 0-based t to show; default 0, T/4, T/2, 3T/4, T-1 (seed 003's for T = 100).
        seed: torch seed for x0 and the noise (a fresh draw per t).
        schedule_kwargs: schedule options; ``beta_start=1e-3, beta_end=0.02`` fill in where accepted.

    Returns:
        ``{"x0": [n, 2], "timesteps": [K], "xt": [K, n, 2], "abar": [K], "mean_t": [K, 2],
        "var_t": [K]}`` where ``mean_t = sqrt(abar) mean`` and ``var_t = abar std^2 + 1 - abar`` are the
        closed-form moments of x_t.
    """
    if n < 1:
        raise ValueError(f"n={n!r} is invalid; n must be >= 1")
    if std < 0:
        raise ValueError(f"std={std!r} is negative")
    mu = _np(mean)
    if mu.shape != (2,):
        raise ValueError(f"mean must be 2 numbers, got {list(mu.ravel())}")
    opts = resolve_schedule_kwargs(schedule, SEED_003_SCHEDULE, schedule_kwargs)
    diffusion = GaussianDiffusion(_betas(schedule, T, opts))
    ts = check_timesteps(default_timesteps(T, FORWARD_2D_FRACTIONS) if timesteps is None else timesteps, T)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64) * std + torch.from_numpy(mu)
    x0 = x0.float()
    xt = torch.stack([diffusion.q_sample(x0, t, torch.randn(n, 2, generator=gen)) for t in ts])
    abar = _np(diffusion.alphas_cumprod[ts])
    return {
        "x0": _np(x0),
        "timesteps": np.asarray(ts),
        "xt": _np(xt),
        "abar": abar,
        "mean_t": np.sqrt(abar)[:, None] * mu[None, :],
        "var_t": abar * std**2 + 1.0 - abar,
        "mean": mu,
        "std": float(std),
        "schedule": _schedule_label(schedule, opts),
        "T": T,
    }


def plot_forward_2d(data: Mapping[str, Any], lim: float = 4.0) -> Figure:
    """One scatter panel per t on fixed axes [-lim, lim], with the closed-form mean and 2-std circle.

    Args:
        data: the output of :func:`forward_2d`.
        lim: half-width of every panel's axes (seed 003 uses 4).
    """
    k = len(data["timesteps"])
    fig = _new_figure(max(3.0 * k, 7.0), 4.2)
    axes = np.atleast_1d(fig.subplots(1, k, sharex=True, sharey=True))
    circle = np.linspace(0.0, 2.0 * math.pi, 200)
    for i, ax in enumerate(axes):
        pts, m, var = data["xt"][i], data["mean_t"][i], data["var_t"][i]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.45, color="C0", linewidths=0, label=r"$x_t$")
        r = 2.0 * math.sqrt(var)
        circle_x, circle_y = m[0] + r * np.cos(circle), m[1] + r * np.sin(circle)
        ax.plot(circle_x, circle_y, color="C3", lw=1.0, ls="--", label="closed-form 2 std")
        ax.plot(*m, marker="x", ls="", color="C3", ms=9, mew=2.5, label="closed-form mean")
        ax.plot(0, 0, marker="+", ls="", color="0.3", ms=9, mew=1.5, label="origin")
        ax.set_title(rf"t = {data['timesteps'][i]}, $\bar\alpha$ = {_abar_label(data['abar'][i])}")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="$x_1$")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("$x_2$")
    axes[0].legend(loc="lower left", fontsize="x-small", markerscale=1.0)
    mean = ", ".join(f"{v:g}" for v in data["mean"])
    fig.suptitle(
        f"Forward process $q(x_t | x_0)$ on {len(data['x0'])} points of N(({mean}), {data['std']:g}² I)\n"
        f"{data['schedule']}, T = {data['T']}"
    )
    return fig


def forward_chain(
    x0: float = 5.0,
    T: int = 50,
    schedule: str = "linear",
    n_draws: int = 8,
    seed: int = 1,
    schedule_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seeds 001/004: the scalar x0 pushed through the one-step Markov chain, several independent draws.

    Column k of ``paths`` is the state after the steps t = 0 .. k-1 (``GaussianDiffusion.q_step``), so it
    is distributed as ``q_sample(x0, k - 1)``: mean ``sqrt(abar[k-1]) x0``, std ``sqrt(1 - abar[k-1])``,
    with abar = 1 before any step (k = 0).

    Args:
        x0: the starting value.
        T: chain length.
        schedule: schedule name.
        n_draws: number of independent chains.
        seed: torch seed for the noise.
        schedule_kwargs: schedule options; ``beta_start=1e-4, beta_end=0.01`` fill in where accepted.

    Returns:
        ``{"k": [T+1], "paths": [n_draws, T+1], "mean": [T+1], "std": [T+1], "abar": [T+1], "x0": x0}``.
    """
    if n_draws < 1:
        raise ValueError(f"n_draws={n_draws!r} is invalid; n_draws must be >= 1")
    opts = resolve_schedule_kwargs(schedule, SEED_001_SCHEDULE, schedule_kwargs)
    diffusion = GaussianDiffusion(_betas(schedule, T, opts))
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n_draws,), float(x0))
    paths = [x]
    for t in range(T):
        x = diffusion.q_step(x, t, torch.randn(n_draws, generator=gen))
        paths.append(x)
    abar = np.concatenate([[1.0], _np(diffusion.alphas_cumprod)])
    return {
        "k": np.arange(T + 1),
        "paths": _np(torch.stack(paths, dim=1)),
        "mean": np.sqrt(abar) * x0,
        "std": np.sqrt(1.0 - abar),
        "abar": abar,
        "x0": float(x0),
        "schedule": _schedule_label(schedule, opts),
        "T": T,
    }


def plot_forward_chain(data: Mapping[str, Any]) -> Figure:
    """The Markov-chain draws against steps taken, over the closed-form mean and a +-2 std band.

    Args:
        data: the output of :func:`forward_chain`.
    """
    fig = _new_figure(9.0, 4.8)
    ax = fig.subplots()
    k, mean, std = data["k"], data["mean"], data["std"]
    ax.fill_between(k, mean - 2 * std, mean + 2 * std, color="C3", alpha=0.15, label="closed form ±2 std")
    for i, path in enumerate(data["paths"]):
        ax.plot(k, path, lw=1.0, alpha=0.7, color="C0", label="Markov chain draws" if i == 0 else None)
    ax.plot(k, mean, color="C3", lw=2.2, label=r"closed-form mean $\sqrt{\bar\alpha}\,x_0$")
    ax.axhline(data["x0"], color="0.3", lw=1.0, ls="--", label=f"$x_0$ = {data['x0']:g}")
    ax.set(xlabel="Markov steps taken k (k = 0 is $x_0$)", ylabel="value", xlim=(0, k[-1]))
    fig.suptitle(
        f"Forward Markov chain $x_k = \\sqrt{{1-\\beta}}\\,x_{{k-1}} + \\sqrt{{\\beta}}\\,\\epsilon$, "
        f"{len(data['paths'])} draws\n{data['schedule']}, T = {data['T']}, "
        rf"final $\bar\alpha$ = {_abar_label(data['abar'][-1])}"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return fig


# ------------------------------------------------------------ reverse process
def plot_reverse_1d(
    trajectory: ArrayLike,
    timesteps: Sequence[int],
    target: float | ArrayLike | None = None,
    n_chains: int = 8,
    n_snapshots: int = 5,
    index: int = 0,
) -> Figure:
    """The reverse chain of scalar or 1D-signal samples.

    Scalars ([S+1, N] or [S+1, N, 1]): value against t for ``n_chains`` chains, as seed 001 plots it,
    from x_T at the left to the sample at t = 0 on the right. Signals ([S+1, N, L]): ``n_snapshots``
    snapshots of signal ``index``, from noise (light) to the final sample (dark, thick).

    Args:
        trajectory: ``SampleResult.trajectory``; index 0 holds x_T.
        timesteps: ``SampleResult.timesteps`` (descending, S entries).
        target: a reference drawn dashed: the x0 value (scalars) or a signal [L].
        n_chains: chains to draw for scalar data.
        n_snapshots: snapshots to draw for signals.
        index: which signal to follow.
    """
    traj = _check_trajectory(trajectory, timesteps)
    pos = reverse_positions(timesteps)
    fig = _new_figure(9.0, 4.8)
    ax = fig.subplots()
    item = int(np.prod(traj.shape[2:], dtype=np.int64))
    if item == 1:
        values = traj.reshape(traj.shape[0], -1)[:, :n_chains]
        for j in range(values.shape[1]):
            ax.plot(pos, values[:, j], lw=1.0, alpha=0.75, label="reverse chains" if j == 0 else None)
        ax.set(xlabel="t  (x_T = noise on the left, sample at t = 0 on the right)", ylabel="value")
        ax.set_xlim(pos[0], pos[-1])
        if target is not None:
            ax.axhline(float(_np(target).ravel()[0]), color="C3", ls="--", lw=1.5, label="target $x_0$")
        ax.set_title(f"Reverse process: {values.shape[1]} chains, {len(timesteps)} steps")
    else:
        signals = traj.reshape(traj.shape[0], traj.shape[1], -1)[:, index]
        snaps = _evenly(traj.shape[0], n_snapshots)
        cmap = colormaps["viridis_r"]
        for j, s in enumerate(snaps):
            last = s == traj.shape[0] - 1
            ax.plot(
                signals[s],
                color=cmap(0.15 + 0.85 * j / max(1, len(snaps) - 1)),
                lw=2.6 if last else 1.1,
                alpha=1.0 if last else 0.7,
                label=f"t = {pos[s]}" + (" (sample)" if last else " (x_T)" if s == 0 else ""),
            )
        if target is not None:
            ax.plot(_np(target).ravel(), color="C3", ls="--", lw=1.5, label="reference")
        ax.set(xlabel="position in the signal", ylabel="value")
        ax.set_title(f"Reverse process of signal {index}: {len(timesteps)} steps")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def _square_limits(*arrays: np.ndarray, margin: float = 0.08) -> tuple[float, float]:
    pts = np.concatenate([a.reshape(-1, 2) for a in arrays])
    low, high = np.percentile(pts, [0.2, 99.8])
    pad = (high - low) * margin + 1e-6
    return float(low - pad), float(high + pad)


def plot_reverse_2d(
    trajectory: ArrayLike,
    timesteps: Sequence[int],
    steps: Sequence[int] | None = None,
    data: ArrayLike | None = None,
    n_panels: int = 5,
    lim: tuple[float, float] | None = None,
) -> Figure:
    """Scatter of 2D samples at a few states of the reverse chain, on shared axes.

    Args:
        trajectory: [S+1, N, 2]; index 0 holds x_T.
        timesteps: the S descending timesteps.
        steps: indices into ``trajectory`` to show; default ``n_panels`` evenly spaced from x_T to the sample.
        data: training points [M, 2], drawn in grey under every panel.
        n_panels: how many panels when ``steps`` is None.
        lim: axis limits for both coordinates; default fits x_T, the sample and the data.
    """
    traj = _check_trajectory(trajectory, timesteps)
    if traj.shape[-1] != 2 or traj.ndim != 3:
        raise ValueError(f"plot_reverse_2d needs a trajectory [S+1, N, 2], got shape {traj.shape}")
    pos = reverse_positions(timesteps)
    idx = _evenly(traj.shape[0], n_panels) if steps is None else [int(s) for s in steps]
    for s in idx:
        if not 0 <= s < traj.shape[0]:
            raise ValueError(
                f"step index {s} is outside [0, {traj.shape[0] - 1}] (trajectory has S+1 states)"
            )
    ref = _np(data) if data is not None else None
    if lim is None:
        lim = _square_limits(traj[0], traj[-1], *([ref] if ref is not None else []))
    fig = _new_figure(max(3.0 * len(idx), 6.0), 3.7)
    axes = np.atleast_1d(fig.subplots(1, len(idx), sharex=True, sharey=True))
    for ax, s in zip(axes, idx, strict=True):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=4, color="0.7", alpha=0.5, linewidths=0, label="data")
        ax.scatter(traj[s][:, 0], traj[s][:, 1], s=5, color="C0", alpha=0.6, linewidths=0, label="samples")
        suffix = " ($x_T$)" if s == 0 else " (sample)" if s == traj.shape[0] - 1 else ""
        ax.set_title(f"t = {pos[s]}{suffix}")
        ax.set(xlim=lim, ylim=lim, aspect="equal", xlabel="$x_1$")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("$x_2$")
    axes[-1].legend(loc="lower right", fontsize="x-small", markerscale=2)
    fig.suptitle(f"Reverse process: {traj.shape[1]} samples, {len(timesteps)} steps")
    return fig


def plot_denoising_strip(
    images: ArrayLike,
    timesteps: Sequence[int],
    steps: Sequence[int] | None = None,
    n_images: int = 4,
    n_columns: int = 8,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Figure:
    """Rows = images, columns = chosen reverse steps, laid out with ``torchvision.utils.make_grid``.

    Args:
        images: [S+1, N, C, H, W] (``SampleResult.trajectory``, x_t) or [S, N, C, H, W]
            (``SampleResult.pred_x0``, the x0 predicted at each ``timesteps[i]``).
        timesteps: the S descending timesteps.
        steps: indices into ``images`` to show; default ``n_columns`` evenly spaced, first and last included.
        n_images: rows (images followed).
        n_columns: columns when ``steps`` is None.
        value_range: the pixel range, mapped to black .. white.
    """
    arr = _np(images)
    if arr.ndim != 5:
        raise ValueError(f"images must be [S(+1), N, C, H, W], got shape {arr.shape}")
    S = len(timesteps)
    if arr.shape[0] == S + 1:
        kind, labels = "$x_t$", [f"t={p}" for p in reverse_positions(timesteps)]
    elif arr.shape[0] == S:
        # pred_x0[i] is made from trajectory[i], which sits at reverse_positions(timesteps)[i].
        kind, labels = r"predicted $\hat x_0$", [f"t={p}" for p in reverse_positions(timesteps)[:-1]]
    else:
        raise ValueError(
            f"images has {arr.shape[0]} steps; expected S={S} (pred_x0) or S+1={S + 1} (trajectory)"
        )
    idx = _evenly(arr.shape[0], n_columns) if steps is None else [int(s) for s in steps]
    for s in idx:
        if not 0 <= s < arr.shape[0]:
            raise ValueError(f"step index {s} is outside [0, {arr.shape[0] - 1}]")
    rows = min(n_images, arr.shape[1])
    _, _, C, H, W = arr.shape
    # [rows, cols, C, H, W] flattened row-major, so make_grid(nrow=cols) puts one image per row.
    tiles = arr[idx][:, :rows].transpose(1, 0, 2, 3, 4).reshape(-1, C, H, W)
    grid = _image_grid(tiles, nrow=len(idx), value_range=value_range)
    fig = _new_figure(max(5.0, min(1.1 * len(idx) + 1.2, 14.0)), min(1.1 * rows + 1.0, 12.0))
    ax = fig.subplots()
    ax.imshow(grid, interpolation="nearest")
    pad = 2
    ax.set_xticks(
        [pad + j * (W + pad) + W / 2 for j in range(len(idx))], [labels[s] for s in idx], fontsize=8
    )
    ax.set_yticks(
        [pad + r * (H + pad) + H / 2 for r in range(rows)], [f"#{r}" for r in range(rows)], fontsize=8
    )
    ax.tick_params(length=0)
    ax.set_xlabel("t  (the reverse process runs left to right)")
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"Denoising, {kind}: {len(timesteps)} steps")
    return fig


def _render(fig: Figure) -> Any:
    """The figure as a PIL RGB image at its own dpi."""
    from PIL import Image  # Pillow comes with matplotlib

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def _animate(fig: Figure, n_frames: int, update: Any, moving: Sequence[Any]) -> list[Any]:
    """Render ``update(i)`` for each frame, redrawing only the ``moving`` artists over a fixed background."""
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    update(0)
    canvas.draw()  # solves the constrained layout once, with every artist in place
    # A frozen layout keeps the axes still as titles change; blitting the moving artists onto a saved
    # background is ~10x faster than redrawing ticks and labels for every frame.
    fig.set_layout_engine("none")
    for artist in moving:
        artist.set_animated(True)
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    frames = []
    for i in range(n_frames):
        canvas.restore_region(background)
        update(i)
        for artist in moving:
            fig.draw_artist(artist)
        rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
        # Octree quantisation is ~40x faster than Pillow's default median cut and looks the same on plots.
        frames.append(rgb.quantize(256, method=Image.Quantize.FASTOCTREE))
    return frames


def save_reverse_gif(
    trajectory: ArrayLike,
    timesteps: Sequence[int],
    path: str | os.PathLike[str],
    kind: Literal["1d", "2d", "image"] = "2d",
    fps: int = 10,
    max_frames: int = 60,
    data: ArrayLike | None = None,
    n_items: int = 16,
    hold_last_s: float = 1.5,
    dpi: int = 80,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Write an animated GIF of the reverse chain, one frame per shown state, x_T first.

    Args:
        trajectory: ``SampleResult.trajectory`` [S+1, N, ...]; index 0 holds x_T.
        timesteps: the S descending timesteps.
        path: where to write the .gif (parent folders are created).
        kind: ``1d`` (scalars: the chains growing from x_T; signals: the current signals), ``2d`` (scatter)
            or ``image`` (a grid of images).
        fps: frames per second.
        max_frames: at most this many frames, evenly spaced over the chain (x_T and the sample included).
        data: reference drawn in every frame: training points [M, 2] (``2d``) or the x0 value (``1d``).
        n_items: chains or images shown (signals: at most 3, so they stay readable).
        hold_last_s: the last frame stays this long, so the loop pauses on the result.
        dpi: frame resolution; frames are 6.4 x 4.8 in (``1d``, ``2d``) or 5 x 5.4 in (``image``).
        value_range: pixel range for ``image``.

    Returns:
        The path written. The GIF has ``min(S + 1, max_frames)`` frames.
    """
    traj = _check_trajectory(trajectory, timesteps)
    if fps < 1:
        raise ValueError(f"fps={fps!r} is invalid; fps must be >= 1")
    if max_frames < 1:
        raise ValueError(f"max_frames={max_frames!r} is invalid; max_frames must be >= 1")
    if kind not in ("1d", "2d", "image"):
        raise ValueError(f"kind={kind!r} is unknown; choose '1d', '2d' or 'image'")
    if kind == "2d" and (traj.ndim != 3 or traj.shape[-1] != 2):
        raise ValueError(f"kind='2d' needs a trajectory [S+1, N, 2], got shape {traj.shape}")
    if kind == "image" and traj.ndim != 5:
        raise ValueError(f"kind='image' needs a trajectory [S+1, N, C, H, W], got shape {traj.shape}")
    pos = reverse_positions(timesteps)
    shown = _evenly(traj.shape[0], max_frames)
    fig = _new_figure(5.0, 5.4) if kind == "image" else _new_figure(6.4, 4.8)
    fig.set_dpi(dpi)
    ax = fig.subplots()

    def title(i: int) -> str:
        where = " ($x_T$)" if shown[i] == 0 else " (sample)" if shown[i] == traj.shape[0] - 1 else ""
        return f"Reverse process, t = {pos[shown[i]]}{where}  [{len(timesteps)} steps]"

    if kind == "1d":
        flat = traj.reshape(traj.shape[0], traj.shape[1], -1)
        scalar = flat.shape[2] == 1
        flat = flat[:, : n_items if scalar else min(n_items, 3)]
        low, high = float(flat.min()), float(flat.max())
        if data is not None and scalar:
            ref = float(_np(data).ravel()[0])
            low, high = min(low, ref), max(high, ref)
            ax.axhline(ref, color="C3", ls="--", lw=1.5, label="target $x_0$")
            ax.legend(loc="lower right", fontsize="small")
        pad = 0.05 * (high - low) + 1e-6
        ax.set_ylim(low - pad, high + pad)
        ax.grid(True, alpha=0.3)
        if scalar:
            lines = [ax.plot([], [], lw=1.0, alpha=0.8)[0] for _ in range(flat.shape[1])]
            ax.set(xlim=(pos[0], pos[-1]), xlabel="t  (sampling runs left to right)", ylabel="value")
        else:
            lines = [ax.plot(flat[0, j], lw=1.2, alpha=0.85)[0] for j in range(flat.shape[1])]
            ax.set(xlabel="position in the signal", ylabel="value")

        moving = [*lines, ax.title]

        def update(i: int) -> None:
            s = shown[i]
            for j, line in enumerate(lines):
                if scalar:
                    line.set_data(pos[: s + 1], flat[: s + 1, j, 0])
                else:
                    line.set_ydata(flat[s, j])
            ax.set_title(title(i))

    elif kind == "2d":
        ref2 = _np(data) if data is not None else None
        lim = _square_limits(traj[0], traj[-1], *([ref2] if ref2 is not None else []))
        if ref2 is not None:
            ax.scatter(ref2[:, 0], ref2[:, 1], s=4, color="0.7", alpha=0.5, linewidths=0, label="data")
        scat = ax.scatter(
            traj[0][:, 0], traj[0][:, 1], s=6, color="C0", alpha=0.6, linewidths=0, label="samples"
        )
        ax.set(xlim=lim, ylim=lim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize="small", markerscale=2)

        moving = [scat, ax.title]

        def update(i: int) -> None:
            scat.set_offsets(traj[shown[i]])
            ax.set_title(title(i))

    else:
        count = min(n_items, traj.shape[1])
        nrow = math.ceil(math.sqrt(count))
        image = ax.imshow(_image_grid(traj[0][:count], nrow, value_range), interpolation="nearest")
        ax.set_axis_off()

        moving = [image, ax.title]

        def update(i: int) -> None:
            image.set_data(_image_grid(traj[shown[i]][:count], nrow, value_range))
            ax.set_title(title(i))

    frames = _animate(fig, len(shown), update, moving)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame_ms = round(1000 / fps)
    durations = [frame_ms] * (len(frames) - 1) + [max(frame_ms, round(1000 * hold_last_s))]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out


# ------------------------------------------------------------ training runs
def plot_samples_vs_data(
    samples: ArrayLike,
    data: ArrayLike,
    n_show: int = 8,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Figure:
    """Generated samples next to training data, drawn according to the item shape.

    Scalars [N] / [N, 1]: overlaid histograms (constant data as a vertical line); 1D signals [N, L]: a few
    signals each in two panels; 2D points [N, 2]: both scattered on shared axes; images [N, C, H, W]: a
    data grid and a sample grid side by side (``n_show`` x ``n_show`` at most).

    Args:
        samples: generated items.
        data: training items of the same item shape.
        n_show: signals per panel, or images per grid row.
        value_range: pixel range of images.
    """
    gen, ref = _np(samples), _np(data)
    kind = _data_kind(ref.shape)
    if _data_kind(gen.shape) != kind or (kind != "scalar" and gen.shape[1:] != ref.shape[1:]):
        raise ValueError(f"samples {gen.shape} and data {ref.shape} do not have the same item shape")

    if kind == "scalar":
        fig = _new_figure(7.5, 4.6)
        ax = fig.subplots()
        g, d = gen.ravel(), ref.ravel()
        if np.ptp(d) < 1e-9:
            ax.axvline(d[0], color="C3", lw=2.5, label=f"data (constant {d[0]:.4g})")
            bins = np.histogram_bin_edges(g, bins=40)
        else:
            bins = np.histogram_bin_edges(np.concatenate([g, d]), bins=40)
            ax.hist(
                d,
                bins=bins,
                density=True,
                alpha=0.5,
                color="C3",
                label=f"data: {d.mean():.3g} ± {d.std():.3g}",
            )
        ax.hist(
            g,
            bins=bins,
            density=True,
            alpha=0.5,
            color="C0",
            label=f"samples: {g.mean():.3g} ± {g.std():.3g}",
        )
        ax.set(xlabel="value", ylabel="density", title=f"Samples (n={g.size}) vs data (n={d.size})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    elif kind == "points":
        fig = _new_figure(6.4, 5.6)
        ax = fig.subplots()
        ax.scatter(
            ref[:, 0], ref[:, 1], s=5, alpha=0.4, color="C3", linewidths=0, label=f"data (n={len(ref)})"
        )
        ax.scatter(
            gen[:, 0], gen[:, 1], s=5, alpha=0.4, color="C0", linewidths=0, label=f"samples (n={len(gen)})"
        )
        lim = _square_limits(ref, gen)
        ax.set(xlim=lim, ylim=lim, aspect="equal", xlabel="$x_1$", ylabel="$x_2$", title="Samples vs data")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", markerscale=3, loc="upper left")
    elif kind == "signal":
        fig = _new_figure(11.0, 4.2)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, arr, name in ((axes[0], ref, "data"), (axes[1], gen, "samples")):
            for j in range(min(n_show, len(arr))):
                ax.plot(arr[j], lw=1.0, alpha=0.8)
            ax.set(title=f"{name}: {min(n_show, len(arr))} of {len(arr)}", xlabel="position in the signal")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("value")
        fig.suptitle("Samples vs data")
    else:
        fig = _new_figure(11.0, 5.8)
        axes = fig.subplots(1, 2)
        for ax, arr, name in ((axes[0], ref, "data"), (axes[1], gen, "samples")):
            count = min(n_show * n_show, len(arr))
            nrow = min(n_show, math.ceil(math.sqrt(count)))
            ax.imshow(_image_grid(arr[:count], nrow, value_range), interpolation="nearest")
            ax.set_title(f"{name}: {count} of {len(arr)}")
            ax.set_axis_off()
        fig.suptitle("Samples vs data")
    return fig


def plot_loss_by_quartile(
    steps: ArrayLike,
    losses_by_quartile: Sequence[ArrayLike] | Mapping[str, ArrayLike],
    T: int | None = None,
    log_scale: bool = True,
) -> Figure:
    """Training loss split by where t falls in [0, T), one line per quarter, against the training step.

    Args:
        steps: training steps [K].
        losses_by_quartile: four sequences of length K (t in the first .. last quarter of [0, T)), or a
            mapping from label to sequence. NaN marks a step with no sample in that quarter; it is skipped.
        T: chain length, used to label the quarters with their t range.
        log_scale: log y axis (the quarters' losses differ by orders of magnitude under eps prediction).
    """
    x = _np(steps)
    if isinstance(losses_by_quartile, Mapping):
        items = [(str(k), _np(v)) for k, v in losses_by_quartile.items()]
    else:
        series = [_np(v) for v in losses_by_quartile]
        if len(series) != 4:
            raise ValueError(
                f"losses_by_quartile has {len(series)} series; expected 4 (one per quarter of t)"
            )
        if T is not None:
            bounds = [q * T // 4 for q in range(5)]
            names = [f"t ∈ [{bounds[q]}, {bounds[q + 1]})" for q in range(4)]
        else:
            names = [f"quarter {q + 1} of t" + (" (least noise)" if q == 0 else "") for q in range(4)]
        items = list(zip(names, series, strict=True))
    fig = _new_figure(8.0, 4.6)
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    for q, (name, y) in enumerate(items):
        if y.shape != x.shape:
            raise ValueError(f"loss series {name!r} has shape {y.shape}; steps has {x.shape}")
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], lw=1.5, color=cmap(q / max(1, len(items) - 1) * 0.9), label=name)
    if log_scale:
        ax.set_yscale("log")
    ax.set(xlabel="training step", ylabel="loss", title="Training loss by timestep quarter")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


# ------------------------------------------------------------ output
def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = DEFAULT_DPI) -> Path:
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise), creating parent folders.

    The image is exactly ``fig.get_size_inches() * dpi`` pixels: no tight bounding box, since constrained
    layout already fits the labels and a fixed size keeps figures comparable between runs.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format=out.suffix.lstrip(".").lower() or "png")
    return out


def show_figure(fig: Figure) -> bool:
    """Open ``fig`` in a window and block until it is closed; False (nothing shown) without a display."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    import matplotlib.pyplot as plt

    if plt.get_backend().lower() in _NON_INTERACTIVE:
        return False
    try:
        plt.figure(fig)  # matplotlib >= 3.10 adopts a Figure made without pyplot
    except (TypeError, ValueError):
        # Older matplotlib cannot adopt it: show a rendered copy instead.
        image = _render(fig)
        w, h = fig.get_size_inches()
        view = plt.figure(figsize=(w, h))
        view.add_axes((0, 0, 1, 1)).imshow(np.asarray(image))
        view.axes[0].set_axis_off()
    plt.show()
    return True
