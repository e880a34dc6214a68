"""Improved DDPM (Nichol & Dhariwal 2021) and the two schedule fixes: learned variances, the hybrid and vlb
losses, importance-sampled timesteps, zero-terminal-SNR rescaling and offset noise.

References: improved-diffusion's ``gaussian_diffusion.py`` (``p_mean_variance``, ``training_losses``) and
``resample.py`` (``LossSecondMomentResampler``), transcribed below in numpy; diffusers'
``rescale_zero_terminal_snr``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm.build import check_network
from ddpm.config import ConfigError
from ddpm.diffusion import GaussianDiffusion
from ddpm.likelihood import variational_bound
from ddpm.losses import LN2, HybridLoss, SimpleLoss, VLBLoss, vb_terms_nats
from ddpm.models import MLPDenoiser, UNet
from ddpm.oracle import GaussianOracle
from ddpm.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, HeunSampler, UniPCSampler
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule, rescale_zero_terminal_snr
from ddpm.timestep_sampling import HISTORY_PER_TERM, UNIFORM_PROB, LossSecondMomentTimesteps


def _betas(name: str = "cosine", T: int = 50, **kw) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        return make_beta_schedule(name, T, **kw)


# ----------------------------------------------------------------------------- learned variances
def _improved_diffusion_learned_range(betas: np.ndarray, t: np.ndarray, v: np.ndarray) -> np.ndarray:
    """improved-diffusion's LEARNED_RANGE log-variance (p_mean_variance), transcribed in numpy."""
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
    min_log, max_log = clipped[t], np.log(betas)[t]
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def test_learned_range_spans_fixed_small_to_fixed_large_and_matches_improved_diffusion() -> None:
    betas = _betas("linear", 100)
    d = GaussianDiffusion(betas, variance="learned_range")
    x = torch.zeros(100, 3)
    t = torch.arange(100)
    for v, fixed in ((1.0, "fixed_large"), (-1.0, "fixed_small")):
        _, log_var = d.reverse_variance(t, x, torch.full_like(x, v))
        _, expected = GaussianDiffusion(betas, variance=fixed).reverse_variance(t, x)
        # t >= 1 exactly; t = 0's upper end is log beta_0 as in improved-diffusion (fixed_large uses
        # beta-tilde_1 there, DDPM's choice for a better decoder)
        rows = slice(0, None) if fixed == "fixed_small" else slice(1, None)
        assert torch.equal(log_var[rows], expected.expand_as(x)[rows]), fixed
    v = torch.rand(100, 3) * 2 - 1
    _, log_var = d.reverse_variance(t, x, v)
    ref = _improved_diffusion_learned_range(betas.numpy(), t.numpy()[:, None], v.double().numpy())
    np.testing.assert_allclose(log_var.numpy(), ref, rtol=1e-5, atol=1e-5)
    # learned: the output is log sigma^2
    assert torch.equal(GaussianDiffusion(betas, variance="learned").reverse_variance(t, x, v)[1], v)


def test_a_learned_variance_output_is_split_on_the_channel_axis() -> None:
    d = GaussianDiffusion(_betas(), variance="learned_range")
    assert d.output_shape((4, 3, 8, 8)) == (4, 6, 8, 8) and d.output_shape((4,)) == (4, 2)
    x = torch.randn(4, 3, 8, 8)
    out = torch.randn(4, 6, 8, 8)
    mean_part, var_part = d.split_output(out, x)
    assert torch.equal(mean_part, out[:, :3]) and torch.equal(var_part, out[:, 3:])
    # the samplers' x0 ignores the variance half
    assert torch.equal(d.predict_x0(x, 5, out), d.predict_x0(x, 5, out[:, :3]))
    # the one shape check, with the message the build and the losses give too
    with pytest.raises(ValueError, match=r"outputs \(5, 8, 8\) per sample for data of shape \(3, 8, 8\)"):
        d.split_output(torch.randn(4, 5, 8, 8), x)


