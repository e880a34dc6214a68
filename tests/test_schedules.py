"""Schedules against their published definitions, through figures computed from them.

The definitions, with 0-based t = 0 .. T-1 and abar[t] = prod_{s<=t} (1 - beta[s]) (DDPM eq. 4's alpha-bar):

- linear (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", sec. 4):
  beta = linspace(beta_start, beta_end, T), defaults 1e-4 and 0.02; ``scale_to_T`` multiplies both ends by
  1000 / T (openai/improved-diffusion's ``get_named_beta_schedule``) so that short chains end near pure noise.
- quadratic (the DDPM code's "quad", diffusers' "scaled_linear"):
  beta = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2.
- cosine (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17): f(u) = cos(((u + s) / (1 + s)) pi / 2) ** 2 with
  s = 0.008, beta[i] = min(1 - f((i + 1) / T) / f(i / T), 0.999).
- sigmoid (GeoDiff, Xu et al. 2022, as in diffusers):
  beta = sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start.

REFERENCE holds abar at T = 1000 with the default options, evaluated from these definitions in float64 by a
separate NumPy script (e.g. linear: np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[0, 499, 999]]), not by
ddpm.schedules: a schedule that drifts from its definition misses them.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from ddpm.schedules import (
    SCHEDULES,
    NotPureNoiseWarning,
    alphas_cumprod,
    make_beta_schedule,
)

REFERENCE = {
    # name: {index: abar}, at T = 1000 with default options
    "linear": {0: 0.9999, 999: 4.04e-5, 499: 0.0786},
    "quadratic": {999: 7.33e-4, 499: 0.333},
    "cosine": {999: 2.43e-9, 499: 0.494},
    "sigmoid": {999: 3.97e-5, 499: 0.302},
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_figures(name: str) -> None:
    betas = make_beta_schedule(name, 1000)
    assert betas.dtype == torch.float64
    assert betas.shape == (1000,)
    abar = alphas_cumprod(betas)
    for index, expected in REFERENCE[name].items():
        assert abar[index].item() == pytest.approx(expected, rel=5e-3), (name, index)


def test_cosine_end_points() -> None:
    betas = make_beta_schedule("cosine", 1000)
    assert betas[0].item() == pytest.approx(4.13e-5, rel=5e-3)
    assert betas[-1].item() == pytest.approx(0.999)
    assert betas.max().item() <= 0.999


def test_linear_end_points_and_scale_to_T() -> None:
    betas = make_beta_schedule("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    scaled = make_beta_schedule("linear", 100, scale_to_T=True)
    assert scaled[0].item() == pytest.approx(1e-3)
    assert scaled[-1].item() == pytest.approx(0.2)
    assert alphas_cumprod(scaled)[-1].item() < 1e-3  # short chain still ends near pure noise


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_monotone(name: str, T: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        betas = make_beta_schedule(name, T)
    assert bool((betas[1:] >= betas[:-1]).all())
    abar = alphas_cumprod(betas)
    assert bool((abar[1:] < abar[:-1]).all())
    assert bool(((betas > 0) & (betas < 1)).all())


def test_seed_003_exercise_exact_product() -> None:
    # beta_t = 0.02 t / T for t = 1..100 with T = 1000: abar_100 = prod_t (1 - beta_t) = 0.9039 exactly.
    # (A worked exercise approximates it as 0.998^100 = 0.819, treating every beta_t as the last one, 0.002.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        betas = make_beta_schedule("linear", 100, beta_start=2e-5, beta_end=2e-3)
    assert alphas_cumprod(betas)[-1].item() == pytest.approx(0.9039, abs=1e-4)


@pytest.mark.parametrize(
    ("T", "beta_start", "beta_end", "final"),
    # the chains of conf/experiment/seed_point.yaml and seed_gaussian2d.yaml: abar[T-1] = prod (1 - beta)
    [(50, 1e-4, 0.01, 0.776), (100, 1e-3, 0.02, 0.347)],
)
def test_warns_when_x_T_is_not_pure_noise(T, beta_start, beta_end, final) -> None:
    with pytest.warns(NotPureNoiseWarning, match=f"{final}"):
        betas = make_beta_schedule("linear", T, beta_start=beta_start, beta_end=beta_end)
    assert alphas_cumprod(betas)[-1].item() == pytest.approx(final, abs=1e-3)


def test_no_warning_for_paper_settings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in SCHEDULES:
            make_beta_schedule(name, 1000)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("nope", 1000), {}, "schedule='nope' is unknown; choose one of"),
        (("linear", 0), {}, "T=0"),
        (("linear", 2.5), {}, "T=2.5"),
        (
            ("linear", 100),
            {"beta_start": 0.02, "beta_end": 0.01},
            "beta_start=0.02 > beta_end=0.01",
        ),
        (("linear", 100), {"beta_end": 1.5}, "beta_end=1.5 is outside \\(0, 1\\)"),
        (("quadratic", 100), {"beta_start": 0.0}, "beta_start=0.0 is outside"),
        (("linear", 100), {"bogus": 1}, "schedule 'linear'.*bogus"),
        (
            ("linear", 10),
            {"beta_end": 0.2, "scale_to_T": True},
            "all must lie in \\(0, 1\\)|beta_end",
        ),
    ],
)
def test_bad_arguments(args, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_beta_schedule(*args, **kwargs)
