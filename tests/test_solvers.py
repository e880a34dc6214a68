"""The high-order samplers (DPM-Solver++, UniPC, Heun) against diffusers and the exact oracles.

Against diffusers (the reference implementations): with the same steps and spacing our samplers visit the
same timesteps and, fed the same model outputs (an exact oracle, so both loops see the same function),
return the same samples within float32 rounding. diffusers' scheduler is given our alphas_cumprod so the two
start from the same float32 numbers.

Against the oracles: a deterministic sampler driven by the Gaussian oracle is an affine map x_T -> A x_T + b
(every step is linear in x and in the oracle's output, which is affine in x), so its output distribution is
exactly N(b, A A^T): pushing 0, e_1, e_2 through it gives the covariance with no Monte-Carlo error
(``ddpm.evaluation.exact.affine_moments``).
"""

from __future__ import annotations

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.exact import affine_moments, relative_frobenius
from ddpm.oracle import GaussianMixtureOracle, GaussianOracle
from ddpm.samplers import (
    DDIMSampler,
    DPMSolverSampler,
    DPMSolverState,
    HeunSampler,
    UniPCSampler,
    make_timesteps,
)
from ddpm.schedules import make_beta_schedule

diffusers = pytest.importorskip("diffusers")

# diffusers' schedulers call np.array on a torch tensor, which numpy 2 flags (its code, not ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

LINEAR = make_beta_schedule("linear", 1000)


def _diffusion(objective: str = "eps", schedule: str = "linear") -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule(schedule, 1000), objective=objective)


def _reference(
    kind: str, d: GaussianDiffusion, order: int, objective: str, spacing: str, solver_type: str = "bh2"
):
    prediction_type = {"eps": "epsilon", "v": "v_prediction"}[objective]
    common = dict(
        trained_betas=d.betas.double().numpy(),
        solver_order=order,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        lower_order_final=True,
    )
    if kind == "dpm_solver":
        sched = diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_type="midpoint", **common
        )
    else:
        sched = diffusers.UniPCMultistepScheduler(solver_type=solver_type, **common)
    sched.alphas_cumprod = d.alphas_cumprod.clone()  # the same float32 abar as ours
    return sched


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize(
    ("kind", "order", "steps", "spacing", "solver_type"),
    [
        ("dpm_solver", 2, 10, "linspace", "midpoint"),
        ("dpm_solver", 2, 25, "trailing", "midpoint"),
        ("dpm_solver", 3, 20, "linspace", "midpoint"),
        ("dpm_solver", 3, 12, "leading", "midpoint"),
        ("unipc", 2, 10, "linspace", "bh2"),
        ("unipc", 2, 20, "leading", "bh2"),
        ("unipc", 3, 15, "trailing", "bh2"),
    ],
)
def test_same_timesteps_and_samples_as_diffusers(
    kind, order, steps, spacing, solver_type, objective, gaussian_2d
) -> None:
    d = _diffusion(objective)
    oracle = GaussianOracle(d, *gaussian_2d)
    if kind == "dpm_solver":
        ours = DPMSolverSampler(steps, order=order, spacing=spacing)
    else:
        ours = UniPCSampler(steps, order=order, spacing=spacing, solver_type=solver_type)
    sched = _reference(kind, d, order, objective, spacing, solver_type)
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == ours.timesteps(d)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(oracle(x, torch.full((256,), int(t))), t, x).prev_sample
    got = ours.sample(oracle, d, (256, 2), x_T=x_T, progress=False)
    assert torch.allclose(got, x, atol=2e-5, rtol=1e-5), (got - x).abs().max()


