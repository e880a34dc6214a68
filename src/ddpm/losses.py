"""The training losses, and the Gaussian terms of the variational bound they and ``ddpm-eval --bpd`` share.

A loss is a small callable, ``loss(net, x0, t, noise, y=None) -> per-sample loss [B]`` (as EDM's
``training/loss.py`` and k-diffusion's ``Denoiser.loss``): it forms x_t once (the process's closed form),
calls the network once, and reads the output through the diffusion's parameterisation. The timesteps come
from :mod:`ddpm.timestep_sampling`, which also weights the result; the noise from :meth:`Loss.noise`.

- :class:`SimpleLoss`: the distance of the output to the parameterisation's target: L_simple (DDPM eq. 14)
  for ``distance=mse``, with an optional min-SNR-gamma weight (Hang et al. 2023).
- :class:`VLBLoss`: the variational bound's terms alone, T * L_t in bits/dim (improved DDPM sec. 3.1).
- :class:`HybridLoss`: L_simple + lambda L_vlb with the mean's gradient stopped in L_vlb, which then trains
  only the learned variance (improved DDPM sec. 3.1).

Beside them, the Gaussian math of the bound (improved-diffusion's ``losses.py``): :func:`normal_kl`, the
decoders' log-likelihoods, and :func:`vb_terms_nats`, the one implementation of L_t that the ``vlb`` and
``hybrid`` losses train on and :func:`ddpm.likelihood.variational_bound` sums.

Plain PyTorch (no Lightning, no Hydra).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ddpm.diffusion import GaussianDiffusion
from ddpm.edm import EDMProcess
from ddpm.flow import COUPLINGS, ot_pairing
from ddpm.process import Process, broadcast

__all__ = [
    "DECODERS",
    "LN2",
    "EDMLoss",
    "HybridLoss",
    "Loss",
    "SimpleLoss",
    "VLBLoss",
    "check_drop_prob",
    "default_loss",
    "discretized_gaussian_log_likelihood",
    "drop_labels",
    "gaussian_log_likelihood",
    "infer_bins",
    "normal_kl",
    "sum_dims",
    "vb_terms_nats",
]

DECODERS = ("discretized", "gaussian")
LN2 = math.log(2.0)
DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
}
WEIGHTINGS = ("none", "min_snr")


# ----------------------------------------------------------------------------- the bound's Gaussian terms
def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    # Closed-form KL between Gaussians (DDPM code's normal_kl; used in DDPM eq. 5's L_T and L_{t-1}).
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).square() * torch.exp(-logvar2)
    )


def _log_normal_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, without cancellation in either tail."""
    flip = a > 0  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): evaluate in the lower tail
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bins: int = 256
) -> torch.Tensor:
    """Elementwise log-probability of x's bin under N(mean, e^(2 log_scale)), for data on ``bins`` levels
    evenly spaced in [-1, 1] (x = 2 k / (bins - 1) - 1).

    DDPM's decoder (sec. 3.3, eq. 13): the bin of half-width 1 / (bins - 1) around x, with the edge bins
    extended to -inf and +inf. Unlike the DDPM / improved-diffusion code this uses the exact normal CDF
    (``log_ndtr``) rather than a tanh approximation, and no 1e-12 floor on the probability (a floor would
    make the figure no longer a bound); the values agree where both are accurate.
    """
    if bins < 2:
        raise ValueError(f"bins={bins!r} must be >= 2")
    x, mean, log_scale = (v.double() for v in (x, mean, log_scale))
    half = 1.0 / (bins - 1)
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + half)
    lower = inv_std * (x - mean - half)
    edge = 0.5 * half  # x within half a bin of -1 or 1 is an edge level
    # DDPM eq. 13: the first and last bins integrate to -inf and +inf.
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    log_mid = _log_normal_mass(lower, upper)
    return torch.where(
        x < -1 + edge, log_cdf_upper, torch.where(x > 1 - edge, log_one_minus_cdf_lower, log_mid)
    )


def gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, e^log_var), a density (continuous data)."""
    x, mean, log_var = (v.double() for v in (x, mean, log_var))
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean).square() * torch.exp(-log_var))


def infer_bins(x: torch.Tensor, candidates: tuple[int, ...] = (256, 17), tol: float = 1e-3) -> int | None:
    """The number of levels of data in [-1, 1] on an even grid (8-bit: 256; digits: 17), or None."""
    if x.numel() == 0 or float(x.min()) < -1 - tol or float(x.max()) > 1 + tol:
        return None
    for bins in candidates:
        k = (x.double() + 1) / 2 * (bins - 1)
        if float((k - k.round()).abs().max()) < tol * (bins - 1):
            return bins
    return None


def sum_dims(v: torch.Tensor) -> torch.Tensor:
    """The sum over every axis but the batch axis, per sample [B]."""
    return v.reshape(v.shape[0], -1).sum(1)


def vb_terms_nats(
    diffusion: GaussianDiffusion,
    output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    decoder: str = "discretized",
    bins: int = 256,
    clip_denoised: bool | None = None,
) -> torch.Tensor:
    """One draw of L_t per sample [B] in nats: the KL term where t > 0, the decoder NLL where t == 0.

    ``output`` is the network's output at ``x_t`` (drawn from q(x_t | x0)), so x_t and the network call are
    the caller's, made once. The model's variance is the diffusion's: fixed, or the network's own with a
    learned variance. This is the one implementation of the bound: ``ddpm-eval --bpd`` sums it
    (:func:`ddpm.likelihood.variational_bound`), and the ``vlb`` and ``hybrid`` training losses train on it,
    with gradients. ``clip_denoised`` overrides the diffusion's x0 clipping (None keeps it; training uses
    False, as improved-diffusion).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} is unknown; choose one of {DECODERS}")
    out = diffusion.p_mean_variance(output.float(), x_t, t, clip_denoised=clip_denoised)
    # DDPM eqs. 6-7: the true posterior q(x_{t-1} | x_t, x0); its log-variance is exact for t >= 1.
    true_mean, _, true_log_var = diffusion.q_posterior(x0, x_t, t)
    model_mean, model_log_var = out["mean"].double(), out["log_variance"].double().expand_as(x_t)
    # DDPM eq. 5, L_{t-1}: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)).
    kl = sum_dims(normal_kl(true_mean.double(), true_log_var.double(), model_mean, model_log_var))
    # DDPM eq. 5, L_0 = -log p(x0 | x_1); eq. 13 for discrete data. Evaluated on the t == 0 rows only, so
    # a far-off tail elsewhere cannot put a NaN into the gradient of the rows that use the KL.
    first = (t.to(kl.device) == 0).nonzero().squeeze(1)
    if first.numel() == 0:
        return kl
    x0_first, mean_first, log_var_first = x0[first], model_mean[first], model_log_var[first]
    if decoder == "discretized":
        log_px = discretized_gaussian_log_likelihood(x0_first, mean_first, 0.5 * log_var_first, bins)
    else:
        log_px = gaussian_log_likelihood(x0_first, mean_first, log_var_first)
    return kl.index_put((first,), -sum_dims(log_px))


# ----------------------------------------------------------------------------- the training inputs
def check_drop_prob(p: object) -> float:
    """``cond_drop_prob`` as a float in [0, 1), or a one-line ValueError naming the value."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) < 1.0:
        raise ValueError(
            f"cond_drop_prob={p!r} is outside [0, 1); it is the probability of training a sample without its "
            "label (0.1 in Ho & Salimans 2022)"
        )
    return float(p)


def drop_labels(y: torch.Tensor, p: float, null_label: int) -> torch.Tensor:
    """``y`` with each label replaced by the null label with probability ``p`` (one draw per sample)."""
    if not p:
        return y
    drop = torch.rand(y.shape[0], device=y.device) < p  # Ho & Salimans 2022, Alg. 1: c <- null with p_uncond
    return torch.where(drop, torch.full_like(y, null_label), y)


Network = Callable[..., torch.Tensor]


def require_chain_loss(name: str, diffusion: Process) -> None:
    """A one-line ValueError when a loss written for DDPM's chain gets a continuous process."""
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(
            f"{name} is written for DDPM's chain of T timesteps; {type(diffusion).__name__} is "
            "continuous: use loss=simple (or loss=edm with diffusion=edm)"
        )