def test_models_take_the_output_multiplier() -> None:
    unet = UNet(1, 8, 16, (1, 2), 1, (), 0.0, 1, 8, out_mult=2)
    assert unet(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)).shape == (2, 2, 8, 8)
    default = UNet(1, 8, 16, (1, 2), 1, (), 0.0, 1, 8)
    # the default layout is unchanged: the same parameter names and shapes, conv_out aside
    assert default.conv_out.weight.shape[0] == 1
    assert [k for k in default.state_dict()] == [k for k in unet.state_dict()]
    mlp = MLPDenoiser(2, hidden=16, depth=1, out_mult=2)
    assert mlp(torch.randn(5, 2), torch.zeros(5, dtype=torch.long)).shape == (5, 4)
    assert MLPDenoiser(1, hidden=16, depth=1, out_mult=2)(torch.randn(5), torch.zeros(5).long()).shape == (
        5,
        2,
    )


def test_a_network_of_the_wrong_output_size_is_a_one_line_error_at_build() -> None:
    d = GaussianDiffusion(_betas(), variance="learned_range")
    net = UNet(1, 8, 16, (1, 2), 1, (), 0.0, 1, 8)  # out_mult=1
    with pytest.raises(ConfigError, match=r"variance=learned_range needs the network to output 2x") as err:
        check_network(net, d, (1, 8, 8))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"variance=fixed_large needs an output of the data's shape"):
        check_network(
            UNet(1, 8, 16, (1, 2), 1, (), 0.0, 1, 8, out_mult=2), GaussianDiffusion(_betas()), (1, 8, 8)
        )
    check_network(UNet(1, 8, 16, (1, 2), 1, (), 0.0, 1, 8, out_mult=2), d, (1, 8, 8))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: HybridLoss(GaussianDiffusion(_betas())),
            r"loss=hybrid with diffusion.variance=fixed_large: its L_vlb term trains only the variance",
        ),
        (
            lambda: _module(GaussianDiffusion(_betas()), SimpleLoss),
            r"LossSecondMomentTimesteps samples t by the bound's per-t terms L_t, which SimpleLoss\(",
        ),
        (lambda: SimpleLoss(GaussianDiffusion(_betas()), offset_noise=-0.1), r"offset_noise=-0.1 is invalid"),
        (lambda: SimpleLoss(GaussianDiffusion(_betas()), distance="l2"), r"distance='l2' is unknown"),
        (lambda: VLBLoss(GaussianDiffusion(_betas()), decoder="bits"), r"decoder='bits' is unknown"),
        (lambda: GaussianDiffusion(_betas(), variance="learnt"), r"variance='learnt' is unknown"),
    ],
)
def test_bad_combinations_are_refused_in_one_line(make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        make()
    assert "\n" not in str(err.value)


def _module(d: GaussianDiffusion, loss: type = VLBLoss):
    """A training module whose timesteps are importance-sampled, with ``loss``."""
    from ddpm.lit_module import DiffusionModule

    net = MLPDenoiser(2, hidden=8, depth=1, out_mult=d.output_multiplier)
    return DiffusionModule(
        net, d, DDPMSampler(), torch.optim.SGD, loss=loss(d), timestep_sampler=LossSecondMomentTimesteps(d)
    )


# ----------------------------------------------------------------------------- the losses
def test_the_hybrid_losss_vlb_term_has_no_gradient_into_the_mean() -> None:
    torch.manual_seed(0)
    d = GaussianDiffusion(_betas(), variance="learned_range")
    hybrid_loss = HybridLoss(d, decoder="gaussian")
    x0 = torch.randn(8, 2, 4, 4).clamp(-1, 1)
    t = torch.arange(8) * 6
    noise = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, noise)
    out = torch.randn(8, 4, 4, 4, requires_grad=True)
    hybrid_loss.bound(d, out, x0, x_t, t, stop_mean_gradient=True).sum().backward()
    assert out.grad is not None
    assert torch.count_nonzero(out.grad[:, :2]) == 0  # the mean's half: no gradient
    assert torch.count_nonzero(out.grad[:, 2:]) > 0  # the variance's half trains
    # and the hybrid loss is L_simple + lambda * T * L_t (bits/dim), L_t from ddpm.losses.vb_terms_nats
    fixed = out.detach()
    hybrid = hybrid_loss(lambda *_: fixed, x0, t, noise)
    mse = (fixed[:, :2] - noise).square().flatten(1).mean(1)
    nats = vb_terms_nats(d, fixed, x0, x_t, t, decoder="gaussian", clip_denoised=False)
    expected = mse + 1e-3 * d.T * nats / (x0[0].numel() * LN2)
    torch.testing.assert_close(hybrid, expected.float(), rtol=1e-5, atol=1e-6)
    # loss=vlb trains the mean too
    out.grad = None
    VLBLoss(d)(lambda *_: out, x0, t, noise).mean().backward()
    assert torch.count_nonzero(out.grad[:, :2]) > 0


