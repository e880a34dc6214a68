"""ddpm-lab: denoising diffusion probabilistic models.

The core (``schedules``, ``diffusion``, ``samplers``, ``models``) is plain PyTorch; Lightning and Hydra
live in ``lit_module``, ``data`` and ``cli``.
"""

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import DDIMSampler, DDPMSampler
from ddpm.schedules import make_beta_schedule

__all__ = ["DDIMSampler", "DDPMSampler", "GaussianDiffusion", "make_beta_schedule"]
__version__ = "0.1.0"
