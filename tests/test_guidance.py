"""Class labels and classifier-free guidance, proven on the exact labelled-mixture oracle.

The oracle's class-conditional eps is what a perfectly trained conditional network computes, so guidance
scale 1 must sample each class's own distribution, scale 0 the whole mixture, and scales above 1 must
raise log p(y | x) of the samples. Deterministic samplers on a one-Gaussian class are affine maps of x_T
(``ddpm.evaluation.exact.affine_moments``), which gives the class's sampled moments without Monte-Carlo error.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.exact import affine_moments, relative_frobenius
from ddpm.losses import SimpleLoss
from ddpm.models import MLPDenoiser, UNet
from ddpm.oracle import GaussianMixtureOracle, GaussianOracle
from ddpm.samplers import (
    ClassifierFreeGuidance,
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    HeunSampler,
    UniPCSampler,
)
from ddpm.schedules import make_beta_schedule

SAMPLERS = [DDPMSampler(10), DDIMSampler(10, eta=0.5), DPMSolverSampler(8), UniPCSampler(8), HeunSampler(4)]


def _overlapping(d: GaussianDiffusion) -> GaussianMixtureOracle:
    """Three overlapping classes of the scale of tests/test_solvers.py's Gaussian (class 0's covariance)."""
    means = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.4, 1.0]])
    covs = torch.tensor([[[0.5, 0.3], [0.3, 0.8]], [[0.8, -0.2], [-0.2, 0.6]], [[0.4, 0.0], [0.0, 0.7]]])
    return GaussianMixtureOracle(d, means, covs)


def _diffusion(objective: str = "eps") -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule("linear", 1000), objective=objective)


def _loss() -> SimpleLoss:
    return SimpleLoss(_diffusion())


def _inputs(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0, t, noise) of n zero points: what a loss takes beside the network."""
    return torch.zeros(n, 2), torch.randint(0, 1000, (n,)), torch.randn(n, 2)


