"""The UNet: shapes for any channel count and divisible size, DDPM's parameter count, clear errors."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ddpm.build import build_model
from ddpm.config import CONF_DIR
from ddpm.diffusion import GaussianDiffusion
from ddpm.losses import SimpleLoss
from ddpm.models import UNet
from ddpm.schedules import make_beta_schedule

TINY = {
    "base_channels": 16,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (),
    "dropout": 0.0,
    "norm_groups": 8,
}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def model_from_yaml(name: str, channels: int, image_size: int) -> torch.nn.Module:
    """Instantiate conf/model/<name>.yaml with the data keys it interpolates."""
    cfg = OmegaConf.create(
        {
            "data": {"channels": channels, "image_size": image_size},
            "model": OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"),
        }
    )
    return build_model(cfg)


@pytest.mark.parametrize("size", [8, 28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(size: int, channels: int) -> None:
    torch.manual_seed(0)
    # Attention at the full resolution too, so every block type runs at every size.
    net = UNet(in_channels=channels, image_size=size, **{**TINY, "attn_resolutions": (size,)})
    x = torch.randn(2, channels, size, size)
    out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_output_depends_on_time_and_input_after_a_step() -> None:
    """The zero-initialised output layer gives 0 at first; a few optimiser steps make it depend on x and t.

    (In the first step only the output conv gets a gradient: everything before it feeds a zero layer.)
    """
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, **TINY)
    x = torch.randn(4, 1, 8, 8)
    t = torch.full((4,), 10)
    assert torch.count_nonzero(net(x, t)) == 0  # DDPM: init_scale=0 on the last conv
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 100, warn=False))
    for _ in range(3):  # plain SGD steps (a torch.optim optimizer would import torch._dynamo: seconds)
        net.zero_grad()
        x0 = torch.randn(16, 1, 8, 8)
        SimpleLoss(diffusion)(net, x0, torch.randint(0, 100, (16,)), torch.randn_like(x0)).mean().backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.1 * p.grad
    with torch.no_grad():
        assert not torch.allclose(net(x, t), net(x, torch.full((4,), 90)))
        assert not torch.allclose(net(x, t), net(x.flip(-1), t))


def test_other_sizes_divisible_by_the_factor_run() -> None:
    net = UNet(in_channels=1, image_size=16, base_channels=32, channel_mult=(1, 2, 2), attn_resolutions=(8,))
    assert net.factor == 4
    assert net(torch.randn(1, 1, 12, 20), torch.tensor([5])).shape == (1, 1, 12, 20)


def test_cifar10_config_has_ddpm_parameter_count() -> None:
    """Ho et al. 2020: the CIFAR-10 model has 35.7M parameters."""
    net = model_from_yaml("unet_cifar10", channels=3, image_size=32)
    assert isinstance(net, UNet)
    assert abs(n_params(net) - 35.7e6) < 0.1e6, n_params(net)
    assert net.attn_resolutions == (16,)
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in net.modules()) > 0


def test_smaller_configs() -> None:
    mnist = model_from_yaml("unet_mnist", channels=1, image_size=28)
    tiny = model_from_yaml("unet_tiny", channels=1, image_size=8)
    assert 1e6 < n_params(mnist) < 20e6
    assert 100e3 < n_params(tiny) < 1e6  # "a few hundred K"
    assert tiny(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).shape == (2, 1, 8, 8)


def test_bad_image_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"image_size=28 is not divisible by 8"):
        UNet(in_channels=3, image_size=28)  # DDPM's 4 levels need a multiple of 8
    net = UNet(in_channels=1, image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match=r"image size 28x28 is not divisible by 8"):
        net(torch.randn(1, 1, 28, 28), torch.tensor([0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"attn_resolutions": (16,), "image_size": 28, "channel_mult": (1, 2, 2)},
            r"resolutions are \[28, 14, 7\]",
        ),
        ({"base_channels": 48}, r"width 48 is not divisible by norm_groups=32"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"dropout": 1.0}, r"dropout=1\.0"),
        ({"num_res_blocks": 0}, "num_res_blocks=0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"in_channels": 1, "image_size": 32, "attn_resolutions": (), **kwargs}
    with pytest.raises(ValueError, match=match):
        UNet(**args)


def test_wrong_channel_count_is_named() -> None:
    net = UNet(in_channels=3, image_size=8, **TINY)
    with pytest.raises(ValueError, match=r"in_channels=3.*\(2, 1, 8, 8\)"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
