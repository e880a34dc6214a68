"""The seed tutorials' demonstrations: noise schedules and the forward process on a sine wave (seed
tutorial 000), a 2D Gaussian (003) and the one-step Markov chain (001 and 004).

Every demo comes in two halves: a data function that returns numpy arrays (so the numbers can be tested
against the closed forms) and a plot function that returns a :class:`matplotlib.figure.Figure`.

Timesteps follow the library's 0-based convention: ``abar[t] = prod_{s<=t} (1 - beta[s])`` and
``q_sample(x0, t)`` uses ``abar[t]``, so ``t = 0`` has already taken one (tiny) noising step.

None of these functions emit :class:`~ddpm.schedules.NotPureNoiseWarning`: the tutorials deliberately use
short chains that end far from noise (tutorial 003's ends at abar = 0.35), and every figure states abar.

"Seed" names a tutorial in prose (seed tutorial 003) and an RNG seed in code (``seed=3``), never both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import alphas_cumprod
from ddpm.viz.checks import (
    Forward1DLayout,
    check_arguments,
    check_timesteps,
    resolve_schedule,
    resolve_schedules,
)
from ddpm.viz.figures import ArrayLike, _new_figure, _np

#: Each demo's beta range, filled in where its schedule takes ``beta_start`` / ``beta_end`` and the caller
#: gives none: the range of the seed tutorial the demo comes from, so the default figures match the tutorials.
SINE_DEMO_BETA_RANGE = {"beta_start": 1e-4, "beta_end": 0.02}  # seed tutorial 000 (DDPM sec. 4's range)
GAUSSIAN_DEMO_BETA_RANGE = {"beta_start": 1e-3, "beta_end": 0.02}  # seed tutorial 003
CHAIN_DEMO_BETA_RANGE = {"beta_start": 1e-4, "beta_end": 0.01}  # seed tutorials 001 and 004

#: Default RNG seeds of the demos' random draws. Each is the number of the demo's seed tutorial, a label
#: rather than a tuned value; kept so that the default figures stay the same.
GAUSSIAN_DEMO_RNG_SEED = 3  # from seed tutorial 003
CHAIN_DEMO_RNG_SEED = 1  # from seed tutorial 001

#: Where the default timesteps sit as fractions of T (the last one is always T - 1). With T = 1000 the
#: first gives seed tutorial 000's 0, 100, 250, 500, 750, 999; with T = 100 the second tutorial 003's
#: 0, 25, 50, 75, 99.
FORWARD_1D_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75)
FORWARD_2D_FRACTIONS = (0.0, 0.25, 0.5, 0.75)


def _schedule_label(name: str, kwargs: Mapping[str, Any]) -> str:
    opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kwargs.items())
    return f"{name}({opts})" if opts else name


def _abar_label(abar: float) -> str:
    if abar >= 0.99:  # so abar[0] = 0.9999 does not print as 1.000
        return f"{abar:.4f}"
    return f"{abar:.3f}" if abar >= 1e-3 else f"{abar:.1e}"


def default_timesteps(T: int, fractions: Sequence[float] = FORWARD_1D_FRACTIONS) -> list[int]:
    """``round(f * T)`` for each fraction, then ``T - 1``; ascending, without repeats, all in [0, T)."""
    ts = [min(round(f * T), T - 1) for f in fractions] + [T - 1]
    return sorted(set(ts))


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
    out: dict[str, dict[str, Any]] = {}
    for name, (betas, opts) in resolve_schedules(names, T, kwargs).items():
        abar = alphas_cumprod(betas)  # DDPM eq. 4: abar_t = prod_{s<=t} (1 - beta_s)
        out[name] = {
            "t": np.arange(T),
            "beta": betas.numpy(),
            "abar": abar.numpy(),
            # VDM (Kingma et al. 2021) eq. 2, SNR = alpha^2 / sigma^2 = abar / (1 - abar); log1p(-abar) keeps
            # precision where abar is within 1e-5 of 1 (cosine at t = 0).
            "log_snr": (abar.log() - torch.log1p(-abar)).numpy(),
            "kwargs": opts,
        }
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


# ------------------------------------------------------------ forward process
def sine_wave(length: int = 100) -> np.ndarray:
    """Seed tutorial 000's 1D signal: two periods of a sine, ``sin(linspace(0, 4 pi, length))``."""
    check_arguments({"length": length})
    return np.sin(np.linspace(0.0, 4.0 * math.pi, length))


