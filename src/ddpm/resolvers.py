"""The OmegaConf resolvers ddpm-lab's configs use, registered when ``ddpm`` is imported.

``conf/model/*.yaml`` read ``out_mult`` through ``${ddpm.out_mult:...}`` and
``conf/hydra/launcher/slurm.yaml`` its ``tasks_per_node`` through ``${ddpm.slurm_tasks_per_node:...}``: so
that a config composed outside ``ddpm-train`` (a notebook's ``compose``, then ``instantiate(cfg.model)``)
resolves after a plain ``import ddpm``, the package imports this module. Only OmegaConf: no torch, no
Hydra, no ``conf/`` folder.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

__all__ = ["LEARNED_VARIANCES", "output_multiplier", "register", "slurm_tasks_per_node"]

#: the reverse variances the network outputs itself (GaussianDiffusion's ``learned`` and ``learned_range``)
LEARNED_VARIANCES = ("learned", "learned_range")


def output_multiplier(variance: str) -> int:
    """The network's output channels per data channel for ``diffusion.variance``: 2 when it learns the
    variance, else 1 (``GaussianDiffusion.output_multiplier``, without importing torch).

    The model configs read it as ``out_mult: ${ddpm.out_mult:${oc.select:diffusion.variance,fixed_large}}``
    (a model node composed without a diffusion node gets 1).
    """
    return 2 if variance in LEARNED_VARIANCES else 1


def slurm_tasks_per_node(gpus_per_node: Any, devices: Any) -> int:
    """SLURM tasks per node for ``hydra/launcher=slurm``: one per GPU, else what ``trainer.devices`` asks.

    A CPU cluster (``gpus_per_node=0``) runs ``trainer.devices`` processes when it is a number (2 with
    ``trainer=ddp_cpu``) and one otherwise (``auto``, ``-1``): never 0 tasks.
    """
    if isinstance(gpus_per_node, int) and gpus_per_node > 0:
        return gpus_per_node
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0 else 1


def register() -> None:
    """Register ``ddpm.out_mult`` and ``ddpm.slurm_tasks_per_node`` with OmegaConf (again: replaced)."""
    OmegaConf.register_new_resolver("ddpm.out_mult", output_multiplier, replace=True)
    OmegaConf.register_new_resolver("ddpm.slurm_tasks_per_node", slurm_tasks_per_node, replace=True)


register()