def test_vlb_with_the_oracle_and_its_optimal_variance_beats_both_fixed_variances() -> None:
    """For Gaussian data the best per-step variance given the exact posterior mean is
    sigma*^2 = beta-tilde_t + coef1_t^2 Var(x0 | x_t) (the KL's minimiser), between the two fixed ones."""
    T, s2 = 40, 0.25
    betas = _betas("linear", T, beta_start=1e-3, beta_end=0.2)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2000, 2, generator=gen) * math.sqrt(s2)
    bounds = {}
    for variance in ("fixed_large", "fixed_small", "learned"):
        d = GaussianDiffusion(betas, variance=variance)
        oracle = GaussianOracle(d, torch.zeros(2), s2 * torch.eye(2))
        abar = d.alphas_cumprod.double()
        var_x0 = s2 * (1 - abar) / (1 - abar + abar * s2)  # Var(x0 | x_t) of N(0, s2 I) data
        # the decoder (t = 0): its NLL's optimal variance is Var(x0 | x_1) itself
        best = torch.where(
            torch.arange(T) == 0,
            var_x0,
            d.posterior_variance.double() + d.posterior_mean_coef1.double() ** 2 * var_x0,
        )

        def model(x_t: torch.Tensor, t: torch.Tensor, d=d, oracle=oracle, best=best) -> torch.Tensor:
            eps = oracle(x_t, t)
            if not d.learns_variance:
                return eps
            return torch.cat([eps, best.log()[t].float()[:, None].expand_as(eps)], dim=1)

        bounds[variance] = variational_bound(
            d, model, x0, decoder="gaussian", generator=torch.Generator().manual_seed(1)
        ).bits_per_dim
    assert bounds["learned"] < bounds["fixed_small"] and bounds["learned"] < bounds["fixed_large"], bounds


