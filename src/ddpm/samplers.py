"""Reverse-process samplers: ancestral DDPM and DDIM.

Model-agnostic, in the manner of diffusers' schedulers: ``step()`` takes the network output and the
current sample and returns the next one, so a user can write their own loop; ``sample()`` runs the
whole chain from N(0, I). A model is any callable ``model(x_t, t) -> output`` where ``t`` is a long
tensor [B] of original timesteps (0 .. T-1).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ddpm.diffusion import GaussianDiffusion, _parse_enum

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "NonFiniteSampleError",
    "SampleResult",
    "Sampler",
    "Spacing",
    "StepOutput",
    "make_timesteps",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Spacing(enum.StrEnum):
    """How S sampling steps are chosen among T (DDIM paper appendix; "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", table 2)."""

    LINSPACE = "linspace"
    LEADING = "leading"
    TRAILING = "trailing"


class NonFiniteSampleError(FloatingPointError):
    """A sample became NaN or inf during the reverse process."""


class StepOutput(NamedTuple):
    """One reverse step: the next sample and the (clipped) x0 prediction it was built from."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor


class SampleResult(NamedTuple):
    """Final samples plus, when asked for, the chain: ``trajectory[i]`` is x after ``timesteps[i]``
    was applied (index 0 holds x_T), and ``pred_x0[i]`` the x0 prediction at ``timesteps[i]``."""

    samples: torch.Tensor
    trajectory: torch.Tensor | None
    pred_x0: torch.Tensor | None
    timesteps: list[int]


def make_timesteps(T: int, steps: int, spacing: str = "linspace") -> list[int]:
    """Descending list of ``steps`` timesteps among 0 .. T-1.

    For T = 1000, S = 10: ``linspace`` gives 999, 888, ..., 0; ``leading`` 900, 800, ..., 0;
    ``trailing`` 999, 899, ..., 99.
    """
    spacing = _parse_enum(Spacing, "spacing", spacing)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; steps must be an integer >= 1")
    if steps > T:
        raise ValueError(f"steps={steps} > T={T}; a sampler cannot take more steps than the chain has")
    if spacing is Spacing.LINSPACE:
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    elif spacing is Spacing.LEADING:
        ratio = T // steps
        ts = [i * ratio for i in range(steps)]
    else:
        ratio = T / steps
        ts = [round(T - i * ratio) - 1 for i in range(steps)][::-1]
    return sorted(set(ts), reverse=True)


def _check_finite(x: torch.Tensor, t: int, i: int, total: int) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteSampleError(
            f"sampling produced {bad} non-finite values at step {i + 1}/{total} (t={t}); "
            "check the model, the schedule's last betas and clipping"
        )


class Sampler:
    """Shared sampling loop; subclasses define the timesteps and one step."""

    def timesteps(self, diffusion: GaussianDiffusion) -> list[int]:
        """Descending timesteps the sampler visits."""
        raise NotImplementedError

    def _step_in_loop(
        self,
        diffusion: GaussianDiffusion,
        model_output: torch.Tensor,
        i: int,
        ts: list[int],
        x: torch.Tensor,
        noise: torch.Tensor,
    ) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        diffusion: GaussianDiffusion,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = True,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
    ) -> torch.Tensor | SampleResult:
        """Draw samples of ``shape`` (batch first) by running the reverse chain from x_T ~ N(0, I).

        Args:
            model: ``model(x_t, t) -> output`` under ``diffusion.objective``.
            diffusion: the process the model was trained on.
            shape: [B, ...] of the samples.
            generator: torch RNG for x_T and the per-step noise (reproducible sampling).
            return_trajectory: return a :class:`SampleResult` with every intermediate x and x0-hat.
            progress: show a progress bar.
            device: where to sample; defaults to the device of ``diffusion``'s buffers.
            x_T: a given starting point instead of fresh noise.

        Returns:
            The samples, or a :class:`SampleResult` when ``return_trajectory`` is set.

        Raises:
            NonFiniteSampleError: a NaN/inf appeared; the message names the step.
        """
        device = torch.device(device) if device is not None else diffusion.betas.device
        shape = tuple(int(s) for s in shape)
        if x_T is None:
            x = torch.randn(shape, generator=generator, device=device)
        else:
            if tuple(x_T.shape) != shape:
                raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
            x = x_T.to(device=device, dtype=torch.float32)
        ts = self.timesteps(diffusion)
        traj = [x.cpu()] if return_trajectory else None
        x0s: list[torch.Tensor] | None = [] if return_trajectory else None
        for i, t in enumerate(tqdm(ts, desc=type(self).__name__, disable=not progress, leave=False)):
            t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
            model_output = model(x, t_batch).float()
            noise = torch.randn(shape, generator=generator, device=device)
            out = self._step_in_loop(diffusion, model_output, i, ts, x, noise)
            x = out.prev_sample
            _check_finite(x, t, i, len(ts))
            if traj is not None and x0s is not None:
                traj.append(x.cpu())
                x0s.append(out.pred_x0.cpu())
        if traj is None or x0s is None:
            return x
        return SampleResult(x, torch.stack(traj), torch.stack(x0s), ts)


