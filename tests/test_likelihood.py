"""The variational bound (ddpm.likelihood) against closed forms, with the Gaussian oracle as the model."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import prior_kl, variational_bound
from ddpm.losses import discretized_gaussian_log_likelihood, gaussian_log_likelihood, infer_bins, normal_kl
from ddpm.oracle import GaussianOracle
from ddpm.schedules import make_beta_schedule

BITS = 1.0 / math.log(2.0)


def expected_bound_nats(diffusion: GaussianDiffusion, mu: torch.Tensor, sigma: torch.Tensor) -> float:
    """E_x0[L] in nats for x0 ~ N(mu, Sigma) when the model mean uses the exact E[x0 | x_t].

    Then mu_true - mu_model = c1_t (x0 - E[x0 | x_t]), so each KL term's expectation is
    c1_t^2 tr Cov(x0 | x_t) / (2 sigma_t^2) plus the variance mismatch, all in closed form.
    """
    mu, sigma = mu.double(), sigma.double()
    d = mu.numel()
    eye = torch.eye(d, dtype=torch.float64)
    abar = diffusion.alphas_cumprod.double()
    t_all = torch.arange(diffusion.T)
    _, log_var = diffusion.reverse_variance(t_all, torch.zeros(diffusion.T, 1))
    var = log_var.double().reshape(-1).exp()
    post_var = diffusion.posterior_variance.double()
    c1 = diffusion.posterior_mean_coef1.double()

    def cond_cov_trace(a: torch.Tensor) -> float:  # tr Cov(x0 | x_t) by Gaussian conditioning
        return float(torch.trace(sigma - a * sigma @ torch.linalg.solve(a * sigma + (1 - a) * eye, sigma)))

    a_T = abar[-1]
    second_moment = float((mu**2).sum() + torch.trace(sigma))
    total = 0.5 * float((1 - a_T) * d + a_T * second_moment - d - d * torch.log1p(-a_T))
    total += 0.5 * (d * math.log(2 * math.pi * var[0]) + cond_cov_trace(abar[0]) / var[0])
    for t in range(1, diffusion.T):
        r = post_var[t] / var[t]
        total += float(c1[t] ** 2 * cond_cov_trace(abar[t]) / (2 * var[t]) + 0.5 * d * (r - 1 - torch.log(r)))
    return total


def gaussian_data(mu: torch.Tensor, sigma: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return mu + torch.randn(n, mu.numel(), generator=gen) @ torch.linalg.cholesky(sigma).T


@pytest.mark.parametrize(
    ("variance", "objective", "max_gap"), [("fixed_large", "eps", 0.06), ("fixed_small", "v", 3.0)]
)
def test_bound_with_the_oracle_is_above_the_exact_nll_and_close(
    gaussian_2d, variance: str, objective: str, max_gap: float
) -> None:
    """The bound is never below -log p(x) and lies at its closed-form gap above it.

    The oracle's mean is exact, but p(x_{t-1} | x_t) has a fixed isotropic variance while the true reverse
    kernel of Gaussian data is anisotropic, and the chain has finitely many steps, so the bound is not
    tight. For this chain (T = 100, linear) the closed-form gap is 0.04 bits/dim with ``fixed_large``;
    ``fixed_small`` is much looser for a continuous density (1.9 bits/dim: its small variances near t = 0
    make every error of the mean costly). The estimate must match the closed-form gap to within 4 standard
    errors of the paired difference (bound_i - nll_i).
    """
    mu, sigma = gaussian_2d
    diffusion = GaussianDiffusion(
        make_beta_schedule("linear", 100, scale_to_T=True), variance=variance, objective=objective
    )
    x = gaussian_data(mu, sigma, 1500, seed=0)
    vb = variational_bound(
        diffusion, GaussianOracle(diffusion, mu, sigma), x, decoder="gaussian", generator=torch.Generator()
    )
    nll = -torch.distributions.MultivariateNormal(mu.double(), sigma.double()).log_prob(x.double()) * BITS / 2
    diff = vb.per_sample - nll
    se = float(diff.std() / math.sqrt(len(diff)))
    gap = float(diff.mean())

    entropy = 0.5 * (2 * math.log(2 * math.pi) + math.log(torch.linalg.det(sigma.double())) + 2)
    expected_gap = (expected_bound_nats(diffusion, mu, sigma) - entropy) * BITS / 2
    assert 0 < expected_gap < max_gap
    assert gap > -3 * se  # never below the exact NLL (up to Monte-Carlo error)
    print(f"gap {gap:.4f} ± {se:.4f} bits/dim, closed form {expected_gap:.4f}")
    assert abs(gap - expected_gap) < 4 * se + 1e-3, (gap, expected_gap, se)
    assert vb.bits_per_dim == pytest.approx(vb.prior + vb.diffusion + vb.decoder, abs=1e-9)
    assert vb.terms is not None and len(vb.terms) == 100
    assert vb.prior < 1e-3  # abar[T-1] = 4e-5: x_T is nearly N(0, I)


def test_sampled_timesteps_give_an_unbiased_estimate(gaussian_2d) -> None:
    mu, sigma = gaussian_2d
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 100, scale_to_T=True))
    x = gaussian_data(mu, sigma, 1500, seed=1)
    oracle = GaussianOracle(diffusion, mu, sigma)
    full = variational_bound(diffusion, oracle, x, decoder="gaussian", generator=torch.Generator())
    est = variational_bound(
        diffusion, oracle, x, decoder="gaussian", t_samples=8, generator=torch.Generator().manual_seed(3)
    )
    assert est.terms is None and est.t_samples == 8
    se = math.hypot(full.std_error, est.std_error)
    assert abs(est.bits_per_dim - full.bits_per_dim) < 4 * se
    assert est.std_error > full.std_error  # sampling t adds variance


def test_uniform_8bit_data_costs_at_least_8_bits_per_dim() -> None:
    """-E log p >= the entropy of the data: 8 bits/dim for uniform 8-bit pixels, whatever the model."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (400, 1, 4, 4), generator=gen).float() / 255 * 2 - 1
    assert infer_bins(x) == 256
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 50, scale_to_T=True), clip_denoised=True)
    d = 16
    # The best Gaussian model of the pixels: N(0, 1/3) is uniform[-1, 1]'s mean and variance.
    oracle = GaussianOracle(diffusion, torch.zeros(d), torch.eye(d) / 3)

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return oracle(x_t.reshape(len(x_t), -1), t).reshape(x_t.shape)

    vb = variational_bound(diffusion, model, x, decoder="discretized", bins=256, generator=gen)
    assert vb.dims == 16 and vb.bins == 256
    assert vb.bits_per_dim > 8 - 3 * vb.std_error
    assert vb.bits_per_dim < 8.5  # a Gaussian fits the uniform's histogram fairly well
    assert vb.decoder > 0  # a probability of a bin is <= 1


