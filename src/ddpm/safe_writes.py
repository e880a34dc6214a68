"""Results are written whole, and a folder is probed before the work that fills it.

A command checks that its output folder can be written (a read-only place, a file where a folder should be,
a full disk) before it loads a checkpoint or samples, so the mistake is found in a second, not after an hour
(:func:`writable_problem`). The final files are written beside their place, flushed to the disk and moved
into it (:func:`write_files`): a failed write, a full disk or a kill at any moment leaves either the older
file or the new one, never a truncated one. No torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "ResultsNotWrittenError",
    "WriteError",
    "fsync_folder",
    "os_error_reason",
    "writable_problem",
    "write_file",
    "write_files",
    "write_probe",
]


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


def _partial_path(path: Path) -> Path:
    # Same folder (so os.replace is atomic) and same suffix (numpy and matplotlib pick the format by it).
    return path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")


class ResultsNotWrittenError(OSError):
    """A file of the run could not be written (the final results, or a checkpoint: see
    :class:`ddpm.checkpointing.CheckpointNotWrittenError`); the message is one line, and for the results it
    carries the figures. ``ddpm-train`` reports it in that line with exit status 1."""


class WriteError(OSError):
    """A result file could not be written; ``str()`` is the one-line message, ``could not write <path>:
    <reason>``. The commands exit with status 1: the results were computed and printed, only the file
    is missing. ``errno`` and ``strerror`` are the failed call's, ``filename`` the file that was not
    written (its final path, not the temporary one)."""

    def __str__(self) -> str:
        # OSError's own __str__ would rebuild "[Errno 28] ..." from errno and filename
        return str(self.args[0]) if self.args else super().__str__()


def fsync_folder(folder: Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable, where the platform allows it.

    A file system that cannot sync a folder (some network mounts, Windows) refuses with an OSError; the
    rename has then happened all the same, so that is not an error.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # The writer (numpy, matplotlib, PIL, safetensors) closed its file; its data may still sit in the page
    # cache. Synced before the rename, a crash cannot leave the new name pointing at missing blocks.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_files(paths: Sequence[Path], write: Callable[[list[Path]], object]) -> None:
    """Call ``write`` with a temporary path beside each of ``paths``, then move each into place.

    Each temporary file is synced to the disk before it is renamed over its path (``os.replace``, atomic
    within a folder), and the folder after: at every moment, also under SIGKILL or a power cut, a path
    holds its older file or the complete new one. A failed write leaves no truncated file behind and keeps
    any older file at the path. (A process killed while writing can leave its hidden temporary file,
    ``.<name>.partial-<pid><suffix>``, never a damaged result.)

    Raises:
        WriteError: a write, sync or move failed (read-only, full disk, ...), naming the file.
    """
    targets = [Path(p) for p in paths]
    partials = [_partial_path(p) for p in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        write(partials)
        for partial in partials:
            _fsync_file(partial)
        for partial, target in zip(partials, targets, strict=True):
            os.replace(partial, target)
    except OSError as err:
        named = [t for t, p in zip(targets, partials, strict=True) if err.filename in (str(p), str(t))]
        # Without a file name (a write that ran out of space) any of them may be the one that failed.
        failed = " or ".join(str(t) for t in (named or targets))
        error = WriteError(f"could not write {failed}: {os_error_reason(err)}")
        error.errno, error.strerror, error.filename = err.errno, err.strerror, failed
        raise error from err
    finally:
        for partial in partials:  # left only when something failed
            # A failed clean-up must not hide the write's own error, raised above.
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
    for folder in dict.fromkeys(t.parent for t in targets):
        fsync_folder(folder)


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """:func:`write_files` for one file: ``write(tmp)`` writes it, then it is moved to ``path``."""
    write_files([path], lambda tmp: write(tmp[0]))
