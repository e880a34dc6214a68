"""``ddpm-export``: write a trained run's weights for use elsewhere.

ddpm-export RUN --format safetensors                 # <run>/export/model.safetensors: EMA weights + config
ddpm-export RUN --format diffusers                   # <run>/export/diffusers/: a DDPMPipeline folder
ddpm-export RUN --format safetensors --out /tmp/m.safetensors

``safetensors``: the run's weights (the EMA average when the run had EMA), with the run's config as JSON in
the file's metadata; ``ddpm-sample FILE.safetensors`` and :func:`ddpm.build.load_run` read it back without
pickle. ``diffusers``: a UNet run as diffusers' ``UNet2DModel`` + ``DDPMScheduler`` folder, which
``DDPMPipeline.from_pretrained`` loads (:func:`ddpm.interop.export_diffusers`).

Every value and the output's folder are checked before the checkpoint is read: a bad one is a one-line
error with exit code 2. ``--out`` never lies inside another run's folder, nor replaces what training wrote
in this run's own (``checkpoints/``, ``samples.npz``, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm.cli.common import check_out_owner, ensure_writable, fail, load_run_or_fail, run_folder
from ddpm.config import ConfigError

__all__ = ["FORMATS", "main"]

#: --format: the default output name under <run>/export/
FORMATS = {"safetensors": "model.safetensors", "diffusers": "diffusers"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddpm-export", description="Export a trained ddpm-lab run's weights.")
    p.add_argument("run", help="a run folder (uses checkpoints/last.ckpt) or a checkpoint file")
    p.add_argument("--format", default="safetensors", help="safetensors (default) or diffusers")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the output file (safetensors) or folder (diffusers); default <run>/export/model.safetensors "
        "or <run>/export/diffusers",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = _parser().parse_args(argv)
    if args.format not in FORMATS:
        fail(f"--format={args.format!r} is unknown; choose one of {', '.join(FORMATS)}")
    if args.format == "safetensors" and args.out is not None and args.out.suffix != ".safetensors":
        fail(f"--out={str(args.out)!r} must end in .safetensors")
    out = args.out or run_folder(args.run) / "export" / FORMATS[args.format]
    if args.out is not None:  # never into another run's folder, nor over this run's own files
        check_out_owner(args.out, args.run, beside=False)
    if out.exists() and args.format == "diffusers" and not out.is_dir():
        fail(f"--out={str(out)!r} is a file; the diffusers format writes a folder")
    ensure_writable(out.parent, "the export", "; choose another place with --out")
    run = load_run_or_fail(args.run, "cpu", [])
    from ddpm.interop import export_diffusers, export_safetensors

    try:
        written = export_safetensors(run, out) if args.format == "safetensors" else export_diffusers(run, out)
    except ConfigError as err:
        fail(str(err))
    except OSError as err:
        fail(f"could not write {out}: {err.strerror or err}", code=1)
    print(f"Wrote {written} ({args.format}) from {run.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
