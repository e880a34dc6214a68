"""Lightning callbacks: the EMAs (fixed, and power-function with snapshots), sample quality and plots at
validation, image grids, loss-by-timestep history."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from ddpm.process import Process
from ddpm.timings import Phases

if TYPE_CHECKING:
    from ddpm.lit_module import DiffusionModule

__all__ = [
    "EMA",
    "ImageSampleCallback",
    "LossByTimestepCallback",
    "PowerEMA",
    "SampleQualityCallback",
    "ValidationTimer",
    "log_figure",
]


def _datamodule(trainer: L.Trainer) -> Any:
    """The trainer's DataModule (None outside ``fit``/``validate``/...)."""
    return trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning's data connector, undeclared


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
        self._floors: dict[int, tuple[float, float]] = {}  # by DataModule: the same at every validation

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sample and report; skipped during the sanity check."""
        if trainer.sanity_checking or not trainer.is_global_zero:  # rank 0 samples, logs and plots
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        datamodule = _datamodule(trainer)
        if getattr(datamodule, "kind", None) != "toy":
            return
        from ddpm.evaluation.toy import sample_quality

        floors = self._floors.get(id(datamodule))
        step = trainer.global_step
        result = sample_quality(pl_module, datamodule, self.num_samples, seed=step, floors=floors)
        report = result["report"]
        self._floors[id(datamodule)] = (report.energy_floor, report.sliced_w_floor)
        metrics = {
            "val/quality_ratio": report.ratio,
            "val/energy": report.energy,
            "val/energy_floor": report.energy_floor,
            "val/sliced_w_ratio": report.sliced_w_ratio,
        }
        for key, value in result.get("moments", {}).items():
            metrics[f"val/{key}"] = value
        num_classes = int(getattr(pl_module, "num_classes", 0))
        if num_classes:  # a conditional run: the figures by class
            from ddpm.evaluation.toy import class_quality

            n_per_class = max(2, self.num_samples // num_classes)
            metrics.update(
                class_quality(pl_module, datamodule, n_per_class, seed=trainer.global_step).as_dict("val/")
            )
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


class ValidationTimer(Callback):
    """Adds the wall time of every validation loop (sanity check included) to ``phases`` as ``validation``.

    ``ddpm-train`` puts it after the other callbacks, so the sampling, plots and checkpoint that the other
    callbacks do at the end of a validation count as validation time.
    """

    def __init__(self, phases: Phases) -> None:
        self.phases = phases
        self._start: float | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop it and add the loop's seconds."""
        if self._start is not None:
            self.phases.add("validation", time.perf_counter() - self._start)
            self._start = None


class EMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` (same options, same checkpoints) with torch's foreach update,
    kept on the training device.

    Lightning hands ``AveragedModel`` a per-tensor ``avg_fn``, so each step launches a few small ops per
    parameter and buffer; for the toy MLP that cost more than the training step. ``get_ema_multi_avg_fn``
    does the same update, ``decay * avg + (1 - decay) * p``, with one foreach kernel per group of tensors.
    ``AveragedModel.update_parameters`` also walks both modules and regroups their tensors at every step;
    the groups are fixed for a fit, so they are built once (at the first averaging step) and reused.

    Lightning builds the average in ``setup``, before the strategy moves the module to its device, so
    without ``device`` the average of a GPU run would stay in host memory and every step would copy the
    weights across: it is moved to the module's device when the fit starts.
    """

    def __init__(self, decay: float = 0.999, **kwargs: Any) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"callbacks.ema.decay={decay!r} must be in [0, 1]")
        super().__init__(decay=decay, **kwargs)
        self._kwargs.pop("avg_fn", None)  # AveragedModel accepts one of avg_fn / multi_avg_fn
        self._kwargs["multi_avg_fn"] = get_ema_multi_avg_fn(decay)
        self.decay = decay
        self._groups: list[tuple[list[Any], list[Any]]] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the average where the module trains (unless ``device`` chose otherwise): the strategy has
        moved the module by now, and the sanity check's swap has not run yet."""
        if self._average_model is not None and self._device is None:
            self._average_model.to(pl_module.device)
        self._groups = None  # tensors may have moved: regroup at the next update

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Average after each optimizer step that ``should_update`` selects (as Lightning's callback)."""
        step_idx = trainer.global_step - 1
        if trainer.global_step > self._latest_update_step and self.should_update(step_idx=step_idx):
            self._update(pl_module)
            self._latest_update_step = trainer.global_step

    def _update(self, pl_module: L.LightningModule) -> None:
        import torch

        average = self._average_model
        assert average is not None
        if average.n_averaged == 0 or not average.use_buffers:
            average.update_parameters(pl_module)  # the first call copies; the rest is Lightning's own path
            return
        if self._groups is None:
            from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

            mine = [t.detach() for t in (*average.module.parameters(), *average.module.buffers())]
            theirs = [t.detach() for t in (*pl_module.parameters(), *pl_module.buffers())]
            pairs = zip(mine, theirs, strict=False)
            if len(mine) != len(theirs) or any(a.device != b.device for a, b in pairs):
                average.update_parameters(pl_module)
                return
            tensors: list[list[torch.Tensor | None]] = [[*mine], [*theirs]]
            grouped = _group_tensors_by_device_and_dtype(tensors)
            self._groups = [(avg, cur) for (avg, cur), _ in grouped.values()]
        with torch.no_grad():
            for avg, cur in self._groups:
                self._kwargs["multi_avg_fn"](avg, cur, average.n_averaged)
        average.n_averaged += 1


class PowerEMA(EMA):
    """Power-function EMAs with snapshots (EDM2: Karras et al. 2024, sec. 3), so that the EMA length is
    chosen after training: ``callbacks/ema=power``.

    Keeps one power-function EMA per entry of ``sigma_rels`` (:mod:`ddpm.ema`: at optimizer step t the
    decay is (1 - 1/t)^(gamma + 1), so each averages a fixed fraction of the run however long it gets) on
    the training device, updated after every optimizer step with one foreach kernel per EMA. Every
    ``snapshot_every_n_steps`` steps, and at ``trainer.max_steps``, rank 0 writes each as a snapshot file
    into ``<run>/ema_snapshots/`` (:mod:`ddpm.ema_snapshots`: safetensors, step and gamma in the metadata);
    ``ddpm-ema RUN --sigma-rel 0.07`` reconstructs any other length from them.

    Which weights validation, the final samples and the checkpoint's ``state_dict`` hold: with ``decay``
    (a number, the experiments' ``callbacks.ema.decay``) the fixed EMA of :class:`EMA`, exactly as
    ``callbacks/ema=default``, so a run's figures stay comparable with the fixed-EMA runs and the
    post-hoc lengths are compared with it on the same training; with ``decay=None`` the first power EMA
    (``sigma_rels[0]``) instead, and no third copy of the weights is kept.

    The running power EMAs and their step go into every checkpoint (this callback's state), so a resumed
    run, a SLURM requeue included, continues them exactly. When a run resumes, the snapshots taken after
    its checkpoint's step are removed: that part of the run is trained again and they are taken again.

    Args:
        sigma_rels: the EMAs' lengths, each the profile's standard deviation relative to the step, in
            (0, 0.3); EDM2 tracks 0.05 and 0.10.
        snapshot_every_n_steps: optimizer steps between snapshots.
        decay: the fixed EMA's decay, or None for the first power EMA in its place.
        kwargs: :class:`EMA`'s (``update_starting_at_step``...), for the fixed EMA.
    """

    def __init__(
        self,
        sigma_rels: Sequence[float] = (0.05, 0.10),
        snapshot_every_n_steps: int = 1000,
        decay: float | None = 0.999,
        **kwargs: Any,
    ) -> None:
        from ddpm.ema import sigma_rel_to_gamma

        lengths = [float(s) for s in sigma_rels]
        if not lengths or len(set(lengths)) != len(lengths):
            raise ValueError(
                f"callbacks.ema.sigma_rels={list(sigma_rels)!r} must be one or more distinct lengths"
            )
        try:
            gammas = [sigma_rel_to_gamma(s) for s in lengths]
        except ValueError as err:
            raise ValueError(f"callbacks.ema.sigma_rels: {err}") from None
        if isinstance(snapshot_every_n_steps, bool) or not isinstance(snapshot_every_n_steps, int):
            raise ValueError(
                f"callbacks.ema.snapshot_every_n_steps={snapshot_every_n_steps!r} must be an integer"
            )
        if snapshot_every_n_steps < 1:
            raise ValueError(f"callbacks.ema.snapshot_every_n_steps={snapshot_every_n_steps!r} must be >= 1")
        if decay is None and kwargs.get("update_starting_at_step") is not None:
            raise ValueError(
                "callbacks.ema.update_starting_at_step is the fixed EMA's; with callbacks.ema.decay=null "
                "there is none (the power EMAs start at step 1)"
            )
        super().__init__(decay=0.999 if decay is None else decay, **kwargs)
        self.decay = decay  # type: ignore[assignment]  # None: the first power EMA is the averaged model
        self.sigma_rels = lengths
        self.gammas = gammas
        self.snapshot_every_n_steps = snapshot_every_n_steps
        #: the tracked tensors' names: the floating-point entries of the module's state_dict
        self._names: list[str] = []
        #: each power EMA's tensors by name (the first is None while it is the averaged model's, decay=None)
        self._power: list[dict[str, Any] | None] = []
        #: the optimizer step the power EMAs are at
        self._power_step = 0
        self._lists: tuple[list[Any], list[list[Any]]] | None = None
        #: the snapshot files this process wrote, in order
        self.written: list[Path] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Make the averaged model (:class:`EMA`) and the power EMAs, copies of the module's weights."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        state = pl_module.state_dict()
        self._names = [name for name, tensor in state.items() if tensor.is_floating_point()]
        device = self._device or pl_module.device
        self._power = [
            None
            if k == 0 and self.decay is None
            else {n: state[n].detach().to(device, copy=True) for n in self._names}
            for k in range(len(self.sigma_rels))
        ]
        self._power_step = 0
        self._lists = None

    def ema_state(self, k: int) -> dict[str, Any]:
        """The tensors of the power EMA of length ``sigma_rels[k]`` by name (views of the live ones)."""
        own = self._power[k]
        if own is not None:
            return own
        assert self._average_model is not None
        held = self._average_model.module.state_dict()  # detached views of the averaged model's tensors
        return {n: held[n] for n in self._names}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Put the power EMAs where the module trains (unless ``device`` chose otherwise)."""
        super().on_fit_start(trainer, pl_module)
        if self._device is None:
            self._power = [
                None if own is None else {n: t.to(pl_module.device) for n, t in own.items()}
                for own in self._power
            ]
        self._lists = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """After each optimizer step: the power EMAs, a snapshot every n steps, and the fixed EMA."""
        from ddpm.ema import update_power_ema

        step = trainer.global_step
        if step > self._power_step:
            if self._lists is None:  # the live tensors, grouped once per fit (they may have moved)
                current = pl_module.state_dict()
                self._lists = (
                    [current[n] for n in self._names],
                    [list(self.ema_state(k).values()) for k in range(len(self.sigma_rels))],
                )
            current_list, averages = self._lists
            for gamma, average in zip(self.gammas, averages, strict=True):
                update_power_ema(average, current_list, step, gamma)
            self._power_step = step
            if self.decay is None and self._average_model is not None:
                self._average_model.n_averaged += 1
                self._latest_update_step = step
            if step % self.snapshot_every_n_steps == 0:
                self._snapshot(trainer, step)
        if self.decay is not None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A snapshot at the run's last step (``trainer.max_steps``) when it is off the grid; then the
        averaged model becomes the module's weights (:class:`EMA`)."""
        step = trainer.global_step
        if 0 < trainer.max_steps == step == self._power_step and step % self.snapshot_every_n_steps:
            self._snapshot(trainer, step)
        super().on_train_end(trainer, pl_module)

    def _snapshot(self, trainer: L.Trainer, step: int) -> None:
        if not trainer.is_global_zero:
            return
        from ddpm.ema_snapshots import SNAPSHOT_DIR, write_snapshot

        folder = Path(trainer.default_root_dir) / SNAPSHOT_DIR
        for k, (sigma_rel, gamma) in enumerate(zip(self.sigma_rels, self.gammas, strict=True)):
            self.written.append(write_snapshot(folder, self.ema_state(k), step, gamma, sigma_rel))

    def state_dict(self) -> dict[str, Any]:
        """:class:`EMA`'s state and the power EMAs: their lengths, their step and their tensors (the first
        one is the checkpoint's ``state_dict`` when ``decay`` is None)."""
        state = super().state_dict()
        state["power_ema"] = {
            "sigma_rels": list(self.sigma_rels),
            "step": self._power_step,
            "averages": list(self._power),
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpoint's power EMAs (the same lengths, the same choice of averaged model)."""
        super().load_state_dict(state_dict)
        power = state_dict.get("power_ema")
        if not isinstance(power, dict):
            raise ValueError(
                "the checkpoint holds no power EMAs: it was not trained with callbacks/ema=power"
            )
        if [float(s) for s in power["sigma_rels"]] != self.sigma_rels:
            raise ValueError(
                f"the checkpoint's power EMAs have sigma_rels={power['sigma_rels']!r}, "
                f"not callbacks.ema.sigma_rels={self.sigma_rels!r}"
            )
        saved = power["averages"]
        if [a is None for a in saved] != [a is None for a in self._power]:
            raise ValueError(
                "the checkpoint's power EMAs were kept with another callbacks.ema.decay (null or not)"
            )
        for own, stored in zip(self._power, saved, strict=True):
            if own is not None:
                for name, tensor in own.items():
                    tensor.copy_(stored[name])
        self._power_step = int(power["step"])
        self._lists = None

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Load the averaged model (:class:`EMA`); refuse a checkpoint without power EMAs; remove the
        snapshots taken after its step (rank 0)."""
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is None:  # not fitting: nothing to continue
            return
        if "power_ema" not in (checkpoint.get("callbacks") or {}).get(self.state_key, {}):
            raise ValueError(
                "the checkpoint holds no power EMAs: it was not trained with callbacks/ema=power, whose "
                "averages cannot be continued from it"
            )
        if trainer.is_global_zero:
            from ddpm.ema_snapshots import SNAPSHOT_DIR, remove_snapshots_after

            remove_snapshots_after(
                Path(trainer.default_root_dir) / SNAPSHOT_DIR, int(checkpoint["global_step"])
            )


class LossByTimestepCallback(Callback):
    """Records the training loss by quarter of [0, T) each epoch and plots it when training ends.

    Under eps-prediction the loss at small t is far larger than at large t, so the mean loss hides
    which part of the chain is still learning; this plot (``plots/loss_by_timestep.png``) shows it.
    """

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[list[float]] = [[] for _ in range(4)]  # q1 .. q4
        #: ``ddpm-train`` sets its phases here: the figure counts as a phase of its own, not as training
        self.phases: Phases | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read the epoch's means by quarter from the module (which logs and resets them after this hook)."""
        loss_by_quarter = getattr(pl_module, "loss_by_quarter", None)
        losses = loss_by_quarter("train") if loss_by_quarter is not None else None
        if losses is None:
            return
        self.steps.append(trainer.global_step)
        for series, value in zip(self.losses, losses, strict=True):
            series.append(value)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Plot the history (needs two epochs or more)."""
        if len(self.steps) < 2:
            return
        from ddpm import viz

        timed = self.phases.time("loss-by-timestep figure") if self.phases else contextlib.nullcontext()
        with timed:
            diffusion = getattr(pl_module, "diffusion", None)
            T = getattr(diffusion, "num_timesteps", None)
            series: list[list[float]] | dict[str, list[float]] = self.losses
            if T is None and isinstance(diffusion, Process):  # continuous: the process's own bins
                series = dict(zip(diffusion.time_bin_labels(4), self.losses, strict=True))
            fig = viz.plot_loss_by_quarter(self.steps, series, T=T)
            log_figure(
                trainer,
                "train/loss_by_timestep",
                fig,
                Path(trainer.default_root_dir) / "plots" / "loss_by_timestep.png",
            )


class ImageSampleCallback(Callback):
    """Image runs: a grid of samples and a denoising strip at every n-th validation and at the end.

    The grid (``plots/samples_grid_step<step>.png``, W&B ``val/samples_grid``) shows ``num_samples``
    images drawn with the EMA weights; the strip (``plots/denoising_step<step>.png``, W&B ``val/denoising``)
    shows the predicted x0 at evenly spaced reverse steps for ``strip_images`` images. Every call starts
    from the same noise (``seed``), so grids from different steps show the same samples maturing.

    Place it before ``EMAWeightAveraging`` in the callback list (``ddpm-train`` orders them so): EMA swaps
    its average in for validation and out again at the end of validation. At the end of training the
    average is copied into the model for good, so the final grid also uses the EMA weights. A DataModule
    whose ``kind`` is not ``"image"`` is left alone.

    Args:
        num_samples: images in the grid.
        every_n_validations: draw at every n-th validation only (sampling costs T network evaluations).
        nrow: images per grid row; default a near-square grid.
        strip_images: rows of the denoising strip; 0 turns the strip off.
        strip_columns: reverse steps shown in the strip.
        sampler: a sampler for these figures (e.g. a ``DDIMSampler`` for cheaper grids); None uses the
            run's sampler.
        seed: RNG seed of the starting noise.
        at_end: also draw when training ends, unless the last validation already drew at that step.
        metric_samples: when > 0 and the dataset has an offline classifier (digits, mnist, cifar10), also
            draw this many images and log the classifier's Fréchet distance to the training split
            (``val/classifier_frechet``), its ratio to held-out real images of the same n
            (``val/classifier_ratio``), class balance and confidence (:mod:`ddpm.evaluation.classifier`;
            the classifier is trained once and cached).
        cache_dir: the classifier cache and the FID reference cache (default ``~/.cache/ddpm-lab``).
        fid_samples: when > 0 and Inception weights are on disk (``inception_weights``, else
            ``$DDPM_INCEPTION_WEIGHTS``, else torch hub's cache; nothing is downloaded) with torch-fidelity
            installed, also draw this many images and log ``val/fid`` and ``val/kid`` against the training
            images' Inception statistics (computed once per dataset and cached, :class:`~ddpm.evaluation.fid.
            FIDReference`), the real-vs-real floor of as many held-out images (``val/fid_floor``,
            ``val/kid_floor``) and ``val/fid_ratio``. Otherwise one line says why FID is off.
        fid_reference: training images in FID's reference statistics.
        inception_weights: the Inception weights file (torch-fidelity's ``weights-inception-2015-12-05``).
    """

    def __init__(
        self,
        num_samples: int = 64,
        every_n_validations: int = 1,
        nrow: int | None = None,
        strip_images: int = 4,
        strip_columns: int = 8,
        sampler: Any = None,
        seed: int = 0,
        at_end: bool = True,
        metric_samples: int = 0,
        cache_dir: str | None = None,
        fid_samples: int = 0,
        fid_reference: int = 10000,
        inception_weights: str | None = None,
    ) -> None:
        if fid_samples < 0 or fid_samples == 1 or fid_reference < 2:
            raise ValueError(
                f"callbacks.samples: fid_samples={fid_samples!r} must be 0 (off) or >= 2 and "
                f"fid_reference={fid_reference!r} >= 2"
            )
        if metric_samples < 0:
            raise ValueError(f"callbacks.samples.metric_samples={metric_samples!r} must be >= 0")
        if num_samples < 1:
            raise ValueError(f"callbacks.samples.num_samples={num_samples!r} must be >= 1")
        if every_n_validations < 1:
            raise ValueError(f"callbacks.samples.every_n_validations={every_n_validations!r} must be >= 1")
        if strip_images < 0 or strip_columns < 1:
            raise ValueError(
                f"callbacks.samples: strip_images={strip_images!r} must be >= 0 and "
                f"strip_columns={strip_columns!r} >= 1"
            )
        self.num_samples = num_samples
        self.every_n_validations = every_n_validations
        self.nrow = nrow
        self.strip_images = strip_images
        self.strip_columns = strip_columns
        self.sampler = sampler
        self.seed = seed
        self.at_end = at_end
        self.metric_samples = metric_samples
        self.cache_dir = cache_dir
        self.fid_samples = fid_samples
        self.fid_reference = fid_reference
        self.inception_weights = inception_weights
        self._fid: Any = None  # (features, reference) once set up; False when FID is off
        self._metric: Any = None
        self._validations = 0
        self._last_step: int | None = None
        self._device: Any = None
        #: the files written so far, in order
        self.written: list[Path] = []
        #: the classifier figures logged so far, by step
        self.scores: dict[int, dict[str, float]] = {}
        #: the FID figures logged so far, by step
        self.fid_scores: dict[int, dict[str, float]] = {}

    @staticmethod
    def _is_image(trainer: L.Trainer) -> bool:
        return getattr(_datamodule(trainer), "kind", None) == "image"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check the figures' sampler against the run's chain (e.g. DDIM steps > T) before any training."""
        diffusion = getattr(pl_module, "diffusion", None)
        if self.sampler is not None and diffusion is not None:
            try:
                self.sampler.timesteps(diffusion)
            except ValueError as err:
                raise ValueError(f"callbacks.samples.sampler: {err}") from None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the training device: Lightning moves the module to the CPU before ``on_fit_end``."""
        self._device = pl_module.device

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the figures at every n-th validation (not during the sanity check)."""
        if trainer.sanity_checking or not self._is_image(trainer):
            return
        self._validations += 1
        if (self._validations - 1) % self.every_n_validations:
            return
        if trainer.is_global_zero:
            self._draw(trainer, cast("DiffusionModule", pl_module))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw with the final (EMA) weights, on the device training used."""
        if not (self.at_end and trainer.is_global_zero and self._is_image(trainer)):
            return
        if trainer.global_step == 0 or self._last_step == trainer.global_step:
            return
        home = pl_module.device
        pl_module.to(self._device or home)
        try:
            self._draw(trainer, cast("DiffusionModule", pl_module))
        finally:
            pl_module.to(home)

    def _draw(self, trainer: L.Trainer, pl_module: DiffusionModule) -> None:
        import torch

        from ddpm import viz
        from ddpm.sampling_model import class_grid_columns
        from ddpm.viz.grid import save_image_grid

        step = trainer.global_step
        plots = Path(trainer.default_root_dir) / "plots"
        denormalize = getattr(_datamodule(trainer), "denormalize", None)
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        x = pl_module.sample(self.num_samples, sampler=self.sampler, generator=gen)
        images = denormalize(x) if callable(denormalize) else ((x + 1) / 2).clamp(0, 1)
        # a conditional run's grid: one row per class (draw_samples draws the classes in order)
        nrow = self.nrow or class_grid_columns(self.num_samples, getattr(pl_module, "num_classes", 0))
        grid = save_image_grid(images, plots / f"samples_grid_step{step:07d}.png", nrow=nrow)
        _log_png(trainer, "val/samples_grid", grid)
        self.written.append(grid)
        if self.strip_images:
            gen = torch.Generator(device=pl_module.device).manual_seed(self.seed + 1)
            result = pl_module.sample(
                self.strip_images, sampler=self.sampler, generator=gen, return_trajectory=True
            )
            # pred_x0 stays on the network's [-1, 1] scale, which the strip maps to black .. white.
            fig = viz.plot_denoising_strip(
                result.pred_x0, result.timesteps, n_images=self.strip_images, n_columns=self.strip_columns
            )
            strip = plots / f"denoising_step{step:07d}.png"
            log_figure(trainer, "val/denoising", fig, strip)
            self.written.append(strip)
        if self.metric_samples:
            self._classifier_scores(trainer, pl_module, denormalize)
        if self.fid_samples:
            self._fid_figures(trainer, pl_module, denormalize)
        self._last_step = step

    def _fid_setup(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        """(features, reference), or False with one line saying why FID is off."""
        from ddpm.data.image_folder import default_cache_dir
        from ddpm.evaluation.fid import fid_unavailable_reason
        from ddpm.evaluation.images import fid_reference

        dm = _datamodule(trainer)
        reason = fid_unavailable_reason(self.inception_weights)
        if reason is None and not all(hasattr(dm, a) for a in ("training_images", "held_out", "identity")):
            reason = f"FID skipped: {type(dm).__name__} does not give training and held-out images"
        if reason is not None:
            print(reason.replace("FID skipped:", "FID during training is off:", 1))
            return False
        return fid_reference(
            dm.identity(),
            lambda: dm.training_images(self.fid_reference),
            self.fid_reference,
            self.cache_dir or default_cache_dir(),
            self.inception_weights,
            device=pl_module.device,
            log=print,
        )

    def _fid_figures(self, trainer: L.Trainer, pl_module: DiffusionModule, denormalize: Any) -> None:
        import torch

        from ddpm.evaluation.images import fid_against_reference

        if self._fid is None:
            self._fid = self._fid_setup(trainer, pl_module)
        if self._fid is False or not callable(denormalize):
            return
        features, reference = self._fid
        dm = _datamodule(trainer)
        n = min(self.fid_samples, len(dm.held_out()))  # the floor needs as many held-out images
        gen = torch.Generator(device=pl_module.device).manual_seed(self.seed + 3)
        x = pl_module.sample(n, sampler=self.sampler, generator=gen)
        fid = fid_against_reference(reference, features, denormalize(x).clamp(0, 1), dm.held_out)
        _log_scores(trainer, fid.metrics("val/"), self.fid_scores)
        print(f"step {trainer.global_step}: {fid.headline()}")

    def _classifier_scores(self, trainer: L.Trainer, pl_module: DiffusionModule, denormalize: Any) -> None:
        import torch

        from ddpm.evaluation.classifier import CLASSIFIER_DATASETS, ImageClassifierMetric
        from ddpm.evaluation.images import classifier_quality

        dm = _datamodule(trainer)
        dataset = getattr(dm, "dataset", None)
        if dataset not in CLASSIFIER_DATASETS or not callable(denormalize):
            if self._metric is None:
                rank_zero_warn(f"callbacks.samples.metric_samples: no offline classifier for {dataset!r}")
                self._metric = False
            return
        if self._metric is None:
            data_dir = getattr(dm, "data_dir", None)
            self._metric = ImageClassifierMetric.load_or_train(
                dataset, data_dir, self.cache_dir, device=pl_module.device, log=print
            )
        if self._metric is False:
            return

        def draw(k: int, n: int) -> torch.Tensor:
            gen = torch.Generator(device=pl_module.device).manual_seed(self.seed + 2)
            return denormalize(pl_module.sample(n, sampler=self.sampler, generator=gen)).clamp(0, 1)

        # one draw of metric_samples images (at most the held-out split's size) over its held-out floor
        scores = classifier_quality(self._metric, draw, self.metric_samples, repeats=1).draws[0]
        _log_scores(trainer, scores.metrics("val/"), self.scores)
        print(f"step {trainer.global_step}: {scores.headline()}")


def _log_scores(trainer: L.Trainer, values: dict[str, float], history: dict[int, dict[str, float]]) -> None:
    """Log a validation's scores to every logger at this step and keep them in ``history`` by step."""
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)
    history[trainer.global_step] = values


def _log_png(trainer: L.Trainer, key: str, path: Path) -> None:
    """Log a PNG file as an image to W&B when a WandbLogger is present."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=trainer.global_step)
