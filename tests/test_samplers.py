"""Samplers against the Gaussian oracle (ddpm.oracle, the exact denoiser, no training) and published rules.

Timestep lists (T = 1000, S = 10, 0-based): "linspace" 999, 899, ..., 100, "leading" 900, 810, ..., 90 and
"trailing" 999, 899, ..., 99, the three spacings compared by Lin et al. 2023, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", sec. 3.3 (1-based there); the clean data follows the last.
DDIM (Song et al. 2021, eq. 12):
x_{t'} = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - sigma^2) eps_hat + sigma z, with
sigma = eta sqrt((1 - abar_t') / (1 - abar_t)) sqrt(1 - abar_t / abar_t') (eq. 16); with eta = 1 and every
step it is DDPM's ancestral step with the posterior variance (fixed_small).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.oracle import GaussianOracle
from ddpm.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    HeunSampler,
    NonFiniteSampleError,
    SampleResult,
    UniPCSampler,
    make_timesteps,
)
from ddpm.schedules import make_beta_schedule

N = 20_000
# Stated tolerances. Monte-Carlo: ~5 standard errors of the mean at N = 20k for unit-scale data.
MEAN_TOL = 0.03
# Covariance with all T = 1000 steps: Monte-Carlo error only.
COV_TOL = 0.05
# Covariance with S <= 100 steps: a coarse DDIM/respaced step contracts the variance of Gaussian data
# (by Cauchy-Schwarz each deterministic step maps var v to <= v'), measured at 8-17% for S = 50 and
# T = 1000 linear; we allow 20% relative.
FEW_STEP_COV_RTOL = 0.20


def _check_moments(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, few_steps: bool = False) -> None:
    x = x.double()
    cov = torch.cov(x.T)
    assert torch.allclose(x.mean(0), mu.double(), atol=MEAN_TOL), x.mean(0)
    if few_steps:
        assert torch.allclose(cov, sigma.double(), rtol=FEW_STEP_COV_RTOL, atol=0.01), cov
    else:
        assert torch.allclose(cov, sigma.double(), atol=COV_TOL), cov


@pytest.mark.parametrize(
    ("sampler", "variance"),
    [
        (DDPMSampler(), "fixed_large"),
        (DDPMSampler(), "fixed_small"),
        (DDPMSampler(steps=100), "fixed_small"),
        (DDIMSampler(50, eta=0.0), "fixed_small"),
        (DDIMSampler(50, eta=1.0), "fixed_small"),
        (DDIMSampler(1000, eta=0.0), "fixed_small"),
        (DDIMSampler(1000, eta=1.0), "fixed_small"),
        (DDIMSampler(50, eta=0.0, spacing="trailing"), "fixed_small"),
    ],
    ids=repr,
)
def test_gaussian_oracle_recovers_the_data_distribution(sampler, variance, gaussian_2d) -> None:
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("linear", 1000), variance=variance)
    gen = torch.Generator().manual_seed(0)
    x = sampler.sample(GaussianOracle(d, mu, sigma), d, (N, 2), generator=gen, progress=False)
    _check_moments(x, mu, sigma, few_steps=len(sampler.timesteps(d)) < 1000)


@pytest.mark.parametrize("objective", ["x0", "v"])
def test_gaussian_oracle_other_objectives(objective: str, gaussian_2d) -> None:
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("cosine", 1000), objective=objective)
    gen = torch.Generator().manual_seed(1)
    oracle = GaussianOracle(d, mu, sigma)
    x = DDIMSampler(50).sample(oracle, d, (N, 2), generator=gen, progress=False)
    _check_moments(x, mu, sigma, few_steps=True)
    _check_moments(DDPMSampler().sample(oracle, d, (N, 2), generator=gen, progress=False), mu, sigma)


def test_wrong_model_is_detected(gaussian_2d) -> None:
    # The moment check has teeth: an oracle for another Gaussian fails it.
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    oracle = GaussianOracle(d, mu + 0.2, sigma)
    x = DDIMSampler(50).sample(oracle, d, (N, 2), generator=torch.Generator().manual_seed(0), progress=False)
    with pytest.raises(AssertionError):
        _check_moments(x, mu, sigma, few_steps=True)


def test_timestep_lists_match_reference() -> None:
    """Lin et al. 2023's three spacings as diffusers' multistep schedulers place them: steps + 1 grid points,
    the lowest (t = 0) left to the clean data."""
    assert make_timesteps(1000, 10, "linspace") == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert make_timesteps(1000, 10, "leading") == [900, 810, 720, 630, 540, 450, 360, 270, 180, 90]
    assert make_timesteps(1000, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert make_timesteps(50, 50) == list(range(49, -1, -1))  # every step: the whole chain


def test_quadratic_spacing_is_uniform_in_sqrt_t() -> None:
    """DDIM's quadratic subsequence (appendix D.2): t_i = c i^2, steps + 1 points from T - 1 down to 0, the
    last left to the clean data."""
    ts = make_timesteps(1000, 10, "quadratic")
    assert ts == [999, 809, 639, 490, 360, 250, 160, 90, 40, 10]
    roots = [t**0.5 for t in [*ts, 0]]
    gaps = [a - b for a, b in itertools.pairwise(roots)]
    # equal steps in sqrt(t) up to the rounding of t to an integer
    assert max(gaps) - min(gaps) < 0.1, gaps
    # with many steps the first points all round to 0: none of them is evaluated, and none repeats
    many = make_timesteps(1000, 250, "quadratic")
    assert 0 not in many and len(many) == len(set(many)) < 250 and many[0] == 999


SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr", "quadratic")


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize(
    "make",
    [
        lambda n, s: DDPMSampler(n, spacing=s),
        lambda n, s: DDIMSampler(n, spacing=s),
        lambda n, s: DDIMSampler(n, eta=1.0, spacing=s),
        lambda n, s: DPMSolverSampler(n, order=2, spacing=s),
        lambda n, s: DPMSolverSampler(n, order=3, spacing=s),
        lambda n, s: UniPCSampler(n, order=2, spacing=s),
        lambda n, s: UniPCSampler(n, order=3, spacing=s),
        lambda n, s: HeunSampler(max(n, 2), spacing=s),
    ],
    ids=["ddpm", "ddim", "ddim_eta1", "dpm2", "dpm3", "unipc2", "unipc3", "heun"],
)
def test_few_steps_start_at_the_noisiest_timestep_and_never_evaluate_at_zero(make, steps, spacing) -> None:
    """With 1, 2 or 4 steps no evaluation is spent at t = 0 (the clean data follows the last evaluation,
    from its data prediction) and the first is at T - 1 (leading: its own offset, steps * (T // (steps + 1)));
    each sampler evaluates the network exactly where its timesteps say, as often as its NFE says."""
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    sampler = make(steps, spacing)
    seen: list[float] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    sampler.sample(model, d, (4, 2), generator=torch.Generator().manual_seed(0), progress=False)
    # (fractional timesteps reach the network as float32)
    assert seen == pytest.approx([float(t) for t in sampler.timesteps(d)], abs=1e-3)
    assert len(seen) == sampler.nfe(d)
    assert min(seen) > 0, seen
    levels = sampler.steps
    assert seen[0] == (levels * (1000 // (levels + 1)) if spacing == "leading" else 999), seen


def test_one_ddim_step_from_pure_noise_is_the_data_prediction_at_the_noisiest_step(gaussian_2d) -> None:
    """The defect it replaces: with linspace, DDIM-1 evaluated the network at t = 0 on pure noise and
    returned rescaled noise. Now its one evaluation is at T - 1 and the sample is the oracle's E[x0 | x_T]:
    for Gaussian data at abar = 4e-5, almost exactly the data mean."""
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    oracle = GaussianOracle(d, mu, sigma)
    x = DDIMSampler(1).sample(oracle, d, (N, 2), generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(x.mean(0), mu.float(), atol=0.01, rtol=0)
    assert float(x.var(0).max()) < 1e-3  # E[x0 | x_T] barely moves with x_T


def test_ddim_takes_t_prev_from_its_list() -> None:
    # With trailing spacing and T % S != 0, t - T // S would be wrong; t_prev must come from the list.
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    DDIMSampler(7, spacing="trailing").sample(model, d, (2, 2), progress=False)
    assert seen == make_timesteps(1000, 7, "trailing")


def test_ddim_eta0_is_deterministic(gaussian_2d) -> None:
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    oracle = GaussianOracle(d, mu, sigma)
    x_T = torch.randn(64, 2)
    a = DDIMSampler(20).sample(
        oracle, d, (64, 2), x_T=x_T, progress=False, generator=torch.Generator().manual_seed(1)
    )
    b = DDIMSampler(20).sample(
        oracle, d, (64, 2), x_T=x_T, progress=False, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a, b)
    c = DDIMSampler(20, eta=1.0).sample(
        oracle, d, (64, 2), x_T=x_T, progress=False, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("t", [999, 500, 1])
def test_ddim_eta1_full_steps_equals_ddpm_fixed_small(t: int) -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 1000), variance="fixed_small")
    x_t, out, z = torch.randn(8, 3), torch.randn(8, 3), torch.randn(8, 3)
    ddim = DDIMSampler(1000, eta=1.0).step(d, out, t, t - 1, x_t, noise=z).prev_sample
    ddpm = DDPMSampler().step(d, out, t, t - 1, x_t, noise=z).prev_sample
    assert torch.allclose(ddim, ddpm, atol=1e-4)


def test_no_noise_at_last_step() -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 1000), clip_denoised=True)
    x_t, out = torch.randn(8, 2), torch.randn(8, 2)
    a = DDPMSampler().step(d, out, 0, -1, x_t, noise=torch.randn(8, 2))
    b = DDPMSampler().step(d, out, 0, -1, x_t, noise=torch.randn(8, 2))
    assert torch.equal(a.prev_sample, b.prev_sample)
    assert torch.allclose(a.prev_sample, a.pred_x0, atol=1e-6)  # the last step returns x0-hat
    c = DDIMSampler(10, eta=1.0).step(d, out, 111, -1, x_t, noise=torch.randn(8, 2))
    e = DDIMSampler(10, eta=1.0).step(d, out, 111, -1, x_t, noise=torch.randn(8, 2))
    assert torch.equal(c.prev_sample, e.prev_sample)
    assert torch.allclose(c.prev_sample, c.pred_x0)
    assert c.pred_x0.abs().max() <= 1.0


def test_ddim_rederives_eps_after_clipping() -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 1000), clip_denoised=True)
    x_t = torch.full((1, 1), 3.0)
    eps = torch.full((1, 1), -2.0)  # implies x0-hat far above 1
    out = DDIMSampler(10).step(d, eps, 500, 400, x_t)
    abar, abar_prev = d.alphas_cumprod[500], d.alphas_cumprod[400]
    eps_clipped = (x_t - abar.sqrt() * 1.0) / (1 - abar).sqrt()
    expected = abar_prev.sqrt() * 1.0 + (1 - abar_prev).sqrt() * eps_clipped
    assert torch.allclose(out.prev_sample, expected, atol=1e-5)


def test_trajectory_shapes() -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 100, scale_to_T=True))
    res = DDIMSampler(10).sample(
        lambda x, t: torch.zeros_like(x), d, (5, 2), return_trajectory=True, progress=False
    )
    assert isinstance(res, SampleResult)
    assert res.trajectory.shape == (11, 5, 2)
    assert res.pred_x0.shape == (10, 5, 2)
    assert torch.equal(res.trajectory[-1], res.samples)
    assert res.timesteps == make_timesteps(100, 10)


def test_non_finite_sample_names_the_step() -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 100, scale_to_T=True))

    def model(x, t):
        return torch.full_like(x, float("nan")) if int(t[0]) == 40 else torch.zeros_like(x)

    with pytest.raises(NonFiniteSampleError, match=r"step 60/100 \(t=40\)"):
        DDPMSampler().sample(model, d, (4, 2), progress=False)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DDIMSampler(0), "steps=0"),
        (lambda: DDIMSampler(10, eta=-0.5), "eta=-0.5"),
        (lambda: DDIMSampler(10, spacing="random"), "spacing='random' is unknown"),
        (lambda: DDPMSampler(steps=-3), "steps=-3"),
    ],
)
def test_bad_sampler_arguments(factory, match) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_steps_greater_than_T() -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 100, scale_to_T=True))
    with pytest.raises(ValueError, match="steps=200 > T=100"):
        DDIMSampler(200).sample(lambda x, t: x, d, (2, 2), progress=False)


# ----------------------------------------------------------------------------- custom schedules
@pytest.mark.parametrize(
    ("builtin", "custom"),
    [
        (lambda: DDIMSampler(10), lambda ts: DDIMSampler(timesteps=ts)),
        (lambda: DDIMSampler(7, eta=1.0, spacing="trailing"), lambda ts: DDIMSampler(eta=1.0, timesteps=ts)),
        (lambda: DDPMSampler(25, spacing="quadratic"), lambda ts: DDPMSampler(timesteps=ts)),
        (
            lambda: DPMSolverSampler(12, order=3, spacing="karras"),
            lambda ts: DPMSolverSampler(order=3, timesteps=ts),
        ),
        (lambda: UniPCSampler(15, spacing="logsnr"), lambda ts: UniPCSampler(timesteps=ts)),
        (lambda: HeunSampler(6), lambda ts: HeunSampler(timesteps=ts)),
    ],
    ids=["ddim", "ddim_eta1", "ddpm", "dpm3", "unipc", "heun"],
)
def test_a_custom_schedule_equal_to_a_spacing_reproduces_its_samples_bit_for_bit(
    builtin, custom, gaussian_2d
) -> None:
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("linear", 1000))
    oracle = GaussianOracle(d, mu, sigma)
    reference = builtin()
    grid = reference.timesteps(d) if not isinstance(reference, HeunSampler) else reference.noise_levels(d)
    own = custom(grid)
    assert own.spacing.value == "custom" and own.timesteps(d) == reference.timesteps(d)
    draws = [
        s.sample(oracle, d, (512, 2), generator=torch.Generator().manual_seed(3), progress=False)
        for s in (reference, own)
    ]
    assert torch.equal(*draws)
    assert f"timesteps={own.custom_timesteps}" in repr(own)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DDIMSampler(timesteps=[]), r"timesteps=\[\] is invalid; give a non-empty list of numbers"),
        (lambda: DDIMSampler(timesteps=[500, 600]), r"timesteps=\[500, 600\] is not strictly decreasing"),
        (lambda: DDIMSampler(timesteps=[500, 500]), r"is not strictly decreasing"),
        (  # an integer sampler on a chain (a continuous process takes real times)
            lambda: UniPCSampler(timesteps=[999, 10.5]).timesteps(
                GaussianDiffusion(make_beta_schedule("linear", 1000))
            ),
            r"holds 10.5; every timestep must be one of the integers",
        ),
        (lambda: DPMSolverSampler(timesteps=[999, -1]), r"leaves \[0, T-1\]"),
        (lambda: DDPMSampler(timesteps=[999, True]), r"holds True"),
        (lambda: DDIMSampler(timesteps="999,500"), r"timesteps='999,500' is invalid"),
        (lambda: HeunSampler(timesteps=[999.5]), r"steps=1 is invalid; steps must be an integer >= 2"),
        (lambda: DDIMSampler(spacing="custom"), r"spacing='custom' needs the list itself"),
    ],
)
def test_bad_custom_schedules_are_one_line_errors(make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def test_a_custom_schedule_is_checked_against_the_chain_and_runs_on_it() -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 100, scale_to_T=True))
    with pytest.raises(ValueError, match=r"timesteps=\[120, 50\] leaves \[0, T-1\] = \[0, 99\]"):
        DDIMSampler(timesteps=[120, 50]).timesteps(d)
    seen: list[float] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    HeunSampler(timesteps=[99, 40.5, 3.25]).sample(model, d, (2, 2), progress=False)
    assert seen == [99.0, 40.5, 40.5, 3.25, 3.25]  # Heun keeps fractional levels: 2 N - 1 evaluations


def test_custom_schedules_on_the_command_line() -> None:
    from ddpm.config import ConfigError
    from ddpm.sampler_overrides import check_sampler_overrides, sampler_config, sampler_grid

    check_sampler_overrides(["sampler=unipc", "sampler.timesteps=[999,600,200]"])
    cfg = sampler_config(
        {"_target_": "ddpm.samplers.DDIMSampler", "steps": 50}, ["sampler.timesteps=[999,500]"]
    )
    assert cfg["timesteps"] == [999, 500]
    with pytest.raises(ConfigError, match=r"sampler.timesteps=\[5,9\] is not strictly decreasing") as err:
        check_sampler_overrides(["sampler=ddim", "sampler.timesteps=[5,9]"])
    assert "\n" not in str(err.value)
    # a list is one value of a comparison grid, not a comma list
    assert sampler_grid(["sampler=ddim,unipc", "sampler.timesteps=[999,500]"]) == [
        ["sampler=ddim", "sampler.timesteps=[999,500]"],
        ["sampler=unipc", "sampler.timesteps=[999,500]"],
    ]
