"""Figures of sampling and training runs, how figures are written and shown, and the helpers every viz
figure shares.

Figures are built with ``Figure()`` rather than pyplot, so drawing and saving never needs a display or a
GUI backend; :func:`show_figure` is the one place pyplot is imported.

The reverse-process plots place a sampler's states on the paper's 1-based t axis (x_T = pure noise at
``T``, the final sample at ``0``), while the library's timesteps are 0-based; see :func:`reverse_positions`.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ddpm.viz.grid import GRID_PADDING, image_grid

#: What the viz functions accept as numbers: a sampler's tensors as they come, or numpy arrays.
ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

#: dpi used by :func:`save_figure`: a 6.4 x 4.8 in figure comes out 768 x 576 px.
DEFAULT_DPI = 120

#: matplotlib backends that cannot open a window: :func:`show_figure` returns False under them.
_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


# ------------------------------------------------------------ helpers
def _np(x: ArrayLike | float) -> np.ndarray:
    """A float64 numpy copy of a tensor or array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _new_figure(
    width: float, height: float, margins: tuple[float, float, float, float] | None = None
) -> Figure:
    """A figure of ``width`` x ``height`` inches, made without pyplot; the constrained layout fits labels
    without a tight bounding box, so the saved size is exactly the figure's. ``margins`` (left, bottom,
    right, top, as fractions of the figure) fix the subplots' area instead, for figures whose labels are
    always the same few: the layout engine costs more than drawing them (half of a 2D scatter's time)."""
    if margins is None:
        return Figure(figsize=(width, height), layout="constrained")
    fig = Figure(figsize=(width, height))
    left, bottom, right, top = margins
    fig.subplots_adjust(left=left, bottom=bottom, right=right, top=top)
    return fig


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
    """``trajectory`` as a numpy array [S+1, N, ...], or a ValueError when it does not fit ``timesteps``."""
    traj = _np(trajectory)
    if traj.ndim < 2:
        raise ValueError(f"trajectory must be [S+1, N, ...], got shape {traj.shape}")
    if traj.shape[0] != len(timesteps) + 1:
        raise ValueError(
            f"trajectory has {traj.shape[0]} states but timesteps has {len(timesteps)} entries; "
            "expected len(trajectory) == len(timesteps) + 1 (index 0 holds x_T)"
        )
    return traj


def _square_limits(*arrays: np.ndarray, margin: float = 0.08) -> tuple[float, float]:
    """One (low, high) for both axes that holds the 2D points of ``arrays``, plus a margin.

    Percentiles rather than min/max, so a few far-out noise samples do not shrink everything else.
    """
    pts = np.concatenate([a.reshape(-1, 2) for a in arrays])
    low, high = np.percentile(pts, [0.2, 99.8])
    pad = (high - low) * margin + 1e-6
    return float(low - pad), float(high + pad)


