"""Improved DDPM on digits, measured: fixed_large + L_simple against learned_range + hybrid, side by side.

    uv run python scripts/iddpm_digits.py                    # 2000 steps each (experiment=digits_iddpm's)
    uv run python scripts/iddpm_digits.py --steps 300 --n 120 --repeats 1   # a quicker look

Trains ``experiment=digits_iddpm`` twice with the same seed and the same number of steps, once as it is
(``diffusion.variance=learned_range loss=hybrid``) and once with ``diffusion.variance=fixed_large
loss=simple`` (everything else equal: cosine schedule, T = 1000, tiny UNet, Adam 2e-3, EMA 0.995),
then reports for each, from its EMA weights:

* the variational bound in bits/dim on the 360 held-out digits, all T terms, discretised decoder with 17
  levels (``ddpm.likelihood.variational_bound``, what ``ddpm-eval RUN --bpd`` computes), with the learned
  run's own variances;
* the offline classifier's Fréchet ratio (samples' Fréchet distance / held-out real digits', 1.0 is as good
  as real data; ``ddpm-eval``'s image figure) of DDPM respaced to 25, 50 and 100 steps.

Prints both runs side by side as a markdown table and writes the figures to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fixed_large + L_simple": ["diffusion.variance=fixed_large", "loss=simple"],
    "learned_range + hybrid": ["diffusion.variance=learned_range", "loss=hybrid"],
}
STEPS = (25, 50, 100)


def train(name: str, overrides: list[str], steps: int, seed: int, root: Path) -> tuple[Path, float]:
    """One ``ddpm-train experiment=digits_iddpm`` in a subprocess; its run folder and wall seconds."""
    run_dir = root / name.replace(" ", "").replace("+", "_")
    cmd = [
        sys.executable,
        "-c",
        "from ddpm.cli.train import main; raise SystemExit(main())",
        "experiment=digits_iddpm",
        *overrides,
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        f"seed={seed}",
        "callbacks.samples.metric_samples=0",
        "final_samples=16",
        "logger=csv",
        "print_config=false",
        "cpu_threads=1",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
        f"paths.root_dir={root}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"training {name} failed:\n{res.stderr[-3000:]}")
    return run_dir, time.perf_counter() - start


def evaluate(run_dir: Path, n: int, repeats: int, seed: int) -> dict:
    """Bits/dim (all T terms) and the classifier Fréchet ratio of DDPM-25/50/100 of one run."""
    from ddpm.build import load_run
    from ddpm.evaluation.classifier import ImageClassifierMetric
    from ddpm.evaluation.images import classifier_quality
    from ddpm.likelihood import variational_bound

    run = load_run(run_dir)
    x = run.data.normalize(run.data.held_out())  # all 360 held-out digits
    start = time.perf_counter()
    vb = variational_bound(
        run.model.diffusion,
        run.model.net,
        x,
        bins=17,
        batch_size=360,
        generator=torch.Generator().manual_seed(seed),
    )
    out: dict = {"bpd": vb.as_dict(with_terms=False), "bpd_seconds": time.perf_counter() - start}
    metric = ImageClassifierMetric.load_or_train("digits", log=lambda _: None)
    for steps in STEPS:
        sampler = run.make_sampler(["sampler=ddpm", f"sampler.steps={steps}"])

        def draw(k: int, n: int, sampler=sampler) -> torch.Tensor:
            gen = torch.Generator().manual_seed(seed + k)
            return run.data.denormalize(run.model.sample(n, sampler=sampler, generator=gen))

        scores = classifier_quality(metric, draw, n, repeats).as_dict()
        out[f"ddpm{steps}"] = {"ratio": scores["ratio"], "frechet": scores["frechet"], "n": scores["n"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="training steps of each run (default 2000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n", type=int, default=360, help="samples per classifier draw (default 360)")
    p.add_argument("--repeats", type=int, default=3, help="draws per sampler (default 3)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)  # one thread is faster on a shared CPU (cpu_threads: docs/guide/training.md)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VARIANTS.items():
            run_dir, seconds = train(name, overrides, args.steps, args.seed, Path(tmp))
            results[name] = {"train_seconds": seconds, **evaluate(run_dir, args.n, args.repeats, args.seed)}
            print(f"{name}: trained {args.steps} steps in {seconds:.0f} s", flush=True)
    header = "| | " + " | ".join(VARIANTS) + " |"
    lines = [header, "|---" * (len(VARIANTS) + 1) + "|"]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(results[name]) for name in VARIANTS) + " |")

    row(
        "bits/dim (all 1000 terms, 360 held-out)",
        lambda r: f"{r['bpd']['bits_per_dim']:.3f} ± {r['bpd']['std_error']:.3f}",
    )
    row("  of which decoder L_0", lambda r: f"{r['bpd']['decoder']:.3f}")
    row("  of which diffusion L_1..L_999", lambda r: f"{r['bpd']['diffusion']:.3f}")
    for steps in STEPS:
        row(
            f"classifier Fréchet ratio, DDPM-{steps}",
            lambda r, s=steps: f"{r[f'ddpm{s}']['ratio']['mean']:.2f} ± {r[f'ddpm{s}']['ratio']['std']:.2f}",
        )
    row("training seconds", lambda r: f"{r['train_seconds']:.0f}")
    cmd = "python scripts/iddpm_digits.py " + " ".join(sys.argv[1:])
    print(
        f"\n{cmd}  ({args.steps} steps each, seed {args.seed}; {platform.processor() or platform.machine()})"
    )
    print(
        f"ratios: mean ± std over {args.repeats} draws of n={results[next(iter(VARIANTS))]['ddpm25']['n']}\n"
    )
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps({"command": cmd, "results": results}, indent=2))


if __name__ == "__main__":
    main()
