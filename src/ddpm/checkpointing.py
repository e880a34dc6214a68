"""Checkpoints that survive faults: atomic writes, a save every few steps and when the job is told to stop.

Lightning writes a local checkpoint through fsspec's transaction, which stages the file in the system
temp folder and moves it into place; across filesystems that move is a copy, so a kill during it can
leave a truncated ``last.ckpt``. Here the temporary file sits beside its target and ``os.replace``
swaps it in: at every instant the path holds either the old complete checkpoint or the new one. A save that
fails (a full disk) leaves the earlier checkpoint as it was and stops the run with
:class:`CheckpointNotWrittenError`, which ``ddpm-train`` reports in one line.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm.safe_writes import ResultsNotWrittenError, fsync_folder, os_error_reason

__all__ = ["AtomicCheckpointIO", "CheckpointNotWrittenError", "LastCheckpoint", "atomic_torch_save"]


class CheckpointNotWrittenError(ResultsNotWrittenError):
    """A checkpoint could not be written (a full disk, a folder gone read-only); the file at its path, if
    any, is the earlier complete checkpoint. The message is one line naming the file, the step and why.

    A :class:`~ddpm.results.ResultsNotWrittenError`, so ``ddpm-train`` reports it like a failed final write:
    the line on stderr, exit status 1, and a sweep records the job as failed without a traceback.
    """


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write of its file (ENOSPC) as a RuntimeError
    ("PytorchStreamWriter failed writing file") raised while the OSError was being handled."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync it, then rename it over ``path``.

    Raises:
        OSError: the write failed (a full disk, ...); the temporary file is gone and ``path`` unchanged.
            torch's own RuntimeError for a failed write is replaced by the OSError behind it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # atomic on POSIX within one filesystem
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err) if isinstance(err, RuntimeError) else None
        if cause is not None:
            raise cause from err
        raise
    fsync_folder(target.parent)  # make the rename itself durable


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO for local paths that never leaves a truncated file behind."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            step = checkpoint.get("global_step")
            at = f" at step {step}" if isinstance(step, int) else ""
            name = Path(path).name
            raise CheckpointNotWrittenError(
                f"could not write the checkpoint {path}{at}: {os_error_reason(err)}; any earlier {name} is "
                "kept as it was, and training stopped"
            ) from err


class LastCheckpoint(Callback):
    """Keep ``checkpoints/last.ckpt`` current: every ``every_n_steps`` steps, on SIGTERM and at the end.

    Independent of validation: Lightning's ``ModelCheckpoint`` saves ``last.ckpt`` only when it validates
    (step 1000 of a toy run), so a run killed before then would leave nothing to resume from. Saving in
    ``on_train_batch_end`` is what ``ModelCheckpoint(every_n_train_steps=...)`` does too: the model,
    optimizer and loop state are consistent there, so the checkpoint resumes like any other.

    SIGTERM (a scheduler's stop, ``kill``, ``scontrol requeue``): while training, this callback holds the
    signal back and hands it to Lightning's handler at the end of the next optimizer step (the
    ``on_train_batch_end`` of its last batch under gradient accumulation), right after saving there;
    Lightning then raises ``SIGTERMException`` at the end of that batch, as on any SIGTERM.
    Lightning's own handler only sets a flag, which Lightning reads in several places (after the batch's
    logging and validation, after an epoch's end hooks, between validation batches): a signal that came
    after this callback's look at the flag and before Lightning's stopped the run where only
    ``on_exception`` could save, at an epoch's last batch in a state that resumes inexactly. Held, a
    SIGTERM stops training at one place only. Under DDP the ranks agree there (a signal to any rank stops
    all), so they save and stop at the same step. One held when training ends stops the run after the final
    save (``SIGTERMException`` from ``on_train_end``) rather than let it go on to the final samples.

    End of training: a run whose ``max_steps`` falls between two saves would otherwise leave a
    ``last.ckpt`` of an earlier step than the samples it wrote.

    Args:
        dirpath: the run's ``checkpoints/`` folder.
        every_n_steps: optimizer steps between saves; ``"auto"``: a tenth of ``trainer.max_steps``, from
            50 to 5000 (1000 when training has no step limit), so a kill loses at most 10% of a run of
            500 steps or more;
            ``None`` or 0: only on SIGTERM and at the end.
        at_train_end: also save the final step.
    """

    #: ``every_n_steps="auto"`` never waits longer than this many steps between saves
    AUTO_MAX_INTERVAL = 5000
    #: ...nor saves more often: a short run (a smoke test) is cheaper to redo than to checkpoint each step
    AUTO_MIN_INTERVAL = 50

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        every_n_steps: int | str | None = "auto",
        at_train_end: bool = True,
    ) -> None:
        if every_n_steps not in (None, "auto") and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0
        ):
            raise ValueError(f"every_n_steps={every_n_steps!r} must be an integer >= 0, 'auto' or null")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.at_train_end = at_train_end
        self.saved: Path | None = None
        self._saved_step = -1
        self._lightning_sigterm: Any = None  # Lightning's SIGTERM handler, while this one holds the signal
        self._sigterm_held = False

    def interval(self, max_steps: int) -> int | None:
        """The number of optimizer steps between saves for a run of ``max_steps`` (-1: no limit)."""
        if isinstance(self.every_n_steps, str):  # "auto", the one string __init__ lets through
            if max_steps is None or max_steps < 0:
                return 1000
            return min(self.AUTO_MAX_INTERVAL, max(self.AUTO_MIN_INTERVAL, max_steps // 10))
        return self.every_n_steps or None  # 0 and None: no periodic saves

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Remember the step of the latest checkpoint written."""
        self._saved_step = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Hold SIGTERM back from Lightning's handler (registered by now) until an optimizer step ends."""
        self._sigterm_held = False
        handler = signal.getsignal(signal.SIGTERM)
        # signal.signal works in the main thread only; Lightning registers nothing elsewhere either
        if callable(handler) and threading.current_thread() is threading.main_thread():
            self._lightning_sigterm = handler
            signal.signal(signal.SIGTERM, self._hold_sigterm)

    def _hold_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._sigterm_held = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Save every ``interval`` optimizer steps (not per micro-batch under gradient accumulation), and
        on a SIGTERM held since the step before: save, then let Lightning stop at the end of this batch."""
        if trainer.fit_loop._should_accumulate():
            return  # mid-step: the gradients gathered so far would be in no checkpoint
        stop = self._sigterm_received(trainer)
        every = self.interval(trainer.max_steps)
        step = trainer.global_step
        dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # set by Lightning, undeclared
        due = every is not None and step > 0 and step % every == 0
        if (due or stop) and step != self._saved_step and not dev_run:
            # Here the loop state is one Lightning resumes exactly, also after an epoch's last batch
            # (saved in on_exception there, a resume skips the rest of the next epoch's batches).
            # The weight average runs after this callback (train.py puts it last); its update of this step
            # goes into the checkpoint too, or a resumed run's average would lag one update behind. The
            # update is done once: the callbacks skip a step they have averaged already.
            for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning, undeclared
                if isinstance(callback, WeightAveraging):
                    callback.on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            self._save(trainer)
        if stop:
            # Lightning's handler sets the flag it reads at the end of this batch (after the step's
            # logging): from here on SIGTERM is Lightning's again
            self._release_sigterm(deliver=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last.ckpt`` at the final step unless a checkpoint of that step was just written; stop
        with ``SIGTERMException`` if a SIGTERM came after the final step's end."""
        # Lightning's handler first, so that a signal from now on sets its flag, read just below
        held = self._release_sigterm(deliver=False)
        stop = trainer.strategy.reduce_boolean_decision(held or trainer.received_sigterm, all=False)
        done = self._saved_step == trainer.global_step
        dev_run = trainer.fast_dev_run  # type: ignore[attr-defined]  # set by Lightning, undeclared
        if self.at_train_end and trainer.global_step > 0 and not done and not dev_run:
            self._save(trainer)
        if stop:
            # no batch ends any more for Lightning to stop at: stop here, as it would have a moment earlier,
            # rather than go on to the final samples after being told to stop
            raise SIGTERMException

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Save when the exception is Lightning's SIGTERM signal, unless this step was saved already."""
        if isinstance(exception, SIGTERMException) and trainer.global_step != self._saved_step:
            self._save(trainer)

    def _sigterm_received(self, trainer: L.Trainer) -> bool:
        """Whether a SIGTERM came, held here or seen by Lightning (before training started), on any rank."""
        # every rank asks at the same step, so under DDP all of them save and stop at the same step
        return trainer.strategy.reduce_boolean_decision(
            self._sigterm_held or trainer.received_sigterm, all=False
        )

    def _release_sigterm(self, deliver: bool) -> bool:
        """Give SIGTERM back to Lightning's handler; with ``deliver``, call it now. Returns whether a signal
        was held."""
        handler, self._lightning_sigterm = self._lightning_sigterm, None
        if handler is not None:
            signal.signal(signal.SIGTERM, handler)
        # read after the swap: a signal from now on sets Lightning's flag instead, none is lost between
        held, self._sigterm_held = self._sigterm_held, False
        if handler is not None and deliver:
            handler(signal.SIGTERM, None)
        return held

    def _save(self, trainer: L.Trainer) -> None:
        path = self.dirpath / "last.ckpt"
        # a full checkpoint (optimizer, loops, callbacks) to resume from; saying so also keeps Lightning
        # from logging that it chose this default at every save
        trainer.save_checkpoint(path, weights_only=False)
        self.saved = path
