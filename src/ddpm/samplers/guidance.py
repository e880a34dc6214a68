"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): one place, used by
the shared sampling loop, so every sampler (DDPM, DDIM, DPM-Solver++, UniPC, Heun) gets it.

A class-conditional network ``net(x_t, t, y)`` trained with label dropout (the label replaced by the null
label ``num_classes`` with probability ``cond_drop_prob``) predicts both eps(x_t, t, y) and the
unconditional eps(x_t, t, null). Guidance with scale w combines the two::

    eps_w = eps(x_t, t, null) + w (eps(x_t, t, y) - eps(x_t, t, null))

The convention is diffusers' ``guidance_scale`` (and GLIDE's s): w = 1 is plain conditional sampling,
w = 0 unconditional sampling, w > 1 strengthens the class at the cost of diversity. The paper writes
(1 + w') eps(y) - w' eps(null), so its w' is our w - 1 (the paper's w' = 0 is our w = 1).

The combination weights (1 - w, w) sum to one and the x0 and v targets are affine in eps at a fixed
(x_t, t) (x0 = (x_t - sigma eps) / alpha, v = (eps - sigma x_t) / alpha), so combining the raw network
outputs gives the guided eps for every objective. Both branches run in one batched call of 2B samples.
With a learned variance (improved DDPM) only the prediction half is guided; the variance half is the
conditional branch's.

Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
sec. 3.4, eq. 15-16) optionally scales the guided output back to the conditional output's standard
deviation per sample, which keeps large w from over-exposing v-prediction models.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["ClassifierFreeGuidance", "check_guidance_scale", "check_labels"]


def check_guidance_scale(guidance_scale: object, name: str = "guidance_scale") -> float:
    """``guidance_scale`` as a finite float >= 0, or a one-line ValueError naming the value."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, int | float):
        raise ValueError(f"{name}={guidance_scale!r} is invalid; it must be a number >= 0")
    w = float(guidance_scale)
    if not math.isfinite(w) or w < 0:
        raise ValueError(
            f"{name}={guidance_scale!r} is invalid; it must be a finite number >= 0 "
            "(0: unconditional, 1: conditional, > 1: guided)"
        )
    return w


def check_labels(y: torch.Tensor, batch: int, num_classes: int, allow_null: bool = True) -> torch.Tensor:
    """``y`` as int64 labels [batch] in 0 .. num_classes - 1 (or the null label num_classes when
    ``allow_null``), or a one-line ValueError naming what is wrong."""
    y = torch.as_tensor(y)
    if num_classes < 1:
        raise ValueError("class labels were given to an unconditional model (num_classes=0)")
    if y.shape != (batch,) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"y has shape {tuple(y.shape)} and dtype {y.dtype}; it must be integer labels of shape [{batch}]"
        )
    top = num_classes if allow_null else num_classes - 1
    if len(y) and (int(y.min()) < 0 or int(y.max()) > top):
        bad = y[(y < 0) | (y > top)][0].item()
        raise ValueError(
            f"class label {bad} is out of range; this model's classes are 0 .. {num_classes - 1}"
        )
    return y.long()


class ClassifierFreeGuidance:
    """A model ``(x_t, t) -> output`` that is ``net`` guided towards labels ``y`` with scale ``w``.

    Args:
        net: a conditional network ``net(x_t, t, y)`` with a ``num_classes`` attribute (its null label).
        y: the class of each sample [B], 0 .. num_classes - 1 (num_classes: no label).
        guidance_scale: w >= 0 (module docstring: 0 unconditional, 1 conditional).
        guidance_rescale: phi in [0, 1] of Lin et al. 2023 eq. 16 (0: off).
        num_classes: the null label, when ``net`` has no ``num_classes`` attribute (e.g. a plain function).
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        y: torch.Tensor,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        num_classes: int | None = None,
    ) -> None:
        num_classes = getattr(net, "num_classes", 0) if num_classes is None else num_classes
        self.net = net
        self.num_classes = int(num_classes)
        self.y = check_labels(y, len(y), self.num_classes)
        self.guidance_scale = check_guidance_scale(guidance_scale)
        if not 0.0 <= float(guidance_rescale) <= 1.0:
            raise ValueError(f"guidance_rescale={guidance_rescale!r} is outside [0, 1]")
        self.guidance_rescale = float(guidance_rescale)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The guided network output at ``(x_t, t)``: one call of the network, of 2B samples when w is
        neither 0 nor 1."""
        y = self.y.to(x_t.device)
        null = torch.full_like(y, self.num_classes)
        w = self.guidance_scale
        if w == 1.0:
            return self.net(x_t, t, y)
        if w == 0.0:
            return self.net(x_t, t, null)
        both = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, null]))
        cond_out, uncond_out = both.chunk(2)
        cond, variance = _prediction_and_variance(cond_out, x_t)
        uncond = _prediction_and_variance(uncond_out, x_t)[0]
        guided = uncond + w * (cond - uncond)  # Ho & Salimans 2022 eq. 6 with (1 + w') = w
        if self.guidance_rescale > 0.0 and guided.ndim > 1:  # a std per sample needs values per sample
            dims = tuple(range(1, guided.ndim))
            # Lin et al. 2023 eq. 15: match the conditional output's standard deviation per sample
            rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
            # Lin et al. 2023 eq. 16: phi rescaled + (1 - phi) guided
            guided = self.guidance_rescale * rescaled + (1.0 - self.guidance_rescale) * guided
        if variance is None:
            return guided
        # a learned variance is not guided: the conditional branch's is kept, as GLIDE's sampler does
        return torch.stack([guided, variance], dim=1) if x_t.ndim == 1 else torch.cat([guided, variance], 1)


def _prediction_and_variance(
    out: torch.Tensor, x_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A network output split into the objective's prediction and a learned variance's values (None when the
    output has x_t's shape); the layout of :meth:`ddpm.diffusion.GaussianDiffusion.split_output`."""
    if out.shape == x_t.shape:
        return out, None
    if x_t.ndim == 1:  # scalar data: [B, 2]
        return out[:, 0], out[:, 1]
    channels = x_t.shape[1]
    return out[:, :channels], out[:, channels:]