@pytest.mark.parametrize(
    ("order", "steps", "spacing"), [(1, 10, "linspace"), (2, 12, "leading"), (3, 15, "trailing")]
)
def test_unipc_bh1_equals_diffusers_up_to_the_last_step(order, steps, spacing, gaussian_2d) -> None:
    """UniPC with B(h) = h against diffusers' ``solver_type="bh1"``, state by state. Onto sigma = 0 diffusers'
    bh1 step is NaN (B(h) = h is infinite there); ours returns the data prediction, the limit of every
    order's first-order step, so that last step is checked against the oracle's x0 instead."""
    d = _diffusion()
    oracle = GaussianOracle(d, *gaussian_2d)
    ours = UniPCSampler(steps, order=order, spacing=spacing, solver_type="bh1")
    sched = _reference("unipc", d, order, "eps", spacing, "bh1")
    sched.set_timesteps(steps)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    result = ours.sample(oracle, d, (256, 2), x_T=x_T, return_trajectory=True, progress=False)
    x = x_T.clone()
    for i, t in enumerate(sched.timesteps[:-1]):
        x = sched.step(oracle(x, torch.full((256,), int(t))), t, x).prev_sample
        assert torch.allclose(result.trajectory[i + 1], x, atol=2e-5, rtol=1e-5), (
            i,
            (result.trajectory[i + 1] - x).abs().max(),
        )
    t_last = torch.full((256,), int(sched.timesteps[-1]))
    assert torch.allclose(result.samples, oracle.x0(result.trajectory[-2], t_last).float(), atol=1e-5)
    # and bh1 is not bh2: the comparison above would see the other B(h)
    bh2 = UniPCSampler(steps, order=order, spacing=spacing).sample(
        oracle, d, (256, 2), x_T=x_T, progress=False
    )
    assert (bh2 - result.samples).abs().max() > 1e-4


def test_a_wrong_coefficient_would_be_seen(gaussian_2d) -> None:
    """The comparison has teeth: DPM-Solver++ 2M against diffusers' 3M differs well beyond the tolerance."""
    d = _diffusion()
    oracle = GaussianOracle(d, *gaussian_2d)
    sched = _reference("dpm_solver", d, 3, "eps", "linspace")
    sched.set_timesteps(20)
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(oracle(x, torch.full((256,), int(t))), t, x).prev_sample
    got = DPMSolverSampler(20, order=2).sample(oracle, d, (256, 2), x_T=x_T, progress=False)
    assert (got - x).abs().max() > 1e-3


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "karras"])
def test_dpm_solver_order_1_is_ddim_step_for_step(spacing: str, gaussian_2d) -> None:
    d = _diffusion()
    oracle = GaussianOracle(d, *gaussian_2d)
    dpm = DPMSolverSampler(12, order=1, spacing=spacing)
    ts = dpm.timesteps(d)
    ddim = DDIMSampler(12, spacing=spacing)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    state = None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        out = oracle(x, torch.full((64,), t))
        a = dpm.step(d, out, t, t_prev, x, state=state)
        b = ddim.step(d, out, t, t_prev, x)
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=1e-5), (
            t,
            (a.prev_sample - b.prev_sample).abs().max(),
        )
        x, state = a.prev_sample, a.state


def test_state_is_explicit_and_nothing_is_left_between_calls(gaussian_2d) -> None:
    d = _diffusion()
    oracle = GaussianOracle(d, *gaussian_2d)
    sampler = DPMSolverSampler(10, order=3)
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    first = sampler.sample(oracle, d, (32, 2), x_T=x_T, progress=False)
    assert torch.equal(sampler.sample(oracle, d, (32, 2), x_T=x_T, progress=False), first)
    assert vars(sampler) == vars(DPMSolverSampler(10, order=3))  # the sampler holds only its settings
    # a hand-written loop with the state threaded through gives the same samples
    ts, x, state = sampler.timesteps(d), x_T.clone(), None
    for i, t in enumerate(ts):
        out = sampler.step(
            d, oracle(x, torch.full((32,), t)), t, ts[i + 1] if i + 1 < len(ts) else -1, x, state=state
        )
        x, state = out.prev_sample, out.state
        assert isinstance(state, DPMSolverState) and len(state.x0s) <= 2
    assert torch.allclose(x, first, atol=1e-6)


def test_the_affine_map_moments_equal_monte_carlo(gaussian_2d) -> None:
    mu, sigma = gaussian_2d
    d = _diffusion()
    oracle = GaussianOracle(d, mu, sigma)
    sampler = UniPCSampler(8)
    mean, cov = affine_moments(sampler, oracle, d, 2)
    x = sampler.sample(oracle, d, (40_000, 2), generator=torch.Generator().manual_seed(3), progress=False)
    x = x.double()
    # 5 standard errors at n = 40k for unit-scale entries: 5 / sqrt(n) = 0.025, 5 sqrt(2 / n) = 0.035
    assert torch.allclose(x.mean(0), mean, atol=0.025)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.035)


