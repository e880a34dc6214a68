"""Where a run's time went: wall-clock seconds per phase, printed at the end and kept in ``timings.json``.

``ddpm-train`` times its phases (imports, set-up, training, validation, final samples, figures, loggers)
with :class:`Phases` and writes them into the run folder, so a slow run can be diagnosed from its folder
and ``scripts/benchmark.py`` can report the default run's phases. Plain Python: no torch, no Lightning.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Phases"]


class Phases:
    """Seconds per named phase, in the order first timed; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name``."""
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    @contextlib.contextmanager
    def time(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as (part of) phase ``name``, also when it raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def total(self) -> float:
        """The sum over all phases."""
        return sum(self.seconds.values())

    def summary(self) -> str:
        """One line: ``imports 5.1 s, training 13.0 s, ...``."""
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.seconds.items())

    def write(self, path: Path, **extra: object) -> None:
        """``{"phases_s": {...}, "total_s": ..., **extra}`` as JSON."""
        phases = {k: round(v, 4) for k, v in self.seconds.items()}
        record = {"phases_s": phases, "total_s": round(self.total(), 4), **extra}
        path.write_text(json.dumps(record, indent=2) + "\n")
