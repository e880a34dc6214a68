"""The sampling loop every sampler shares, and the shape of one step.

Model-agnostic, in the manner of diffusers' schedulers: ``step()`` takes the network output and the
current sample and returns the next one, so a user can write their own loop::

    state = None
    ts = sampler.timesteps(diffusion)
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1        # -1: the clean data, abar = 1
        output = model(x, torch.full((len(x),), t))
        out = sampler.step(diffusion, output, t, t_prev, x, noise=torch.randn_like(x), state=state)
        x, state = out.prev_sample, out.state

Multistep samplers carry their history in ``state`` (taken and returned by ``step``), so nothing is left
over between two ``sample`` calls. A model is any callable ``model(x_t, t) -> output`` where ``t`` is a
tensor [B] of timesteps (int64, or float32 for samplers that visit fractional timesteps).

Class-conditional sampling: ``sample(..., y=labels)`` wraps the network in
:class:`~ddpm.samplers.guidance.ClassifierFreeGuidance` with the sampler's ``guidance_scale`` (or the one
given to ``sample``), so every sampler is guided the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, SupportsInt, cast, overload

import torch
from tqdm.auto import tqdm

from ddpm.diffusion import GaussianDiffusion, _parse_enum
from ddpm.process import Process
from ddpm.samplers.guidance import ClassifierFreeGuidance, check_guidance_scale
from ddpm.samplers.spacing import Spacing, check_custom_timesteps, make_timesteps, process_timesteps

__all__ = [
    "Model",
    "MultistepSampler",
    "NonFiniteSampleError",
    "SampleResult",
    "Sampler",
    "StepOutput",
    "alpha_sigma",
    "check_order",
    "check_steps",
    "require_chain",
    "step_index",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: ``t_prev`` of the last step: the clean data (abar = 1)
CLEAN = -1


class NonFiniteSampleError(FloatingPointError):
    """A sample became NaN or inf during the reverse process."""


class StepOutput(NamedTuple):
    """One reverse step: the next sample, the (clipped) x0 prediction it was built from, and the state the
    next ``step`` call takes (None for one-step samplers)."""

    prev_sample: torch.Tensor
    pred_x0: torch.Tensor
    state: Any = None


class SampleResult(NamedTuple):
    """Final samples plus, when asked for, the chain: ``trajectory[i]`` is x after ``timesteps[i]``
    was applied (index 0 holds x_T), and ``pred_x0[i]`` the x0 prediction at ``timesteps[i]``."""

    samples: torch.Tensor
    trajectory: torch.Tensor
    pred_x0: torch.Tensor
    timesteps: list


def check_steps(steps: object, minimum: int = 1) -> int:
    """``steps`` as an int >= ``minimum``, or a one-line ValueError naming the value."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < minimum:
        raise ValueError(f"steps={steps!r} is invalid; steps must be an integer >= {minimum}")
    return steps


def check_order(order: object, allowed: Sequence[int]) -> int:
    """``order`` as one of ``allowed``, or a one-line ValueError naming the value."""
    if isinstance(order, bool) or order not in allowed:
        raise ValueError(f"order={order!r} is invalid; choose one of {', '.join(map(str, allowed))}")
    return int(cast(SupportsInt, order))  # in allowed: an int, or a number equal to one (2.0)


def alpha_sigma(process: Process, t: int | float | torch.Tensor) -> tuple[float, float]:
    """(alpha_t, sigma_t) of the process at one timestep, as floats (:meth:`Process.coefficients`; for
    DDPM's chain sqrt(abar_t) and sqrt(1 - abar_t), fractional t interpolated); ``t = -1`` is the clean
    data, (1, 0)."""
    t = t.item() if isinstance(t, torch.Tensor) else t
    if t == CLEAN:
        return 1.0, 0.0
    return process.coefficients(float(t))


def require_chain(process: Process, what: str) -> GaussianDiffusion:
    """``process`` as DDPM's chain of T timesteps, or a one-line ValueError saying that ``what`` needs one."""
    if isinstance(process, GaussianDiffusion):
        return process
    raise ValueError(
        f"{what} needs DDPM's chain of T timesteps; {type(process).__name__} is continuous: sample it with "
        "sampler=edm, heun, ddim, dpm_solver or unipc"
    )


def step_index(timesteps: list, t: object) -> int | None:
    """Where ``t`` lies in a sampler's own timesteps, or None for a timestep outside them."""
    t = t.item() if isinstance(t, torch.Tensor) else t
    try:
        return timesteps.index(t)
    except ValueError:
        return None


def _check_finite(x: torch.Tensor, t: object, i: int, total: int) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        t_text = f"{t:g}" if isinstance(t, float) else str(t)
        raise NonFiniteSampleError(
            f"sampling produced {bad} non-finite values at step {i + 1}/{total} (t={t_text}); "
            "check the model, the schedule's last betas and clipping"
        )


