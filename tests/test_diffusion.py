"""GaussianDiffusion: forward process, posterior, objectives and loss against closed forms."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.losses import SimpleLoss
from ddpm.oracle import GaussianOracle
from ddpm.process import broadcast
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule


def _diffusion(T: int = 1000, name: str = "linear", **kwargs) -> GaussianDiffusion:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        return GaussianDiffusion(make_beta_schedule(name, T), **kwargs)


def test_buffers_are_float32_and_computed_in_float64() -> None:
    betas = make_beta_schedule("cosine", 1000)
    d = GaussianDiffusion(betas)
    for name in (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "posterior_variance",
        "posterior_log_variance_clipped",
    ):
        assert getattr(d, name).dtype == torch.float32, name
        assert getattr(d, name).shape == (1000,)
    abar64 = torch.cumprod(1 - betas, 0)
    assert torch.allclose(d.alphas_cumprod.double(), abar64, rtol=1e-6)
    # abar[T-1] = 2.4e-9 survives only because the product was taken in float64
    assert d.alphas_cumprod[-1].item() == pytest.approx(abar64[-1].item(), rel=1e-5)
    assert d.alphas_cumprod_prev[0].item() == 1.0
    assert d.posterior_variance[0].item() == 0.0
    assert d.posterior_log_variance_clipped[0].item() == pytest.approx(
        np.log(d.posterior_variance[1].item()), rel=1e-6
    )
    assert d.state_dict() == {}  # derived buffers are not checkpointed


def test_buffers_stay_float32_under_half_precision() -> None:
    d = _diffusion().to(torch.bfloat16)
    assert d.alphas_cumprod.dtype == torch.float32
    assert d.alphas_cumprod[-1].item() > 0


@pytest.mark.parametrize("shape", [(4000,), (4000, 7), (4000, 2), (4000, 2, 3, 3)])
@pytest.mark.parametrize("t", [0, 250, 999])
def test_q_sample_moments(shape: tuple[int, ...], t: int) -> None:
    torch.manual_seed(0)
    d = _diffusion()
    x0 = torch.full(shape, 1.5)
    x_t = d.q_sample(x0, torch.full((shape[0],), t))
    abar = d.alphas_cumprod.double()[t].item()
    n = x_t.numel()
    assert x_t.shape == shape
    assert x_t.mean().item() == pytest.approx(abar**0.5 * 1.5, abs=5 / n**0.5)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.05, abs=1e-5)


def test_q_sample_mixed_timesteps_per_sample() -> None:
    d = _diffusion()
    x0 = torch.ones(3, 5)
    noise = torch.randn(3, 5)
    t = torch.tensor([0, 10, 999])
    out = d.q_sample(x0, t, noise)
    for i in range(3):
        abar = d.alphas_cumprod[t[i]]
        assert torch.allclose(out[i], abar.sqrt() * x0[i] + (1 - abar).sqrt() * noise[i])


@pytest.mark.parametrize("k", [0, 9, 49])
def test_q_step_chain_matches_closed_form(k: int) -> None:
    # Iterating DDPM eq. 2, x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, gives DDPM eq. 4's closed form:
    # the means multiply to sqrt(abar_t) x0 and the variances add up to 1 - abar_t.
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        d = GaussianDiffusion(make_beta_schedule("linear", 50, beta_start=1e-4, beta_end=0.01))
    n = 200_000
    x0 = torch.full((n,), 5.0)
    x = x0
    for t in range(k + 1):
        x = d.q_step(x, t)
    ref = d.q_sample(x0, k)
    abar = d.alphas_cumprod.double()[k].item()
    assert x.mean().item() == pytest.approx(5 * abar**0.5, abs=4 * (1 - abar) ** 0.5 / n**0.5 + 1e-4)
    assert x.var().item() == pytest.approx(1 - abar, rel=0.02)
    # and the two samples are indistinguishable in their quantiles
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    assert torch.allclose(x.quantile(q), ref.quantile(q), atol=0.02 * (1 - abar) ** 0.5 + 1e-4)


@pytest.mark.parametrize("t", [1, 5, 500, 999])
def test_q_posterior_matches_gaussian_conditioning(t: int) -> None:
    d = _diffusion(name="cosine")
    b = make_beta_schedule("cosine", 1000).numpy()
    abar = np.cumprod(1 - b)
    # Joint of (x_{t-1}, x_t) given x0, written independently of the module:
    # x_{t-1} = sqrt(abar[t-1]) x0 + sqrt(1 - abar[t-1]) e1; x_t = sqrt(1 - b[t]) x_{t-1} + sqrt(b[t]) e2
    x0, xt = 0.7, -0.3
    m1, v1 = np.sqrt(abar[t - 1]) * x0, 1 - abar[t - 1]
    m2, v2 = np.sqrt(abar[t]) * x0, 1 - abar[t]
    c12 = np.sqrt(1 - b[t]) * v1
    cond_mean = m1 + c12 / v2 * (xt - m2)
    cond_var = v1 - c12**2 / v2
    mean, var, log_var = d.q_posterior(torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([t]))
    assert mean.item() == pytest.approx(cond_mean, rel=1e-4, abs=1e-6)
    assert var.item() == pytest.approx(cond_var, rel=1e-4)
    assert log_var.item() == pytest.approx(np.log(cond_var), rel=1e-4, abs=1e-5)


def test_q_posterior_at_t0_is_x0() -> None:
    d = _diffusion()
    x0, xt = torch.randn(4, 3), torch.randn(4, 3)
    mean, var, _ = d.q_posterior(x0, xt, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(mean, x0, atol=1e-6)
    assert bool((var == 0).all())


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("shape", [(16,), (16, 100), (16, 2), (16, 3, 8, 8)])
def test_objective_conversions_round_trip(objective: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(2)
    d = _diffusion(objective=objective)
    x0, eps = torch.randn(shape), torch.randn(shape)
    t = torch.randint(0, 1000, (shape[0],))
    x_t = d.q_sample(x0, t, eps)
    alpha, sigma = broadcast(d.alpha(t), x0), broadcast(d.sigma(t), x0)
    target = d.parameterization.target(x0, eps, alpha, sigma)
    assert torch.allclose(d.predict_x0(x_t, t, target), x0, atol=2e-3 if objective == "eps" else 1e-4)
    assert torch.allclose(d.predict_eps(x_t, t, target), eps, atol=1e-3)


def test_v_target_definition() -> None:
    d = _diffusion(objective="v")
    x0, eps, t = torch.randn(8, 2), torch.randn(8, 2), torch.arange(0, 800, 100)
    abar = d.alphas_cumprod[t][:, None]
    target = d.parameterization.target(x0, eps, d.alpha(t)[:, None], d.sigma(t)[:, None])
    assert torch.allclose(target, abar.sqrt() * eps - (1 - abar).sqrt() * x0)


def test_the_chain_is_a_process_in_alpha_and_sigma() -> None:
    """GaussianDiffusion as a Process: alpha = sqrt(abar), sigma = sqrt(1 - abar) at integer t, the log-sigma
    interpolation of alphas_cumprod_at between them, and q_sample = alpha x0 + sigma n."""
    d = _diffusion()
    t = torch.tensor([0, 1, 250, 999])
    abar = d.alphas_cumprod[t]
    torch.testing.assert_close(d.alpha(t), abar.sqrt())
    torch.testing.assert_close(d.sigma(t), (1 - abar).sqrt())
    # the SNR from the float64 abar: near t = 0, 1 - abar in float32 keeps only a few digits
    abar64 = torch.cumprod(1 - make_beta_schedule("linear", 1000).double(), 0)[t]
    torch.testing.assert_close(d.snr(t).double(), abar64 / (1 - abar64), rtol=1e-6, atol=0)
    torch.testing.assert_close(d.log_snr(t).double(), 0.5 * (abar64 / (1 - abar64)).log(), rtol=0, atol=2e-4)
    fractional = torch.tensor([0.5, 250.25, 998.75])
    expected = d.alphas_cumprod_at(fractional)
    torch.testing.assert_close(d.alpha(fractional), expected.sqrt().float())
    torch.testing.assert_close(d.sigma(fractional), (1 - expected).sqrt().float())
    assert d.time_range == (0.0, 999.0) and d.discrete
    x0, n = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(
        d.q_sample(x0, t, n), d.alpha(t)[:, None, None, None] * x0 + d.sigma(t)[:, None, None, None] * n
    )


def test_reverse_variances() -> None:
    small = _diffusion(variance="fixed_small")
    large = _diffusion(variance="fixed_large")
    x = torch.zeros(1000, 1)
    t = torch.arange(1000)
    var_s, _ = small.reverse_variance(t, x)
    var_l, log_l = large.reverse_variance(t, x)
    assert torch.allclose(var_s[:, 0], small.posterior_variance)
    # improved-diffusion's FIXED_LARGE: np.append(posterior_variance[1], betas[1:]) (beta_0 is replaced
    # "to get a better decoder log likelihood", as its comment says)
    expected = torch.cat([large.posterior_variance[1:2], large.betas[1:]])
    assert torch.allclose(var_l[:, 0], expected)
    assert torch.allclose(log_l[:, 0], expected.log())


def test_clip_before_posterior_mean() -> None:
    d = _diffusion(objective="x0", clip_denoised=True)
    x_t = torch.zeros(2, 2)
    t = torch.tensor([3, 500])
    out = d.p_mean_variance(torch.full((2, 2), 4.0), x_t, t)
    assert torch.allclose(out["pred_x0"], torch.ones(2, 2))
    expected, _, _ = d.q_posterior(torch.ones(2, 2), x_t, t)
    assert torch.allclose(out["mean"], expected)


def test_training_loss_values() -> None:
    d = _diffusion()
    x0 = torch.randn(32, 2)
    noise = torch.randn(32, 2)
    t = torch.randint(0, 1000, (32,))
    loss = SimpleLoss(d)
    perfect = loss(lambda x, tt: noise, x0, t, noise)
    assert perfect.shape == (32,) and bool((perfect == 0).all())
    zero = loss(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    torch.testing.assert_close(zero, (noise**2).mean(1))
    l1 = SimpleLoss(d, distance="l1")(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    torch.testing.assert_close(l1, noise.abs().mean(1))
    huber = SimpleLoss(d, distance="huber")(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    ref = torch.where(noise.abs() < 1, 0.5 * noise**2, noise.abs() - 0.5).mean(1)
    torch.testing.assert_close(huber, ref)
    # the network sees x_t = q_sample(x0, t, noise), formed once
    seen = []
    loss(lambda x, tt: seen.append((x, tt)) or torch.zeros_like(x), x0, t, noise)
    assert len(seen) == 1 and torch.equal(seen[0][0], d.q_sample(x0, t, noise)) and seen[0][1] is t


@pytest.mark.parametrize(
    ("objective", "weight"),
    [
        ("eps", lambda snr: np.minimum(snr, 5) / snr),
        ("x0", lambda snr: np.minimum(snr, 5)),
        ("v", lambda snr: np.minimum(snr, 5) / (snr + 1)),
    ],
)
def test_min_snr_weights(objective: str, weight) -> None:
    loss = SimpleLoss(_diffusion(objective=objective), weighting="min_snr")
    t = torch.tensor([0, 100, 300, 999])
    abar = np.cumprod(1 - make_beta_schedule("linear", 1000).numpy())[t.numpy()]
    snr = abar / (1 - abar)
    assert np.allclose(loss.weights(t).numpy(), weight(snr), rtol=1e-4)


def test_training_loss_decreases_with_a_better_model() -> None:
    # The loss ranks models: the Gaussian-oracle eps beats a zero predictor.
    torch.manual_seed(3)
    d = _diffusion()
    mu, sigma = torch.tensor([0.5, 0.0]), torch.tensor([[0.3, 0.1], [0.1, 0.2]])
    x0 = torch.distributions.MultivariateNormal(mu, sigma).sample((4000,))
    oracle = GaussianOracle(d, mu, sigma)
    t, noise = torch.randint(0, d.T, (4000,)), torch.randn_like(x0)
    good = SimpleLoss(d)(oracle, x0, t, noise).mean()
    bad = SimpleLoss(d)(lambda x, tt: torch.zeros_like(x), x0, t, noise).mean()
    assert good.item() < 0.5 * bad.item()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "score"}, "objective='score' is unknown; choose one of 'eps', 'x0', 'v'"),
        ({"variance": "learnt"}, "variance='learnt' is unknown"),
        ({"clip_range": (1, -1)}, "clip_range"),
    ],
)
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        GaussianDiffusion(make_beta_schedule("linear", 1000), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distance": "kl"}, "distance='kl' is unknown"),
        ({"weighting": "p2"}, "weighting='p2' is unknown"),
        ({"min_snr_gamma": 0}, "min_snr_gamma=0"),
        ({"cond_drop_prob": 1.0}, r"cond_drop_prob=1.0 is outside \[0, 1\)"),
    ],
)
def test_bad_loss_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        SimpleLoss(_diffusion(), **kwargs)


@pytest.mark.parametrize("betas", [[1.0, 0.1], [0.1, 1.5], [0.0, 0.1], [-0.1], []])  # 1 only last (zero SNR)
def test_betas_outside_unit_interval(betas) -> None:
    with pytest.raises(ValueError, match="betas"):
        GaussianDiffusion(torch.tensor(betas))


FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "wandb")


@pytest.mark.parametrize(
    ("modules", "banned"),
    [
        (
            "ddpm.schedules, ddpm.diffusion, ddpm.losses, ddpm.timestep_sampling, ddpm.samplers, "
            "ddpm.models, ddpm.oracle",
            (*FRAMEWORKS, "matplotlib"),
        ),
        # torchmetrics (feature accumulation) may pull in matplotlib for its plots; no framework though
        ("ddpm.metrics, ddpm.likelihood, ddpm.evaluation.classifier, ddpm.evaluation.features", FRAMEWORKS),
    ],
)
def test_core_imports_no_framework(modules: str, banned: tuple[str, ...]) -> None:
    code = (
        f"import sys, {modules}; "
        f"bad = [m for m in {banned!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
