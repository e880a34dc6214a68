"""Animated GIFs of a sampler's reverse chain, rendered with matplotlib's Agg canvas and written by Pillow."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ddpm.viz.checks import check_arguments
from ddpm.viz.figures import (
    ArrayLike,
    _check_trajectory,
    _evenly,
    _new_figure,
    _np,
    _square_limits,
    item_kind,
    reverse_positions,
)
from ddpm.viz.grid import image_grid


def _animate(fig: Figure, n_frames: int, update: Callable[[int], None], moving: Sequence[Any]) -> list[Any]:
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
    fps: int = 10,
    max_frames: int = 60,
    data: ArrayLike | None = None,
    n_items: int = 16,
    hold_last_s: float = 1.5,
    dpi: int = 80,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Write an animated GIF of the reverse chain, one frame per shown state, x_T first.

    How the items are drawn follows :func:`~ddpm.viz.figures.item_kind` of the trajectory: scalars as the
    chains growing from x_T, signals as the current signals, 2D points as a scatter, images as a grid.

    Args:
        trajectory: ``SampleResult.trajectory`` [S+1, N, ...]; index 0 holds x_T.
        timesteps: the S descending timesteps.
        path: where to write the .gif (parent folders are created).
        fps: frames per second.
        max_frames: at most this many frames, evenly spaced over the chain (x_T and the sample included).
        data: reference drawn in every frame: training points [M, 2] (points) or the x0 value (scalars).
        n_items: chains or images shown (signals: at most 3, so they stay readable).
        hold_last_s: the last frame stays this long, so the loop pauses on the result.
        dpi: frame resolution; frames are 6.4 x 4.8 in, or 5 x 5.4 in for images.
        value_range: pixel range for images.

    Returns:
        The path written. The GIF has ``min(S + 1, max_frames)`` frames.
    """
    traj = _check_trajectory(trajectory, timesteps)
    check_arguments({"fps": fps, "max_frames": max_frames})
    kind = item_kind(traj.shape[1:])
    pos = reverse_positions(timesteps)
    shown = _evenly(traj.shape[0], max_frames)
    fig = _new_figure(5.0, 5.4) if kind == "image" else _new_figure(6.4, 4.8)
    fig.set_dpi(dpi)
    ax = fig.subplots()

    def title(i: int) -> str:
        where = " ($x_T$)" if shown[i] == 0 else " (sample)" if shown[i] == traj.shape[0] - 1 else ""
        return f"Reverse process, t = {pos[shown[i]]}{where}  [{len(timesteps)} steps]"

    if kind in ("scalar", "signal"):
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

    elif kind == "points":
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
        image = ax.imshow(image_grid(traj[0][:count], nrow, value_range), interpolation="nearest")
        ax.set_axis_off()

        moving = [image, ax.title]

        def update(i: int) -> None:
            image.set_data(image_grid(traj[shown[i]][:count], nrow, value_range))
            ax.set_title(title(i))

    frames = _animate(fig, len(shown), update, moving)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame_ms = round(1000 / fps)
    durations = [frame_ms] * (len(frames) - 1) + [max(frame_ms, round(1000 * hold_last_s))]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return out