class Sampler:
    """Shared sampling loop; subclasses define the timesteps and one step."""

    #: whether ``step`` uses the noise it is given (the loop draws none for deterministic samplers)
    stochastic: bool = False
    #: classifier-free guidance scale w for labelled sampling (:mod:`ddpm.samplers.guidance`: 1 conditional)
    guidance_scale: float = 1.0
    #: the method's order: each sampler sets it as a class attribute, the multistep solvers per instance
    #: (their ``order`` argument)
    order: int = 1

    @property
    def convergence_order(self) -> int:
        """The predicted rate: the global error falls as NFE**-convergence_order; ``order`` unless the
        method raises it (UniPC's corrector)."""
        return self.order

    def _guidance_repr(self) -> str:
        """``, guidance_scale=w`` for a repr when w is not the default 1."""
        return "" if self.guidance_scale == 1.0 else f", guidance_scale={self.guidance_scale:g}"

    #: a custom schedule (``sampler.timesteps=[...]``: spacing ``custom``), or None for the spacing's grid
    custom_timesteps: list | None = None
    spacing: Spacing = Spacing.LINSPACE

    def _set_spacing(self, spacing: str, timesteps: Sequence[float] | None) -> None:
        """``spacing``, or ``custom`` with its list checked when ``timesteps`` is given (which wins over
        ``spacing``: the config's default spacing stays in the node). The list is checked here as numbers
        alone; whether they must be integers (a chain's timesteps) or lie in a continuous process's times is
        checked against the process (:meth:`_grid`)."""
        if timesteps is None:
            self.spacing = _parse_enum(Spacing, "spacing", spacing)
            if self.spacing is Spacing.CUSTOM:
                raise ValueError("spacing='custom' needs the list itself: sampler.timesteps=[999, 500, 100]")
            if self.spacing is Spacing.FITTED:
                raise ValueError(
                    "spacing='fitted' is a run's schedule (ddpm-eval RUN --fit-steps N): ddpm-sample and "
                    "ddpm-eval read it from the run folder; in Python pass timesteps=[...]"
                )
            self.custom_timesteps = None
            return
        self.spacing = Spacing.CUSTOM
        self.custom_timesteps = check_custom_timesteps(timesteps, fractional=True)

    def _grid(self, diffusion: Process, steps: int, fractional: bool = False) -> list:
        """The spacing's ``steps`` times on this process (a chain's timesteps, or a continuous process's real
        times: :func:`~ddpm.samplers.spacing.process_timesteps`), or the custom list checked against it."""
        if diffusion.discrete:
            chain = require_chain(diffusion, "this spacing")
            if self.custom_timesteps is not None:
                return check_custom_timesteps(self.custom_timesteps, chain.num_timesteps, fractional)
            return make_timesteps(
                chain.num_timesteps,
                steps,
                self.spacing,
                alphas_cumprod=chain.alphas_cumprod,
                fractional=fractional,
            )
        if self.custom_timesteps is not None:
            return check_custom_timesteps(
                self.custom_timesteps, fractional=True, time_range=diffusion.time_range
            )
        return process_timesteps(diffusion, steps, self.spacing)

    def _spacing_repr(self) -> str:
        """``spacing='x'``, or ``timesteps=[...]`` for a custom schedule."""
        if self.custom_timesteps is not None:
            return f"timesteps={self.custom_timesteps}"
        return f"spacing={self.spacing.value!r}"

    def timesteps(self, diffusion: Process) -> list:
        """Descending timesteps the sampler evaluates the network at, one entry per evaluation."""
        raise NotImplementedError

    def nfe(self, diffusion: Process) -> int:
        """Network evaluations per sample: the length of :meth:`timesteps`."""
        return len(self.timesteps(diffusion))

    def step(
        self,
        diffusion: Process,
        model_output: torch.Tensor,
        t: Any,
        t_prev: Any,
        x_t: torch.Tensor,
        noise: torch.Tensor | None = None,
        state: Any = None,
    ) -> StepOutput:
        """x at ``t_prev`` from x at ``t`` and the network output there (``t_prev = -1``: clean data)."""
        raise NotImplementedError

    @overload
    def sample(
        self,
        model: Model,
        diffusion: Process,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        return_trajectory: Literal[False] = False,
        progress: bool = True,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor: ...

    @overload
    def sample(
        self,
        model: Model,
        diffusion: Process,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        *,
        return_trajectory: Literal[True],
        progress: bool = True,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
    ) -> SampleResult: ...

    @overload
    def sample(
        self,
        model: Model,
        diffusion: Process,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = True,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor | SampleResult: ...

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        diffusion: Process,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = True,
        device: torch.device | str | None = None,
        x_T: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
        guidance_rescale: float = 0.0,
    ) -> torch.Tensor | SampleResult:
        """Draw samples of ``shape`` (batch first) by running the reverse process from x_T = prior_std z
        (:meth:`~ddpm.process.Process.prior_std`: 1 on DDPM's chain, sigma_max on EDM's).

        Args:
            model: ``model(x_t, t) -> output`` under ``diffusion.objective``; with ``y``, a conditional
                network ``model(x_t, t, y)`` with ``num_classes``.
            diffusion: the process the model was trained on.
            shape: [B, ...] of the samples.
            generator: torch RNG for x_T and the per-step noise (reproducible sampling).
            return_trajectory: return a :class:`SampleResult` with every intermediate x and x0-hat.
            progress: show a progress bar.
            device: where to sample; defaults to the device of ``diffusion``'s buffers.
            x_T: a given starting point instead of fresh noise.
            y: class labels [B] for a conditional network (None: call ``model(x_t, t)`` as it is).
            guidance_scale: classifier-free guidance w for ``y`` (None: the sampler's ``guidance_scale``;
                :mod:`ddpm.samplers.guidance`: 0 unconditional, 1 conditional).
            guidance_rescale: Lin et al. 2023's phi in [0, 1] (0: off).

        Returns:
            The samples, or a :class:`SampleResult` when ``return_trajectory`` is set.

        Raises:
            NonFiniteSampleError: a NaN/inf appeared; the message names the step.
        """
        device = torch.device(device) if device is not None else diffusion.device
        shape = tuple(int(s) for s in shape)
        if y is not None:
            w = self.guidance_scale if guidance_scale is None else check_guidance_scale(guidance_scale)
            model = ClassifierFreeGuidance(model, y.to(device), w, guidance_rescale)
        ts = self.timesteps(diffusion)
        if x_T is None:
            x = torch.randn(shape, generator=generator, device=device)
            prior_std = diffusion.prior_std(ts[0])
            if prior_std != 1.0:  # EDM Algorithm 1, line 1: x_0 = sigma_max z
                x = x * prior_std
        else:
            if tuple(x_T.shape) != shape:
                raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
            x = x_T.to(device=device, dtype=torch.float32)
        traj = [x.cpu()] if return_trajectory else None
        x0s: list[torch.Tensor] | None = [] if return_trajectory else None
        state = None
        for i, t in enumerate(tqdm(ts, desc=type(self).__name__, disable=not progress, leave=False)):
            t_prev = ts[i + 1] if i + 1 < len(ts) else CLEAN
            t_dtype = torch.float32 if isinstance(t, float) else torch.long
            t_batch = torch.full((shape[0],), t, device=device, dtype=t_dtype)
            model_output = model(x, t_batch).float()
            noise = torch.randn(shape, generator=generator, device=device) if self.stochastic else None
            out = self.step(diffusion, model_output, t, t_prev, x, noise=noise, state=state)
            x, state = out.prev_sample, out.state
            _check_finite(x, t, i, len(ts))
            if traj is not None and x0s is not None:
                traj.append(x.cpu())
                x0s.append(out.pred_x0.cpu())
        if traj is None or x0s is None:
            return x
        return SampleResult(x, torch.stack(traj), torch.stack(x0s), ts)


class MultistepSampler(Sampler):
    """The settings and timesteps the multistep solvers (DPM-Solver++, UniPC) share.

    Args:
        steps: network evaluations, 1 <= steps <= T.
        order: 1, 2 or 3.
        spacing: ``linspace``, ``leading``, ``trailing``, ``karras``, ``logsnr`` or ``quadratic``
            (:mod:`ddpm.samplers.spacing`; linspace, leading and quadratic leave t = 0 to the clean data).
        lower_order_final: lower the order of the last steps (each solver says how).
        guidance_scale: classifier-free guidance w when sampling with labels (:mod:`ddpm.samplers.guidance`:
            0 unconditional, 1 conditional, > 1 guided).
        timesteps: a custom schedule instead of the spacing's grid: a strictly decreasing list of timesteps in
            [0, T - 1] (``sampler.timesteps=[999, 500, 100]``; spacing ``custom``, ``steps`` its length); the
            step after the last lands on the clean data.
    """

    def __init__(
        self,
        steps: int = 20,
        order: int = 2,
        spacing: str = "linspace",
        lower_order_final: bool = True,
        guidance_scale: float = 1.0,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        self.guidance_scale = check_guidance_scale(guidance_scale)
        self.order = check_order(order, (1, 2, 3))
        self._set_spacing(spacing, timesteps)
        self.steps = len(self.custom_timesteps) if self.custom_timesteps is not None else check_steps(steps)
        self.lower_order_final = bool(lower_order_final)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.steps}, order={self.order}, {self._spacing_repr()}, "
            f"lower_order_final={self.lower_order_final}{self._guidance_repr()})"
        )

    def timesteps(self, diffusion: Process) -> list[int]:
        """The descending timesteps; the step after the last lands on the clean data."""
        return self._grid(diffusion, self.steps)
