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
  line on stderr (exit code 2) before anything is written;
* ``ckpt_path=auto`` starts fresh in a new or empty folder and resumes a ddpm-lab run (a claim file or
  checkpoints); an existing folder holding anything else is refused, as is a new run inside another
  run's folder (``hydra.run.dir=RUN/plots/nested``).

One writer per run: the first rank of a training run (fresh, resumed or a sweep's job) holds an exclusive
``flock`` on ``<run>/.ddpm_lock`` (which names its pid and host) until the job ends or the process dies;
the kernel drops the lock of a dead process, so a crashed or killed run (a requeued SLURM job) leaves no
stale lock. A second writer is refused in one line naming the holder, before anything is written.

The other ranks write into the folder only once the first has claimed it. Lightning's DDP launcher starts
them after that; srun starts every task of a step at once (``scripts/slurm_multinode.sbatch``), so a task
after the first waits, writing nothing, until the folder's lock names the first task of its own srun step
(:func:`wait_for_first_task`): whichever task starts first, the first one finds the folder as the run left it
(new, empty, or a run to resume), never holding the other tasks' ``.hydra/`` or log. Only the first rank
writes ``.hydra/``.

Nothing this process did not create is deleted: :func:`claim_folder` records whether it created the folder
and what the folder held before, and :func:`ddpm.config.remove_unstarted_run_dir` (a config error found
before training) removes only what this run wrote at start, and the folder only if this run created it.

Sweep folders (``hydra.sweep.dir``) are claimed the same way. Kept free of torch and Lightning: Hydra
imports it at every start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from ddpm.safe_writes import os_error_reason, write_probe

__all__ = [
    "CLAIM_FILE",
    "LOCK_FILE",
    "RESERVED_IN_RUN",
    "ClaimRunFolder",
    "RunFolderError",
    "RunLockedError",
    "StartRecord",
    "claim_folder",
    "enclosing_run",
    "find_checkpoint",
    "forget_start",
    "holds_run",
    "is_run_folder",
    "lock_run_folder",
    "out_problem",
    "probe_writable",
    "release_run_lock",
    "resumes_in",
    "run_dir_of",
    "start_record",
    "wait_for_first_task",
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


#: the writer's lock of a run folder, ``flock``-ed by the one process that writes the run; it names that
#: process (``pid <pid> on <host>``) for the message that refuses a second writer, and the srun step it is
#: a task of (:func:`_srun_step`), which the step's other tasks wait for (:func:`wait_for_first_task`)
LOCK_FILE = ".ddpm_lock"

#: a run's own files at the top of its folder, written by training: no other command's output replaces them
RESERVED_IN_RUN = ("samples.npz", "metrics.json", "timings.json", ".wandb_id", CLAIM_FILE, LOCK_FILE)

#: a run's own subfolders: no other command writes into them
_RESERVED_SUBFOLDERS = ("checkpoints", ".hydra")


class RunLockedError(RunFolderError):
    """Another live process holds the run folder's writer lock."""


@dataclass(frozen=True)
class StartRecord:
    """How :func:`claim_folder` found a folder: whether this process created it, and the names it held."""

    created: bool
    before: frozenset[str]


#: folders claimed by this process (resolved path -> how it found them): what a failed start may remove
_STARTS: dict[Path, StartRecord] = {}

#: folders whose writer lock this process holds (resolved path -> the lock file's descriptor, kept open:
#: the kernel holds the lock as long as the descriptor is open, and drops it when the process dies)
_LOCKS: dict[Path, int] = {}

_HOLDER = re.compile(r"pid (\d+) on (\S+)")

# flock is not supported there (Lustre mounted without -o flock, some NFS set-ups): the run goes on unguarded
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def start_record(folder: Path) -> StartRecord | None:
    """How this process found ``folder`` when it claimed it; None when this process did not claim it."""
    return _STARTS.get(folder.resolve())


def forget_start(folder: Path) -> None:
    """Forget that this process claimed ``folder`` (it was removed, or another process writes it)."""
    _STARTS.pop(folder.resolve(), None)


def _holder(path: Path) -> str:
    try:
        found = _HOLDER.search(path.read_text(errors="replace")[:500])
    except OSError:
        found = None
    # the holder writes its name just after taking the lock: a refused process may read it a moment early
    return f"pid {found[1]} on {found[2]}" if found else "pid unknown, it has just started"


def _srun_step() -> str | None:
    """The srun step this process is a task of, as ``slurm step <job>.<step> restart <n>``; None outside srun.

    Every task of one srun has the same; a later srun of the job, or the job's next start after a requeue
    (which keeps the job id and counts restarts), has another: a lock label left by an earlier start is not
    mistaken for this one's.
    """
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if not job or not step:
        return None
    return f"slurm step {job}.{step} restart {os.environ.get('SLURM_RESTART_COUNT') or 0}"


def _lock_label() -> bytes:
    step = _srun_step()
    return (f"pid {os.getpid()} on {os.uname().nodename}\n" + (f"{step}\n" if step else "")).encode()


def _write_label(fd: int) -> None:
    with contextlib.suppress(OSError):  # the lock holds without its label; a refused writer names no pid
        os.ftruncate(fd, 0)
        os.pwrite(fd, _lock_label(), 0)


def lock_run_folder(folder: Path) -> bool:
    """Hold the writer's lock of ``folder`` (``<folder>/.ddpm_lock``) until :func:`release_run_lock` or the
    end of this process, whatever ends it (the kernel drops a dead process's ``flock``: a lock file left by
    a crashed or killed run is simply taken over, and rewritten with this process's pid and host).

    Returns True when the lock was taken now; False when this process already holds it, or when the file
    system has no locks (then a warning line on stderr says the run goes on unguarded). Either way the lock
    file names this process and its srun step (:func:`wait_for_first_task` reads it).

    Raises:
        RunLockedError: another live process holds it; the one-line message names its pid and host.
        RunFolderError: the lock file cannot be created.
    """
    key = folder.resolve()
    if key in _LOCKS:
        return False
    path = key / LOCK_FILE
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise RunFolderError(f"{path} cannot be created: {os_error_reason(err)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"run folder {key} is in use by another process ({_holder(path)}, holding {path}); a run "
                "takes one writer at a time: wait for that process to end or stop it, then resume with "
                f"ckpt_path={key}"
            ) from None
        except OSError as err:
            if err.errno in _NO_LOCKS:
                _write_label(fd)  # unguarded, but the srun step's other tasks wait for this label
                os.close(fd)
                print(
                    f"warning: {path} cannot be locked ({os_error_reason(err)}); a second writer of this run "
                    "would not be detected",
                    file=sys.stderr,
                )
                return False
            os.close(fd)
            raise RunFolderError(f"{path} cannot be locked: {os_error_reason(err)}") from None
        # The lock file may have been removed (a failed start cleaning up) between open and flock: a lock on
        # a removed file guards nothing, so lock the file that is there now.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise RunFolderError(f"{path} cannot be locked: it keeps being removed and created again")
    _write_label(fd)
    _LOCKS[key] = fd
    return True


def release_run_lock(folder: Path, *, remove: bool = False) -> bool:
    """Release this process's writer lock of ``folder``; returns whether it held one.

    ``remove``: delete the lock file too, while still holding it (a failed start leaves nothing behind); a
    process that opened the file meanwhile finds it gone and locks the new one (see :func:`lock_run_folder`).
    """
    key = folder.resolve()
    fd = _LOCKS.pop(key, None)
    if fd is None:
        return False
    if remove:
        # already gone, or the folder is read-only now: a lock file left behind is harmless
        with contextlib.suppress(OSError):
            (key / LOCK_FILE).unlink()
    os.close(fd)
    return True


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` belongs to a ddpm-lab run or sweep: its claim file, or (a run made before claim
    files) ``checkpoints/`` beside ``.hydra/``."""
    try:
        return (folder / CLAIM_FILE).is_file() or (
            (folder / "checkpoints").is_dir() and (folder / ".hydra").is_dir()
        )
    except OSError:  # unreadable: not known to be a run
        return False


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a ddpm-lab run to resume: a claim file or checkpoints."""
    try:
        return (
            (folder / CLAIM_FILE).is_file()
            or (folder / "checkpoints").is_dir()
            or any(folder.glob("hpc_ckpt_*.ckpt"))  # Lightning's SLURM requeue checkpoint
        )
    except OSError:
        return False


def enclosing_run(path: Path) -> Path | None:
    """The nearest run folder (:func:`is_run_folder`) that is ``path`` or holds it, symlinks followed."""
    resolved = path.resolve()
    for folder in (resolved, *resolved.parents):
        if is_run_folder(folder):
            return folder
    return None


def out_problem(out: Path, own_run: Path | None, written: list[Path] | None = None) -> str | None:
    """Why a command may not write ``--out`` (and ``written``, the files it puts beside it), in one line;
    None when it may.

    Outputs go outside any run folder, or into the command's own run ``own_run`` (the run it reads; None
    for a command that reads none); there, never over what training wrote: :data:`RESERVED_IN_RUN` at the
    top, ``checkpoints/``, ``.hydra/``, or the run folder itself.
    """
    own = own_run.resolve() if own_run is not None else None
    for path in written or [out]:
        target = path.resolve()
        run = enclosing_run(target)
        if run is None:
            continue
        if run != own:
            where = f"this command's run ({own}) or " if own is not None else ""
            return (
                f"--out={out} lies inside {run}, the folder of another run, whose files it would replace; "
                f"write into {where}a folder outside any run"
            )
        inside = target.relative_to(run).parts
        if (
            not inside
            or inside[0] in _RESERVED_SUBFOLDERS
            or (len(inside) == 1 and inside[0] in RESERVED_IN_RUN)
        ):
            return (
                f"--out={out} would replace {target}, which the run's training wrote; choose another name, "
                f"e.g. in {run / 'samples'}"
            )
    return None


def claim_folder(folder: Path, *, may_rename: bool, may_reuse: bool) -> tuple[Path, bool]:
    """Claim ``folder`` for one run; returns the folder claimed and whether it existed already.

    A folder belongs to the run that created its claim file (``O_EXCL``: of processes racing for one
    name, exactly one succeeds); a folder that holds anything else belongs to an earlier run. A folder
    inside another run's folder is refused, unless it is itself a run this one resumes. Whether this
    process created the folder, and what it held, is recorded (:func:`start_record`): a start that fails
    removes only what it wrote.

    Args:
        folder: the folder Hydra is about to use.
        may_rename: the name is ddpm-lab's default (a timestamp): when taken, try ``<name>_2``, ``_3``...
        may_reuse: the run resumes in this folder, so an existing one is expected.

    Raises:
        RunFolderError: the folder holds another run (and may not be reused or renamed), lies inside
            another run's folder, or cannot be created or written.
    """
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise RunFolderError(f"{folder} cannot be created: {blocker} is a file, where a folder is expected")
    outer = enclosing_run(folder.parent)
    if outer is not None and not (may_reuse and is_run_folder(folder)):
        # its files would mix with that run's (RUN/plots/nested); a sweep's jobs are not claimed here
        raise RunFolderError(
            f"hydra.run.dir={folder} lies inside {outer}, the folder of another run; give a folder outside it"
        )
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
            try:
                before = frozenset(p.name for p in candidate.iterdir())
            except OSError as err:
                raise RunFolderError(f"{candidate} cannot be read: {os_error_reason(err)}") from None
            break
        try:
            taken = (created or not any(p.name != CLAIM_FILE for p in candidate.iterdir())) and _take(
                candidate
            )
        except OSError as err:
            raise RunFolderError(f"{candidate} cannot be written: {os_error_reason(err)}") from None
        if taken:
            existed = not created
            before = frozenset()  # new, or empty until this claim
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
    _STARTS[candidate.resolve()] = StartRecord(created=created, before=before)
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


#: how long a task of an srun step waits for its first task to claim the run folder: that task may start
#: later (another node, a slow import), and a shared file system may show its lock file tens of seconds late
FIRST_TASK_WAIT_S = 300.0


def _locked_by(folder: Path, step: str) -> bool:
    try:
        label = (folder / LOCK_FILE).read_text(errors="replace")[:500]
    except OSError:  # not there yet (nor the folder), or being written
        return False
    return step in label.splitlines()


def _names(folder: Path, may_rename: bool) -> list[Path]:
    """``folder``, and with ``may_rename`` the existing ``<folder>_2``, ``_3``... that claim_folder tries."""
    names, n = [folder], 2
    while may_rename and (candidate := folder.with_name(f"{folder.name}_{n}")).exists():
        names.append(candidate)
        n += 1
    return names


def wait_for_first_task(folder: Path, *, may_rename: bool) -> Path:
    """The run folder that the first task of this process's srun step claimed and locked: ``folder``, or
    with ``may_rename`` (a default name) one of ``<folder>_2``, ``_3``... (see :func:`claim_folder`).

    Writes nothing: a folder that the first task refuses (a user's, another run's) gets nothing from the
    step's other tasks either. Waits :data:`FIRST_TASK_WAIT_S` at most; srun's ``--kill-on-bad-exit`` ends
    the wait as soon as the first task fails.

    Raises:
        RunFolderError: no such folder in time (the first task refused it, or never started), in one line.
    """
    step = _srun_step() or "no srun step"
    deadline = time.monotonic() + FIRST_TASK_WAIT_S
    while True:
        for candidate in _names(folder, may_rename):
            if _locked_by(candidate, step):
                return candidate
        if time.monotonic() >= deadline:
            raise RunFolderError(
                f"SLURM task {os.environ.get('SLURM_PROCID')} waited {FIRST_TASK_WAIT_S:g} s for task 0 of "
                f"{step} to claim hydra.run.dir={folder}, in vain: task 0 refused it (its error is in the "
                "job's output) or has not started"
            )
        time.sleep(0.2)


def _user_set(config: DictConfig, key: str) -> bool:
    return any(str(o).split("=", 1)[0].lstrip("+~") == key for o in config.hydra.overrides.hydra)


def _check_auto(folder: Path) -> None:
    """``ckpt_path=auto`` resumes a ddpm-lab run, or starts one in a new or empty folder; never trains into a
    folder that holds something else (a user's folder, another program's output)."""
    try:
        entries = [p.name for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []
    except OSError:
        return  # unreadable: claim_folder reports it in one line
    if entries and not holds_run(folder):
        raise RunFolderError(
            f"hydra.run.dir={folder} is not empty and holds no ddpm-lab run (no {CLAIM_FILE} claim, no "
            "checkpoints/); ckpt_path=auto resumes a run, or starts one in a new or empty folder: give "
            "another hydra.run.dir"
        )


def _fail(err: RunFolderError) -> None:
    # Hydra prints exceptions from callbacks with a traceback; a bad folder is a user error: one line.
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2)


class ClaimRunFolder(Callback):
    """Hydra callback: claim the run (or sweep) folder before Hydra writes anything into it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Claim ``hydra.run.dir`` and take its writer lock, before Hydra writes into it; a resumed run
        keeps its folder's stored ``.hydra`` files."""
        HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:runtime.cwd} resolves
        if not _is_first_rank():
            self._follow_first_rank(config)
            return
        folder = Path(str(config.hydra.run.dir)).absolute()
        resume = resumes_in(config.get("ckpt_path"), folder)
        try:
            if config.get("ckpt_path") == "auto":
                _check_auto(folder)
            claimed, existed = claim_folder(
                folder, may_rename=not _user_set(config, "hydra.run.dir"), may_reuse=resume
            )
        except RunFolderError as err:
            _fail(err)
            return
        try:
            lock_run_folder(claimed)
        except RunFolderError as err:
            forget_start(claimed)  # another process writes it: nothing in it is this process's to remove
            _fail(err)
            return
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = str(claimed)
            if existed and (claimed / ".hydra" / "config.yaml").is_file():
                config.hydra.output_subdir = None  # the run's own config stays as it was written

    @staticmethod
    def _follow_first_rank(config: DictConfig) -> None:
        """A later DDP rank writes into the folder rank 0 claimed and locked, and only once it has."""
        folder = None
        if int(os.environ.get("SLURM_PROCID") or 0) > 0 and _srun_step() is not None:
            # started with rank 0, not by it (Lightning's launcher starts its ranks after the claim)
            try:
                folder = wait_for_first_task(
                    Path(str(config.hydra.run.dir)).absolute(),
                    may_rename=not _user_set(config, "hydra.run.dir"),
                )
            except RunFolderError as err:
                _fail(err)
                return
        with read_write(config.hydra), open_dict(config.hydra):
            if folder is not None:
                config.hydra.run.dir = str(folder)
            # rank 0 writes the run's .hydra/ (a resumed run keeps its own): the same composition, written
            # by one process, as Lightning's launcher has its ranks do (hydra.output_subdir=null)
            config.hydra.output_subdir = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Lock a sweep job's folder (a single run holds its lock since :meth:`on_run_start`)."""
        if not _is_first_rank():
            return
        try:
            lock_run_folder(Path(str(config.hydra.runtime.output_dir)))
        except RunFolderError as err:
            _fail(err)

    def on_job_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any) -> None:
        """Release the job's lock: the basic launcher runs a sweep's next job in this same process."""
        release_run_lock(Path(str(config.hydra.runtime.output_dir)))

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
