"""The snapshot files of a run's power-function EMAs (:class:`ddpm.callbacks.PowerEMA`), and the weights of
any EMA length reconstructed from them (:mod:`ddpm.ema`, EDM2 sec. 3.2).

A snapshot is one safetensors file, ``<run>/ema_snapshots/sigma<sigma_rel>_step<step>.safetensors``: one
power EMA's weights (the keys of the run's checkpoint ``state_dict``) at one optimizer step, its step,
exponent and relative length in the metadata (the metadata, not the name, is what is read). Files are
written whole (:mod:`ddpm.safe_writes`) and read with safetensors only: nothing read from disk is code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ddpm.config import ConfigError, first_line
from ddpm.ema import combine, sigma_rel_to_gamma, solve_weights

__all__ = [
    "FORMAT",
    "SNAPSHOT_DIR",
    "Reconstruction",
    "Snapshot",
    "list_snapshots",
    "load_snapshot",
    "reconstruct",
    "remove_snapshots_after",
    "snapshot_path",
    "write_snapshot",
]

#: the run folder's sub-folder that holds the snapshots
SNAPSHOT_DIR = "ema_snapshots"
#: the ``format`` metadata value of a snapshot file (what ddpm-lab reads; other safetensors files are refused)
FORMAT = "ddpm-lab power-ema snapshot 1"
_NAME = re.compile(r"sigma[0-9.e-]+_step[0-9]+\.safetensors")


@dataclass(frozen=True)
class Snapshot:
    """One snapshot file: its path, the optimizer step it was taken at, its EMA's exponent and length."""

    path: Path
    step: int
    gamma: float
    sigma_rel: float


def snapshot_path(folder: str | Path, step: int, sigma_rel: float) -> Path:
    """Where the snapshot of the EMA of length ``sigma_rel`` at ``step`` goes in ``folder``."""
    return Path(folder) / f"sigma{sigma_rel:g}_step{step:08d}.safetensors"


