"""``hydra/launcher=slurm`` (conf/hydra/launcher/slurm.yaml): :class:`ddpm.cluster.SlurmLauncher`, under
the name Hydra requires of a launcher (a class defined in the ``hydra_plugins`` package)."""

from __future__ import annotations

from ddpm import cluster

__all__ = ["SlurmLauncher"]


class SlurmLauncher(cluster.SlurmLauncher):
    """See :class:`ddpm.cluster.SlurmLauncher`."""