def forward_1d(
    signal: ArrayLike | None = None,
    T: int = 1000,
    schedule: str = "linear",
    timesteps: Sequence[int] | None = None,
    seed: int = 0,
    schedule_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seed tutorial 000: a 1D signal noised by the closed form q(x_t | x_0) at a few timesteps.

    Args:
        signal: x0 of shape [L]; default :func:`sine_wave` of 100 points.
        T: chain length.
        schedule: schedule name.
        timesteps: 0-based t to show; default 0, T/10, T/4, T/2, 3T/4, T-1 (tutorial 000's for T = 1000).
        seed: torch RNG seed for the noise (one independent draw per t).
        schedule_kwargs: schedule options; :data:`SINE_DEMO_BETA_RANGE` fills in the ones left out.

    Returns:
        ``{"x": positions [L], "x0": [L], "timesteps": [K], "xt": [K, L], "abar": [K], "schedule": label}``.
    """
    x0 = sine_wave() if signal is None else _np(signal)
    if x0.ndim != 1:
        raise ValueError(f"signal must be 1D [L], got shape {x0.shape}")
    betas, opts = resolve_schedule(schedule, T, SINE_DEMO_BETA_RANGE, schedule_kwargs)
    diffusion = GaussianDiffusion(betas)
    ts = check_timesteps(default_timesteps(T) if timesteps is None else timesteps, T)
    gen = torch.Generator().manual_seed(seed)
    x0_batch = torch.from_numpy(x0).float().expand(len(ts), -1)
    noise = torch.randn(x0_batch.shape, generator=gen)
    xt = diffusion.q_sample(x0_batch, torch.tensor(ts), noise)  # DDPM eq. 4
    return {
        "x": np.arange(x0.size),
        "x0": x0,
        "timesteps": np.asarray(ts),
        "xt": _np(xt),
        "abar": _np(diffusion.alphas_cumprod[ts]),
        "schedule": _schedule_label(schedule, opts),
        "T": T,
    }


def plot_forward_1d(data: Mapping[str, Any], layout: Forward1DLayout = "panels") -> Figure:
    """The noised signals x_t against position, with the clean x0 highlighted.

    Args:
        data: the output of :func:`forward_1d`.
        layout: ``panels`` (the default) gives each t its own panel, on shared axes, with the clean x0
            drawn faintly behind x_t, so every t can be read on its own (as :func:`plot_forward_2d` does);
            ``overlay`` draws one line per t on one axes (dark to light as noise grows) under a thick x0, as
            seed tutorial 000 does.
    """
    check_arguments({"layout": layout})
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
    else:  # panels
        ncols = min(3, len(ts))
        nrows = math.ceil(len(ts) / ncols)
        fig = _new_figure(4.0 * ncols, 2.6 * nrows + 0.6)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True)).ravel()
        for ax, xt, color, label in zip(axes, data["xt"], colors, labels, strict=False):
            ax.plot(data["x"], xt, color=color, lw=1.1, label=r"$x_t$")
            # the clean signal, faint and behind, so x_t stays the thing read in each panel
            ax.plot(data["x"], data["x0"], color="0.45", lw=1.3, alpha=0.35, label=r"$x_0$ (clean)", zorder=0)
            ax.set_title(label, fontsize="medium")
            ax.grid(True, alpha=0.3)
        axes[0].legend(loc="lower left", fontsize="x-small")
        for ax in axes[len(ts) :]:
            ax.set_visible(False)
        for ax in axes[(nrows - 1) * ncols :]:
            ax.set_xlabel("position")
        for ax in axes[::ncols]:
            ax.set_ylabel("value")
    fig.suptitle(f"Forward process $q(x_t | x_0)$ on a 1D signal\n{data['schedule']}, T = {data['T']}")
    return fig


def forward_2d(
    n: int = 1000,
    mean: Sequence[float] = (2.0, 2.0),
    std: float = 0.5,
    T: int = 100,
    schedule: str = "linear",
    timesteps: Sequence[int] | None = None,
    seed: int = GAUSSIAN_DEMO_RNG_SEED,
    schedule_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seed tutorial 003: n points of N(mean, std^2 I) noised by the closed form at a few timesteps.

    The tutorial itself uses ``abar[t-1]`` and shows the clean data at t = 0; here t is the library's 0-based
    index throughout, so t = 0 is one step in (abar = 0.999) and t = 99 is the chain's end (abar = 0.347).

    Args:
        n: number of points.
        mean: the data mean (2 numbers).
        std: the data standard deviation per coordinate.
        T: chain length.
        schedule: schedule name.
        timesteps: 0-based t to show; default 0, T/4, T/2, 3T/4, T-1 (tutorial 003's for T = 100).
        seed: torch RNG seed for x0 and the noise (a fresh draw per t).
        schedule_kwargs: schedule options; :data:`GAUSSIAN_DEMO_BETA_RANGE` fills in the ones left out.

    Returns:
        ``{"x0": [n, 2], "timesteps": [K], "xt": [K, n, 2], "abar": [K], "mean_t": [K, 2],
        "var_t": [K]}`` where ``mean_t = sqrt(abar) mean`` and ``var_t = abar std^2 + 1 - abar`` are the
        closed-form moments of x_t.
    """
    check_arguments({"n": n, "std": std})
    mu = _np(mean)
    if mu.shape != (2,):
        raise ValueError(f"mean must be 2 numbers, got {list(mu.ravel())}")
    betas, opts = resolve_schedule(schedule, T, GAUSSIAN_DEMO_BETA_RANGE, schedule_kwargs)
    diffusion = GaussianDiffusion(betas)
    ts = check_timesteps(default_timesteps(T, FORWARD_2D_FRACTIONS) if timesteps is None else timesteps, T)
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, generator=gen, dtype=torch.float64) * std + torch.from_numpy(mu)
    x0 = x0.float()
    xt = torch.stack([diffusion.q_sample(x0, t, torch.randn(n, 2, generator=gen)) for t in ts])  # DDPM eq. 4
    abar = _np(diffusion.alphas_cumprod[ts])
    # DDPM eq. 4 with x0 ~ N(mean, std^2 I): x_t ~ N(sqrt(abar) mean, (abar std^2 + 1 - abar) I).
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
        lim: half-width of every panel's axes (seed tutorial 003 uses 4).
    """
    check_arguments({"lim": lim})
    k = len(data["timesteps"])
    fig = _new_figure(max(3.0 * k, 7.0), 4.2)
    axes = np.atleast_1d(fig.subplots(1, k, sharex=True, sharey=True))
    circle = np.linspace(0.0, 2.0 * math.pi, 200)
    for i, ax in enumerate(axes):
        pts, m, var = data["xt"][i], data["mean_t"][i], data["var_t"][i]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, alpha=0.45, color="C0", linewidths=0, label=r"$x_t$")
        r = 2.0 * math.sqrt(var)  # var is per coordinate, so the circle's radius is 2 std in every direction
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
    seed: int = CHAIN_DEMO_RNG_SEED,
    schedule_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Seed tutorials 001/004: the scalar x0 pushed through the one-step Markov chain, in independent draws.

    Column k of ``paths`` is the state after the steps t = 0 .. k-1 (``GaussianDiffusion.q_step``), so it
    is distributed as ``q_sample(x0, k - 1)``: mean ``sqrt(abar[k-1]) x0``, std ``sqrt(1 - abar[k-1])``,
    with abar = 1 before any step (k = 0).

    Args:
        x0: the starting value.
        T: chain length.
        schedule: schedule name.
        n_draws: number of independent chains.
        seed: torch RNG seed for the noise.
        schedule_kwargs: schedule options; :data:`CHAIN_DEMO_BETA_RANGE` fills in the ones left out.

    Returns:
        ``{"k": [T+1], "paths": [n_draws, T+1], "mean": [T+1], "std": [T+1], "abar": [T+1], "x0": x0}``.
    """
    check_arguments({"n_draws": n_draws})
    betas, opts = resolve_schedule(schedule, T, CHAIN_DEMO_BETA_RANGE, schedule_kwargs)
    diffusion = GaussianDiffusion(betas)
    gen = torch.Generator().manual_seed(seed)
    x = torch.full((n_draws,), float(x0))
    paths = [x]
    for t in range(T):
        x = diffusion.q_step(x, t, torch.randn(n_draws, generator=gen))  # DDPM eq. 2
        paths.append(x)
    abar = np.concatenate([[1.0], _np(diffusion.alphas_cumprod)])  # k = 0 has taken no step: abar = 1
    # DDPM eq. 4: after k steps, x ~ N(sqrt(abar) x0, 1 - abar).
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
    fig.suptitle(  # the title states DDPM eq. 2, the step each draw takes
        f"Forward Markov chain $x_k = \\sqrt{{1-\\beta}}\\,x_{{k-1}} + \\sqrt{{\\beta}}\\,\\epsilon$, "
        f"{len(data['paths'])} draws\n{data['schedule']}, T = {data['T']}, "
        rf"final $\bar\alpha$ = {_abar_label(data['abar'][-1])}"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return fig