# Stated tolerances (relative Frobenius covariance error, exact via the affine map; mean error absolute),
# each about 1.5x what the sampler measured on linear T = 1000 (measured: DDIM 10 NFE 0.35, 2M 20 NFE 0.020,
# 3M 20 NFE 0.031, UniPC-2 20 NFE 0.018, UniPC-3 20 NFE 0.014).
@pytest.mark.parametrize(
    ("sampler", "cov_tol"),
    [
        (DPMSolverSampler(20, order=2), 0.03),
        (DPMSolverSampler(20, order=3), 0.045),
        (UniPCSampler(20, order=2), 0.03),
        (UniPCSampler(20, order=3), 0.025),
    ],
    ids=repr,
)
def test_gaussian_oracle_moments_at_stated_nfe(sampler, cov_tol, gaussian_2d) -> None:
    mu, sigma = gaussian_2d
    d = _diffusion()
    mean, cov = affine_moments(sampler, GaussianOracle(d, mu, sigma), d, 2)
    assert torch.allclose(mean, mu.double(), atol=0.02), mean
    assert relative_frobenius(cov, sigma) < cov_tol, relative_frobenius(cov, sigma)
    # ... and DDIM at the same NFE is far off: the high-order samplers are what reaches the tolerance
    _ddim_mean, ddim_cov = affine_moments(DDIMSampler(sampler.nfe(d)), GaussianOracle(d, mu, sigma), d, 2)
    assert relative_frobenius(ddim_cov, sigma) > 2 * relative_frobenius(cov, sigma)


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        (DPMSolverSampler(15, order=2), "cosine"),
        (UniPCSampler(15, order=2), "cosine"),
        (DPMSolverSampler(10, order=3), "linear"),
        # Heun only on linear: the cosine schedule's last beta (0.999) puts sigma_max at 2e4, and a
        # trapezoidal step in sigma from there misplaces mass between modes (docs/samplers.md)
        (HeunSampler(8), "linear"),
    ],
    ids=repr,
)
@pytest.mark.parametrize("layout", ["eight_gaussians", "anisotropic"])
def test_mixture_oracle_mode_weights(sampler, schedule: str, layout: str) -> None:
    d = _diffusion(schedule=schedule)
    oracle = getattr(GaussianMixtureOracle, layout)(d)
    x = sampler.sample(oracle, d, (4000, 2), generator=torch.Generator().manual_seed(4), progress=False)
    got = oracle.mode_weights(x)
    # binomial standard error of a weight <= sqrt(0.25 / 4000) = 0.008; 4 of them is 0.032
    assert torch.allclose(got, oracle.weights, atol=0.032), (got, oracle.weights)


def test_a_wrong_mixture_fails_the_mode_weight_check() -> None:
    d = _diffusion()
    data = GaussianMixtureOracle.anisotropic(d)
    wrong = GaussianMixtureOracle(d, data.means, data.covs, torch.tensor([0.4, 0.4, 0.2]))
    x = UniPCSampler(15).sample(
        wrong, d, (4000, 2), generator=torch.Generator().manual_seed(4), progress=False
    )
    assert not torch.allclose(data.mode_weights(x), data.weights, atol=0.032)


@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
@pytest.mark.parametrize("objective", ["eps", "v"])
def test_heun_equals_diffusers_heun_with_karras_sigmas(objective: str, gaussian_2d) -> None:
    """EDM Algorithm 1 as diffusers' HeunDiscreteScheduler(use_karras_sigmas=True) runs it. Our N levels are
    the first N of diffusers' N + 1 (the lowest, sigma(0), is left to the clean data, where diffusers spends
    two more evaluations): the same fractional timesteps and the same states up to level N - 1
    (diffusers works in EDM's unscaled x; we in the VP x), then our last step is the data prediction there."""
    d = _diffusion(objective)
    oracle = GaussianOracle(d, *gaussian_2d)
    sched = diffusers.HeunDiscreteScheduler(
        trained_betas=d.betas.double().numpy(),
        prediction_type={"eps": "epsilon", "v": "v_prediction"}[objective],
        use_karras_sigmas=True,
    )
    sched.alphas_cumprod = d.alphas_cumprod.clone()
    sched.set_timesteps(11)
    ours = HeunSampler(10)
    shared = len(ours.timesteps(d)) - 1  # all but our last evaluation, the Euler step onto sigma = 0
    assert torch.allclose(
        sched.timesteps[:shared].double(),
        torch.tensor(ours.timesteps(d)[:shared], dtype=torch.float64),
        atol=1e-4,
    )
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    x = x_T * sched.init_noise_sigma
    for t in sched.timesteps[:shared]:
        out = oracle(sched.scale_model_input(x, t), torch.full((256,), float(t)))
        x = sched.step(out, t, x).prev_sample
    got = ours.sample(oracle, d, (256, 2), x_T=x_T, progress=False, return_trajectory=True)
    t_last = ours.timesteps(d)[-1]
    alpha = float(d.alphas_cumprod_at(t_last).sqrt())
    assert torch.allclose(got.trajectory[shared] / alpha, x, atol=3e-4), (
        (got.trajectory[shared] / alpha - x).abs().max()
    )
    x0 = d.x0_from_output(
        oracle(got.trajectory[shared], torch.full((256,), t_last)),
        got.trajectory[shared],
        alpha,
        float((1 - d.alphas_cumprod_at(t_last)).sqrt()),
    )
    torch.testing.assert_close(got.samples, x0, atol=1e-5, rtol=1e-5)