def write_snapshot(
    folder: str | Path, state: Mapping[str, torch.Tensor], step: int, gamma: float, sigma_rel: float
) -> Path:
    """Write one EMA's tensors at ``step`` as a snapshot file (whole, or the older file stays); its path."""
    from safetensors.torch import save_file

    from ddpm.safe_writes import write_file

    path = snapshot_path(folder, step, sigma_rel)
    # copies on the CPU, contiguous and unshared (safetensors refuses views of one storage, e.g. tied weights)
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in state.items()}
    metadata = {
        "format": FORMAT,
        "step": str(int(step)),
        "gamma": repr(float(gamma)),
        "sigma_rel": repr(float(sigma_rel)),
    }
    write_file(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def _read_metadata(path: Path) -> Snapshot:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign or truncated files
        raise ConfigError(f"{path} cannot be read as safetensors: {first_line(err)}") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a power-EMA snapshot (its metadata has no format {FORMAT!r})")
    try:
        step, gamma, sigma_rel = int(meta["step"]), float(meta["gamma"]), float(meta["sigma_rel"])
    except (KeyError, ValueError):
        raise ConfigError(
            f"{path}: its metadata needs an integer step and numbers gamma, sigma_rel"
        ) from None
    if step < 1 or not math.isfinite(gamma) or gamma <= -0.5:
        raise ConfigError(f"{path}: step={step} must be >= 1 and gamma={gamma!r} > -1/2")
    return Snapshot(path, step, gamma, sigma_rel)


def list_snapshots(folder: str | Path) -> list[Snapshot]:
    """The snapshots in ``folder`` (a run's ``ema_snapshots``), by sigma_rel then step; only their metadata is
    read. Files not named as snapshots are ignored (a temporary file of an interrupted write among them).

    Raises:
        ConfigError: the folder does not exist, or a snapshot's file is not one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder} does not exist: the run kept no power-EMA snapshots (callbacks/ema=power)"
        )
    found = [_read_metadata(p) for p in sorted(folder.iterdir()) if _NAME.fullmatch(p.name) and p.is_file()]
    return sorted(found, key=lambda s: (s.sigma_rel, s.step))


def remove_snapshots_after(folder: str | Path, step: int) -> list[Path]:
    """Remove the snapshots taken after ``step`` (a resumed run's lost future, retaken as it trains again);
    the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for snapshot in list_snapshots(folder):
        if snapshot.step > step:
            snapshot.path.unlink(missing_ok=True)
            removed.append(snapshot.path)
    return removed


def load_snapshot(snapshot: Snapshot | str | Path) -> dict[str, torch.Tensor]:
    """A snapshot's tensors (on the CPU), read with safetensors."""
    from safetensors.torch import load_file

    path = snapshot.path if isinstance(snapshot, Snapshot) else Path(snapshot)
    try:
        return load_file(str(path))
    except Exception as err:
        raise ConfigError(f"{path} cannot be read as safetensors: {first_line(err)}") from None


@dataclass
class Reconstruction:
    """The weights of the power-function EMA of length ``sigma_rel`` (exponent ``gamma``) at ``step``, the
    snapshots they combine, each one's coefficient, and the sum of EDM2's least-squares coefficients before
    they were normalised (:func:`reconstruct`)."""

    state: dict[str, torch.Tensor]
    sigma_rel: float
    gamma: float
    step: int
    snapshots: list[Snapshot]
    coefficients: torch.Tensor
    least_squares_sum: float

    def summary(self) -> str:
        """One line: the length, the step, and how many snapshots of which lengths went in."""
        lengths = ", ".join(f"{s:g}" for s in sorted({s.sigma_rel for s in self.snapshots}))
        return (
            f"sigma_rel={self.sigma_rel:g} (gamma={self.gamma:.4g}) at step {self.step} from "
            f"{len(self.snapshots)} snapshots of sigma_rel {lengths} (least-squares coefficients sum to "
            f"{self.least_squares_sum:.6f})"
        )


def reconstruct(
    snapshots: Sequence[Snapshot], sigma_rel: float, step: int | None = None, normalize: bool = True
) -> Reconstruction:
    """The weights of the EMA of length ``sigma_rel`` at ``step`` (default: the last snapshot's), from the
    snapshots taken at or before ``step``, loaded one at a time.

    The coefficients are EDM2's (:func:`ddpm.ema.solve_weights`), divided by their sum when ``normalize``:
    every profile, the target's included, has unit mass, and a combination whose coefficients do not sum
    to 1 scales the weights as a whole. The weights' common part is far larger than their movement over an
    averaging window, so that small mass error dominates: on a 45-step toy run with a snapshot of each EMA
    at every step, rebuilding the tracked sigma_rel 0.05 at the last step without its own snapshot missed by
    11.8% of the distance between the two tracked EMAs with the raw coefficients (their sum 1.0010) and by
    0.07% normalised (``tests/test_ema.py``).

    Raises:
        ValueError: ``sigma_rel`` is out of range, or no snapshot was taken at or before ``step``.
    """
    gamma = sigma_rel_to_gamma(sigma_rel)
    if not snapshots:
        raise ValueError("there are no snapshots to reconstruct from")
    last = max(s.step for s in snapshots)
    step = last if step is None else int(step)
    used = [s for s in snapshots if s.step <= step]
    if not used:
        first = min(s.step for s in snapshots)
        raise ValueError(f"step={step} is before the first snapshot (step {first})")
    coefficients = solve_weights([s.step for s in used], [s.gamma for s in used], step, gamma)
    total = float(coefficients.sum())
    if normalize:
        coefficients = coefficients / total

    def loaded() -> Iterator[dict[str, torch.Tensor]]:
        for snapshot in used:
            yield load_snapshot(snapshot)

    state = combine(loaded(), coefficients)
    return Reconstruction(state, float(sigma_rel), gamma, step, used, coefficients, total)
