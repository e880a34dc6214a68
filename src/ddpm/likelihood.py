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
from ddpm.losses import DECODERS, LN2, normal_kl, sum_dims, vb_terms_nats

__all__ = ["VariationalBound", "prior_kl", "variational_bound"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def prior_kl(diffusion: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """L_T = KL(q(x_{T-1} | x0) || N(0, I)) per sample [B], nats."""
    t = torch.full((x0.shape[0],), diffusion.T - 1, dtype=torch.long, device=x0.device)
    abar = diffusion.extract(diffusion.alphas_cumprod, t, x0).double()
    # DDPM eq. 4: q(x_t | x0) = N(sqrt(abar) x0, (1 - abar) I); DDPM eq. 5's L_T against N(0, I).
    mean = abar.sqrt() * x0.double()
    log_var = torch.log1p(-abar).expand_as(mean)
    zero = torch.zeros_like(mean)
    return sum_dims(normal_kl(mean, log_var, zero, zero))


def _term(
    diffusion: GaussianDiffusion,
    model: Model,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    decoder: str,
    bins: int,
) -> torch.Tensor:
    """One draw of L_t per sample [B] in nats at the diffusion's own x0 clipping."""
    x_t = diffusion.q_sample(x0, t, noise)  # DDPM eq. 4
    return vb_terms_nats(diffusion, model(x_t, t), x0, x_t, t, decoder, bins)


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
                terms[:, t] = _term(diffusion, model, xb, tb, noise, decoder, bins)
                bar.update()
            dec, diff = terms[:, 0], terms[:, 1:].sum(1)
            term_sums += terms.sum(0).cpu()
        else:
            ts = torch.randint(0, T, (b, t_samples), generator=generator, device=dev)
            dec = torch.zeros(b, dtype=torch.float64, device=dev)
            diff = torch.zeros_like(dec)
            for j in range(t_samples):
                noise = torch.randn(xb.shape, generator=generator, device=dev, dtype=xb.dtype)
                term = _term(diffusion, model, xb, ts[:, j], noise, decoder, bins)
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
