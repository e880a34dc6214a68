"""DiffusionModule: the LightningModule that trains a denoiser and samples.

It owns the four parts a training step combines (EDM's design space, Karras et al. 2022, table 1): the
process and parameterisation (``diffusion``), the loss (:mod:`ddpm.losses`) and the distribution of
training timesteps (:mod:`ddpm.timestep_sampling`, whose state its checkpoints carry); the step itself is
three calls: draw t and its weights, the per-sample loss, feed the losses back.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast, overload

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.types import OptimizerConfig, OptimizerLRSchedulerConfig
from torch import nn
from torchmetrics import Metric

from ddpm.losses import Loss, default_loss
from ddpm.process import Process
from ddpm.samplers import Sampler, SampleResult
from ddpm.sampling_model import draw_samples
from ddpm.timestep_sampling import TimestepDistribution, check_loss, default_timesteps

__all__ = ["DiffusionModule", "NonFiniteLossError"]

#: the loss is also reported by quarter of [0, T): under eps-prediction small t dominates the mean
QUARTERS = 4


def _rng_states() -> dict[str, Any]:
    """The global RNG states as plain Python and tensors (loadable with weights_only=True)."""
    # numpy's stub picks the dict overload for get_state()'s default, which is legacy=True: a tuple
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, gauss = state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }


def _restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def batch_data(batch: Any) -> torch.Tensor:
    """The data tensor of a batch: ``(x,)`` (toy data without classes), ``(x, label)``, or a reflow's
    ``{"x", "noise"}``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        return batch["x"]
    return batch[0]


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The class labels of a batch, or None for a batch without them."""
    if isinstance(batch, Mapping):
        return batch.get("y")
    if isinstance(batch, torch.Tensor) or len(batch) < 2:
        return None
    return batch[1]


def batch_noise(batch: Any) -> torch.Tensor | None:
    """The noise a batch is paired with (a reflow's fixed pairs), or None: the loss draws it."""
    return batch.get("noise") if isinstance(batch, Mapping) else None


class BinnedMean(Metric):
    """Means of values by bin (here: the loss by quarter of t), accumulated without host syncs.

    One ``index_add_`` per step instead of a masked update and a ``self.log`` per bin: with a small
    network those cost more than the training step itself. Sums and counts add up across DDP ranks.
    """

    full_state_update = False
    total: torch.Tensor  # the states add_state registers
    count: torch.Tensor

    def __init__(self, num_bins: int) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.add_state("total", default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor, bins: torch.Tensor) -> None:
        """Add ``values`` [N] to their ``bins`` [N] (integers in [0, num_bins))."""
        values = values.detach().to(self.total.dtype)
        self.total.index_add_(0, bins, values)
        self.count.index_add_(0, bins, torch.ones_like(values))

    def compute(self) -> torch.Tensor:
        """The mean per bin (NaN for a bin that saw nothing)."""
        return self.total / self.count


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf (more often than ``max_nonfinite_skips`` allows)."""


class DiffusionModule(L.LightningModule):
    """Trains ``net`` with ``loss`` at timesteps drawn by ``timestep_sampler``, and samples with ``sampler``.

    Args:
        net: the denoiser, ``net(x_t, t) -> output`` under ``diffusion.objective``.
        diffusion: the forward process and its parameterisation.
        sampler: the default sampler for :meth:`sample` and validation figures.
        loss: the per-sample training loss (None: L_simple, :class:`~ddpm.losses.SimpleLoss`).
        timestep_sampler: the distribution of training timesteps (None: uniform).
        optimizer: a partial ``optimizer(params=...)`` (Hydra ``_partial_: true``).
        lr_scheduler: a partial ``scheduler(optimizer=...)`` stepped every optimizer step, or None.
        data_shape: the shape of one sample as the network sees it, e.g. (2,) or (3, 32, 32).
        max_nonfinite_skips: how many optimizer steps with a NaN/inf loss may be skipped (each one
            logged and warned about) before training stops with :class:`NonFiniteLossError`; 0 stops
            at the first.
        compile: train and validate through ``torch.compile(net)`` (the checkpoint keeps the plain
            network's parameter names; sampling uses the plain network, whose weights are the same).
        channels_last: images only: keep the network's weights and the batches in channels-last memory
            format (faster convolutions on GPUs with tensor cores).
    """

    def __init__(
        self,
        net: nn.Module,
        diffusion: Process,
        sampler: Sampler,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss: Loss | None = None,
        timestep_sampler: TimestepDistribution | None = None,
        lr_scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        data_shape: Sequence[int] = (2,),
        max_nonfinite_skips: int = 0,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # The objects are rebuilt from the run config stored in the checkpoint (``ddpm_config``); keeping
        # them out of the hyperparameters keeps checkpoints loadable with torch.load(weights_only=True).
        self.save_hyperparameters(
            logger=False,
            ignore=["net", "diffusion", "sampler", "optimizer", "lr_scheduler", "loss", "timestep_sampler"],
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.net = net
        self.diffusion = diffusion
        self.sampler = sampler
        self.loss = default_loss(diffusion) if loss is None else loss
        self.timestep_sampler = default_timesteps(diffusion) if timestep_sampler is None else timestep_sampler
        check_loss(self.timestep_sampler, self.loss)
        self.data_shape = tuple(int(s) for s in data_shape)
        if max_nonfinite_skips < 0:
            raise ValueError(f"max_nonfinite_skips={max_nonfinite_skips!r} must be >= 0")
        self.max_nonfinite_skips = int(max_nonfinite_skips)
        self.compile_net = bool(compile)
        self.channels_last = bool(channels_last) and len(self.data_shape) == 3
        self._compiled_net: Callable[..., torch.Tensor] | None = None
        self.nonfinite_skipped = 0
        #: the composed run config, stored in every checkpoint so a lone .ckpt can be rebuilt
        self.run_config: dict | None = None
        self.train_loss_by_quarter = BinnedMean(QUARTERS)
        self.val_loss_by_quarter = BinnedMean(QUARTERS)

    def setup(self, stage: str) -> None:
        """Memory format and compilation, once the module is on its device.

        Lightning runs the callbacks' ``setup`` first, so EMA has already copied the plain module.
        """
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile_net and self._compiled_net is None:
            # object.__setattr__: the compiled wrapper must not become a submodule, or the checkpoint
            # would hold every parameter twice (once under "_orig_mod.")
            object.__setattr__(self, "_compiled_net", torch.compile(self.net))

    @property
    def denoiser(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The network as training calls it: compiled when ``compile`` is on."""
        return self._compiled_net if self._compiled_net is not None else self.net

    @property
    def num_classes(self) -> int:
        """The network's class labels (0: unconditional, and the batches' labels are not used)."""
        return int(getattr(self.net, "num_classes", 0))

    def _batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0 = batch_data(batch)
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        y = batch_labels(batch) if self.num_classes else None
        if self.num_classes and y is None:
            raise ValueError(
                "this network is class-conditional (num_classes > 0) but the batches carry no labels"
            )
        return x0, y

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network output for noisy data at timesteps ``t`` (given labels ``y`` when conditional)."""
        return self.net(x_t, t) if y is None else self.net(x_t, t, y)

    def _by_quarter(self, stage: str) -> BinnedMean:
        return self.train_loss_by_quarter if stage == "train" else self.val_loss_by_quarter

    def _update_loss_by_quarter(self, stage: str, losses: torch.Tensor, t: torch.Tensor) -> None:
        self._by_quarter(stage).update(losses, self.diffusion.time_bins(t, QUARTERS))

    def loss_by_quarter(self, stage: str) -> list[float] | None:
        """This epoch's mean loss by quarter of t (q1: t in the first quarter of [0, T)), all ranks;
        None before the epoch's first step."""
        metric = self._by_quarter(stage)
        return [float(v) for v in metric.compute()] if metric.update_count else None

    def _log_and_reset_loss_by_quarter(self, stage: str) -> None:
        for k, value in enumerate(self.loss_by_quarter(stage) or ()):
            self.log(f"{stage}/loss_q{k + 1}", value, on_step=False, on_epoch=True, rank_zero_only=True)
        self._by_quarter(stage).reset()

    def on_train_epoch_end(self) -> None:
        """Log the epoch's loss by quarter of t (``train/loss_q1`` .. ``q4``)."""
        self._log_and_reset_loss_by_quarter("train")

    def on_validation_epoch_end(self) -> None:
        """Log the validation loss by quarter of t (``val/loss_q1`` .. ``q4``)."""
        self._log_and_reset_loss_by_quarter("val")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """The loss on a batch, at timesteps drawn by the timestep sampler, weighted to stay unbiased."""
        x0, y = self._batch(batch)
        self.loss.prepare(self.global_step, self.net)  # a distillation's round or target network moves on
        t, weights = self.timestep_sampler.sample(x0.shape[0], x0.device)
        noise = batch_noise(batch)  # a reflow's pairs bring their noise (rectified flow Algorithm 1)
        noise = self.loss.noise(x0) if noise is None else noise
        losses = self.loss(self.denoiser, x0, t, noise, **self._labels(y))
        loss = (losses * weights).mean()  # improved DDPM sec. 3.3: L_t / (T p_t) keeps the mean unbiased
        if not self._finite_on_every_rank(loss):
            self._nonfinite(loss)
            return None  # Lightning skips the step
        if self.timestep_sampler.uses_losses:
            self.timestep_sampler.update(*self._gather_across_ranks(t, losses.detach()))
        if self._logging_step():  # self.log costs more than a small network's step: call it when it writes
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
            for key, value in self.loss.progress().items():
                self.log(key, value, on_step=True, on_epoch=False)
        self._update_loss_by_quarter("train", losses, t)
        return loss

    def _gather_across_ranks(
        self, t: torch.Tensor, losses: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's (t, loss) pairs, rank 0's first, on every rank (one process: its own), so that the
        importance sampler's history is the same on all ranks (improved-diffusion's
        ``update_with_local_losses``). Batches may differ in size across ranks: they are padded to the
        largest, with t = -1 marking the padding."""
        if self._trainer is None:
            return t, losses
        size = torch.tensor([t.shape[0]], device=t.device)  # one process: the strategy returns its own
        largest = int(self.trainer.strategy.all_gather(size).max())
        pad = largest - t.shape[0]
        t_pad = torch.cat([t, t.new_full((pad,), -1)])
        loss_pad = torch.cat([losses, losses.new_zeros(pad)])
        all_t = self.trainer.strategy.all_gather(t_pad).reshape(-1)
        all_losses = self.trainer.strategy.all_gather(loss_pad).reshape(-1)
        keep = all_t >= 0
        return all_t[keep], all_losses[keep]

    def _labels(self, y: torch.Tensor | None, **options: float) -> dict[str, Any]:
        """The loss's label arguments: none for an unconditional network."""
        if y is None:
            return {}
        # torch.compile's wrapper forwards attributes, but the null label is read from the plain network
        return {"y": y, "num_classes": self.num_classes, **options}

    def _logging_step(self) -> bool:
        """Whether the loggers write at this optimizer step, by Lightning's rule (``should_update_logs``):
        the (global_step + 1)-th step when that is a multiple of ``trainer.log_every_n_steps``."""
        if self._trainer is None:
            return True
        trainer = self.trainer
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning, undeclared
        return (trainer.global_step + 1) % every == 0 or trainer.should_stop

    def _finite_on_every_rank(self, loss: torch.Tensor) -> bool:
        """One host sync per step (a NaN must never be trained on silently), agreed by all DDP ranks:
        a rank that skipped or stopped alone would leave the others waiting in the gradient all-reduce."""
        finite = bool(torch.isfinite(loss))
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        return finite

    def _nonfinite(self, loss: torch.Tensor) -> None:
        """Skip this step or stop, by the ``max_nonfinite_skips`` policy."""
        step = self.trainer.global_step if self._trainer is not None else -1
        value = "non-finite on another DDP rank" if torch.isfinite(loss) else str(loss.item())
        distributed = self._trainer is not None and self.trainer.world_size > 1
        if distributed and self.max_nonfinite_skips:
            raise NonFiniteLossError(
                f"training loss is {value} at step {step}; stopped on every rank: under DDP a step cannot be "
                "skipped (Lightning does not support it), so max_nonfinite_skips applies to one device only; "
                "the last good checkpoint is kept"
            )
        if self.nonfinite_skipped >= self.max_nonfinite_skips:
            raise NonFiniteLossError(
                f"training loss is {value} at step {step}; stopped (max_nonfinite_skips="
                f"{self.max_nonfinite_skips}); the last good checkpoint is kept"
            )
        self.nonfinite_skipped += 1
        rank_zero_warn(
            f"training loss is {value} at step {step}: step skipped "
            f"({self.nonfinite_skipped}/{self.max_nonfinite_skips} allowed)"
        )
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False)
        # Lightning skips the optimizer step for a None loss, and warns that it did; ours says why.
        warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
        return None

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The loss on held-out data at fixed (t, noise) per batch, so epochs are comparable."""
        x0, y = self._batch(batch)
        self.loss.prepare(self.global_step, self.net)  # the sanity check runs before the first training step
        gen = torch.Generator(device=x0.device).manual_seed(batch_idx)
        t = self.timestep_sampler.validation_sample(x0.shape[0], x0.device, gen)
        noise = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        # conditional throughout (no label dropout), so validation draws nothing beyond its fixed t and noise
        labels = self._labels(y, cond_drop_prob=0.0)
        losses = self.loss(self.denoiser, x0, t, noise, **labels)
        loss = losses.mean()
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        self._update_loss_by_quarter("val", losses, t)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the total gradient norm (before clipping) on the steps the loggers write."""
        if not self._logging_step():
            return
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads:  # one fused norm per tensor and one over them: no per-parameter host sync
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
            self.log("train/grad_norm", total, on_step=True, on_epoch=False)

    def configure_optimizers(self) -> OptimizerConfig | OptimizerLRSchedulerConfig:
        """The configured optimizer over the network's parameters, and the per-step LR schedule."""
        optimizer = self.optimizer_factory(params=self.net.parameters())
        scheduler_fn = self.lr_scheduler_factory
        if scheduler_fn is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler_fn(optimizer=optimizer), "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the run's composed config in the checkpoint (for ``ddpm-sample`` on a lone .ckpt)."""
        if self.run_config is not None:
            checkpoint["ddpm_config"] = self.run_config
        # Lightning does not restore the global RNGs on resume; t and eps are drawn from them, so a
        # resumed run only repeats an uninterrupted one if they are saved too.
        checkpoint["rng_states"] = _rng_states()
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped
        state = self.timestep_sampler.state_dict()
        if state:  # t is drawn by this history: a resumed run repeats an uninterrupted one only with it
            checkpoint["timestep_sampler"] = state
        loss_state = self.loss.state_dict()
        if loss_state:  # a distillation's round teacher or target network
            checkpoint["loss"] = loss_state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the global RNGs and the skipped-step count of the checkpointed run."""
        if "rng_states" in checkpoint:
            _restore_rng_states(checkpoint["rng_states"])
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))
        if "timestep_sampler" in checkpoint:
            self.timestep_sampler.load_state_dict(checkpoint["timestep_sampler"])
        if "loss" in checkpoint:
            self.loss.load_state_dict(checkpoint["loss"], self.net)

    @overload
    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: Literal[False] = False,
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor: ...

    @overload
    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        *,
        return_trajectory: Literal[True],
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> SampleResult: ...

    @overload
    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor | SampleResult: ...

    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor | SampleResult:
        """Generate ``n`` samples on the network's scale (denormalise with the DataModule).

        The weights in the module are the EMA weights after training, during validation, and when
        loaded from a checkpoint written with EMA on (Lightning's ``EMAWeightAveraging`` puts the
        average in the checkpoint's ``state_dict``). The same sampling as a loaded run's
        :meth:`ddpm.sampling_model.SamplingModel.sample` (:func:`~ddpm.sampling_model.draw_samples`).

        Args:
            n: number of samples.
            sampler: override the module's sampler (e.g. ``DDIMSampler(50)``).
            generator: RNG for reproducible samples.
            return_trajectory: return a :class:`SampleResult` with the whole chain (not batched).
            progress: show a progress bar.
            batch_size: sample in chunks of this size to bound memory.
            y: class labels [n] of a conditional network (None: every class equally often).
            guidance_scale: classifier-free guidance w (None: the sampler's; 0 unconditional, 1 conditional).
        """
        return draw_samples(
            self.net,
            self.diffusion,
            sampler or self.sampler,
            self.data_shape,
            n,
            device=self.device,
            generator=generator,
            return_trajectory=return_trajectory,
            progress=progress,
            batch_size=batch_size,
            y=y,
            guidance_scale=guidance_scale,
        )
