"""A trained denoiser ready to sample: the network, its diffusion, its sampler, the shape of one sample.

:class:`SamplingModel` is what the commands that only sample and evaluate a run (``ddpm-sample``,
``ddpm-eval``, ``ddpm-viz reverse``) load, in plain PyTorch: :func:`ddpm.build.load_run` builds it from the
run's stored config. Its ``state_dict`` has the training module's names (``net.*``, ``diffusion.*``), so a
checkpoint written by :class:`~ddpm.lit_module.DiffusionModule` loads into it unchanged. Both sample with
:func:`draw_samples`, which gives a class-conditional network (``num_classes > 0``) its labels and guidance
scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, overload

import torch
from torch import nn

from ddpm.process import Process
from ddpm.samplers import Sampler, SampleResult
from ddpm.samplers.guidance import check_labels

__all__ = ["SamplingModel", "balanced_labels", "class_grid_columns", "draw_samples"]


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``n`` labels, each class equally often (to within one) and in order: class k fills the k-th run of
    ``n / num_classes`` samples, so a grid of ``num_classes`` rows shows one class per row."""
    return torch.arange(n) * num_classes // n


def class_grid_columns(n: int, num_classes: int) -> int | None:
    """Images per grid row so that :func:`balanced_labels`' ``n`` samples show one class per row, or None
    (an unconditional model, or ``n`` not a multiple of the classes)."""
    return n // num_classes if num_classes and n % num_classes == 0 else None


