"""Pictures of the diffusion process and of training runs, drawn from arrays with matplotlib only.

* :mod:`ddpm.viz.demos`: the seed tutorials' demonstrations (schedules, the forward process), each a data
  function returning numpy arrays plus a plot function returning a :class:`matplotlib.figure.Figure`;
* :mod:`ddpm.viz.figures`: figures of sampling and training runs, :func:`save_figure`, :func:`show_figure`;
* :mod:`ddpm.viz.animation`: GIFs of the reverse process;
* :mod:`ddpm.viz.checks`: the argument checks those functions make, which ``ddpm-viz`` runs before any work.

Everything public is importable from here::

    from ddpm import viz

    data = viz.forward_2d()                      # seed 003: N((2, 2), 0.5^2 I), T = 100
    viz.save_figure(viz.plot_forward_2d(data), "outputs/viz/forward-2d.png")
"""

from ddpm.viz.animation import save_reverse_gif
from ddpm.viz.checks import check_timesteps, resolve_schedule_kwargs
from ddpm.viz.demos import (
    FORWARD_1D_FRACTIONS,
    FORWARD_2D_FRACTIONS,
    SEED_000_SCHEDULE,
    SEED_001_SCHEDULE,
    SEED_003_SCHEDULE,
    default_timesteps,
    forward_1d,
    forward_2d,
    forward_chain,
    plot_forward_1d,
    plot_forward_2d,
    plot_forward_chain,
    plot_schedules,
    schedule_curves,
)
from ddpm.viz.figures import (
    DEFAULT_DPI,
    plot_denoising_strip,
    plot_loss_by_quartile,
    plot_reverse_1d,
    plot_reverse_2d,
    plot_samples_vs_data,
    reverse_positions,
    save_figure,
    show_figure,
)

__all__ = [
    "DEFAULT_DPI",
    "FORWARD_1D_FRACTIONS",
    "FORWARD_2D_FRACTIONS",
    "SEED_000_SCHEDULE",
    "SEED_001_SCHEDULE",
    "SEED_003_SCHEDULE",
    "check_timesteps",
    "default_timesteps",
    "forward_1d",
    "forward_2d",
    "forward_chain",
    "plot_denoising_strip",
    "plot_forward_1d",
    "plot_forward_2d",
    "plot_forward_chain",
    "plot_loss_by_quartile",
    "plot_reverse_1d",
    "plot_reverse_2d",
    "plot_samples_vs_data",
    "plot_schedules",
    "resolve_schedule_kwargs",
    "reverse_positions",
    "save_figure",
    "save_reverse_gif",
    "schedule_curves",
    "show_figure",
]
