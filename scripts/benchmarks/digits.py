"""Digits quality mode: train experiment=digits for a wall-time budget, then ddpm-eval it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .common import REPO, Table, command_env


def digits_available() -> bool:
    """Whether this checkout has ``experiment=digits`` (conf/experiment/digits.yaml): this mode needs it."""
    return (REPO / "conf" / "experiment" / "digits.yaml").is_file()


def digits_quality(budget_s: int, out_dir: Path) -> Table:
    """Train experiment=digits for ``budget_s`` seconds of wall time, then ddpm-eval it (DDIM-100)."""
    table = Table(f"Digits quality after {budget_s} s of training (CPU)", ["figure", "value"])
    if not digits_available():
        table.notes.append("skipped: this mode needs `experiment=digits` (conf/experiment/digits.yaml)")
        return table
    bin_dir = Path(sys.executable).parent
    run_dir = out_dir / "digits_run"
    d, rem = divmod(budget_s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    env = command_env()
    train = subprocess.run(
        [str(bin_dir / "ddpm-train"), "experiment=digits", "trainer.max_steps=-1",
         f"+trainer.max_time={d:02d}:{h:02d}:{m:02d}:{sec:02d}", "logger=csv", "print_config=false",
         f"hydra.run.dir={run_dir}"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if train.returncode != 0:
        table.notes.append(f"training failed: {(train.stderr.strip().splitlines() or ['?'])[-1]}")
        return table
    out = out_dir / "digits_eval.json"
    ev = subprocess.run(
        [str(bin_dir / "ddpm-eval"), str(run_dir), "sampler=ddim", "sampler.steps=100", "--repeats", "3",
         "--out", str(out)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if ev.returncode != 0:
        table.notes.append(f"ddpm-eval failed: {(ev.stderr.strip().splitlines() or ['?'])[-1]}")
        return table
    result = json.loads(out.read_text())
    images = result["images"]
    steps = next((line for line in train.stdout.splitlines() if line.startswith("Trained ")), "")
    table.rows += [
        ["training", steps.split(". Run folder")[0]],
        [
            "classifier Fréchet distance (DDIM-100)",
            f"{images['frechet']['mean']:.3g} ± {images['frechet']['std']:.2g}",
        ],
        ["data-vs-data floor (held-out digits)", f"{images['floor']['frechet']['mean']:.3g}"],
        ["ratio to the floor", f"{images['ratio']['mean']:.3g} ± {images['ratio']['std']:.2g}"],
        ["class balance (1 = uniform)", f"{images['class_entropy']['mean']:.3f}"],
        ["mean confidence", f"{images['confidence']['mean']:.3f}"],
    ]
    table.notes.append(f"n = {images['n']} per draw, {images['repeats']} draws; classifier held-out accuracy "
                       f"{images['classifier']['held_out_accuracy']:.3f}")  # fmt: skip
    return table
