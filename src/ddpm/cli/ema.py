"""``ddpm-ema``: the weights of any EMA length of a run trained with ``callbacks/ema=power``, chosen after
training (EDM2, Karras et al. 2024, sec. 3.2).

ddpm-ema RUN --sigma-rel 0.07               # <run>/ema/sigma0.07_step<last>.safetensors
ddpm-ema RUN --sigma-rel 0.12 --step 1500   # the length 0.12 as it was at step 1500
ddpm-sample RUN/ema/sigma0.07_step00002000.safetensors  # ddpm-sample and ddpm-eval read it

The weights are a combination of the run's power-EMA snapshots (``<run>/ema_snapshots/``, read with
safetensors) with EDM2's least-squares coefficients normalised to sum 1 (:func:`ddpm.ema_snapshots.
reconstruct`), written as ``ddpm-export``'s safetensors file: the weights, and the run's config, the
length and the step in its metadata; nothing is read with pickle but the run's checkpoint, and that
weights only. Every value and the output's folder are checked before anything is read: a bad one is a
one-line error with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.cli.common import check_out_owner, ensure_writable, fail, load_run_or_fail, run_folder
from ddpm.config import ConfigError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpm-ema",
        description="Reconstruct the EMA weights of any length from a run's power-EMA snapshots (EDM2).",
    )
    p.add_argument("run", help="a run folder trained with callbacks/ema=power (or its checkpoint)")
    p.add_argument(
        "--sigma-rel",
        type=float,
        required=True,
        help="the EMA length: the averaging profile's standard deviation relative to the step (0 < s < 0.3)",
    )
    p.add_argument("--step", type=int, default=None, help="the step (default: the last snapshot's)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the output .safetensors file; default <run>/ema/sigma<s>_step<step>.safetensors",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    from ddpm.ema import sigma_rel_to_gamma
    from ddpm.ema_snapshots import SNAPSHOT_DIR, list_snapshots, reconstruct

    try:
        sigma_rel_to_gamma(args.sigma_rel)
    except ValueError as err:
        fail(f"--sigma-rel: {err}")
    if args.step is not None and args.step < 1:
        fail(f"--step={args.step} must be >= 1")
    if args.out is not None and args.out.suffix != ".safetensors":
        fail(f"--out={str(args.out)!r} must end in .safetensors")
    run_dir = run_folder(args.run)
    try:
        snapshots = list_snapshots(run_dir / SNAPSHOT_DIR)
    except ConfigError as err:
        fail(str(err))
    if not snapshots:
        fail(f"{run_dir / SNAPSHOT_DIR} holds no snapshots yet")
    last = max(s.step for s in snapshots)
    step = last if args.step is None else args.step
    if step > last:
        fail(f"--step={step} is after the last snapshot (step {last}); the EMA is not extrapolated")
    if step < min(s.step for s in snapshots):
        fail(f"--step={step} is before the first snapshot (step {min(s.step for s in snapshots)})")
    out = args.out or run_dir / "ema" / f"sigma{args.sigma_rel:g}_step{step:08d}.safetensors"
    if args.out is not None:  # never into another run's folder, nor over this run's own files
        check_out_owner(args.out, args.run, beside=False)
    ensure_writable(out.parent, "the reconstructed weights", "; choose another place with --out")
    run = load_run_or_fail(args.run, "cpu", [])
    result = reconstruct(snapshots, args.sigma_rel, step)
    missing, unexpected = run.model.load_state_dict(result.state, strict=False)
    if unexpected or len(missing) == len(run.model.state_dict()):
        fail(f"the snapshots in {run_dir / SNAPSHOT_DIR} do not hold the weights of {run.checkpoint}'s model")
    from ddpm.interop import export_safetensors

    metadata = {
        "ema_sigma_rel": repr(float(args.sigma_rel)),
        "ema_gamma": repr(result.gamma),
        "ema_step": str(step),
    }
    try:
        written = export_safetensors(run, out, metadata=metadata)
    except OSError as err:
        fail(f"could not write {out}: {err.strerror or err}", code=1)
    print(f"EMA {result.summary()}")
    print(f"Wrote {written}: ddpm-sample {written} / ddpm-eval {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