def _draw(sampler, model, d, n: int, seed: int = 0, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return sampler.sample(model, d, (n, 2), generator=gen, progress=False, **kwargs)


@pytest.mark.parametrize(
    ("sampler", "objective"), [(s, "eps") for s in SAMPLERS] + [(DDIMSampler(8), "v")], ids=repr
)
def test_every_sampler_is_guided_through_the_shared_loop(sampler, objective: str) -> None:
    """w = 1 samples with the class's own oracle, w = 0 with the unlabelled mixture's, and w = 3 with the
    guided eps formed by hand: the same samples from the same seed, for every sampler and objective."""
    d = _diffusion(objective)
    mix = GaussianMixtureOracle.anisotropic(d)
    y = torch.tensor([0, 1, 2, 3, 2, 0])  # 3: the null label
    per_class = [GaussianOracle(d, mix.means[k], mix.covs[k]) for k in range(3)]

    def conditional(x, t):
        out = torch.stack([(per_class[k] if k < 3 else mix)(x, t) for k in y.tolist()], 1)
        return out[torch.arange(len(x)), torch.arange(len(x))]

    def guided(x, t):
        return mix(x, t) + 3.0 * (conditional(x, t) - mix(x, t))  # Ho & Salimans eq. 6, w' = 2

    n = len(y)
    assert torch.allclose(_draw(sampler, mix, d, n, y=y), _draw(sampler, conditional, d, n), atol=1e-5)
    assert torch.allclose(_draw(sampler, mix, d, n, y=y, guidance_scale=0.0), _draw(sampler, mix, d, n))
    got = _draw(sampler, mix, d, n, y=y, guidance_scale=3.0)
    assert torch.allclose(got, _draw(sampler, guided, d, n), atol=1e-4)


@pytest.mark.parametrize("sampler", [DPMSolverSampler(20), UniPCSampler(20)], ids=repr)
def test_guidance_scale_1_recovers_each_class_gaussian(sampler, gaussian_2d) -> None:
    """Within the oracle tests' tolerances (tests/test_solvers.py: mean 0.02, covariance 0.03), on three
    classes of the scale those tests use (class 0 is their Gaussian)."""
    d = _diffusion()
    mu, sigma = gaussian_2d
    means = torch.stack([mu, torch.tensor([-2.0, 1.0]), torch.tensor([2.0, 2.0])])
    covs = torch.stack(
        [sigma, torch.tensor([[0.8, -0.2], [-0.2, 0.6]]), torch.tensor([[0.4, 0.0], [0.0, 0.7]])]
    )
    mix = GaussianMixtureOracle(d, means, covs)
    for k in range(3):
        mean, cov = affine_moments(sampler, mix, d, 2, y=torch.full((3,), k))
        err = relative_frobenius(cov, mix.covs[k])
        assert torch.allclose(mean, mix.means[k], atol=0.02), (k, mean)
        assert err < 0.03, (k, err)


def test_guidance_scale_0_samples_the_mixture_and_1_each_class() -> None:
    d = _diffusion()
    mix = GaussianMixtureOracle.anisotropic(d)
    y = torch.arange(3).repeat_interleave(700)
    x0 = _draw(UniPCSampler(10), mix, d, len(y), seed=4, y=y, guidance_scale=0.0)
    # binomial standard error of a weight <= sqrt(0.25 / 2100) = 0.011; 4 of them is 0.044
    assert torch.allclose(mix.mode_weights(x0), mix.weights, atol=0.044)
    # the anisotropic components barely overlap: at w = 1 each sample is its own class's
    x1 = _draw(UniPCSampler(10), mix, d, len(y), seed=4, y=y)
    assert float(mix.class_log_prob(x1, y).exp().mean()) > 0.97


def test_mean_log_p_y_given_x_rises_with_guidance_scale() -> None:
    """For w > 1 the samples' mean log p(y | x) rises with w (common random numbers across w)."""
    d = _diffusion()
    mix = _overlapping(d)
    y = torch.arange(3).repeat_interleave(300)
    means = []
    for w in (0.0, 1.0, 2.0, 4.0):
        x = _draw(UniPCSampler(10), mix, d, len(y), seed=5, y=y, guidance_scale=w)
        means.append(float(mix.class_log_prob(x, y).mean()))
    # measured -1.72, -0.65, -0.29, -0.09: each step far above the ~0.03 sampling noise of a mean of 900
    assert all(b > a + 0.1 for a, b in itertools.pairwise(means)), means


def test_class_log_prob_is_bayes_rule() -> None:
    d = _diffusion()
    mix = GaussianMixtureOracle(d, torch.tensor([[0.0], [2.0], [5.0]]), torch.ones(3, 1, 1), None, [0, 1, 1])
    x = torch.tensor([[1.0]], dtype=torch.float64)
    dens = torch.distributions.Normal(torch.tensor([0.0, 2.0, 5.0]).double(), 1.0).log_prob(x[0]).exp()
    assert torch.allclose(mix.class_log_prob(x, 1).exp(), (dens[1] + dens[2]) / dens.sum())
    assert mix.num_classes == 2
    samples = mix.sample(2000, torch.Generator().manual_seed(0), y=1)
    assert float(samples.min()) > -2.5  # only the components of class 1 (means 2 and 5)


def test_guided_call_is_one_batched_network_call() -> None:
    calls = []

    def net(x, t, y):
        calls.append(len(x))
        return x * (y[:, None].float() + 1)

    guided = ClassifierFreeGuidance(net, torch.tensor([0, 1]), 2.5, num_classes=2)
    out = guided(torch.ones(2, 2), torch.zeros(2, dtype=torch.long))
    assert calls == [4]
    # eps(null) = 3, eps(y) = 1 and 2: 3 + 2.5 (eps(y) - 3)
    assert torch.allclose(out, torch.tensor([[-2.0, -2.0], [0.5, 0.5]]))
    # guidance rescale phi = 1 (Lin et al. 2023 eq. 15-16): the guided output with the conditional one's std
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    t = torch.zeros(2, dtype=torch.long)
    full = ClassifierFreeGuidance(net, torch.tensor([0, 1]), 2.5, guidance_rescale=1.0, num_classes=2)(x, t)
    plain = ClassifierFreeGuidance(net, torch.tensor([0, 1]), 2.5, num_classes=2)(x, t)
    cond = net(x, t, torch.tensor([0, 1]))
    assert torch.allclose(full.std(1), cond.std(1)) and torch.allclose(
        full / full.std(1, keepdim=True), plain / plain.std(1, keepdim=True)
    )


@pytest.mark.parametrize("shape", [(2,), (2, 3), (2, 3, 4, 4)])
def test_a_learned_variance_is_not_guided(shape: tuple[int, ...]) -> None:
    # a network with a learned variance (improved DDPM) outputs [prediction, variance] along dim 1
    def net(x, t, y):
        scale = (y.float() + 1).reshape(-1, *[1] * (x.ndim - 1))
        prediction, variance = x * scale, -x * scale**2
        return torch.stack([prediction, variance], 1) if x.ndim == 1 else torch.cat([prediction, variance], 1)

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    t, y, null = torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]), torch.tensor([2, 2])
    out = ClassifierFreeGuidance(net, y, 2.5, num_classes=2)(x, t)
    cond, uncond = net(x, t, y), net(x, t, null)
    half = 1 if len(shape) == 1 else shape[1]
    # the prediction: eps(null) + w (eps(y) - eps(null)); the variance: the conditional branch's
    assert torch.allclose(
        out[:, :half].reshape(x.shape), (uncond + 2.5 * (cond - uncond))[:, :half].reshape(x.shape)
    )
    assert torch.equal(out[:, half:], cond[:, half:])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: DDIMSampler(10, guidance_scale=-1.0), r"guidance_scale=-1\.0 is invalid"),
        (lambda: UniPCSampler(10, guidance_scale=float("nan")), r"guidance_scale=nan is invalid"),
        (lambda: ClassifierFreeGuidance(MLPDenoiser(2, num_classes=3), torch.tensor([4]), 1.0), "label 4"),
        (lambda: ClassifierFreeGuidance(MLPDenoiser(2, num_classes=3), torch.tensor([[1]]), 1.0), "shape"),
        (lambda: ClassifierFreeGuidance(MLPDenoiser(2), torch.tensor([1]), 1.0), "unconditional"),
        (lambda: MLPDenoiser(2, num_classes=3)(torch.zeros(2, 2), torch.zeros(2), torch.zeros(3)), "shape"),
        (lambda: MLPDenoiser(2)(torch.zeros(2, 2), torch.zeros(2), torch.zeros(2).long()), "num_classes=0"),
        (lambda: MLPDenoiser(2, num_classes=-1), "num_classes=-1"),
        (lambda: _loss()(MLPDenoiser(2), *_inputs(2), y=torch.zeros(2)), "no num"),
        (
            lambda: SimpleLoss(GaussianDiffusion(torch.full((10,), 0.1)), cond_drop_prob=1.0),
            "cond_drop_prob=1.0",
        ),
    ],
)
def test_bad_labels_and_scales_are_one_line_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: MLPDenoiser(2, hidden=32, depth=2, num_classes=k),
        lambda k: UNet(1, 8, 32, (1,), 1, (), 0.0, num_classes=k),
    ],
    ids=["mlp", "unet"],
)
def test_unconditional_network_is_unchanged_by_the_class_option(make) -> None:
    """num_classes=0 has no class parameters, and the same seed draws the same shared weights with or
    without classes (the class embedding is created last), so unconditional runs start where they did."""
    torch.manual_seed(0)
    plain = make(0)
    torch.manual_seed(0)
    cond = make(5)
    shared = plain.state_dict()
    extra = {k: v for k, v in cond.state_dict().items() if k not in shared}
    assert list(extra) == ["class_embed.embed.weight"] and extra["class_embed.embed.weight"].shape[0] == 6
    assert all(torch.equal(v, cond.state_dict()[k]) for k, v in shared.items())
    # the null label moves the output away from a labelled one: the embedding reaches the output
    for p in cond.parameters():
        torch.nn.init.normal_(p, std=0.1) if p.ndim > 1 else None
    shape = (3, 2) if isinstance(cond, MLPDenoiser) else (3, 1, 8, 8)
    x, t = torch.randn(shape), torch.tensor([5, 50, 500])
    assert not torch.allclose(cond(x, t, torch.tensor([0, 1, 2])), cond(x, t))


def test_label_dropout_replaces_labels_with_the_null_label() -> None:
    d = SimpleLoss(GaussianDiffusion(make_beta_schedule("linear", 1000)), cond_drop_prob=0.3)
    seen = []

    class Net(torch.nn.Module):
        num_classes = 4

        def forward(self, x, t, y):
            seen.append(y.clone())
            return torch.zeros_like(x)

    torch.manual_seed(0)
    d(Net(), *_inputs(20_000), y=torch.full((20_000,), 2))
    dropped = (seen[0] == 4).float().mean()
    assert set(seen[0].tolist()) == {2, 4} and abs(float(dropped) - 0.3) < 0.015  # 4.6 standard errors
    d(Net(), *_inputs(100), y=torch.full((100,), 2), cond_drop_prob=0.0)
    assert bool((seen[1] == 2).all())
