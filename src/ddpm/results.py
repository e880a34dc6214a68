"""What a finished training run writes into its folder: final samples, figures and ``metrics.json``.

Toy runs: ``samples.npz`` (raw-unit samples and the held-out data), the quality report in
``metrics.json``, ``plots/samples_vs_data.png``, and the reverse process as a PNG and a GIF. Image runs:
``samples.npz`` (uint8 [N, H, W, C]), ``plots/samples_grid.png`` and the sampling time in ``metrics.json``.
Every file is written whole (:func:`ddpm.safe_writes.write_file`: a temporary file beside it, synced, then
renamed over it), so a kill at any moment leaves the earlier file or the new one, never a truncated one; a
resumed run's earlier ``samples.npz`` survives a kill during its final write. A write that fails (a full
disk, a folder gone read-only) raises :class:`ResultsNotWrittenError`, whose message still carries the
figures that were computed.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from ddpm.safe_writes import ResultsNotWrittenError, WriteError, write_file

if TYPE_CHECKING:  # not at run time: ddpm-viz reverse draws a loaded run without importing Lightning
    from ddpm.lit_module import DiffusionModule
    from ddpm.sampling_model import SamplingModel

__all__ = [
    "GRID_IMAGES",
    "ResultsNotWrittenError",
    "reverse_process_figures",
    "save_samples",
    "write_results",
]

#: the most images ``plots/samples_grid.png`` shows (all ``n`` go to ``samples.npz``)
GRID_IMAGES = 256


def save_samples(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed(path, **arrays)``, written whole: a temporary file beside ``path``, synced, then
    renamed over it (:func:`ddpm.safe_writes.write_file`), so a kill at any moment leaves the earlier file or
    the new one.

    Raises:
        WriteError: the file could not be written (a full disk, ...); any earlier file is kept.
    """
    named = cast(dict[str, Any], arrays)  # not **np.ndarray: to mypy one could be savez's allow_pickle
    write_file(path, lambda tmp: np.savez_compressed(tmp, **named))


@contextlib.contextmanager
def _figures_kept_on_failure(figures: str) -> Iterator[None]:
    """A failed write becomes an error that still shows the figures."""
    try:
        yield
    except OSError as err:
        # a WriteError names the result file, not the temporary file the writer was given
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        cause = err.__cause__ if isinstance(err, WriteError) and isinstance(err.__cause__, OSError) else err
        raise ResultsNotWrittenError(
            f"could not write the results{where}: {cause.strerror or cause}; computed: {figures}"
        ) from err


def _write_image_results(
    module: DiffusionModule, datamodule: Any, output_dir: Path, n: int, batch_size: int = 256
) -> dict[str, Any]:
    """Images: ``samples.npz`` (uint8 [N, H, W, C]), ``plots/samples_grid.png`` and ``metrics.json``."""
    from ddpm.sampling_model import class_grid_columns
    from ddpm.viz.grid import save_image_grid, to_uint8

    # Lightning's teardown leaves the module on the CPU after fit; sampling T steps of a UNet there
    # would take hours for CIFAR-10, so use the GPU when there is one.
    home = module.device
    device = torch.device("cuda") if torch.cuda.is_available() else home
    module.to(device)
    try:
        gen = torch.Generator(device=device).manual_seed(12345)
        start = time.perf_counter()
        x = module.sample(n, generator=gen, batch_size=batch_size)
        seconds = time.perf_counter() - start
    finally:
        module.to(home)
    images = datamodule.denormalize(x).cpu()
    metrics = {"final/n": n, "final/sample_seconds": seconds}
    grid = output_dir / "plots" / "samples_grid.png"
    with _figures_kept_on_failure(f"{n} samples drawn in {seconds:.1f} s"):
        pixels = to_uint8(images)
        save_samples(output_dir / "samples.npz", samples=pixels)
        # a conditional run's grid: one row per class when every sample fits in it
        nrow = class_grid_columns(n, getattr(module, "num_classes", 0)) if n <= GRID_IMAGES else None
        write_file(grid, lambda path: save_image_grid(images[:GRID_IMAGES], path, nrow=nrow))
        text = json.dumps(metrics, indent=2) + "\n"
        write_file(output_dir / "metrics.json", lambda path: path.write_text(text))
    return {"metrics": metrics, "report": None, "plot": grid, "moments": None}


