"""The exact optimal denoiser for Gaussian data: a "network" that needs no training.

For data x0 ~ N(mu, Sigma) everything a denoiser is trained to predict has a closed form, so samplers, losses
and likelihood bounds can be checked against an exact answer, independently of any trained network.

Derivation. The forward process in closed form (Ho et al. 2020, DDPM eq. 4) is

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    eps ~ N(0, I) independent of x0,

a linear map of independent Gaussians, so (x0, eps, x_t) are jointly Gaussian with

    q(x_t) = N(sqrt(abar_t) mu, C_t),    C_t = abar_t Sigma + (1 - abar_t) I,
    Cov(eps, x_t) = sqrt(1 - abar_t) I.

Conditioning a joint Gaussian (Bishop 2006, PRML eq. 2.81: E[a | b] = mu_a + S_ab S_bb^{-1} (b - mu_b)) gives

    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar_t) C_t^{-1} (x_t - sqrt(abar_t) mu),
    x0*(x_t, t)  = E[x0 | x_t]  = (x_t - sqrt(1 - abar_t) eps*(x_t, t)) / sqrt(abar_t).

A conditional mean minimises the expected squared error, so eps* minimises DDPM's L_simple (DDPM eq. 14)
over every function of (x_t, t): it is what a perfectly trained eps-network computes. The x0 and v targets
are linear in (x0, eps), so their optimal predictions are the same linear maps of x0* and eps*
(v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0; Salimans & Ho 2022, sec. 4). Equivalently
eps* = -sqrt(1 - abar_t) grad log q(x_t): Tweedie's formula (Efron 2011, "Tweedie's formula and selection
bias", JASA 106) applied to x_t given sqrt(abar_t) x0.

Plain PyTorch: no Lightning or Hydra import.
"""

from __future__ import annotations

import torch

from ddpm.diffusion import GaussianDiffusion

__all__ = ["GaussianOracle"]


class GaussianOracle:
    """The exact optimal network for x0 ~ N(mu, Sigma) under ``diffusion``'s objective (eps, x0 or v).

    Call it as a model, ``oracle(x_t, t)``, wherever a trained network goes (samplers, ``training_loss``,
    ``variational_bound``). The closed forms are computed in float64; see the module docstring for their
    derivation.

    Args:
        diffusion: the forward process (its ``alphas_cumprod`` and ``objective`` are used).
        mu: the data mean; D values (any shape, flattened).
        sigma: the data covariance, [D, D], symmetric positive semi-definite.

    Data of any shape [B, *S] with prod(S) = D is accepted and flattened to [B, D] per sample.
    """

    def __init__(self, diffusion: GaussianDiffusion, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        mu = torch.as_tensor(mu).double().reshape(-1)
        sigma = torch.as_tensor(sigma).double()
        d = mu.numel()
        if sigma.shape != (d, d):
            raise ValueError(
                f"sigma has shape {tuple(sigma.shape)}; for a mean of {d} values it must be ({d}, {d})"
            )
        self.diffusion = diffusion
        self.mu = mu
        self.sigma = sigma

    @property
    def dim(self) -> int:
        """D, the number of values in one sample."""
        return self.mu.numel()

    def _abar(self, t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
        """abar_t per sample, float64, shape [B]."""
        t = self.diffusion.timesteps_for_batch(t, batch, device)
        return self.diffusion.alphas_cumprod.to(device).double()[t]

    def _moments(self, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, D] and covariance [B, D, D] of q(x_t) for abar_t of shape [B]."""
        abar = abar[:, None, None]
        eye = torch.eye(self.dim, dtype=torch.float64, device=abar.device)
        mean = abar[:, :, 0].sqrt() * self.mu.to(abar.device)  # DDPM eq. 4: E[x_t] = sqrt(abar_t) mu
        cov = abar * self.sigma.to(abar.device) + (1 - abar) * eye  # DDPM eq. 4: Cov[x_t] = C_t
        return mean, cov

    def _eps_and_x0(self, x_t: torch.Tensor, t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps*, x0*) as float64 [B, D]."""
        x = x_t.reshape(x_t.shape[0], -1).double()
        if x.shape[1] != self.dim:
            raise ValueError(f"x_t has {x.shape[1]} values per sample; this oracle's data has {self.dim}")
        abar = self._abar(t, len(x), x.device)
        mean, cov = self._moments(abar)
        abar = abar[:, None]
        # C_t^{-1} (x_t - E[x_t]) by Cholesky: C_t is symmetric positive definite (1 - abar_t > 0)
        sol = torch.cholesky_solve((x - mean).unsqueeze(-1), torch.linalg.cholesky(cov)).squeeze(-1)
        eps = (1 - abar).sqrt() * sol  # PRML eq. 2.81 with Cov(eps, x_t) = sqrt(1 - abar_t) I
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()  # DDPM eq. 4 solved for x0, in expectation (Tweedie)
        return eps, x0

    def marginal(
        self, t: torch.Tensor | int, batch: int = 1, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [B, D] and covariance [B, D, D] of q(x_t), float64 (B = len(t), or ``batch`` for an int t)."""
        return self._moments(self._abar(t, batch, torch.device(device)))

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """eps*(x_t, t) = E[eps | x_t], float64, shaped like ``x_t``."""
        return self._eps_and_x0(x_t, t)[0].reshape(x_t.shape)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x0*(x_t, t) = E[x0 | x_t] (Tweedie's formula), float64, shaped like ``x_t``."""
        return self._eps_and_x0(x_t, t)[1].reshape(x_t.shape)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The network output under ``diffusion.objective`` (eps*, x0* or v*), in ``x_t``'s dtype."""
        eps, x0 = (v.reshape(x_t.shape).to(x_t.dtype) for v in self._eps_and_x0(x_t, t))
        # training_target is linear in (x0, eps), so the optimal target is the target of (x0*, eps*)
        return self.diffusion.training_target(x0, t, eps)