def item_kind(shape: tuple[int, ...]) -> Literal["scalar", "signal", "points", "image"]:
    """What one item of a batch [N, ...] is, which decides how the figures and GIFs draw it: a ``scalar``
    ([N] or [N, 1]), a 1D ``signal`` [N, L], a 2D point (``points``, [N, 2]) or an ``image`` [N, C, H, W]."""
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

    Scalars ([S+1, N] or [S+1, N, 1]): value against t for ``n_chains`` chains, as seed tutorial 001 plots it,
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
    """Rows = images, columns = chosen reverse steps, laid out as one :func:`~ddpm.viz.grid.image_grid`.

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
    # [rows, cols, C, H, W] flattened row-major, so image_grid(nrow=cols) puts one image per row.
    tiles = arr[idx][:, :rows].transpose(1, 0, 2, 3, 4).reshape(-1, C, H, W)
    grid = image_grid(tiles, nrow=len(idx), value_range=value_range)
    fig = _new_figure(max(5.0, min(1.1 * len(idx) + 1.2, 14.0)), min(1.1 * rows + 1.0, 12.0))
    ax = fig.subplots()
    ax.imshow(grid, interpolation="nearest")
    pad = GRID_PADDING  # the grid starts with a pad and puts one after every tile: ticks at tile centres
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
    kind = item_kind(ref.shape)
    if item_kind(gen.shape) != kind or (kind != "scalar" and gen.shape[1:] != ref.shape[1:]):
        raise ValueError(f"samples {gen.shape} and data {ref.shape} do not have the same item shape")

    if kind == "scalar":
        fig = _new_figure(7.5, 4.6)
        ax = fig.subplots()
        g, d = gen.ravel(), ref.ravel()
        histograms = [(g, "C0", "samples")]
        if np.ptp(d) < 1e-9:  # a constant (seed 001's x0 = 5) has no histogram: a line at its value
            ax.axvline(d[0], color="C3", lw=2.5, label=f"data (constant {d[0]:.4g})")
            bins = np.histogram_bin_edges(g, bins=40)
        else:
            histograms.insert(0, (d, "C3", "data"))
            bins = np.histogram_bin_edges(np.concatenate([g, d]), bins=40)
        for values, color, name in histograms:
            label = f"{name}: {values.mean():.3g} ± {values.std():.3g}"
            edges = cast(Sequence[float], bins)  # matplotlib's stub leaves out arrays, which hist takes
            ax.hist(values, bins=edges, density=True, alpha=0.5, color=color, label=label)
        ax.set(xlabel="value", ylabel="density", title=f"Samples (n={g.size}) vs data (n={d.size})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    elif kind == "points":  # drawn at every validation of a toy run: fixed margins, no layout engine
        fig = _new_figure(6.4, 5.6, margins=(0.12, 0.09, 0.97, 0.94))
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
            ax.imshow(image_grid(arr[:count], nrow, value_range), interpolation="nearest")
            ax.set_title(f"{name}: {count} of {len(arr)}")
            ax.set_axis_off()
        fig.suptitle("Samples vs data")
    return fig


def plot_loss_by_quarter(
    steps: ArrayLike,
    losses_by_quarter: Sequence[ArrayLike] | Mapping[str, ArrayLike],
    T: int | None = None,
    log_scale: bool = True,
) -> Figure:
    """Training loss split by where t falls in [0, T), one line per quarter, against the training step.

    Args:
        steps: training steps [K].
        losses_by_quarter: four sequences of length K (t in the first .. last quarter of [0, T)), or a
            mapping from label to sequence. NaN marks a step with no sample in that quarter; it is skipped.
        T: chain length, used to label the quarters with their t range.
        log_scale: log y axis (the quarters' losses differ by orders of magnitude under eps prediction).
    """
    x = _np(steps)
    if isinstance(losses_by_quarter, Mapping):
        items = [(str(k), _np(v)) for k, v in losses_by_quarter.items()]
    else:
        series = [_np(v) for v in losses_by_quarter]
        if len(series) != 4:
            raise ValueError(f"losses_by_quarter has {len(series)} series; expected 4 (one per quarter of t)")
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


# ------------------------------------------------------------ sampler comparisons
def plot_sampler_comparison(rows: Sequence[Mapping[str, Any]], metric: str = "quality (x floor)") -> Figure:
    """Quality against cost for the rows of a sampler comparison: against NFE (left) and against sampling
    seconds per 1000 samples (right), log x.

    Each row is a mapping as ``ddpm-eval --compare-samplers`` writes them to ``sampler_comparison.json``
    (:meth:`ddpm.evaluation.sampler_comparison.ComparisonRow.as_dict`): ``label``, ``option``, ``nfe``,
    ``seconds_per_1000``, ``quality`` (``mean``, ``std``), ``on_front_nfe``, ``on_front_seconds``,
    ``reference``. Error bars are the std over the draws; each panel's Pareto front rows are ringed and
    joined by a step line (the best quality at a cost up to x); the reference row (DDPM over all T steps)
    is a horizontal band of its mean ± std. The y axis is logarithmic when the means span more than a
    factor 20. Rows without a finite quality or cost (a diverged sampler) are left out.
    """
    fig = _new_figure(12.0, 4.8)
    axes = fig.subplots(1, 2, sharey=True)
    options = list(dict.fromkeys(str(r.get("option") or r["label"].split()[0]) for r in rows))
    cmap = colormaps["tab10"]
    markers = "osD^vP*Xhp"
    means = [float(r["quality"]["mean"]) for r in rows]
    finite = [m for m in means if math.isfinite(m)]
    log_y = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20
    reference = next((r for r in rows if r.get("reference") and math.isfinite(r["quality"]["mean"])), None)
    panels = (
        (axes[0], "nfe", "on_front_nfe", "network evaluations per sample (NFE)"),
        (axes[1], "seconds_per_1000", "on_front_seconds", "sampling seconds per 1000 samples"),
    )
    for ax, cost_key, front_key, xlabel in panels:
        for i, option in enumerate(options):
            mine = [r for r in rows if str(r.get("option") or r["label"].split()[0]) == option]
            pts = [
                (float(r[cost_key]), float(r["quality"]["mean"]), float(r["quality"]["std"] or 0.0), r)
                for r in mine
            ]
            pts = [p for p in pts if all(math.isfinite(v) for v in p[:2]) and p[0] > 0]
            if not pts:
                continue
            x, y, err, kept = zip(*pts, strict=True)
            ax.errorbar(
                x,
                y,
                yerr=[e if math.isfinite(e) else 0.0 for e in err],
                fmt=markers[i % len(markers)],
                color=cmap(i % 10),
                ms=6,
                capsize=3,
                lw=1,
                label=option,
            )
            for xi, yi, r in zip(x, y, kept, strict=True):
                ax.annotate(
                    r["label"].split(" ", 1)[-1],
                    (xi, yi),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color=cmap(i % 10),
                )
        front = sorted(
            (float(r[cost_key]), float(r["quality"]["mean"]))
            for r in rows
            if r.get(front_key) and math.isfinite(float(r[cost_key])) and float(r[cost_key]) > 0
        )
        if front:
            fx, fy = (list(v) for v in zip(*front, strict=True))
            # The best quality at a cost up to x: it holds on to the right of the last front point too.
            right = max(float(r[cost_key]) for r in rows if math.isfinite(float(r[cost_key])))
            ax.step([*fx, right], [*fy, fy[-1]], where="post", color="black", lw=1.2, alpha=0.7)
            ax.plot(fx, fy, "o", mfc="none", mec="black", ms=12, label="Pareto front")
        if reference is not None:
            mean, std = float(reference["quality"]["mean"]), float(reference["quality"]["std"] or 0.0)
            low = max(mean - std, mean / 10) if log_y else mean - std  # a log axis cannot show <= 0
            ax.axhspan(low, mean + std, color="grey", alpha=0.2, lw=0)
            ax.axhline(mean, color="grey", lw=1, ls="--", label=f"{reference['label']} (reference) ± std")
        ax.axhline(1.0, color="tab:green", lw=0.8, ls=":", label="data-vs-data floor")
        ax.set_xscale("log")
        # Plain numbers at 1, 2, 5 x 10^k: a few decades at most, where 6 x 10^0 reads worse than 6.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set(xlabel=xlabel)
        ax.grid(True, alpha=0.3, which="both")
    axes[0].set_ylabel(f"{metric}, lower is better")
    axes[0].legend(fontsize="small")
    fig.suptitle("Sampler comparison: quality against cost (error bars: std over the draws)")
    return fig


def plot_ema_sweep(
    rows: Sequence[Mapping[str, Any]], metric: str, fixed: Mapping[str, Any] | None = None
) -> Figure:
    """Sample quality against the EMA length of ``ddpm-eval RUN --ema-sweep ...`` (EDM2, fig. 5): each
    reconstructed length's mean with its std over the draws, the best one marked, and the checkpoint's own
    EMA (the fixed decay) as a horizontal band.

    Rows hold ``sigma_rel`` and ``quality`` (``mean``, ``std``); ``fixed`` the checkpoint's ``quality``.
    """
    s = [float(r["sigma_rel"]) for r in rows]
    mean = [float(r["quality"]["mean"]) for r in rows]
    std = [float(r["quality"]["std"]) if np.isfinite(r["quality"]["std"]) else 0.0 for r in rows]
    fig = _new_figure(6.5, 4.2)
    ax = fig.subplots()
    ax.errorbar(s, mean, yerr=std, fmt="o-", capsize=3, label="power EMA, reconstructed post hoc")
    best = int(np.argmin(mean))
    ax.plot([s[best]], [mean[best]], "*", markersize=14, label=f"best: sigma_rel = {s[best]:g}")
    if fixed is not None:
        m, sd = float(fixed["mean"]), float(fixed["std"]) if np.isfinite(fixed["std"]) else 0.0
        ax.axhline(m, color="grey", linestyle="--", label="the checkpoint's EMA (fixed decay)")
        ax.axhspan(m - sd, m + sd, color="grey", alpha=0.15)
    ax.set_xlabel("EMA length sigma_rel (the averaging profile's std relative to the step)")
    ax.set_ylabel(metric)
    ax.set_title("sample quality against the EMA length: lower is better", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_guidance_curve(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """The classifier-free guidance trade-off of ``ddpm-eval RUN --guidance ...``: against the guidance
    scale w, fidelity to the requested class (left: the classifier's accuracy for images, the fraction nearest
    the class's mode for toy data) and sample quality over its floor (middle: the classifier's Fréchet ratio,
    or the per-class quality ratio, mean and worst class); right, the two against each other, each point
    labelled with its w (Ho & Salimans 2022, fig. 2).

    Rows as :func:`ddpm.evaluation.guidance_curve.guidance_curve` returns them.
    """
    image = "accuracy" in rows[0]
    w = [float(r["guidance_scale"]) for r in rows]
    fidelity = [float(r["accuracy"] if image else r["nearest_mode"]) for r in rows]
    quality = [float(r["frechet_ratio"] if image else r["class_ratio_mean"]) for r in rows]
    fid_label = "classifier accuracy on the requested class" if image else "fraction nearest the class's mode"
    q_label = "classifier Fréchet / held-out floor" if image else "per-class quality ratio (x floor)"
    fig = _new_figure(13.5, 4.2)
    axes = fig.subplots(1, 3)
    axes[0].plot(w, fidelity, "o-")
    axes[0].set_ylabel(fid_label)
    axes[0].set_title("fidelity to the class: higher is better", fontsize="medium")
    axes[1].plot(w, quality, "o-", label="mean over classes" if not image else None)
    if not image:
        axes[1].plot(w, [float(r["class_ratio_max"]) for r in rows], "s--", label="worst class")
        axes[1].legend(fontsize="small")
    axes[1].set_ylabel(q_label)
    axes[1].set_title("sample quality: lower is better", fontsize="medium")
    for ax in axes[:2]:
        ax.set_xlabel("guidance scale w (0 unconditional, 1 conditional)")
        ax.grid(True, alpha=0.3)
    axes[2].plot(quality, fidelity, "o-")
    for wi, q, f in zip(w, quality, fidelity, strict=True):
        axes[2].annotate(f"w={wi:g}", (q, f), textcoords="offset points", xytext=(4, 4), fontsize="small")
    finite = [q for q in quality if math.isfinite(q) and q > 0]
    if finite and max(finite) / min(finite) > 20:  # unguided (w = 0) against one class is far off: log scale
        axes[1].set_yscale("log")
        axes[2].set_xscale("log")
    axes[2].set_xlabel(q_label)
    axes[2].set_ylabel(fid_label)
    axes[2].grid(True, alpha=0.3)
    fig.suptitle("Classifier-free guidance: fidelity to the class against sample quality")
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


def _render(fig: Figure) -> Any:
    """The figure as a PIL RGB image at its own dpi."""
    from PIL import Image  # Pillow comes with matplotlib

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


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
