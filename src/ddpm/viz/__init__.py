"""Pictures of the diffusion process and of training runs, drawn from arrays with matplotlib only.

* :mod:`ddpm.viz.demos`: the seed tutorials' demonstrations (schedules, the forward process), each a data
  function returning numpy arrays plus a plot function returning a :class:`matplotlib.figure.Figure`;
* :mod:`ddpm.viz.figures`: figures of sampling and training runs, :func:`save_figure`, :func:`show_figure`;
* :mod:`ddpm.viz.animation`: GIFs of the reverse process;
* :mod:`ddpm.viz.grid`: images as uint8 pixels and as one grid (no matplotlib), for files and figures alike;
* :mod:`ddpm.viz.checks`: the argument checks those functions make, which ``ddpm-viz`` runs before any work.

Everything public is importable from here::

    from ddpm import viz

    data = viz.forward_2d()                      # seed tutorial 003: N((2, 2), 0.5^2 I), T = 100
    viz.save_figure(viz.plot_forward_2d(data), "outputs/viz/forward-2d.png")

A module is imported when one of its names is first used, so ``ddpm.viz.grid`` (and ``viz.to_uint8``)
never loads matplotlib: training, ``ddpm-sample`` and image runs write grids without it.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The public names, by the module that owns them: the one list of what ``ddpm.viz`` exports.
_MODULES: dict[str, tuple[str, ...]] = {
    "animation": ("save_reverse_gif",),
    "checks": (
        "FORWARD_1D_LAYOUTS",
        "check_arguments",
        "check_timesteps",
        "resolve_schedule",
        "resolve_schedule_kwargs",
        "resolve_schedules",
    ),
    "demos": (
        "FORWARD_1D_FRACTIONS",
        "FORWARD_2D_FRACTIONS",
        "CHAIN_DEMO_BETA_RANGE",
        "CHAIN_DEMO_RNG_SEED",
        "GAUSSIAN_DEMO_BETA_RANGE",
        "GAUSSIAN_DEMO_RNG_SEED",
        "SINE_DEMO_BETA_RANGE",
        "default_timesteps",
        "forward_1d",
        "forward_2d",
        "forward_chain",
        "plot_forward_1d",
        "plot_forward_2d",
        "plot_forward_chain",
        "plot_schedules",
        "schedule_curves",
        "sine_wave",
    ),
    "figures": (
        "DEFAULT_DPI",
        "item_kind",
        "plot_denoising_strip",
        "plot_guidance_curve",
        "plot_loss_by_quarter",
        "plot_reverse_1d",
        "plot_reverse_2d",
        "plot_sampler_comparison",
        "plot_samples_vs_data",
        "reverse_positions",
        "save_figure",
        "show_figure",
    ),
    "grid": ("image_grid", "save_image_grid", "to_uint8"),
}
_OWNER = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_OWNER)


def __getattr__(name: str) -> Any:
    """Import the module that owns ``name`` on first use (PEP 562) and keep the name here."""
    if name not in _OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_OWNER[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The loaded names and every public one, loaded or not (for completion in a shell)."""
    return sorted({*globals(), *__all__})
