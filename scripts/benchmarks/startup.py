"""Start-up and end to end: every command as a new process, and the default run's phases."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, Table, command_env

#: the phases of a ddpm-train run, in the order the run goes through them (``timings.json``)
PHASES = (
    "start-up",
    "imports",
    "set-up",
    "training",
    "validation",
    "loss-by-timestep figure",
    "final samples",
    "reverse process figures",
    "loggers",
)


def whole_command(argv: list[str], cwd: Path) -> float:
    """Seconds from starting ``argv`` as a new process to its exit (it must succeed)."""
    env = command_env()
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {' / '.join(tail)}")
    return seconds


def startup_tables(repeats: int, tiny: bool) -> list[Table]:
    """Each command's whole-process time (median of ``repeats``) and the default run's phases.

    ``ddpm-train`` (the README's quick start; tiny: 20 steps) runs ``repeats`` times, each in a fresh run
    folder; the other commands then run on its last run folder. Commands start from this environment's
    entry points (``uv run`` adds its own start-up: the ``uv run`` row).
    """
    import shutil

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_args = (
            ["trainer.max_steps=20", "trainer.val_check_interval=10", "final_samples=200"] if tiny else []
        )
        runs: list[Path] = []
        times: dict[str, list[float]] = {}
        phases: list[dict[str, float]] = []
        for r in range(repeats):
            run = root / f"run{r}"
            cmd = [str(bin_dir / "ddpm-train"), f"hydra.run.dir={run}", f"paths.root_dir={root}", *train_args]
            times.setdefault("`ddpm-train` (the default run: train, sample, plots, W&B)", []).append(
                whole_command(cmd, root)
            )
            runs.append(run)
            phases.append(json.loads((run / "timings.json").read_text())["phases_s"])
        run = runs[-1]
        commands = {
            "`python -c 'import torch'` (for reference)": [sys.executable, "-c", "import torch"],
            "`python -c 'import lightning'` (for reference)": [sys.executable, "-c", "import lightning"],
            "`ddpm-sample RUN sampler=ddim sampler.steps=50 --n 2000`": [
                str(bin_dir / "ddpm-sample"),
                str(run),
                "sampler=ddim",
                "sampler.steps=50",
                "--n",
                "2000",
            ],
            "`ddpm-eval RUN`": [str(bin_dir / "ddpm-eval"), str(run)],
            "`ddpm-viz reverse RUN`": [
                str(bin_dir / "ddpm-viz"),
                "reverse",
                str(run),
                "--out",
                str(root / "r.png"),
            ],
            "`ddpm-viz schedules`": [str(bin_dir / "ddpm-viz"), "schedules", "--out", str(root / "s.png")],
        }
        uv = shutil.which("uv")
        if uv is not None:
            commands["`uv run python -c pass` (uv's own start-up)"] = [uv, "run", "python", "-c", "pass"]
        for _ in range(repeats):
            for name, cmd in commands.items():
                times.setdefault(name, []).append(whole_command(cmd, REPO if "uv" in name else root))
    whole = Table(
        f"Start-up and end to end: whole commands (median of {repeats})",
        ["command", "seconds (median)", "runs"],
        [[name, statistics.median(v), " / ".join(f"{x:.1f}" for x in v)] for name, v in times.items()],
    )
    whole.notes.append(
        "Each command is a new process started from this environment's entry points, timed from start to "
        "exit; RUN is a default run trained just before."
        + (" Tiny mode: ddpm-train runs 20 steps." if tiny else "")
    )
    names = [p for p in PHASES if any(p in ph for ph in phases)]
    split = Table(
        f"The default run's phases (`ddpm-train`, median of {repeats}, from its `timings.json`)",
        ["phase", "seconds (median)", "share of the in-process total"],
    )
    totals = statistics.median(sum(ph.values()) for ph in phases)
    for name in names:
        value = statistics.median(ph.get(name, 0.0) for ph in phases)
        split.rows.append([name, value, f"{100 * value / totals:.0f}%"])
    split.rows.append(["in-process total", totals, "100%"])
    split.notes.append(
        "start-up: from the entry point to the run (Hydra's composition, config checks); imports: torch, "
        "Lightning and the training modules; set-up: data, model, loggers (W&B starts here), trainer; "
        "training: the fit without its validations and figures; validation: the validation loops with their "
        "samples, plots and best checkpoint; loss-by-timestep figure: drawn when the fit ends; final "
        "samples: sampling, quality figure, samples.npz and plot; loggers: closing W&B and CSV. The whole "
        "command also pays the interpreter's start before the entry point."
    )
    return [whole, split]
