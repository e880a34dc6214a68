"""Lightning callbacks: sample quality and plots at validation, loss-by-timestep history."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["LossByTimestepCallback", "SampleQualityCallback", "log_figure"]


def log_figure(trainer: L.Trainer, key: str, fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG and log it as an image to W&B when a WandbLogger is present."""
    from ddpm import viz

    viz.save_figure(fig, path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)


class SampleQualityCallback(Callback):
    """At validation: sample (with EMA weights when EMA is on), log the quality figure and a plot.

    Logs ``val/quality_ratio`` (energy distance to held-out data over the data-vs-data floor),
    ``val/energy``, ``val/energy_floor``, ``val/sliced_w_ratio``, and for datasets with known moments
    ``val/mean_error`` and ``val/cov_error``. The plot goes to ``<run>/plots/`` and to W&B.

    Place it before ``EMAWeightAveraging`` in the callback list: that callback swaps the average
    weights back out at the end of validation (``ddpm-train`` orders them so).

    Args:
        num_samples: samples drawn at each validation.
        every_n_validations: run at every n-th validation only.
        plot: also save and log the samples-vs-data figure.
    """

    def __init__(self, num_samples: int = 1000, every_n_validations: int = 1, plot: bool = True) -> None:
        if num_samples < 2:
            raise ValueError(f"callbacks.samples.num_samples={num_samples!r} must be >= 2")
        if every_n_validations < 1:
            raise ValueError(f"callbacks.samples.every_n_validations={every_n_validations!r} must be >= 1")
        self.num_samples = num_samples
        self.every_n_validations = every_n_validations
        self.plot = plot
        self._validations = 0

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sample and report; skipped during the sanity check."""
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        datamodule = trainer.datamodule
        if not hasattr(datamodule, "reference_data"):
            return
        from ddpm.runs import sample_quality

        result = sample_quality(pl_module, datamodule, self.num_samples, seed=trainer.global_step)  # type: ignore[arg-type]
        report = result["report"]
        metrics = {
            "val/quality_ratio": report.ratio,
            "val/energy": report.energy,
            "val/energy_floor": report.energy_floor,
            "val/sliced_w_ratio": report.sliced_w_ratio,
        }
        for key, value in result.get("moments", {}).items():
            metrics[f"val/{key}"] = value
        for key, value in metrics.items():
            if not math.isnan(value):
                pl_module.log(key, value, on_step=False, on_epoch=True, rank_zero_only=True)
        if self.plot:
            self._plot(trainer, result)

    @rank_zero_only
    def _plot(self, trainer: L.Trainer, result: dict[str, Any]) -> None:
        from ddpm import viz

        fig = viz.plot_samples_vs_data(result["samples"].numpy(), result["held_out"].numpy())
        path = Path(trainer.default_root_dir) / "plots" / f"samples_step{trainer.global_step:07d}.png"
        log_figure(trainer, "val/samples_vs_data", fig, path)


class LossByTimestepCallback(Callback):
    """Records the training loss per timestep quartile each epoch and plots it when training ends.

    Under eps-prediction the loss at small t is far larger than at large t, so the mean loss hides
    which part of the chain is still learning; this plot (``plots/loss_by_timestep.png``) shows it.
    """

    KEYS = tuple(f"train/loss_q{k}" for k in range(1, 5))

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[list[float]] = [[] for _ in self.KEYS]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read the epoch's quartile means from the logged metrics."""
        metrics = trainer.callback_metrics
        if not all(k in metrics for k in self.KEYS):
            return
        self.steps.append(trainer.global_step)
        for series, key in zip(self.losses, self.KEYS, strict=True):
            series.append(float(metrics[key]))

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Plot the history (needs two epochs or more)."""
        if len(self.steps) < 2:
            return
        from ddpm import viz

        T = getattr(getattr(pl_module, "diffusion", None), "num_timesteps", None)
        fig = viz.plot_loss_by_quartile(self.steps, self.losses, T=T)
        log_figure(
            trainer,
            "train/loss_by_timestep",
            fig,
            Path(trainer.default_root_dir) / "plots" / "loss_by_timestep.png",
        )