class Loss:
    """The interface: ``loss(net, x0, t, noise, y=None)`` -> per-sample losses [B] of uniform t.

    Args:
        diffusion: the process and parameterisation the network is trained under.
        offset_noise: the std of a per-sample, per-channel constant added to the training noise (offset
            noise, Guttenberg 2023), images only; 0 turns it off.
        cond_drop_prob: label dropout for class-conditional training (Ho & Salimans 2022, sec. 3.2): the
            probability that a sample's label is replaced by the null label, so one network learns both
            p(x | y) and p(x) for classifier-free guidance. Used only when the loss gets labels.
        coupling: how each batch's noise is paired with its data: ``independent`` (drawn apart), or
            ``minibatch_ot`` (re-paired by the exact optimal-transport plan within the batch, Tong et al.
            2023; the labels stay with their data).
    """

    #: whether the per-sample losses are the bound's terms L_t (what ``loss_second_moment`` samples t by)
    bound_terms: bool = False

    diffusion: GaussianDiffusion  # the losses of a chain; EDMLoss narrows its own to a Process

    def __init__(
        self,
        diffusion: Process,
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        if isinstance(offset_noise, bool) or not (
            isinstance(offset_noise, int | float) and offset_noise >= 0
        ):
            raise ValueError(f"offset_noise={offset_noise!r} is invalid; it must be a number >= 0 (0: off)")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling={coupling!r} is unknown; choose one of {', '.join(COUPLINGS)}")
        self.diffusion = diffusion  # type: ignore[assignment]  # a chain's losses read its tables; EDM's none
        self.offset_noise = float(offset_noise)
        self.cond_drop_prob = check_drop_prob(cond_drop_prob)
        self.coupling = coupling

    def check_data(self, data_shape: Sequence[int]) -> None:
        """A one-line ValueError when these options do not fit data of ``data_shape`` (batch first):
        ``offset_noise`` needs a channel axis and positions (images)."""
        if self.offset_noise and len(data_shape) < 3:
            raise ValueError(
                f"offset_noise={self.offset_noise} needs data with channels and positions (images "
                f"[B, C, H, W]), got samples of shape {tuple(data_shape)[1:]}; use offset_noise=0"
            )

    def noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The training noise: N(0, I) of x0's shape, plus ``offset_noise`` times a per-sample, per-channel
        constant (offset noise, Guttenberg 2023: lets a model change an image's mean brightness), re-paired
        with the batch's data by :func:`ddpm.flow.ot_pairing` under ``coupling=minibatch_ot``."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if self.offset_noise:
            self.check_data(x0.shape)
            shape = (*x0.shape[:2], *([1] * (x0.ndim - 2)))
            offset = torch.randn(shape, generator=generator, device=x0.device, dtype=x0.dtype)
            noise = noise + self.offset_noise * offset  # offset noise: one constant per (sample, channel)
        if self.coupling == "minibatch_ot":
            noise = noise[
                ot_pairing(x0, noise)
            ]  # Tong et al. 2023, Algorithm 1: (x0, n) ~ the batch's OT plan
        return noise

    def __call__(
        self,
        net: Network,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        cond_drop_prob: float | None = None,
        num_classes: int | None = None,
    ) -> torch.Tensor:
        """The per-sample losses [B] (float32, even when the network ran under autocast).

        Args:
            net: ``net(x_t, t) -> output`` of the diffusion's output shape; with ``y``, a class-conditional
                network ``net(x_t, t, y)`` whose ``num_classes`` is the null label.
            x0: clean data [B, ...].
            t: per-sample timesteps [B] (:mod:`ddpm.timestep_sampling`).
            noise: the noise of x0's shape (:meth:`noise`).
            y: class labels [B] (None: the unconditional loss, and no random draw at all).
            cond_drop_prob: label dropout for this call (None: the loss's own; 0 for a validation loss that
                is conditional throughout).
            num_classes: the null label (None: ``net.num_classes``).
        """
        x_t = self.diffusion.q_sample(x0, t, noise)  # the process's closed form, once per step
        labels = self.training_labels(net, y, cond_drop_prob, num_classes)
        output = net(x_t, t) if labels is None else net(x_t, t, labels)
        self.diffusion.check_output(tuple(output.shape), tuple(x0.shape))
        return self.from_output(output.float(), x0, x_t, t, noise)

    def training_labels(
        self, net: Network, y: torch.Tensor | None, cond_drop_prob: float | None, num_classes: int | None
    ) -> torch.Tensor | None:
        """The labels the network is trained on: ``y`` with label dropout (None: unconditional)."""
        if y is None:
            return None
        num_classes = getattr(net, "num_classes", 0) if num_classes is None else num_classes
        if not num_classes:
            raise ValueError("the loss got labels y but the network has no num_classes (unconditional)")
        p = self.cond_drop_prob if cond_drop_prob is None else check_drop_prob(cond_drop_prob)
        return drop_labels(y, p, num_classes)

    def from_output(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """The per-sample losses [B] from the network's output at x_t = q_sample(x0, t, noise)."""
        raise NotImplementedError

    def prepare(self, step: int, net: torch.nn.Module) -> None:  # most losses keep no state
        """Called before optimizer step ``step`` (and before a validation at it) with the trained network: a
        loss with state of its own moves it on here (:mod:`ddpm.distillation`: a round's teacher, the
        target network)."""

    def progress(self) -> dict[str, float]:
        """Values the training step logs beside the loss (none here)."""
        return {}

    def state_dict(self) -> dict[str, object]:
        """The state a resumed run needs (tensors and plain values); empty for a loss without state."""
        return {}

    def load_state_dict(self, state: dict[str, object], net: torch.nn.Module) -> None:  # no state: nothing
        """Restore :meth:`state_dict` (``net``: the trained network, whose copies hold a loss's own)."""


class SimpleLoss(Loss):
    """The distance of the network's output to its parameterisation's target: L_simple (DDPM eq. 14) for
    eps and ``mse``.

    Args:
        distance: ``mse``, ``l1`` or ``huber`` (per element, averaged over each sample).
        weighting: ``none`` or ``min_snr`` (Hang et al. 2023) with ``min_snr_gamma``.
        min_snr_gamma: the gamma of min-SNR weighting.
        offset_noise: see :class:`Loss`.
        cond_drop_prob: see :class:`Loss`.
        coupling: see :class:`Loss`.
    """

    def __init__(
        self,
        diffusion: Process,
        distance: str = "mse",
        weighting: str = "none",
        min_snr_gamma: float = 5.0,
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        super().__init__(diffusion, offset_noise, cond_drop_prob, coupling)
        if distance not in DISTANCES:
            raise ValueError(
                f"distance={distance!r} is unknown; choose one of {', '.join(map(repr, DISTANCES))}"
            )
        if weighting not in WEIGHTINGS:
            raise ValueError(
                f"weighting={weighting!r} is unknown; choose one of {', '.join(map(repr, WEIGHTINGS))}"
            )
        if (
            isinstance(min_snr_gamma, bool)
            or not isinstance(min_snr_gamma, int | float)
            or min_snr_gamma <= 0
        ):
            raise ValueError(f"min_snr_gamma={min_snr_gamma!r} must be > 0")
        self.distance = distance
        self.weighting = weighting
        self.min_snr_gamma = float(min_snr_gamma)

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weights [B] of ``weighting`` (1 for ``none``)."""
        if self.weighting == "none":
            return torch.ones(t.shape[0], device=t.device)
        return self.diffusion.parameterization.min_snr_weight(self.diffusion.snr(t), self.min_snr_gamma)

    def from_output(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """mean over each sample of distance(prediction, target), times the weight."""
        d = self.diffusion
        prediction = d.prediction(output, x_t)  # a learned variance's channels are not the mean's target
        alpha, sigma = broadcast(d.alpha(t), x0), broadcast(d.sigma(t), x0)
        target = d.parameterization.target(x0, noise, alpha, sigma).float()
        per_elem = DISTANCES[self.distance](prediction, target, reduction="none")
        per_sample = per_elem.reshape(per_elem.shape[0], -1).mean(dim=1)
        if self.weighting == "none":
            return per_sample
        return per_sample * self.weights(t).to(per_sample.device)

    def __repr__(self) -> str:
        coupling = "" if self.coupling == "independent" else f", coupling={self.coupling}"
        return f"SimpleLoss(distance={self.distance}, weighting={self.weighting}{coupling})"


class _BoundEstimate:
    """T * L_t per sample in bits/dim from an output already computed at x_t: the one-draw estimate of the
    bound's diffusion and decoder terms (the prior, which has no parameters, left out), without clipping x0
    (as improved-diffusion trains). With ``decoder=auto`` the L_0 decoder is settled on the first batch:
    discretised with the levels :func:`infer_bins` finds, else Gaussian (as ``ddpm-eval --bpd`` decides)."""

    def __init__(self, decoder: str) -> None:
        if decoder not in ("auto", *DECODERS):
            raise ValueError(f"decoder={decoder!r} is unknown; choose 'auto', 'discretized' or 'gaussian'")
        self.decoder = decoder
        #: the decoder and levels ``auto`` settled on
        self.found: tuple[str, int] | None = None if decoder == "auto" else (decoder, 256)

    def __call__(
        self,
        diffusion: GaussianDiffusion,
        output: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        stop_mean_gradient: bool = False,
    ) -> torch.Tensor:
        if self.found is None:
            bins = infer_bins(x0.detach())
            self.found = ("discretized", bins) if bins else ("gaussian", 256)
        if stop_mean_gradient:  # improved-diffusion's frozen_out: the mean part detached
            prediction, var_values = diffusion.split_output(output, x_t)
            if var_values is None:
                output = output.detach()
            elif x_t.ndim == 1:
                output = torch.stack([prediction.detach(), var_values], dim=1)
            else:
                output = torch.cat([prediction.detach(), var_values], dim=1)
        decoder, bins = self.found
        nats = vb_terms_nats(diffusion, output, x0, x_t, t, decoder, bins, clip_denoised=False)
        # improved DDPM sec. 3.1: L_vlb = L_0 + ... + L_T, estimated by T L_t for uniform t (in bits/dim,
        # improved-diffusion's RESCALED_KL); the importance weights correct for other p_t
        return (nats / (x0[0].numel() * LN2) * diffusion.num_timesteps).float()


class VLBLoss(Loss):
    """The variational bound's terms alone: T * L_t in bits/dim (improved DDPM sec. 3.1, L_vlb), whose
    per-t values the ``loss_second_moment`` timestep sampler learns from.

    Args:
        decoder: L_0's decoder: ``discretized`` (images), ``gaussian``, or ``auto`` (see :class:`HybridLoss`).
        offset_noise: see :class:`Loss`.
        cond_drop_prob: see :class:`Loss`.
        coupling: see :class:`Loss`.
    """

    bound_terms = True

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        decoder: str = "auto",
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        require_chain_loss(type(self).__name__, diffusion)
        super().__init__(diffusion, offset_noise, cond_drop_prob, coupling)
        self.bound = _BoundEstimate(decoder)

    def from_output(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """T * L_t in bits/dim."""
        return self.bound(self.diffusion, output, x0, x_t, t)

    def __repr__(self) -> str:
        return f"VLBLoss(decoder={self.bound.decoder})"


class HybridLoss(SimpleLoss):
    """L_hybrid = L_simple + ``vlb_weight`` L_vlb, the mean's gradient stopped in L_vlb, so that L_vlb trains
    only the learned variance (improved DDPM sec. 3.1); needs ``variance=learned_range`` or ``learned``.

    Args:
        vlb_weight: lambda (improved DDPM: 0.001).
        decoder: L_0's decoder in L_vlb: ``discretized`` (images), ``gaussian``, or ``auto``: discretised with
            the levels :func:`infer_bins` finds in the first training batch, else Gaussian.
        weighting: see :class:`SimpleLoss` (the distance is mse).
        min_snr_gamma: see :class:`SimpleLoss`.
        offset_noise: see :class:`Loss`.
        cond_drop_prob: see :class:`Loss`.
        coupling: see :class:`Loss`.
    """

    bound_terms = True

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        vlb_weight: float = 1e-3,
        decoder: str = "auto",
        weighting: str = "none",
        min_snr_gamma: float = 5.0,
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        require_chain_loss(type(self).__name__, diffusion)
        super().__init__(diffusion, "mse", weighting, min_snr_gamma, offset_noise, cond_drop_prob, coupling)
        if not diffusion.learns_variance:
            raise ValueError(
                f"loss=hybrid with diffusion.variance={diffusion.variance.value}: its L_vlb term trains only "
                "the variance (the mean's gradient is stopped there); use variance=learned_range or learned, "
                "or loss=vlb"
            )
        if isinstance(vlb_weight, bool) or not (isinstance(vlb_weight, int | float) and vlb_weight > 0):
            raise ValueError(f"vlb_weight={vlb_weight!r} is invalid; it must be a number > 0")
        self.vlb_weight = float(vlb_weight)
        self.bound = _BoundEstimate(decoder)

    def from_output(
        self, output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """L_simple + lambda T L_t (bits/dim)."""
        simple = super().from_output(output, x0, x_t, t, noise)
        # improved DDPM sec. 3.1: L_hybrid = L_simple + lambda L_vlb, the mean's gradient stopped in L_vlb
        return simple + self.vlb_weight * self.bound(
            self.diffusion, output, x0, x_t, t, stop_mean_gradient=True
        )

    def __repr__(self) -> str:
        return (
            f"HybridLoss(vlb_weight={self.vlb_weight:g}, decoder={self.bound.decoder}, "
            f"weighting={self.weighting})"
        )


class EDMLoss(Loss):
    """EDM's loss (Karras et al. 2022, eq. 2 and table 1): lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2
    with lambda = 1 / c_out^2, i.e. the mean squared distance of the preconditioned network's raw output F
    to its effective target (:meth:`ddpm.edm.EDMDenoiser.loss`). ``t`` is the noise level sigma
    (``timestep_sampler=log_normal``); the network is an :class:`~ddpm.edm.EDMDenoiser` (``diffusion=edm``
    wraps the model in one).

    Args:
        diffusion: the :class:`~ddpm.edm.EDMProcess` (continuous in sigma).
        offset_noise: see :class:`Loss`.
        cond_drop_prob: see :class:`Loss`.
        coupling: see :class:`Loss`.
    """

    def __init__(
        self,
        diffusion: Process,
        offset_noise: float = 0.0,
        cond_drop_prob: float = 0.1,
        coupling: str = "independent",
    ) -> None:
        if not isinstance(diffusion, EDMProcess):
            raise ValueError(
                "loss=edm trains EDM's preconditioned denoiser at its noise levels; "
                f"{type(diffusion).__name__} is not EDM's process: use diffusion=edm (or loss=simple on it)"
            )
        super().__init__(diffusion, offset_noise, cond_drop_prob, coupling)

    def __call__(
        self,
        net: Network,
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        cond_drop_prob: float | None = None,
        num_classes: int | None = None,
    ) -> torch.Tensor:
        """The per-sample losses [B] at noise levels ``t`` [B] (:class:`Loss` for the arguments)."""
        edm_loss = getattr(net, "loss", None)  # a compiled denoiser forwards it to the plain module
        if not callable(edm_loss):
            raise ValueError(
                f"loss=edm needs the network wrapped in EDM's preconditioning (ddpm.edm.EDMDenoiser), got "
                f"{type(net).__name__}: diffusion=edm wraps it"
            )
        labels = self.training_labels(net, y, cond_drop_prob, num_classes)
        return edm_loss(x0, t, noise, labels).float()

    def __repr__(self) -> str:
        return "EDMLoss()"


def default_loss(process: Process) -> Loss:
    """The loss of a config without a ``loss`` node: EDM's on EDM's process, the distance to the
    parameterisation's target on any other (L_simple on DDPM's chain, the velocity on the flow)."""
    if isinstance(process, EDMProcess):
        return EDMLoss(process)
    return SimpleLoss(process)
