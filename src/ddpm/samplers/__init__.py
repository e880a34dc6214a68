"""Reverse-process samplers, one module per algorithm; every one is a ``conf/sampler/`` option.

- :class:`DDPMSampler` (``ancestral``): DDPM Algorithm 2, all T steps or respaced.
- :class:`DDIMSampler` (``ddim``): DDIM, eta = 0 (deterministic) to 1; ``euler`` is DDIM with eta = 0, Euler's
  method in the noise level, which on the flow's straight path is Euler's step in t (x + (t' - t) v).
- :class:`DPMSolverSampler` (``dpm_solver``): multistep DPM-Solver++ of order 1-3.
- :class:`UniPCSampler` (``unipc``): UniPC predictor-corrector (bh2, or bh1).
- :class:`HeunSampler` (``heun``): EDM's second-order sampler (with optional churn) on a spacing's levels, in
  the process's ODE frame (t itself on the flow).
- :class:`ConsistencySampler` (``consistency``): consistency models' multistep sampler (Song et al. 2023,
  Algorithm 1), for a consistency-distilled run.
- :class:`EDMSampler` (``edm``): EDM Algorithm 2 on the noise levels of EDM eq. 5 (``sigma_min``,
  ``sigma_max``, ``rho``).

Each has a model-agnostic ``step(diffusion, model_output, t, t_prev, x_t, noise=None, state=None)`` and
the shared ``sample`` loop of :mod:`ddpm.samplers.base`; :mod:`ddpm.samplers.spacing` chooses the
timesteps. ``sample(..., y=labels)`` guides a class-conditional network with classifier-free guidance
(:mod:`ddpm.samplers.guidance`, the sampler's ``guidance_scale``). Plain PyTorch.
"""

from ddpm.samplers.ancestral import DDPMSampler
from ddpm.samplers.base import (
    NonFiniteSampleError,
    Sampler,
    SampleResult,
    StepOutput,
    alpha_sigma,
)
from ddpm.samplers.consistency import ConsistencySampler
from ddpm.samplers.ddim import DDIMSampler
from ddpm.samplers.dpm_solver import DPMSolverSampler, DPMSolverState
from ddpm.samplers.guidance import ClassifierFreeGuidance
from ddpm.samplers.heun import EDMSampler, HeunSampler, HeunState
from ddpm.samplers.spacing import Spacing, make_timesteps
from ddpm.samplers.unipc import UniPCSampler, UniPCState

__all__ = [
    "ClassifierFreeGuidance",
    "ConsistencySampler",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "DPMSolverState",
    "EDMSampler",
    "HeunSampler",
    "HeunState",
    "NonFiniteSampleError",
    "SampleResult",
    "Sampler",
    "Spacing",
    "StepOutput",
    "UniPCSampler",
    "UniPCState",
    "alpha_sigma",
    "make_timesteps",
]
