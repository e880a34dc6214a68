"""DDPM against EDM at equal training budgets, three training seeds each: the table of docs/guide/edm.md.

- ``toy2d`` against ``toy2d_edm``: the shipped presets (1500 steps each, the same MLP, batch and EMA); the
  quality is each run's own final figure, the energy distance of 2000 samples (its own sampler: UniPC-15 for
  toy2d, EDM's Heun with 18 levels, 35 evaluations, for toy2d_edm) over the data-vs-data floor.
- ``digits`` against ``digits_edm``: ``--digits-budget-s`` seconds of training each (``trainer.max_time``, no
  step limit), then ``ddpm-eval`` with each run's own sampler (DDPM-250 for digits, EDM-18 for digits_edm):
  the offline classifier's Fréchet distance over its held-out floor, mean over ``--repeats`` draws.

The runs alternate (a DDPM run, then its EDM twin) so that a machine shared with other work slows both
alike; each row says the steps and seconds it trained. Prints the tables and writes them as JSON.

    uv run python scripts/edm_side_by_side.py --out outputs/edm_side_by_side  [--digits-budget-s 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_side_by_side import REPO, _run, _trained  # the shared runners


def toy(out: Path, seeds: list[int]) -> dict:
    """toy2d and toy2d_edm as shipped, per seed: (ratio, steps, seconds)."""
    rows: dict[str, list[dict]] = {"toy2d": [], "toy2d_edm": []}
    for seed in seeds:
        for experiment in rows:
            run_dir = out / f"{experiment}_seed{seed}"
            done = _run(
                ["ddpm-train", f"experiment={experiment}", f"seed={seed}", "logger=csv", "print_config=false",
                 "final_samples=2000", "reverse_gif=false", f"hydra.run.dir={run_dir}"]
            )  # fmt: skip
            steps, seconds = _trained(done.stdout)
            ratio = json.loads((run_dir / "metrics.json").read_text())["final/ratio"]
            rows[experiment].append({"seed": seed, "ratio": ratio, "steps": steps, "seconds": seconds})
            print(
                f"{experiment} seed {seed}: {ratio:.3f}x the floor, {steps} steps in {seconds:.1f} s",
                flush=True,
            )
    return rows


def digits(out: Path, seeds: list[int], budget_s: int, repeats: int) -> dict:
    """digits and digits_edm for ``budget_s`` seconds each, per seed: (ratio, steps, seconds)."""
    rows: dict[str, list[dict]] = {"digits": [], "digits_edm": []}
    minutes, sec = divmod(budget_s, 60)
    for seed in seeds:
        for experiment in rows:
            run_dir = out / f"{experiment}_seed{seed}"
            done = _run(
                ["ddpm-train", f"experiment={experiment}", f"seed={seed}", "trainer.max_steps=-1",
                 f"+trainer.max_time=00:00:{minutes:02d}:{sec:02d}", "logger=csv", "print_config=false",
                 f"hydra.run.dir={run_dir}"]
            )  # fmt: skip
            steps, seconds = _trained(done.stdout)
            result = run_dir / "eval" / "side_by_side.json"
            _run(
                [
                    "ddpm-eval",
                    str(run_dir),
                    "--repeats",
                    str(repeats),
                    "--seed",
                    str(seed),
                    "--out",
                    str(result),
                ]
            )
            images = json.loads(result.read_text())["images"]
            ratio = images["ratio"]["mean"]
            rows[experiment].append({"seed": seed, "ratio": ratio, "steps": steps, "seconds": seconds})
            print(
                f"{experiment} seed {seed}: {ratio:.3f}x the floor, {steps} steps in {seconds:.1f} s",
                flush=True,
            )
    return rows


def summary(rows: dict) -> list[str]:
    """One Markdown row per experiment: mean ± std of the ratio over seeds, steps and seconds."""
    lines = [
        "| experiment | ratio to the floor (mean ± std over seeds) | per seed | steps | training s |",
        "|---|---|---|---|---|",
    ]
    for experiment, runs in rows.items():
        ratios = [r["ratio"] for r in runs]
        std = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
        per_seed = ", ".join(f"{r:.2f}" for r in ratios)
        steps = ", ".join(str(r["steps"]) for r in runs)
        seconds = ", ".join(f"{r['seconds']:.0f}" for r in runs)
        lines.append(
            f"| `{experiment}` | {statistics.mean(ratios):.2f} ± {std:.2f} | {per_seed} | {steps} "
            f"| {seconds} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "edm_side_by_side")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--digits-budget-s", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=["toy", "digits"], action="append", default=[])
    args = parser.parse_args()
    if args.digits_budget_s < 1 or args.digits_budget_s >= 3600:
        parser.error(f"--digits-budget-s={args.digits_budget_s} is invalid; give 1 .. 3599 seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if "toy" not in args.skip:
        results["toy"] = toy(args.out, args.seeds)
        print("\n".join(summary(results["toy"])))
    if "digits" not in args.skip:
        results["digits"] = digits(args.out, args.seeds, args.digits_budget_s, args.repeats)
        print("\n".join(summary(results["digits"])))
    (args.out / "side_by_side.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"Wrote {args.out / 'side_by_side.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