def test_heun_converges_at_second_order(gaussian_2d) -> None:
    """Doubling the noise levels divides Heun's covariance error by about 2^2 (measured 4.6 from 20 to 40)."""
    mu, sigma = gaussian_2d
    d = _diffusion()
    oracle = GaussianOracle(d, mu, sigma)
    errors = [relative_frobenius(affine_moments(HeunSampler(n), oracle, d, 2)[1], sigma) for n in (20, 40)]
    assert errors[1] < 0.03 and 3.0 < errors[0] / errors[1] < 6.0, errors


def test_heun_visits_fractional_timesteps_and_evaluates_2n_minus_1_times() -> None:
    d = _diffusion()
    sampler = HeunSampler(5)
    seen: list[torch.Tensor] = []

    def model(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    sampler.sample(model, d, (2, 2), progress=False)
    assert len(seen) == sampler.nfe(d) == 9
    assert all(t.dtype == torch.float32 for t in seen)
    levels = sampler.noise_levels(d)
    assert levels == make_timesteps(1000, 5, "karras", alphas_cumprod=d.alphas_cumprod, fractional=True)
    assert any(not float(t).is_integer() for t in levels)
    # the network is asked at the timestep whose noise level is the Karras sigma (EDM eq. 5, rho = 7)
    sigmas = [((1 - a) / a).sqrt() for a in (d.alphas_cumprod_at(t) for t in levels)]
    s_max, s_min = sigmas[0] ** (1 / 7), sigmas[-1] ** (1 / 7)
    expected = [(s_max + i / 4 * (s_min - s_max)) ** 7 for i in range(5)]
    assert torch.allclose(torch.stack(sigmas), torch.stack(expected), rtol=1e-6)


def test_models_take_fractional_timesteps() -> None:
    from ddpm.models import MLPDenoiser, UNet

    mlp = MLPDenoiser(data_dim=2, hidden=16, depth=1)
    t = torch.tensor([10.25, 500.5])
    out = mlp(torch.zeros(2, 2), t)
    assert out.shape == (2, 2) and not torch.equal(out, mlp(torch.zeros(2, 2), t.round()))
    unet = UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mult=(1,),
        num_res_blocks=1,
        attn_resolutions=(),
        norm_groups=4,
    )
    assert unet(torch.zeros(2, 1, 8, 8), t).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DPMSolverSampler(10, order=4), r"order=4 is invalid; choose one of 1, 2, 3"),
        (lambda: DPMSolverSampler(0), r"steps=0 is invalid"),
        (lambda: DPMSolverSampler(10, spacing="cosine"), r"spacing='cosine' is unknown; choose one of"),
        (lambda: DPMSolverSampler(10, algorithm="dpmsolver"), r"algorithm='dpmsolver' is unknown"),
        (lambda: UniPCSampler(10, order=0), r"order=0 is invalid"),
        (lambda: UniPCSampler(-2), r"steps=-2 is invalid"),
        (lambda: UniPCSampler(10, solver_type="bh3"), r"solver_type='bh3' is unknown; choose one of bh1"),
        (lambda: HeunSampler(1), r"steps=1 is invalid; steps must be an integer >= 2"),
        (lambda: HeunSampler(5, spacing="uniform"), r"spacing='uniform' is unknown"),
    ],
)
def test_bad_arguments_are_one_line_value_errors(factory, match) -> None:
    with pytest.raises(ValueError, match=match) as info:
        factory()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [DPMSolverSampler, UniPCSampler, HeunSampler])
def test_steps_greater_than_T(cls) -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 100, scale_to_T=True))
    with pytest.raises(ValueError, match="steps=200 > T=100"):
        cls(200).sample(lambda x, t: x, d, (2, 2), progress=False)