@overload
def draw_samples(
    net: nn.Module,
    diffusion: Process,
    sampler: Sampler,
    data_shape: Sequence[int],
    n: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: Literal[False] = False,
    progress: bool = False,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor: ...


@overload
def draw_samples(
    net: nn.Module,
    diffusion: Process,
    sampler: Sampler,
    data_shape: Sequence[int],
    n: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: Literal[True],
    progress: bool = False,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> SampleResult: ...


@overload
def draw_samples(
    net: nn.Module,
    diffusion: Process,
    sampler: Sampler,
    data_shape: Sequence[int],
    n: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor | SampleResult: ...


@torch.no_grad()
def draw_samples(
    net: nn.Module,
    diffusion: Process,
    sampler: Sampler,
    data_shape: Sequence[int],
    n: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    batch_size: int | None = None,
    y: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor | SampleResult:
    """``n`` samples of shape ``data_shape`` from ``net`` with ``sampler``, on the network's scale.

    The network is in eval mode while sampling (no dropout) and back in its own mode afterwards. A
    class-conditional network (``net.num_classes > 0``) samples the labels ``y`` with classifier-free
    guidance (:mod:`ddpm.samplers.guidance`); without ``y``, every class equally often
    (:func:`balanced_labels`).

    Args:
        net: the denoiser, ``net(x_t, t)`` under ``diffusion.objective``.
        diffusion: the process it was trained on.
        sampler: the sampling algorithm.
        data_shape: the shape of one sample, e.g. (2,) or (3, 32, 32).
        n: number of samples.
        device: where to sample (default: where ``diffusion``'s buffers are).
        generator: RNG for reproducible samples.
        return_trajectory: return a :class:`SampleResult` with the whole chain (not batched).
        progress: show a progress bar: over the samples when there are several batches (one update per
            batch), else over the sampler's steps.
        batch_size: sample in chunks of this size to bound memory; the result is one tensor of ``n``.
        y: class labels [n] for a conditional network.
        guidance_scale: classifier-free guidance w (None: the sampler's ``guidance_scale``).

    Raises:
        ValueError: labels for an unconditional network, or labels of the wrong shape or range.
    """
    shape = tuple(int(s) for s in data_shape)
    num_classes = int(getattr(net, "num_classes", 0))
    if y is None and num_classes:
        y = balanced_labels(n, num_classes)
    if y is not None:
        y = check_labels(y, n, num_classes).to(device if device is not None else diffusion.device)
    guide: dict[str, Any] = {"y": y, "guidance_scale": guidance_scale} if y is not None else {}
    was_training = net.training
    net.eval()
    try:
        if return_trajectory or batch_size is None or batch_size >= n:
            return sampler.sample(
                net,
                diffusion,
                (n, *shape),
                generator=generator,
                return_trajectory=return_trajectory,
                progress=progress,
                device=device,
                **guide,
            )
        from tqdm.auto import tqdm

        # The batches go straight into one tensor of all n samples: a list of batches joined at the end
        # would hold every sample twice at the peak.
        out: torch.Tensor | None = None
        bar = tqdm(total=n, desc="Sampling", unit="sample", disable=not progress, leave=False)
        try:
            for start in range(0, n, batch_size):
                size = min(batch_size, n - start)
                part: dict[str, Any] = {**guide, "y": y[start : start + size]} if y is not None else {}
                x = sampler.sample(net, diffusion, (size, *shape), generator=generator, device=device, **part)
                if out is None:
                    out = torch.empty((n, *x.shape[1:]), dtype=x.dtype, device=x.device)
                out[start : start + size] = x
                bar.update(size)
        finally:
            bar.close()
        assert out is not None  # n >= 1 batches ran
        return out
    finally:
        net.train(was_training)


class SamplingModel(nn.Module):
    """``net``, ``diffusion`` and ``sampler`` of a trained run, sampling like the training module does.

    Args:
        net: the denoiser, ``net(x_t, t) -> output`` under ``diffusion.objective``.
        diffusion: the forward process the network was trained on.
        sampler: the default sampler for :meth:`sample`.
        data_shape: the shape of one sample as the network sees it, e.g. (2,) or (3, 32, 32).
    """

    def __init__(
        self, net: nn.Module, diffusion: Process, sampler: Sampler, data_shape: Sequence[int]
    ) -> None:
        super().__init__()
        self.net = net
        self.diffusion = diffusion
        self.sampler = sampler
        self.data_shape = tuple(int(s) for s in data_shape)

    @property
    def device(self) -> torch.device:
        """Where the model is (its diffusion's buffers move with it, parameters or not)."""
        return self.diffusion.device

    @property
    def num_classes(self) -> int:
        """The network's class labels (0: unconditional)."""
        return int(getattr(self.net, "num_classes", 0))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network output for noisy data at timesteps ``t`` (given labels ``y`` when conditional)."""
        return self.net(x_t, t) if y is None else self.net(x_t, t, y)

    @overload
    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: Literal[False] = False,
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor: ...

    @overload
    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        *,
        return_trajectory: Literal[True],
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> SampleResult: ...

    @overload
    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor | SampleResult: ...

    def sample(
        self,
        n: int,
        sampler: Sampler | None = None,
        generator: torch.Generator | None = None,
        return_trajectory: bool = False,
        progress: bool = False,
        batch_size: int | None = None,
        y: torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor | SampleResult:
        """Generate ``n`` samples on the network's scale (the data class's ``denormalize`` undoes it).

        The weights are the EMA weights when the checkpoint was written with EMA on (Lightning's
        ``EMAWeightAveraging`` puts the average in the checkpoint's ``state_dict``).

        Args:
            n: number of samples.
            sampler: override the model's sampler (e.g. ``DDIMSampler(50)``).
            generator: RNG for reproducible samples.
            return_trajectory: return a :class:`SampleResult` with the whole chain (not batched).
            progress: show a progress bar.
            batch_size: sample in chunks of this size to bound memory.
            y: class labels [n] of a conditional model (None: every class equally often).
            guidance_scale: classifier-free guidance w (None: the sampler's; 0 unconditional, 1 conditional).
        """
        return draw_samples(
            self.net,
            self.diffusion,
            sampler or self.sampler,
            self.data_shape,
            n,
            device=self.device,
            generator=generator,
            return_trajectory=return_trajectory,
            progress=progress,
            batch_size=batch_size,
            y=y,
            guidance_scale=guidance_scale,
        )
