"""Shared pieces of the console entry points: where the configs live, one-line errors, devices, and
output folders checked before the work and files written whole after it."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = [
    "CONF_DIR",
    "SEED_RANGE",
    "WriteError",
    "check_device",
    "check_group_overrides",
    "check_seed",
    "ensure_writable",
    "fail",
    "find_conf_dir",
    "os_error_reason",
    "seed_problem",
    "writable_problem",
    "write_file",
    "write_files",
    "write_probe",
]


def find_conf_dir() -> Path:
    """The ``conf/`` folder: the repository's (editable install) or the copy shipped in the wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"ddpm-lab's conf/ folder was not found near {here}")


CONF_DIR = find_conf_dir()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a one-line error to stderr and exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _options(group: str) -> list[str] | None:
    folder = CONF_DIR / group
    if not folder.is_dir():
        return None
    return sorted(p.stem for p in folder.glob("*.yaml"))


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=option`` overrides whose option does not exist, naming the group and the choices.

    Hydra would also refuse them, but with a multi-line message; this keeps it to one line. Sweeps
    (``schedule=linear,cosine``) are checked option by option.
    """
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if "." in key or key.startswith("hydra/") or not value or "(" in value:
            continue
        options = _options(key)
        if options is None:
            continue
        for choice in value.split(","):
            if choice in ("null", "none") and choice not in options:
                continue
            if choice not in options:
                fail(
                    f"{key}={choice} is not an option of config group '{key}'; "
                    f"choose one of {', '.join(options)}"
                )


def check_device(device: str) -> None:
    """Exit with a one-line error (status 2) unless ``--device`` names a device this machine has.

    Checked before the checkpoint is loaded: torch would otherwise fail inside ``torch.load`` with a
    message about deserialising storages, which reads like a broken checkpoint.
    """
    import torch  # here, not at the top: ddpm-train and ddpm-viz import this module before torch is needed

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"--device={device!r} is not a device; use cpu, cuda, cuda:<index> or mps")
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            fail(f"--device={device} is not available: this machine has no CUDA device; --device cpu works")
        if dev.index is not None and dev.index >= count:
            fail(
                f"--device={device} is not available: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}; --device cpu works"
            )
        return
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            fail(f"--device={device} is not available: this machine has no Apple GPU; --device cpu works")
        return
    fail(f"--device={device!r} is not supported here; use cpu, cuda, cuda:<index> or mps")


#: The seeds ``torch.Generator.manual_seed`` takes; others fail deep inside torch with "Overflow when
#: unpacking long long".
SEED_RANGE = (-(2**63), 2**64 - 1)


def seed_problem(seed: int, flag: str = "--seed", draws: int = 1) -> str | None:
    """Why ``seed`` (and the ``draws - 1`` seeds after it) cannot seed torch, in one line; else None."""
    low, high = SEED_RANGE
    if not low <= seed <= high:
        return f"{flag}={seed} is out of range; use an integer from 0 to 2**64 - 1"
    if seed + draws - 1 > high:
        return (
            f"{flag}={seed} is too large for {draws} draws (draw k uses {flag.lstrip('-')} + k); "
            f"use at most {high - draws + 1}"
        )
    return None


def check_seed(seed: int, flag: str = "--seed", draws: int = 1) -> None:
    """Exit with a one-line error (status 2) unless torch takes ``seed`` (see :func:`seed_problem`)."""
    problem = seed_problem(seed, flag, draws)
    if problem is not None:
        fail(problem)


# ---------------------------------------------------------------------------- output folders and files
def os_error_reason(err: OSError) -> str:
    """An OSError in words, without the path (the caller's message names it)."""
    if err.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    if err.errno == errno.EEXIST:
        return "it exists and is not a folder"
    if err.errno is not None:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


def write_probe(folder: Path) -> None:
    """Create, fill, flush and delete a small file in ``folder`` (raises OSError when that fails).

    Some bytes are written and synced because a full disk often still accepts an empty file.
    """
    fd, name = tempfile.mkstemp(prefix=".ddpm-write-check-", dir=folder)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(name)


def writable_problem(folder: Path, what: str, hint: str = "") -> str | None:
    """Why ``what`` cannot be written to ``folder`` (one line naming the folder and ending in ``hint``),
    or None when it can.

    The folder and any missing parents are created, a small file is written and deleted in it, and the
    folders this made are removed again: a check never leaves anything behind, even when a later check
    refuses the command. The final write creates them for good.
    """
    folder = Path(folder)
    created: list[Path] = []
    try:
        existing = folder
        while not existing.exists() and not existing.is_symlink() and existing.parent != existing:
            created.append(existing)
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            where = "it is" if existing == folder else f"{str(existing)!r} is"
            return f"cannot write {what} to {str(folder)!r}: {where} a file, not a folder{hint}"
        folder.mkdir(parents=True, exist_ok=True)
        write_probe(folder)
    except OSError as err:
        return f"cannot write {what} to {str(folder)!r}: {os_error_reason(err)}{hint}"
    finally:
        for path in created:  # deepest first
            try:
                path.rmdir()
            except FileNotFoundError:
                continue  # mkdir stopped above it
            except OSError:
                break  # something else wrote into it meanwhile: not ours to remove
    return None


def ensure_writable(folder: Path, what: str, hint: str = "") -> None:
    """Exit with a one-line error (status 2) unless ``what`` can be written to ``folder``.

    Called before any heavy work (loading a checkpoint, sampling), so a read-only place, a file where a
    folder should be or a full disk is found in a second, not after an hour. See :func:`writable_problem`.
    """
    problem = writable_problem(folder, what, hint)
    if problem is not None:
        fail(problem)


def _partial_path(path: Path) -> Path:
    # Same folder (so os.replace is atomic) and same suffix (numpy and matplotlib pick the format by it).
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


class WriteError(OSError):
    """A result file could not be written; ``str()`` is the one-line message, ``could not write <path>:
    <reason>``. The commands exit with status 1: the results were computed and printed, only the file
    is missing."""


def write_files(paths: Sequence[Path], write: Callable[[list[Path]], object]) -> None:
    """Call ``write`` with a temporary path beside each of ``paths``, then move each into place.

    A failed write leaves no truncated file behind and keeps any older file at the path.

    Raises:
        WriteError: a write or a move failed (read-only, full disk, ...), naming the file.
    """
    targets = [Path(p) for p in paths]
    partials = [_partial_path(p) for p in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        write(partials)
        for partial, target in zip(partials, targets, strict=True):
            os.replace(partial, target)
    except OSError as err:
        named = [t for t, p in zip(targets, partials, strict=True) if err.filename in (str(p), str(t))]
        # Without a file name (a write that ran out of space) any of them may be the one that failed.
        failed = " or ".join(str(t) for t in (named or targets))
        raise WriteError(f"could not write {failed}: {os_error_reason(err)}") from err
    finally:
        for partial in partials:  # left only when something failed
            # A failed clean-up must not hide the write's own error, raised above.
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """:func:`write_files` for one file: ``write(tmp)`` writes it, then it is moved to ``path``."""
    write_files([path], lambda tmp: write(tmp[0]))