def _write_toy_results(module: DiffusionModule, datamodule: Any, output_dir: Path, n: int) -> dict[str, Any]:
    """Toy data: ``samples.npz`` (samples, held-out data), ``metrics.json``, the samples-vs-data plot."""
    from ddpm import viz
    from ddpm.evaluation.toy import sample_quality

    result = sample_quality(module, datamodule, n, seed=12345)
    report = result["report"]
    metrics = {f"final/{k}": v for k, v in report.as_dict().items()}
    for k, v in result.get("moments", {}).items():
        metrics[f"final/{k}"] = v
    classes = None
    if getattr(module, "num_classes", 0):
        from ddpm.evaluation.toy import class_quality

        classes = class_quality(module, datamodule, max(2, n // module.num_classes), seed=12345)
        metrics.update(classes.as_dict("final/"))
    plot_path = output_dir / "plots" / "samples_vs_data.png"
    with _figures_kept_on_failure(f"Quality (EMA weights, {n} samples): {report.headline()}"):
        samples, held_out = result["samples"].numpy(), result["held_out"].numpy()
        save_samples(output_dir / "samples.npz", samples=samples, held_out=held_out)
        text = json.dumps(metrics, indent=2, allow_nan=True) + "\n"
        write_file(output_dir / "metrics.json", lambda path: path.write_text(text))
        fig = viz.plot_samples_vs_data(samples, held_out)
        write_file(plot_path, lambda path: viz.save_figure(fig, path))
    return {
        "metrics": metrics,
        "report": report,
        "plot": plot_path,
        "moments": result.get("moments"),
        "classes": classes,
    }


def write_results(module: DiffusionModule, datamodule: Any, output_dir: Path, n: int) -> dict[str, Any]:
    """After training: ``n`` samples with the module's (EMA) weights -> ``samples.npz``, ``metrics.json``
    and a plot, by the DataModule's ``kind``.

    Returns:
        ``metrics`` (the ``final/*`` figures), ``report`` (the toy quality report; None for images),
        ``plot`` (the figure's path) and ``moments`` (toy data with known moments, else None).

    Raises:
        ResultsNotWrittenError: a file could not be written; the message carries the figures.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if datamodule.kind == "image":
        return _write_image_results(module, datamodule, output_dir, n)
    return _write_toy_results(module, datamodule, output_dir, n)


def reverse_process_figures(
    module: DiffusionModule | SamplingModel,
    datamodule: Any,
    png: Path,
    gif: Path | None,
    n: int = 500,
    seed: int = 0,
    fps: int = 10,
    max_frames: int = 60,
    dpi: int | None = None,
) -> tuple[Path, Path | None]:
    """Sample with the whole chain kept and draw it: a PNG of the reverse process and an animated GIF.

    Toy data are shown in raw units (``datamodule.denormalize``); images stay on the network's [-1, 1]
    scale and get a denoising strip of the predicted x0. ``dpi`` sets the PNG's resolution (default:
    :data:`ddpm.viz.figures.DEFAULT_DPI`).
    """
    from ddpm import viz

    gen = torch.Generator(device=module.device).manual_seed(seed)
    result = module.sample(n, return_trajectory=True, generator=gen)
    traj, timesteps = result.trajectory, result.timesteps
    if datamodule.kind == "image":
        fig = viz.plot_denoising_strip(result.pred_x0 if result.pred_x0 is not None else traj, timesteps)
    else:
        traj = datamodule.denormalize(traj.reshape(-1, *traj.shape[2:])).reshape(traj.shape)
        points = viz.item_kind(traj.shape[1:]) == "points"  # a 2D scatter, else each sample as a curve
        fig = viz.plot_reverse_2d(traj, timesteps) if points else viz.plot_reverse_1d(traj, timesteps)
    write_file(png, lambda path: viz.save_figure(fig, path, dpi=dpi or viz.DEFAULT_DPI))
    if gif is None:
        return png, None
    write_file(gif, lambda path: viz.save_reverse_gif(traj, timesteps, path, fps=fps, max_frames=max_frames))
    return png, gif
