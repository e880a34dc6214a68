"""One run, one folder: a run folder is claimed with an exclusive ``mkdir`` before Hydra writes into it.

Hydra creates ``hydra.run.dir`` with ``mkdir(exist_ok=True)``, so two runs started in the same second (a
script, a job array) or given the same ``hydra.run.dir`` would share a folder: the config of one, the
checkpoints of the other. :class:`ClaimRunFolder`, a Hydra callback registered in
``conf/hydra/default.yaml``, runs before Hydra touches the folder:

* the default, timestamped name: if that folder is taken (another run started in the same second), the
  name gets a suffix ``_2``, ``_3``, ... A run owns its folder by creating ``.ddpm_run`` in it with
  ``O_EXCL``, which is atomic: of two runs racing for one name, exactly one gets it;
* a folder given with ``hydra.run.dir``: it must be new (or empty), unless the run resumes in it
  (``ckpt_path`` pointing into it, ``last`` or ``auto``); a resumed run keeps the folder's own
  ``.hydra/config.yaml`` (Hydra would otherwise overwrite it with today's composition);
* the folder must be writable: a read-only place, a file where a folder is expected or a full disk is one
  line on stderr (exit code 2) before anything is written.

Sweep folders (``hydra.sweep.dir``) are claimed the same way. Kept free of torch and Lightning: Hydra
imports it at every start.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from ddpm.safe_writes import os_error_reason, write_probe

__all__ = [
    "CLAIM_FILE",
    "ClaimRunFolder",
    "RunFolderError",
    "claim_folder",
    "find_checkpoint",
    "probe_writable",
    "resumes_in",
    "run_dir_of",
]


class RunFolderError(OSError):
    """A run folder cannot be claimed: it belongs to another run, or it cannot be written."""


def probe_writable(folder: Path) -> None:
    """Write and delete a small file in ``folder`` (see :func:`ddpm.safe_writes.write_probe`).

    Raises:
        RunFolderError: read-only, not a folder, no space left, ..., in one line naming ``folder``.
    """
    try:
        write_probe(folder)
    except OSError as err:
        raise RunFolderError(f"{folder} cannot be written: {os_error_reason(err)}") from None


def _file_in_the_way(folder: Path) -> Path | None:
    for parent in (folder, *folder.parents):
        if parent.exists():
            return parent if not parent.is_dir() else None
    return None


#: created exclusively (O_EXCL) in a run folder by the run that owns it
CLAIM_FILE = ".ddpm_run"


def _take(folder: Path) -> bool:
    """Create the claim file; False if another run holds the folder."""
    try:
        fd = os.open(folder / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    return True


def claim_folder(folder: Path, *, may_rename: bool, may_reuse: bool) -> tuple[Path, bool]:
    """Claim ``folder`` for one run; returns the folder claimed and whether it existed already.

    A folder belongs to the run that created its claim file (``O_EXCL``: of processes racing for one
    name, exactly one succeeds); a folder that holds anything else belongs to an earlier run.

    Args:
        folder: the folder Hydra is about to use.
        may_rename: the name is ddpm-lab's default (a timestamp): when taken, try ``<name>_2``, ``_3``...
        may_reuse: the run resumes in this folder, so an existing one is expected.

    Raises:
        RunFolderError: the folder holds another run (and may not be reused or renamed), or it cannot be
            created or written.
    """
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise RunFolderError(f"{folder} cannot be created: {blocker} is a file, where a folder is expected")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"{folder.parent} cannot be created: {os_error_reason(err)}") from None
    candidate, n = folder, 1
    while True:
        try:
            candidate.mkdir()
            created = True
        except FileExistsError:
            created = False
        except OSError as err:
            raise RunFolderError(f"{candidate} cannot be created: {os_error_reason(err)}") from None
        if may_reuse and not created:
            existed = True
            break
        try:
            taken = (created or not any(p.name != CLAIM_FILE for p in candidate.iterdir())) and _take(
                candidate
            )
        except OSError as err:
            raise RunFolderError(f"{candidate} cannot be written: {os_error_reason(err)}") from None
        if taken:
            existed = not created
            break
        if not may_rename:
            raise RunFolderError(
                f"hydra.run.dir={candidate} already holds another run; give a new folder, or resume "
                f"that run with ckpt_path={candidate}"
            )
        n += 1
        candidate = folder.with_name(f"{folder.name}_{n}")
    try:
        probe_writable(candidate)
    except RunFolderError:
        if not existed:
            shutil.rmtree(candidate, ignore_errors=True)  # leave nothing behind
        raise
    return candidate, existed


def run_dir_of(path: Path) -> Path | None:
    """The run folder of ``path``: the folder itself, or the run a ``<run>/checkpoints/*.ckpt`` file belongs
    to; None for a checkpoint that lies outside a run's ``checkpoints/`` folder."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else None


def resumes_in(ckpt_path: Any, folder: Path) -> bool:
    """Whether ``ckpt_path`` (the config value) continues a run that lives in ``folder``."""
    if ckpt_path in (None, ""):
        return False
    if ckpt_path in ("auto", "last"):
        return True
    run = run_dir_of(Path(str(ckpt_path)).resolve())
    return run is not None and run == folder.resolve()


def _is_first_rank() -> bool:
    # Lightning's DDP launcher starts ranks > 0 as new processes of the same command, and srun starts one
    # per task: they all run this callback, and only the first may claim the folder.
    return all(
        int(os.environ.get(var) or 0) == 0 for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK")
    )


def _user_set(config: DictConfig, key: str) -> bool:
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _fail(err: RunFolderError) -> None:
    # Hydra prints exceptions from callbacks with a traceback; a bad folder is a user error: one line.
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


class ClaimRunFolder(Callback):
    """Hydra callback: claim the run (or sweep) folder before Hydra writes anything into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Claim ``hydra.run.dir``; a resumed run keeps its folder's stored ``.hydra`` files."""
        if not _is_first_rank():
            return  # DDP / SLURM tasks of one run: rank 0 claimed the folder they share
        HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:runtime.cwd} resolves
        folder = Path(str(config.hydra.run.dir)).absolute()
        resume = resumes_in(config.get("ckpt_path"), folder)
        try:
            claimed, existed = claim_folder(
                folder, may_rename=not _user_set(config, "hydra.run.dir"), may_reuse=resume
            )
        except RunFolderError as err:
            _fail(err)
            return
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(claimed)
            if existed and (claimed / ".hydra" / "config.yaml").is_file():
                config.hydra.output_subdir = None  # the run's own config stays as it was written

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Claim ``hydra.sweep.dir``: two sweeps never share one."""
        HydraConfig.instance().set_config(config)
        folder = Path(str(config.hydra.sweep.dir)).absolute()
        try:
            claimed, _ = claim_folder(
                folder,
                may_rename=not _user_set(config, "hydra.sweep.dir"),
                may_reuse=config.get("ckpt_path") == "auto",  # a sweep resubmitted to finish its jobs
            )
        except RunFolderError as err:
            _fail(RunFolderError(str(err).replace("hydra.run.dir=", "hydra.sweep.dir=")))
            return
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(claimed)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/last.ckpt`` (else its only .ckpt).

    Raises:
        FileNotFoundError: neither a checkpoint nor a run folder with one; the message says which.
    """
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"run={str(path)!r} is neither a run folder nor a checkpoint file")
    ckpts = p / "checkpoints"
    if (ckpts / "last.ckpt").is_file():
        return ckpts / "last.ckpt"
    found = sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {str(ckpts)!r}; expected last.ckpt (did the run finish a step?)"
        )
    return found[-1]