# ----------------------------------------------------------------------------- importance sampling
class _ImprovedDiffusionResampler:
    """improved-diffusion's LossSecondMomentResampler (resample.py), transcribed in numpy."""

    def __init__(self, T: int, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        self.history_per_term, self.uniform_prob = history_per_term, uniform_prob
        self.history = np.zeros([T, history_per_term], dtype=np.float64)
        self.counts = np.zeros([T], dtype=int)

    def weights(self) -> np.ndarray:
        if not (self.counts == self.history_per_term).all():
            return np.ones([len(self.counts)], dtype=np.float64) / len(self.counts)
        weights = np.sqrt(np.mean(self.history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        return weights + self.uniform_prob / len(weights)

    def update(self, ts: list[int], losses: list[float]) -> None:
        for t, loss in zip(ts, losses, strict=True):
            if self.counts[t] == self.history_per_term:
                self.history[t, :-1] = self.history[t, 1:]
                self.history[t, -1] = loss
            else:
                self.history[t, self.counts[t]] = loss
                self.counts[t] += 1


def test_the_importance_sampler_follows_sqrt_of_the_second_moment_as_improved_diffusion() -> None:
    T = 20
    d = LossSecondMomentTimesteps(GaussianDiffusion(_betas(T=T), variance="learned_range"))
    ref = _ImprovedDiffusionResampler(T)
    rng = np.random.default_rng(0)
    warm = False
    for _ in range(40):
        ts = rng.integers(0, T, 16)
        losses = rng.gamma(2.0, 1.0 + ts)  # larger at larger t
        d.update(torch.from_numpy(ts), torch.from_numpy(losses))
        ref.update(ts.tolist(), losses.tolist())
        np.testing.assert_allclose(d.probabilities().numpy(), ref.weights(), rtol=1e-12)
        if not warm:  # uniform until every t holds its 10 losses
            warm = bool((ref.counts == HISTORY_PER_TERM).all())
            assert d.warm == warm
    assert warm and d.warm
    p = d.probabilities()
    second_moment = torch.from_numpy(ref.history).square().mean(1).sqrt()
    # p_t = (1 - u) sqrt(E[L_t^2]) / sum + u / T (improved DDPM eq. 18 with improved-diffusion's u = 0.001)
    torch.testing.assert_close(p, (1 - UNIFORM_PROB) * second_moment / second_moment.sum() + UNIFORM_PROB / T)


def test_importance_weighted_losses_stay_unbiased_on_a_known_table() -> None:
    T = 10
    d = LossSecondMomentTimesteps(GaussianDiffusion(_betas(T=T), variance="learned"))
    table = torch.linspace(1.0, 50.0, T, dtype=torch.float64) ** 2  # a known L_t, spread over 2500x
    for _ in range(HISTORY_PER_TERM):
        d.update(torch.arange(T), table)
    p = d.probabilities()
    assert not torch.allclose(p, torch.full_like(p, 1 / T))  # really not uniform
    # exact: E_{t~p}[L_t / (T p_t)] = mean_t L_t
    weights_of_each_t = 1 / (T * p)
    assert math.isclose(float((p * weights_of_each_t * table).sum()), float(table.mean()), rel_tol=1e-6)
    # and drawn, with the weights sample() returns beside each t: the weighted sample mean estimates the
    # same, with less variance than uniform draws
    gen = torch.Generator().manual_seed(0)
    t, weights = d.sample(200_000, generator=gen)
    torch.testing.assert_close(weights, weights_of_each_t[t].float())
    estimate = (weights.double() * table[t]).mean()
    assert abs(float(estimate) / float(table.mean()) - 1) < 0.005
    uniform_var = table.var(unbiased=False)
    weighted_var = (p * (weights_of_each_t * table - table.mean()) ** 2).sum()
    assert weighted_var < uniform_var / 10


def test_the_sampler_history_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    a, b = (LossSecondMomentTimesteps(GaussianDiffusion(_betas(T=8))) for _ in range(2))
    a.update(torch.randint(0, 8, (200,)), torch.rand(200))
    torch.save({"timestep_sampler": a.state_dict()}, tmp_path / "x.ckpt")
    b.load_state_dict(torch.load(tmp_path / "x.ckpt", weights_only=True)["timestep_sampler"])
    assert a.warm and torch.equal(a.probabilities(), b.probabilities())
    draws = [d.sample(64, generator=torch.Generator().manual_seed(3)) for d in (a, b)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    with pytest.raises(ValueError, match="timestep-sampler history has shape"):
        LossSecondMomentTimesteps(GaussianDiffusion(_betas(T=9))).load_state_dict(a.state_dict())


def test_the_training_module_gathers_every_ranks_losses_into_the_history() -> None:
    """DDP on one process: a strategy whose all_gather returns this rank's tensors and a second rank's
    (with a smaller last batch, padded), as Lightning's DDP all_gather stacks them."""
    module = _module(GaussianDiffusion(_betas(T=8), variance="learned_range"))
    other_t, other_loss = torch.tensor([7, 7, -1]), torch.tensor([5.0, 6.0, 0.0])  # rank 1: 2 real, 1 pad

    class TwoRanks:
        def all_gather(self, x: torch.Tensor) -> torch.Tensor:
            if x.numel() == 1:  # the batch sizes
                return torch.stack([x, torch.tensor([2])])
            other = other_t if x.dtype == torch.long else other_loss
            return torch.stack([x, other[: x.shape[0]]])

    module._trainer = SimpleNamespace(world_size=2, strategy=TwoRanks())  # type: ignore[assignment]
    t, losses = module._gather_across_ranks(torch.tensor([1, 2, 7]), torch.tensor([1.0, 2.0, 3.0]))
    assert t.tolist() == [1, 2, 7, 7, 7] and losses.tolist() == [1.0, 2.0, 3.0, 5.0, 6.0]
    module._trainer = None


# ----------------------------------------------------------------------------- zero terminal SNR
@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "sigmoid"])
def test_zero_terminal_snr_rescale(name: str) -> None:
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    betas = _betas(name, 200)
    rescaled = make_beta_schedule(name, 200, rescale_zero_terminal_snr=True)
    abar = torch.cumprod(1 - rescaled, 0)
    assert abar[-1] == 0 and rescaled[-1] == 1
    assert bool((abar.sqrt().diff() < 0).all())  # sqrt(abar) stays strictly decreasing
    assert math.isclose(float(abar[0]), float(1 - betas[0]), rel_tol=1e-12)  # abar[0] kept
    torch.testing.assert_close(rescaled, diffusers_rescale(betas), rtol=0, atol=1e-12)
    torch.testing.assert_close(rescale_zero_terminal_snr(betas), rescaled)


def test_the_rescaled_schedule_is_pure_noise_so_nothing_warns() -> None:
    with pytest.warns(NotPureNoiseWarning):
        make_beta_schedule("linear", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotPureNoiseWarning)
        make_beta_schedule("linear", 100, rescale_zero_terminal_snr=True)


def test_the_eps_objective_is_refused_on_a_zero_terminal_snr_schedule() -> None:
    betas = make_beta_schedule("linear", 100, rescale_zero_terminal_snr=True)
    with pytest.raises(
        ValueError, match=r"objective=eps with a zero-terminal-SNR schedule .* use objective=v or x0"
    ):
        GaussianDiffusion(betas)


@pytest.mark.parametrize("objective", ["v", "x0"])
def test_every_sampler_starts_from_pure_noise_at_abar_zero(objective: str) -> None:
    betas = make_beta_schedule("cosine", 100, rescale_zero_terminal_snr=True)
    d = GaussianDiffusion(betas, objective=objective)
    oracle = GaussianOracle(d, torch.full((2,), 0.3), 0.2 * torch.eye(2))
    samplers = [
        DDPMSampler(),
        DDPMSampler(10, spacing="trailing"),
        DDIMSampler(10, spacing="trailing"),
        DDIMSampler(10, eta=1.0, spacing="trailing"),
        DPMSolverSampler(10, order=3, spacing="trailing"),
        UniPCSampler(10, order=3, spacing="trailing"),
        HeunSampler(5, spacing="trailing"),
        HeunSampler(5),  # karras: sigma_max from abar = 2**-24
    ]
    gen = torch.Generator().manual_seed(0)
    for sampler in samplers:
        assert sampler.timesteps(d)[0] == 99
        out = sampler.sample(oracle, d, (2000, 2), generator=gen, progress=False, return_trajectory=True)
        assert torch.isfinite(out.trajectory).all(), sampler
        # the first step sees pure noise: the best x0 there is the data mean (the solvers take
        # abar = 2**-24 for it, as diffusers, so theirs is off by 2**-12 x_t)
        torch.testing.assert_close(out.pred_x0[0], torch.full((2000, 2), 0.3), atol=2e-3, rtol=0)
        if isinstance(sampler, DDPMSampler) and sampler.steps is None:  # all steps: the data's moments
            torch.testing.assert_close(out.samples.mean(0), torch.full((2,), 0.3), atol=0.04, rtol=0)
            torch.testing.assert_close(out.samples.var(0), torch.full((2,), 0.2), atol=0.03, rtol=0)


# ----------------------------------------------------------------------------- offset noise
def test_offset_noise_adds_one_constant_per_sample_and_channel() -> None:
    d = SimpleLoss(GaussianDiffusion(_betas()), offset_noise=0.5)
    x0 = torch.zeros(4000, 2, 8, 8)
    noise = d.noise(x0, generator=torch.Generator().manual_seed(0))
    # Var = 1 + 0.25; pixels of one (sample, channel) share the offset: their covariance is 0.25
    assert abs(float(noise.var()) - 1.25) < 0.02
    flat = noise.flatten(2)
    cov = ((flat[:, :, 0] - flat[:, :, 0].mean()) * (flat[:, :, 1] - flat[:, :, 1].mean())).mean()
    assert abs(float(cov) - 0.25) < 0.03
    across = (flat[:, 0, 0] * flat[:, 1, 0]).mean()  # different channels: independent offsets
    assert abs(float(across)) < 0.05
    plain = SimpleLoss(GaussianDiffusion(_betas())).noise(x0, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))  # 0: off
    with pytest.raises(ValueError, match=r"offset_noise=0.5 needs data with channels and positions"):
        d.check_data((4, 2))


# ----------------------------------------------------------------------------- runs
@pytest.mark.slow
def test_a_digits_iddpm_run_trains_and_ddpm_eval_bpd_uses_its_learned_variances(
    tmp_path: Path, capsys
) -> None:
    from ddpm.build import load_run
    from ddpm.cli.eval import main as eval_main
    from tests.helpers import SHORT, run_train

    overrides = [
        "experiment=digits_iddpm",
        *SHORT,
        "T=20",
        "sampler.steps=10",
        "callbacks.samples.metric_samples=0",
    ]
    overrides += ["loss=vlb", "timestep_sampler=loss_second_moment", "cpu_threads=1"]
    _, run_dir = run_train(tmp_path, overrides)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    counts = ckpt["timestep_sampler"]["loss_counts"]
    assert 0 < int(counts.sum()) <= 20 * HISTORY_PER_TERM  # the history of the 4 steps' losses is saved
    assert eval_main([str(run_dir), "--bpd", "--no-quality", "--bpd-n", "40"]) == 0
    result = next((run_dir / "eval").glob("*_bpd.json"))

    bpd = json.loads(result.read_text())["bpd"]
    assert bpd["decoder_kind"] == "discretized" and bpd["bins"] == 17 and bpd["T"] == 20
    # the bound is the learned variances': not the fixed variances' for the same means
    run = load_run(run_dir)
    x = run.data.normalize(run.data.held_out(40))
    own = variational_bound(
        run.model.diffusion, run.model.net, x, bins=17, generator=torch.Generator().manual_seed(0)
    )
    net = run.model.net
    with torch.no_grad():  # the variance channel set to v = -1: the bound becomes fixed_small's exactly
        net.conv_out.weight[1:].zero_()
        net.conv_out.bias[1:].fill_(-1.0)
    at_small = variational_bound(
        run.model.diffusion, net, x, bins=17, generator=torch.Generator().manual_seed(0)
    )
    fixed = GaussianDiffusion(run.model.diffusion.betas.double(), variance="fixed_small", clip_denoised=True)
    reference = variational_bound(
        fixed, lambda x_t, t: net(x_t, t)[:, :1], x, bins=17, generator=torch.Generator().manual_seed(0)
    )
    assert math.isclose(at_small.bits_per_dim, reference.bits_per_dim, rel_tol=1e-6)
    assert not math.isclose(own.bits_per_dim, at_small.bits_per_dim, rel_tol=1e-3)