class DDPMSampler(Sampler):
    """Ancestral sampling (DDPM Algorithm 2) with the diffusion's fixed variance.

    Args:
        steps: None for all T steps; S < T runs ancestral sampling on a respaced subsequence
            (improved-diffusion's respacing: beta'_i = 1 - abar[tau_i] / abar[tau_{i-1}]).
        spacing: how the subsequence is chosen when ``steps`` is given.
    """

    def __init__(self, steps: int | None = None, spacing: str = "linspace") -> None:
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps={steps!r} is invalid; use None (all T steps) or an integer >= 1")
        self.steps = steps
        self.spacing = _parse_enum(Spacing, "spacing", spacing)
        self._respaced: tuple[int, tuple[int, ...], GaussianDiffusion] | None = None

    def __repr__(self) -> str:
        return f"DDPMSampler(steps={self.steps}, spacing={self.spacing.value!r})"

    def timesteps(self, diffusion: GaussianDiffusion) -> list[int]:
        """All T steps, or the respaced subsequence."""
        if self.steps is None or self.steps == diffusion.num_timesteps:
            return list(range(diffusion.num_timesteps - 1, -1, -1))
        return make_timesteps(diffusion.num_timesteps, self.steps, self.spacing)

    def respaced(self, diffusion: GaussianDiffusion, ts: list[int]) -> GaussianDiffusion:
        """The process restricted to ascending timesteps ``ts`` with all buffers recomputed."""
        ascending = sorted(ts)
        key = (id(diffusion), tuple(ascending))
        if self._respaced is not None and self._respaced[:2] == key:
            return self._respaced[2]
        abar = diffusion.alphas_cumprod.double().cpu()[ascending]
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # DDIM sec. 4.2 / improved-diffusion respacing: beta'_i = 1 - abar[tau_i] / abar[tau_{i-1}].
        betas = (1.0 - abar / prev).clamp(max=0.999)
        new = GaussianDiffusion(
            betas,
            objective=diffusion.objective,
            variance=diffusion.variance,
            clip_denoised=diffusion.clip_denoised,
            clip_range=diffusion.clip_range,
        ).to(diffusion.betas.device)
        self._respaced = (*key, new)
        return new

    def step(
        self,
        diffusion: GaussianDiffusion,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_{t-1} ~ p(x_{t-1} | x_t): the posterior mean at the clipped x0-hat plus sigma_t z.

        No noise is added where t == 0.
        """
        out = diffusion.p_mean_variance(model_output, x_t, t)
        if noise is None:
            noise = torch.randn_like(x_t)
        t_batch = diffusion.timesteps_for_batch(t, x_t.shape[0], x_t.device)
        nonzero = (t_batch != 0).float().reshape(-1, *([1] * (x_t.ndim - 1)))
        # DDPM Algorithm 2, line 4: x_{t-1} = mu_theta(x_t, t) + sigma_t z, z = 0 at t = 0.
        prev = out["mean"] + nonzero * (0.5 * out["log_variance"]).exp() * noise
        return StepOutput(prev, out["pred_x0"])

    def _step_in_loop(self, diffusion, model_output, i, ts, x, noise):
        if len(ts) == diffusion.num_timesteps:
            return self.step(diffusion, model_output, ts[i], x, noise)
        respaced = self.respaced(diffusion, ts)
        return self.step(respaced, model_output, len(ts) - 1 - i, x, noise)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021) on S of the T steps; ``eta`` = 0 is deterministic, 1 is ancestral.

    Args:
        steps: number of sampling steps S (1 <= S <= T).
        eta: stochasticity, >= 0.
        spacing: ``linspace``, ``leading`` or ``trailing`` (see :func:`make_timesteps`).
    """

    def __init__(self, steps: int = 50, eta: float = 0.0, spacing: str = "linspace") -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r} is invalid; steps must be an integer >= 1")
        if not (isinstance(eta, int | float) and math.isfinite(eta)) or eta < 0:
            raise ValueError(f"eta={eta!r} is invalid; eta must be a finite number >= 0")
        self.steps = steps
        self.eta = float(eta)
        self.spacing = _parse_enum(Spacing, "spacing", spacing)

    def __repr__(self) -> str:
        return f"DDIMSampler(steps={self.steps}, eta={self.eta}, spacing={self.spacing.value!r})"

    def timesteps(self, diffusion: GaussianDiffusion) -> list[int]:
        """The S descending timesteps for this diffusion's T."""
        return make_timesteps(diffusion.num_timesteps, self.steps, self.spacing)

    def step(
        self,
        diffusion: GaussianDiffusion,
        model_output: torch.Tensor,
        t: int | torch.Tensor,
        t_prev: int | torch.Tensor,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> StepOutput:
        """x_{t_prev} from x_t (DDIM eq. 12); ``t_prev = -1`` for the last step (abar_prev = 1)."""
        abar = diffusion.extract(diffusion.alphas_cumprod, t, x_t)
        t_prev_b = diffusion.timesteps_for_batch(t_prev, x_t.shape[0], diffusion.betas.device)
        abar_ext = torch.cat([diffusion.alphas_cumprod.new_ones(1), diffusion.alphas_cumprod])
        abar_prev = diffusion.extract(abar_ext, t_prev_b + 1, x_t)  # index -1 -> abar = 1
        x0 = diffusion.predict_x0(x_t, t, model_output)
        if diffusion.clip_denoised:
            x0 = diffusion.clip(x0)
            eps = diffusion.eps_from_x0(x_t, t, x0)  # re-derive eps so it agrees with clipped x0
        else:
            eps = diffusion.predict_eps(x_t, t, model_output)
        # DDIM eq. 16: sigma = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar').
        sigma = self.eta * ((1 - abar_prev) / (1 - abar)).sqrt() * (1 - abar / abar_prev).clamp(min=0).sqrt()
        if noise is None:
            noise = torch.randn_like(x_t)
        # DDIM eq. 12: x' = sqrt(abar') x0 + sqrt(1 - abar' - sigma^2) eps + sigma z.
        direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        prev = abar_prev.sqrt() * x0 + direction + sigma * noise
        return StepOutput(prev, x0)

    def _step_in_loop(self, diffusion, model_output, i, ts, x, noise):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        return self.step(diffusion, model_output, ts[i], t_prev, x, noise)