def test_discretized_likelihood_sums_to_one_over_the_bins() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    for mean, log_scale in ((0.3, -3.0), (-0.99, -5.0), (0.999, 0.5), (2.5, -1.0), (0.0, -9.0)):
        logp = discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert float(torch.logsumexp(logp, 0).exp()) == pytest.approx(1.0, abs=1e-9)
    # A middle bin against scipy, far out in the upper tail where a difference of CDFs would cancel to 0.
    x, m, s = 0.5, -0.7, 0.05
    expected = math.log(norm.sf((x - 1 / 255 - m) / s) - norm.sf((x + 1 / 255 - m) / s))
    got = discretized_gaussian_log_likelihood(
        torch.tensor([x]), torch.tensor([m]), torch.tensor([math.log(s)])
    )
    assert float(got) == pytest.approx(expected, rel=1e-6)
    tail = discretized_gaussian_log_likelihood(
        torch.tensor([0.5]), torch.tensor([-0.5]), torch.tensor([-5.0])
    )
    assert torch.isfinite(tail).all() and float(tail) < -1e4  # log of a tiny mass, not log(0)


def test_gaussian_pieces_match_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, generator=gen).double(), torch.randn(5, generator=gen).double()
    lv1, lv2 = torch.randn(5, generator=gen).double(), torch.randn(5, generator=gen).double()
    p = torch.distributions.Normal(m1, (0.5 * lv1).exp())
    q = torch.distributions.Normal(m2, (0.5 * lv2).exp())
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q))
    x = torch.randn(5, generator=gen).double()
    assert torch.allclose(gaussian_log_likelihood(x, m1, lv1), p.log_prob(x))

    diffusion = GaussianDiffusion(make_beta_schedule("linear", 20, warn=False))
    x0 = torch.randn(3, 2, generator=gen)
    a = diffusion.alphas_cumprod[-1].double()
    qT = torch.distributions.Normal(a.sqrt() * x0.double(), (1 - a).sqrt())
    expected = torch.distributions.kl_divergence(qT, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(prior_kl(diffusion, x0), expected)


def test_infer_bins() -> None:
    digits = torch.randint(0, 17, (10, 64)).float() / 16 * 2 - 1
    assert infer_bins(digits) == 17
    assert infer_bins(torch.randint(0, 256, (10, 64)).float() / 255 * 2 - 1) == 256
    assert infer_bins(torch.rand(10, 64) * 2 - 1) is None
    assert infer_bins(torch.tensor([0.0, 3.0])) is None


def test_bad_arguments_name_themselves(gaussian_2d) -> None:
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 10, warn=False))
    oracle = GaussianOracle(diffusion, *gaussian_2d)
    with pytest.raises(ValueError, match="decoder='logistic'"):
        variational_bound(diffusion, oracle, torch.zeros(4, 2), decoder="logistic")
    with pytest.raises(ValueError, match="t_samples=0"):
        variational_bound(diffusion, oracle, torch.zeros(4, 2), t_samples=0)
