"""The variational bound on the negative log-likelihood, in bits per dimension (DDPM Table 2).

Plain PyTorch. For data x0 with D values per sample (DDPM eq. 5, 0-based t as in code)::

    -log p(x0) <= L = L_T + sum_{t=1}^{T-1} L_t + L_0
    L_T = KL(q(x_{T-1} | x0) || N(0, I))                          prior term
    L_t = E_q KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))        between two Gaussians (DDPM eq. 7)
    L_0 = E_q -log p(x0 | x_1)                                    the decoder (t = 0 in code)

and bits/dim = L / (D ln 2). p(x_{t-1} | x_t) is the model's Gaussian with the diffusion's variance (fixed:
``fixed_large`` or ``fixed_small``; or the network's own: ``learned_range`` / ``learned``, improved DDPM
eq. 15), its mean from the network through ``GaussianDiffusion.p_mean_variance`` (so the x0 clipping of
the sampler applies here too).

Decoders:

- ``discretized`` (8-bit images scaled to [-1, 1]): the probability of x0's bin under the Gaussian, as in
  the DDPM code's ``discretized_gaussian_log_likelihood`` (also improved-diffusion). This is a likelihood of
  discrete data, comparable with published bits/dim (DDPM CIFAR-10: <= 3.75). ``bins`` sets the number of
  levels (256 for 8-bit; scikit-learn's digits have 17).
- ``gaussian`` (continuous data such as the toy sets): the Gaussian density itself. Its nats -> bits/dim is
  a bound on the *differential* entropy of a continuous density, on the scale the network sees (it changes
  by log|scale| under rescaling and can be negative); it is not comparable with an image bits/dim.

Each L_t is an expectation over x_t ~ q(x_t | x0); one draw of x_t per (x0, t) gives an unbiased estimate.
``t_samples=None`` sums all T terms (T network calls per sample, as improved-diffusion's ``calc_bpd_loop``);
``t_samples=k`` draws k timesteps uniformly and uses L_T + T * mean_k L_t, also unbiased, with more variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ddpm.diffusion import GaussianDiffusion

__all__ = [
    "VariationalBound",
    "discretized_gaussian_log_likelihood",
    "gaussian_log_likelihood",
    "infer_bins",
    "normal_kl",
    "prior_kl",
    "variational_bound",
    "vb_terms_nats",
]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DECODERS = ("discretized", "gaussian")
LN2 = math.log(2.0)


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


def _sum_dims(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], -1).sum(1)


def prior_kl(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_{T-1} | x0) || N(0, I)) per sample [B], nats."""
    t = torch.full((x0.shape[0],), diffusion.T - 1, dtype=torch.long, device=x0.device)
    abar = diffusion.extract(diffusion.alphas_cumprod, t, x0).double()
    # DDPM eq. 4: q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I); DDPM eq. 5's L_T against N(0, I).
    mean = abar.sqrt() * x0.double()
    log_var = torch.log1p(-abar).expand_as(mean)
    zero = torch.zeros_like(mean)
    return _sum_dims(normal_kl(mean, log_var, zero, zero))


