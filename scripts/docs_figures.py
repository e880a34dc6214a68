"""The figures of the tutorial page docs/tutorial/ddpm-from-the-equations.md, written into the site's sources.

    uv run python scripts/docs_figures.py                 # all of them, into docs/tutorial/figures/
    uv run python scripts/docs_figures.py --out /tmp/figs # elsewhere, e.g. to compare with the committed ones

Four are ``ddpm-viz`` subcommands, run in this process through ``ddpm.cli.viz.main`` with the arguments
printed as the command line that draws the same file (the page quotes them). The fifth, the reverse
process, is what ``ddpm-viz reverse RUN`` draws for a trained run (``ddpm.viz.plot_reverse_2d``), here for
the exact optimal network of the seed's Gaussian data (``ddpm.oracle.GaussianOracle``), so that it needs
no training and comes out the same on every machine. Everything is seeded; a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "tutorial" / "figures"
#: small files for the site: 80 dots per inch reads well on a page
DPI = 80

#: (file name, ddpm-viz arguments): the tutorial's figures that ddpm-viz draws
VIZ_FIGURES: list[tuple[str, list[str]]] = [
    ("forward-chain.png", ["forward-chain"]),
    ("forward-1d.png", ["forward-1d"]),
    ("forward-2d.png", ["forward-2d"]),
    ("schedules.png", ["schedules"]),
]
REVERSE_FIGURE = "reverse-oracle.png"


def viz_figures(out: Path) -> None:
    """Draw the ``ddpm-viz`` figures into ``out``, printing each command line."""
    from ddpm.cli.viz import main as viz_main

    for name, args in VIZ_FIGURES:
        argv = [*args, "--dpi", str(DPI), "--out", str(out / name)]
        print("uv run ddpm-viz " + " ".join(args) + f" --dpi {DPI} --out {name}", flush=True)
        code = viz_main(argv)
        if code != 0:
            sys.exit(f"ddpm-viz {' '.join(argv)} exited with {code}")


def reverse_figure(out: Path, n: int = 1000, seed: int = 0) -> Path:
    """DDPM's ancestral sampler (Algorithm 2) run on the exact eps of N((2, 2), 0.5^2 I) data, linear
    schedule, T = 1000: the reverse chain from x_T ~ N(0, I) to the data, drawn as ``ddpm-viz reverse``
    draws a trained 2D run."""
    import torch

    from ddpm import DDPMSampler, GaussianDiffusion, make_beta_schedule
    from ddpm.oracle import GaussianOracle
    from ddpm.viz import plot_reverse_2d, save_figure

    diffusion = GaussianDiffusion(make_beta_schedule("linear", 1000))
    mu, std = torch.tensor([2.0, 2.0]), 0.5
    oracle = GaussianOracle(diffusion, mu, std**2 * torch.eye(2))
    gen = torch.Generator().manual_seed(seed)
    result = DDPMSampler().sample(
        oracle, diffusion, (n, 2), generator=gen, return_trajectory=True, progress=False
    )
    data = torch.randn(n, 2, generator=gen) * std + mu
    fig = plot_reverse_2d(result.trajectory, result.timesteps, data=data)
    fig.suptitle(
        "Reverse process: DDPM (Algorithm 2) with the exact eps of N((2, 2), 0.5² I), linear T = 1000"
    )
    path = save_figure(fig, out / REVERSE_FIGURE, dpi=DPI)
    print(f"reverse process of the Gaussian oracle -> {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write every figure of the tutorial; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder (default docs/tutorial/figures)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    viz_figures(args.out)
    reverse_figure(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
