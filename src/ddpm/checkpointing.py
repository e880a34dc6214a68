"""Checkpoints that survive faults: atomic writes, and a save when the job is told to stop.

Lightning writes a local checkpoint through fsspec's transaction, which stages the file in the system
temp folder and moves it into place; across filesystems that move is a copy, so a kill during it can
leave a truncated ``last.ckpt``. Here the temporary file sits beside its target and ``os.replace``
swaps it in: at every instant the path holds either the old complete checkpoint or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

__all__ = ["AtomicCheckpointIO", "SaveOnSigterm", "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # atomic on POSIX within one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO for local paths that never leaves a truncated file behind."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)


class SaveOnSigterm(Callback):
    """Keep ``checkpoints/last.ckpt`` current when a run stops: on SIGTERM, and at the end of training.

    SIGTERM (a scheduler's stop, ``kill``): Lightning turns it into ``SIGTERMException`` at the next batch
    boundary; at that point the model, optimizer and loop state are consistent, so the checkpoint resumes
    like any other. End of training: ``ModelCheckpoint`` saves at validations, so a run whose
    ``max_steps`` falls between two of them would otherwise leave a ``last.ckpt`` of an earlier step than
    the samples it wrote; this saves the final step too (before EMA copies its average into the model).
    """

    def __init__(self, dirpath: str | os.PathLike[str], at_train_end: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.at_train_end = at_train_end
        self.saved: Path | None = None
        self._saved_step = -1

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Remember the step of the latest checkpoint written."""
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last.ckpt`` at the final step unless a checkpoint of that step was just written."""
        done = self._saved_step == trainer.global_step
        if self.at_train_end and trainer.global_step > 0 and not done and not trainer.fast_dev_run:
            self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save when the exception is Lightning's SIGTERM signal."""
        if isinstance(exception, SIGTERMException):
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
