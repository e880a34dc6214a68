"""ddpm.oracle.GaussianOracle against answers computed another way: quadrature, autograd, Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.oracle import GaussianOracle
from ddpm.schedules import make_beta_schedule


def _linear(**kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule("linear", 1000), **kwargs)


@pytest.mark.parametrize("t", [0, 10, 250, 999])
def test_eps_is_the_posterior_mean_of_the_noise_by_quadrature_in_1d(t: int) -> None:
    """x0 ~ N(m, s^2): E[eps | x_t] by integrating over x0 on a grid, not by Gaussian conditioning.

    Bayes: p(x0 | x_t) is proportional to N(x0; m, s^2) N(x_t; sqrt(abar) x0, 1 - abar) (DDPM eq. 4), and
    given x0 the noise is eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar), so E[eps | x_t] is a ratio of two
    1D integrals.
    """
    d = _linear()
    m, s = 0.8, 0.7
    oracle = GaussianOracle(d, torch.tensor([m]), torch.tensor([[s**2]]))
    abar = d.alphas_cumprod.double()[t]
    x_t = torch.linspace(-3, 3, 13, dtype=torch.float64)
    x0 = torch.linspace(m - 12 * s, m + 12 * s, 40_001, dtype=torch.float64)[:, None]  # [G, 1] against [1, N]
    log_w = -0.5 * ((x0 - m) / s) ** 2 - 0.5 * (x_t - abar.sqrt() * x0) ** 2 / (1 - abar)
    w = (log_w - log_w.max(0).values).exp()
    eps_given_x0 = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    expected = torch.trapezoid(w * eps_given_x0, x0[:, 0], dim=0) / torch.trapezoid(w, x0[:, 0], dim=0)
    got = oracle.eps(x_t[:, None].float(), torch.full((13,), t))[:, 0]
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got, expected)


@pytest.mark.parametrize("t", [5, 300, 999])
def test_eps_is_the_scaled_score_of_the_marginal(t: int, gaussian_2d) -> None:
    """Tweedie: eps* = -sqrt(1 - abar) grad log q(x_t), with q(x_t) = oracle.marginal(t), by autograd."""
    mu, sigma = gaussian_2d
    d = _linear()
    oracle = GaussianOracle(d, mu, sigma)
    x_t = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov = oracle.marginal(t)
    x = x_t.clone().requires_grad_(True)
    log_q = torch.distributions.MultivariateNormal(mean[0], cov[0]).log_prob(x).sum()
    (score,) = torch.autograd.grad(log_q, x)
    abar = d.alphas_cumprod.double()[t]
    assert torch.allclose(oracle.eps(x_t, t), -(1 - abar).sqrt() * score, atol=1e-10)


@pytest.mark.parametrize("t", [0, 100, 999])
def test_marginal_is_what_the_forward_process_draws(t: int, gaussian_2d) -> None:
    """oracle.marginal(t) against the moments of diffusion.q_sample applied to draws of N(mu, Sigma)."""
    mu, sigma = gaussian_2d
    d = _linear()
    n = 200_000
    gen = torch.Generator().manual_seed(t)
    x0 = mu + torch.randn(n, 2, generator=gen) @ torch.linalg.cholesky(sigma).T
    x_t = d.q_sample(x0, t, torch.randn(n, 2, generator=gen)).double()
    mean, cov = oracle_marginal = GaussianOracle(d, mu, sigma).marginal(torch.tensor([t]))
    assert mean.shape == (1, 2) and cov.shape == (1, 2, 2), oracle_marginal
    # ~5 standard errors for unit-scale data at n = 200k: 5 / sqrt(n) = 0.011 (mean), 5 sqrt(2 / n) = 0.016
    assert torch.allclose(x_t.mean(0), mean[0], atol=0.012)
    assert torch.allclose(torch.cov(x_t.T), cov[0], atol=0.016)


def test_residual_noise_is_uncorrelated_with_x_t_only_for_the_right_data(gaussian_2d) -> None:
    """The orthogonality principle: eps - E[eps | x_t] has mean 0 and no correlation with x_t (Monte Carlo).

    An oracle for another mean leaves a residual with a non-zero mean, so the check can fail.
    """
    mu, sigma = gaussian_2d
    d = _linear()
    n, t = 100_000, torch.tensor(200)
    gen = torch.Generator().manual_seed(1)
    x0 = mu + torch.randn(n, 2, generator=gen) @ torch.linalg.cholesky(sigma).T
    noise = torch.randn(n, 2, generator=gen)
    x_t = d.q_sample(x0, t, noise)
    tol = 5 / math.sqrt(n)  # the residual has variance <= 1 per coordinate; x_t about 1 too
    for oracle_mu, ok in ((mu, True), (mu + 0.2, False)):
        resid = noise.double() - GaussianOracle(d, oracle_mu, sigma).eps(x_t, t)
        cross = (resid - resid.mean(0)).T @ (x_t.double() - x_t.double().mean(0)) / n
        centred = bool(resid.mean(0).abs().max() < tol) and bool(cross.abs().max() < 3 * tol)
        assert centred is ok, (oracle_mu, resid.mean(0), cross)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_call_is_the_network_output_under_each_objective(objective: str, gaussian_2d) -> None:
    """Read back through the diffusion's own parameterisation, oracle(x_t, t) gives eps* and x0*."""
    mu, sigma = gaussian_2d
    d = _linear(objective=objective)
    oracle = GaussianOracle(d, mu, sigma)
    x_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([10, 10, 500, 500, 999, 999])
    out = oracle(x_t, t)
    assert out.dtype == torch.float32 and out.shape == x_t.shape
    assert torch.allclose(d.predict_eps(x_t, t, out).double(), oracle.eps(x_t, t), atol=1e-4)
    assert torch.allclose(d.predict_x0(x_t, t, out).double(), oracle.x0(x_t, t), atol=1e-3)


def test_data_of_any_shape_is_flattened_per_sample() -> None:
    d = _linear()
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, generator=gen)
    oracle = GaussianOracle(d, torch.randn(4, generator=gen), a @ a.T + torch.eye(4))
    x_t, t = torch.randn(5, 2, 2, generator=gen), torch.tensor([1, 2, 3, 400, 999])
    assert torch.equal(oracle(x_t, t), oracle(x_t.reshape(5, 4), t).reshape(5, 2, 2))
    assert torch.equal(oracle.eps(x_t, 7), oracle.eps(x_t, torch.full((5,), 7)))  # an int t is every sample's
    with pytest.raises(ValueError, match="x_t has 3 values per sample; this oracle's data has 4"):
        oracle(torch.randn(5, 3), t)
    with pytest.raises(ValueError, match=r"sigma has shape \(3, 3\)"):
        GaussianOracle(d, torch.zeros(4), torch.eye(3))
    # a fractional timestep (Heun's noise levels) is read at the diffusion's interpolated abar
    assert torch.allclose(oracle.eps(x_t, torch.full((5,), 7.0)), oracle.eps(x_t, 7), atol=1e-12)
    half = torch.full((5,), 399.5)
    mean, _ = oracle.marginal(half)
    assert torch.allclose(mean[0], d.alphas_cumprod_at(399.5).sqrt() * oracle.mu)
    assert float(d.alphas_cumprod[400]) < float(d.alphas_cumprod_at(399.5)) < float(d.alphas_cumprod[399])
