"""A trained run against its few-step students: the tables of the Few steps page (docs/guide/few-steps.md).

- **moons**, ``--seeds`` training seeds: the ``toy2d`` teacher (its UniPC-15, and DDIM at the students'
  step counts), the progressive students of ``toy2d_distill_progressive`` distilled down to 4, 2 and 1
  DDIM steps (one run each: 4, 5 and 6 rounds of 1000 steps from 64 teacher steps) and the consistency
  student of ``toy2d_distill_consistency`` at 1 step and at 2 (times 999 and 30). Scored by ``ddpm-eval
  --compare-samplers`` (``--n`` samples, ``--repeats`` draws): the energy distance over the data-vs-data
  floor. The students' training seconds exclude their teacher's.
- **oracle** (``--oracle``): progressive distillation with the exact Gaussian oracle as the first teacher
  (DDIM-``--oracle-teacher-steps``) and an affine student (``ddpm.evaluation.exact.distil_gaussian_oracle``):
  the student's covariance error at 1, 2 and 4 steps against the converged ODE, beside its teacher's and
  plain DDIM's at the same steps.
- **digits** (``--digits-seeds``): a ``digits`` teacher trained ``--digits-budget-s`` seconds, then its
  ``digits_distill_progressive`` (DDIM-4) and ``digits_distill_consistency`` (1 step) students as shipped;
  ``ddpm-eval`` (``--repeats`` draws) of each with its own sampler, and of the teacher with DDPM-250 and with
  DDIM-4: the offline classifier's Fréchet distance over its held-out floor.

Every run trains with one CPU thread (``cpu_threads=1``, as the flow's side-by-side). Prints the tables and
writes them as JSON.

    uv run python scripts/distillation_side_by_side.py --out outputs/distillation_side_by_side
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flow_side_by_side import REPO, _budget, _mean_std, _run, scores, train  # the shared runners

#: progressive students: their final DDIM steps (from 64 teacher steps, ROUND_STEPS optimizer steps a round)
PROGRESSIVE_STEPS = (4, 2, 1)
ROUND_STEPS = 1000


def moons(out: Path, seeds: list[int], n: int, repeats: int) -> dict:
    """Per seed: the teacher's ratios, each progressive student's and the consistency student's."""
    rows: dict[str, list[dict]] = {"teacher": [], "progressive": [], "consistency": []}
    for seed in seeds:
        teacher = out / f"toy2d_seed{seed}"
        steps, seconds = train("toy2d", teacher, seed)
        ratio = scores(teacher, ["sampler=unipc", "sampler.steps=15"], "unipc", n, repeats, seed)
        ratio |= {
            -k: v
            for k, v in scores(
                teacher, ["sampler=ddim", "sampler.steps=1,2,4"], "ddim", n, repeats, seed
            ).items()
        }
        rows["teacher"].append({"seed": seed, "steps": steps, "seconds": seconds, "ratio": ratio})
        print(f"toy2d seed {seed}: {ratio}", flush=True)
        student: dict = {"seed": seed, "ratio": {}, "seconds": {}}
        for final in PROGRESSIVE_STEPS:
            rounds = {4: 4, 2: 5, 1: 6}[final]
            run_dir = out / f"progressive{final}_seed{seed}"
            extra = [f"teacher={teacher}", f"loss.student_steps={final}", f"sampler.steps={final}",
                     f"trainer.max_steps={rounds * ROUND_STEPS}"]  # fmt: skip
            _, seconds = train("toy2d_distill_progressive", run_dir, seed, extra)
            grid = ["sampler=ddim", f"sampler.steps={final}"]
            student["ratio"][final] = scores(run_dir, grid, "ddim", n, repeats, seed)[final]
            student["seconds"][final] = seconds
        rows["progressive"].append(student)
        print(f"progressive seed {seed}: {student}", flush=True)
        run_dir = out / f"consistency_seed{seed}"
        _, seconds = train("toy2d_distill_consistency", run_dir, seed, [f"teacher={teacher}"])
        ratio = scores(run_dir, ["sampler.steps=1"], "consistency1", n, repeats, seed)
        ratio |= scores(run_dir, ["sampler.timesteps=[999,30]"], "consistency2", n, repeats, seed)
        rows["consistency"].append({"seed": seed, "seconds": seconds, "ratio": ratio})
        print(f"consistency seed {seed}: {ratio}", flush=True)
    return rows


def moons_table(rows: dict) -> list[str]:
    def cell(runs: list[dict], key: int) -> str:
        return _mean_std([r["ratio"][key] for r in runs]) if all(key in r["ratio"] for r in runs) else "-"

    lines = ["| run | 1 step | 2 steps | 4 steps | 15 NFE | training s |", "|---|---|---|---|---|---|"]
    teacher, progressive, consistency = rows["teacher"], rows["progressive"], rows["consistency"]
    seconds = ", ".join(f"{r['seconds']:.0f}" for r in teacher)
    lines.append(f"| `toy2d` teacher, DDIM (UniPC at 15) | {cell(teacher, -1)} | {cell(teacher, -2)} | "
                 f"{cell(teacher, -4)} | {cell(teacher, 15)} | {seconds} |")  # fmt: skip
    seconds = "; ".join("/".join(f"{r['seconds'][k]:.0f}" for k in (1, 2, 4)) for r in progressive)
    lines.append(f"| `toy2d_distill_progressive` (DDIM) | {cell(progressive, 1)} | {cell(progressive, 2)} | "
                 f"{cell(progressive, 4)} | - | {seconds} |")  # fmt: skip
    seconds = ", ".join(f"{r['seconds']:.0f}" for r in consistency)
    lines.append(f"| `toy2d_distill_consistency` | {cell(consistency, 1)} | {cell(consistency, 2)} | - | - "
                 f"| {seconds} |")  # fmt: skip
    return lines


