"""ddpm-lab: denoising diffusion probabilistic models.

The core (``schedules``, ``process``, ``parameterization``, ``diffusion``, ``losses``, ``timestep_sampling``,
``samplers``, ``models``, ``oracle``, ``sampling_model``) is plain
PyTorch; Lightning lives in ``lit_module``, ``data.datamodules``, ``callbacks`` and ``checkpointing``, which
only training imports (a trained run is loaded without them: ``build.load_run``); Hydra in ``build`` and
``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

# the configs' OmegaConf resolvers (ddpm.out_mult in every model node): after `import ddpm`, a config
# composed in a notebook instantiates (OmegaConf only; torch waits for the first export used)
from ddpm import resolvers as _resolvers  # noqa: F401

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "GaussianDiffusion",
    "GaussianMixtureOracle",
    "GaussianOracle",
    "HeunSampler",
    "HybridLoss",
    "LossSecondMomentTimesteps",
    "SimpleLoss",
    "UniPCSampler",
    "UniformTimesteps",
    "VLBLoss",
    "make_beta_schedule",
]
__version__ = "0.1.0"

_EXPORTS = {
    "GaussianDiffusion": "ddpm.diffusion",
    "SimpleLoss": "ddpm.losses",
    "HybridLoss": "ddpm.losses",
    "VLBLoss": "ddpm.losses",
    "UniformTimesteps": "ddpm.timestep_sampling",
    "LossSecondMomentTimesteps": "ddpm.timestep_sampling",
    "DDPMSampler": "ddpm.samplers",
    "DDIMSampler": "ddpm.samplers",
    "DPMSolverSampler": "ddpm.samplers",
    "UniPCSampler": "ddpm.samplers",
    "HeunSampler": "ddpm.samplers",
    "GaussianOracle": "ddpm.oracle",
    "GaussianMixtureOracle": "ddpm.oracle",
    "make_beta_schedule": "ddpm.schedules",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that the command-line tools can check their arguments before torch is imported.
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
