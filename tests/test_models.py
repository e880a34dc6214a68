"""Denoiser networks: shapes, time conditioning, and the seed 001 run end to end."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.losses import SimpleLoss
from ddpm.models import MLPDenoiser, sinusoidal_embedding
from ddpm.samplers import DDPMSampler
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule


def test_sinusoidal_embedding_values() -> None:
    t = torch.tensor([0, 3])
    emb = sinusoidal_embedding(t, 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    freqs = [math.exp(-math.log(10000) * k / 4) for k in range(4)]
    expected = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs]
    assert torch.allclose(emb[1], torch.tensor(expected), atol=1e-6)
    assert sinusoidal_embedding(t, 7).shape == (2, 7)


@pytest.mark.parametrize(("shape", "dim"), [((16,), 1), ((16, 1), 1), ((16, 100), 100), ((16, 2), 2)])
def test_mlp_shapes(shape: tuple[int, ...], dim: int) -> None:
    net = MLPDenoiser(dim, hidden=32, depth=2)
    out = net(torch.randn(shape), torch.randint(0, 1000, (shape[0],)))
    assert out.shape == shape


def test_mlp_depends_on_time() -> None:
    torch.manual_seed(0)
    net = MLPDenoiser(2, hidden=32, depth=2)
    x = torch.randn(4, 2)
    assert not torch.allclose(net(x, torch.zeros(4, dtype=torch.long)), net(x, torch.full((4,), 500)))


def test_mlp_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"data_dim=2.*\(4, 3\)"):
        MLPDenoiser(2)(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="depth=0"):
        MLPDenoiser(2, depth=0)


def test_seed_001_point_end_to_end() -> None:
    """Seed 001 (conf/experiment/seed_point.yaml): learn x0 = 5.0 with T = 50, linear 1e-4..0.01, and
    regenerate it from noise."""
    torch.manual_seed(0)
    with pytest.warns(NotPureNoiseWarning):  # the seed's chain ends at abar = 0.776
        betas = make_beta_schedule("linear", 50, beta_start=1e-4, beta_end=0.01)
    diffusion = GaussianDiffusion(betas)
    net = MLPDenoiser(1, hidden=64, depth=2)
    steps = 1500
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x0 = torch.full((256,), 5.0)  # the experiment's batch (conf/data/_toy.yaml)
    losses = []
    for _ in range(steps):
        t = torch.randint(0, diffusion.T, (x0.shape[0],))
        loss = SimpleLoss(diffusion)(net, x0, t, torch.randn_like(x0)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert sum(losses[-100:]) / 100 < 0.1 * sum(losses[:100]) / 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = DDPMSampler().sample(
            net, diffusion, (2000,), generator=torch.Generator().manual_seed(1), progress=False
        )
    assert abs(samples.mean().item() - 5.0) < 0.05
    assert samples.std().item() < 0.1