def _image_ratio(run_dir: Path, name: str, repeats: int, seed: int, overrides: Sequence[str] = ()) -> float:
    out = run_dir / "eval" / f"{name}.json"
    _run(["ddpm-eval", str(run_dir), "--repeats", str(repeats), "--seed", str(seed), "--out", str(out),
          "--no-wandb", *overrides])  # fmt: skip
    return float(json.loads(out.read_text())["images"]["ratio"]["mean"])


def digits(out: Path, seeds: list[int], budget_s: int, repeats: int) -> dict:
    """A digits teacher and its two students per seed: the classifier Frechet ratios and training seconds."""
    rows: list[dict] = []
    for seed in seeds:
        teacher = out / f"digits_seed{seed}"
        steps, seconds = train("digits", teacher, seed, _budget(budget_s))
        row = {"seed": seed, "teacher_steps": steps, "teacher_seconds": seconds}
        row["teacher"] = _image_ratio(teacher, "ddpm250", repeats, seed)
        row["teacher_ddim4"] = _image_ratio(
            teacher, "ddim4", repeats, seed, ["sampler=ddim", "sampler.steps=4"]
        )
        for name in ("progressive", "consistency"):
            run_dir = out / f"digits_{name}_seed{seed}"
            _, row[f"{name}_seconds"] = train(f"digits_distill_{name}", run_dir, seed, [f"teacher={teacher}"])
            row[name] = _image_ratio(run_dir, "own", repeats, seed)
        rows.append(row)
        print(f"digits seed {seed}: {row}", flush=True)
    return {"runs": rows}


def digits_table(rows: dict) -> list[str]:
    runs = rows["runs"]
    lines = ["| run | sampler | classifier Fréchet ratio | per seed | training s |", "|---|---|---|---|---|"]
    for key, label, sampler, secs in (
        ("teacher", "`digits` teacher", "DDPM-250", "teacher_seconds"),
        ("teacher_ddim4", "`digits` teacher", "DDIM-4", "teacher_seconds"),
        ("progressive", "`digits_distill_progressive`", "DDIM-4", "progressive_seconds"),
        ("consistency", "`digits_distill_consistency`", "1 step", "consistency_seconds"),
    ):
        values = [r[key] for r in runs]
        per_seed = ", ".join(f"{v:.2f}" for v in values)
        seconds = ", ".join(f"{r[secs]:.0f}" for r in runs)
        lines.append(f"| {label} | {sampler} | {_mean_std(values)} | {per_seed} | {seconds} |")
    return lines


def oracle(teacher_steps: int, round_steps: int) -> dict:
    """The oracle-taught affine student's covariance errors at 1, 2 and 4 steps."""
    import torch

    from ddpm.diffusion import GaussianDiffusion
    from ddpm.evaluation.exact import distil_gaussian_oracle
    from ddpm.schedules import make_beta_schedule

    diffusion = GaussianDiffusion(make_beta_schedule("linear", 1000), objective="v")
    mu, sigma = torch.tensor([0.5, -0.3]), torch.tensor([[1.0, 0.6], [0.6, 0.5]])
    rows = {}
    for final in (4, 2, 1):
        rows[final] = distil_gaussian_oracle(diffusion, mu, sigma, teacher_steps, final, round_steps)
        print(f"oracle, {final} steps: {rows[final]}", flush=True)
    return rows


def oracle_table(rows: dict, teacher_steps: int) -> list[str]:
    lines = [
        f"| steps | student | teacher (DDIM-{teacher_steps}) | plain DDIM | student vs its teacher |",
        "|---|---|---|---|---|",
    ]
    for final, r in sorted(rows.items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {final} | {100 * r['student']:.2f}% | {100 * r['teacher']:.2f}% | "
                     f"{100 * r['plain']:.1f}% | {100 * r['student_vs_teacher']:.3f}% |")  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "distillation_side_by_side")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=["moons", "oracle", "digits"], action="append", default=[])
    parser.add_argument("--digits-seeds", type=int, nargs="*", default=[1])
    parser.add_argument("--digits-budget-s", type=int, default=300)
    parser.add_argument("--oracle-teacher-steps", type=int, default=512)
    parser.add_argument("--oracle-round-steps", type=int, default=150)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if "oracle" not in args.skip:
        results["oracle"] = oracle(args.oracle_teacher_steps, args.oracle_round_steps)
        print("\n".join(oracle_table(results["oracle"], args.oracle_teacher_steps)), flush=True)
    if "moons" not in args.skip:
        results["moons"] = moons(args.out, args.seeds, args.n, args.repeats)
        print("\n".join(moons_table(results["moons"])), flush=True)
    if "digits" not in args.skip:
        results["digits"] = digits(args.out, args.digits_seeds, args.digits_budget_s, args.repeats)
        print("\n".join(digits_table(results["digits"])), flush=True)
    summary = args.out / "side_by_side.json"
    summary.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Wrote {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
