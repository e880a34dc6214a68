"""Shared fixtures: a Gaussian oracle denoiser that needs no training."""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion


class GaussianOracle:
    """The exact optimal network for x0 ~ N(mu, Sigma), under any objective.

    eps*(x_t, t) = sqrt(1 - abar) (abar Sigma + (1 - abar) I)^{-1} (x_t - sqrt(abar) mu)
    (see shared/reference/ddpm-formulas.md, "Analytic check").
    """

    def __init__(self, diffusion: GaussianDiffusion, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        self.diffusion = diffusion
        self.mu = mu.double()
        self.sigma = sigma.double()

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = self.diffusion.alphas_cumprod.double()[t][:, None, None]
        eye = torch.eye(self.mu.numel(), dtype=torch.float64)
        cov = abar * self.sigma + (1 - abar) * eye
        resid = x_t.double() - abar[:, :, 0].sqrt() * self.mu
        sol = torch.linalg.solve(cov, resid.unsqueeze(-1)).squeeze(-1)
        return (1 - abar[:, :, 0]).sqrt() * sol

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = self.eps(x_t, t)
        abar = self.diffusion.alphas_cumprod.double()[t][:, None]
        x0 = (x_t.double() - (1 - abar).sqrt() * eps) / abar.sqrt()
        return self.diffusion.training_target(x0.float(), t, eps.float())


@pytest.fixture
def gaussian_2d() -> tuple[torch.Tensor, torch.Tensor]:
    """A correlated 2D Gaussian (mu, Sigma)."""
    mu = torch.tensor([1.0, -0.5])
    sigma = torch.tensor([[0.5, 0.3], [0.3, 0.8]])
    return mu, sigma