def vb_terms_nats(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
    decoder: str = "discretized",
    bins: int = 256,
    clip_denoised: bool | None = None,
) -> torch.Tensor:
    """One draw of L_t per sample [B] in nats: the KL term where t > 0, the decoder NLL where t == 0.

    The model's variance is the diffusion's: fixed, or the network's own with a learned variance. This is the
    one implementation of the bound: ``ddpm-eval --bpd`` sums it, and the ``vlb`` and ``hybrid`` training
    losses (:meth:`GaussianDiffusion.vlb_estimate_bpd`) train on it, with gradients. ``clip_denoised``
    overrides the diffusion's x0 clipping (None keeps it; training uses False, as improved-diffusion).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} is unknown; choose one of {DECODERS}")
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = diffusion.q_sample(x0, t, noise)  # DDPM eq. 4
    out = diffusion.p_mean_variance(model(x_t, t).float(), x_t, t, clip_denoised=clip_denoised)
    # DDPM eqs. 6-7: the true posterior q(x_{t-1} | x_t, x0); its log-variance is exact for t >= 1.
    true_mean, _, true_log_var = diffusion.q_posterior(x0, x_t, t)
    model_mean, model_log_var = out["mean"].double(), out["log_variance"].double().expand_as(x_t)
    # DDPM eq. 5, L_{t-1}: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)).
    kl = _sum_dims(normal_kl(true_mean.double(), true_log_var.double(), model_mean, model_log_var))
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
    return kl.index_put((first,), -_sum_dims(log_px))


@dataclass
class VariationalBound:
    """The bound's total and its parts, each the mean over the evaluated samples, in bits/dim.

    ``bits_per_dim = prior + diffusion + decoder``; ``std_error`` is the standard error of the mean over
    samples (data and Monte-Carlo variance together). ``terms`` holds the mean L_t per timestep t = 0..T-1
    (t = 0 is the decoder) when all T terms were computed.
    """

    bits_per_dim: float
    std_error: float
    prior: float
    diffusion: float
    decoder: float
    n: int
    dims: int
    decoder_kind: str
    bins: int | None
    t_samples: int | None
    T: int
    terms: list[float] | None
    #: the bound of each sample [N] in bits/dim (not written to JSON)
    per_sample: torch.Tensor | None = field(default=None, repr=False)

    @property
    def nats(self) -> float:
        """The bound per sample in nats (bits_per_dim * D * ln 2)."""
        return self.bits_per_dim * self.dims * LN2

    def as_dict(self, with_terms: bool = True) -> dict[str, Any]:
        """Plain-JSON form."""
        out = {k: v for k, v in self.__dict__.items() if k != "per_sample" and (with_terms or k != "terms")}
        out["nats"] = self.nats
        return out

    def headline(self) -> str:
        """One line a person reads."""
        how = "all T terms" if self.t_samples is None else f"{self.t_samples} sampled t per sample"
        kind = (
            f"discretised decoder, {self.bins} levels"
            if self.decoder_kind == "discretized"
            else "continuous Gaussian decoder: bits/dim of a density"
        )
        return (
            f"NLL <= {self.bits_per_dim:.4f} ± {self.std_error:.4f} bits/dim ({kind}; "
            f"prior {self.prior:.4f}, diffusion {self.diffusion:.4f}, decoder {self.decoder:.4f}; "
            f"n={self.n}, T={self.T}, {how})"
        )


@torch.no_grad()
def variational_bound(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: torch.Tensor,
    decoder: str = "discretized",
    bins: int = 256,
    t_samples: int | None = None,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> VariationalBound:
    """The variational bound on -log p(x0) of held-out data, in bits/dim (see the module docstring).

    Args:
        diffusion: the process the model was trained with.
        model: ``model(x_t, t) -> output`` under ``diffusion.objective`` (e.g. an EMA network).
        x0: held-out data [N, ...] on the network's scale (images in [-1, 1] for ``discretized``).
        decoder: ``discretized`` (images) or ``gaussian`` (continuous data).
        bins: levels of the discrete data (``discretized`` only).
        t_samples: None for all T terms; k for an unbiased estimate from k uniform timesteps per sample.
        batch_size: samples per network call (all at once when None).
        generator: RNG for x_t (and t when sampled), on x0's device.
        progress: show a progress bar over the timesteps.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r} is unknown; choose one of {DECODERS}")
    if t_samples is not None and t_samples < 1:
        raise ValueError(f"t_samples={t_samples!r} must be None (all T terms) or >= 1")
    if x0.shape[0] < 1:
        raise ValueError("x0 is empty")
    T = diffusion.T
    batch_size = batch_size or x0.shape[0]
    totals, priors, decoders, diffusions = [], [], [], []
    term_sums = torch.zeros(T, dtype=torch.float64)
    batches = list(x0.split(batch_size))
    bar = tqdm(
        total=len(batches) * (T if t_samples is None else t_samples), disable=not progress, leave=False
    )
    for xb in batches:
        b, dev = xb.shape[0], xb.device
        prior = prior_kl(diffusion, xb)
        if t_samples is None:
            terms = torch.zeros(b, T, dtype=torch.float64, device=dev)
            for t in range(T):
                tb = torch.full((b,), t, dtype=torch.long, device=dev)
                noise = torch.randn(xb.shape, generator=generator, device=dev, dtype=xb.dtype)
                terms[:, t] = vb_terms_nats(diffusion, model, xb, tb, noise, decoder, bins)
                bar.update()
            dec, diff = terms[:, 0], terms[:, 1:].sum(1)
            term_sums += terms.sum(0).cpu()
        else:
            ts = torch.randint(0, T, (b, t_samples), generator=generator, device=dev)
            dec = torch.zeros(b, dtype=torch.float64, device=dev)
            diff = torch.zeros_like(dec)
            for j in range(t_samples):
                noise = torch.randn(xb.shape, generator=generator, device=dev, dtype=xb.dtype)
                term = vb_terms_nats(diffusion, model, xb, ts[:, j], noise, decoder, bins)
                # Uniform t: T * E_t[L_t] = sum_t L_t, split by whether t is the decoder step.
                dec += torch.where(ts[:, j] == 0, term, 0.0) * T / t_samples
                diff += torch.where(ts[:, j] > 0, term, 0.0) * T / t_samples
                bar.update()
        priors.append(prior.cpu())
        decoders.append(dec.cpu())
        diffusions.append(diff.cpu())
        totals.append((prior + dec + diff).cpu())
    bar.close()
    n = x0.shape[0]
    dims = int(x0[0].numel())
    scale = 1.0 / (dims * LN2)  # nats per sample -> bits per dimension
    total = torch.cat(totals) * scale
    std_error = float(total.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return VariationalBound(
        bits_per_dim=float(total.mean()),
        std_error=std_error,
        prior=float(torch.cat(priors).mean() * scale),
        diffusion=float(torch.cat(diffusions).mean() * scale),
        decoder=float(torch.cat(decoders).mean() * scale),
        n=n,
        dims=dims,
        decoder_kind=decoder,
        bins=bins if decoder == "discretized" else None,
        t_samples=t_samples,
        T=T,
        terms=(term_sums / n * scale).tolist() if t_samples is None else None,
        per_sample=total,
    )
