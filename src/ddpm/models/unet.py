"""The DDPM UNet (Ho et al. 2020, appendix B), in the layout of openai/improved-diffusion.

A PixelCNN++-style backbone: ``len(channel_mult)`` resolution levels, each with ``num_res_blocks`` wide
residual blocks (GroupNorm, SiLU, 3x3 convs, the timestep embedding added in between), self-attention at
the resolutions in ``attn_resolutions``, strided-conv downsampling and nearest-neighbour + conv
upsampling, skip connections from every block of the down path into the up path, and a middle stage of
ResBlock - attention - ResBlock at the lowest resolution. With ``base_channels=128``,
``channel_mult=(1, 2, 2, 2)``, ``num_res_blocks=2`` and attention at 16x16 it is DDPM's 35.7M-parameter
CIFAR-10 network.

Plain PyTorch: ``forward(x, t, y=None)`` with ``x`` of shape [B, C, H, W], integer timesteps ``t`` [B] and,
for a class-conditional network (``num_classes > 0``), labels ``y`` [B] whose embedding is added to the
timestep embedding (improved-diffusion's ``label_emb``).

Three options exist only to express published weights exactly (:mod:`ddpm.interop`: the DDPM checkpoints in
diffusers' format) and leave the default network unchanged: ``norm_eps`` (DDPM's TF GroupNorm uses 1e-6),
``time_freq_shift`` (DDPM's sinusoidal frequencies divide by half - 1) and ``downsample_padding="tf_same"``
(TF's "SAME" padding of a stride-2 conv: one row and column after, none before).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm.models.embeddings import ClassEmbedding, TimestepEmbedding, check_num_classes, unconditional_y

__all__ = ["DOWNSAMPLE_PADDINGS", "UNet"]

#: how the stride-2 downsampling conv pads: one pixel on every side (PyTorch), or TF's "SAME" (after only)
DOWNSAMPLE_PADDINGS = ("symmetric", "tf_same")


def _zero(module: nn.Module) -> nn.Module:
    # DDPM initialises the last layer of every residual branch (and the output conv) to zero
    # (init_scale=0 in the TF code), so each block starts as the identity.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _ResBlock(nn.Module):
    """Wide ResNet block with the timestep embedding added after the first conv (DDPM's ``resnet_block``)."""

    def __init__(
        self, in_ch: int, out_ch: int, temb_dim: int, dropout: float, groups: int, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        # DDPM's "nin_shortcut": a 1x1 conv where the width changes.
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _AttentionBlock(nn.Module):
    """Residual self-attention over the H*W positions (DDPM's ``attn_block``), with ``heads`` heads."""

    def __init__(self, ch: int, heads: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch, eps=eps)
        # q, k and v as one 1x1 conv: the same parameters as DDPM's three NIN layers.
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        # [B, heads, HW, d] for scaled_dot_product_attention; it scales by 1/sqrt(d) as DDPM does.
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class _Downsample(nn.Module):
    def __init__(self, ch: int, padding: str = "symmetric") -> None:
        super().__init__()
        self.tf_same = padding == "tf_same"
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if self.tf_same else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_same:  # TF "SAME" for an even size, stride 2, kernel 3: pad 0 before, 1 after
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class _Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """The blocks of one resolution on one path: ResBlocks, each optionally followed by attention."""

    def __init__(self) -> None:
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()


class UNet(nn.Module):
    """DDPM's UNet denoiser for images [B, C, H, W].

    Args:
        in_channels: image channels (1 for MNIST and digits, 3 for CIFAR-10).
        image_size: the training resolution; it places attention (``attn_resolutions``) on levels and
            must be divisible by the downsampling factor ``2 ** (len(channel_mult) - 1)``. Other sizes
            divisible by that factor also run.
        base_channels: width of the first level (DDPM: 128).
        channel_mult: width multiplier per level, highest resolution first (DDPM CIFAR-10: 1, 2, 2, 2).
        num_res_blocks: residual blocks per level on the down path (the up path has one more).
        attn_resolutions: resolutions (in pixels, e.g. 16 for 16x16) with self-attention after every
            ResBlock; the middle stage always has attention.
        dropout: dropout inside the residual blocks (DDPM CIFAR-10: 0.1).
        num_heads: attention heads (DDPM: 1).
        norm_groups: GroupNorm groups (DDPM: 32); every level's width must be divisible by it.
        out_channels: output channels; defaults to ``in_channels * out_mult``.
        norm_eps: every GroupNorm's epsilon (PyTorch's 1e-5; DDPM's TF code 1e-6).
        time_freq_shift: the timestep features' frequencies divide by ``base_channels // 2 - shift``
            (0: improved-diffusion; 1: DDPM's TF code and its diffusers port).
        downsample_padding: ``symmetric`` (one pixel on every side) or ``tf_same`` (DDPM's TF code: one row
            and column after, none before).
        out_mult: output channels per input channel when ``out_channels`` is not given: 1 (eps, x0 or v
            prediction) or 2 (the prediction, then a learned variance; the diffusion's
            ``output_multiplier``, which the configs wire in). Only ``conv_out``'s size changes.
        num_classes: class labels ``y`` in 0 .. num_classes - 1 (num_classes is the null label); 0 builds
            the unconditional network, parameter for parameter.
    """

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_heads: int = 1,
        norm_groups: int = 32,
        out_channels: int | None = None,
        norm_eps: float = 1e-5,
        time_freq_shift: int = 0,
        downsample_padding: str = "symmetric",
        out_mult: int = 1,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        channel_mult = tuple(int(m) for m in channel_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        for arg, value in (
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
            ("num_heads", num_heads),
            ("norm_groups", norm_groups),
            ("out_mult", out_mult),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet: {arg}={value!r} is invalid; it must be an integer >= 1")
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"UNet: channel_mult={channel_mult!r} must be a non-empty list of integers >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet: dropout={dropout!r} is outside [0, 1)")
        if not norm_eps > 0:
            raise ValueError(f"UNet: norm_eps={norm_eps!r} is invalid; it must be > 0")
        if isinstance(time_freq_shift, bool) or time_freq_shift not in (0, 1):
            raise ValueError(f"UNet: time_freq_shift={time_freq_shift!r} is invalid; choose 0 or 1")
        if downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(
                f"UNet: downsample_padding={downsample_padding!r} is unknown; choose one of "
                f"{list(DOWNSAMPLE_PADDINGS)}"
            )
        self.factor = 2 ** (len(channel_mult) - 1)
        if image_size % self.factor:
            raise ValueError(
                f"UNet: image_size={image_size} is not divisible by {self.factor}, the downsampling factor "
                f"of {len(channel_mult)} levels (channel_mult={list(channel_mult)}); use an image size that "
                f"is a multiple of {self.factor} (e.g. pad the images) or fewer levels"
            )
        widths = [base_channels * m for m in channel_mult]
        for w in {base_channels, *widths}:
            if w % norm_groups:
                raise ValueError(
                    f"UNet: width {w} is not divisible by norm_groups={norm_groups}; "
                    "choose base_channels and channel_mult so that every level's width is"
                )
            if w % num_heads:
                raise ValueError(f"UNet: width {w} is not divisible by num_heads={num_heads}")
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        unknown = sorted(set(attn_resolutions) - set(resolutions))
        if unknown:
            raise ValueError(
                f"UNet: attn_resolutions={list(attn_resolutions)} includes {unknown}, which never occur for "
                f"image_size={image_size} with {len(channel_mult)} levels; the resolutions are {resolutions}"
            )

        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels * out_mult
        self.image_size = image_size
        self.channel_mult = channel_mult
        self.attn_resolutions = attn_resolutions
        self.base_channels = base_channels
        self.num_res_blocks = num_res_blocks
        self.num_heads = num_heads
        self.norm_groups = norm_groups
        temb_dim = 4 * base_channels
        # DDPM: sinusoidal features of width ch -> dense(4ch) -> swish -> dense(4ch).
        self.time_embed = TimestepEmbedding(base_channels, temb_dim, freq_shift=time_freq_shift)
        self.norm_eps = float(norm_eps)
        self.downsample_padding = downsample_padding

        def attention(ch: int) -> nn.Module:
            return _AttentionBlock(ch, num_heads, norm_groups, norm_eps)

        def resblock(cin: int, cout: int) -> _ResBlock:
            return _ResBlock(cin, cout, temb_dim, dropout, norm_groups, norm_eps)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skip_channels = [base_channels]
        ch = base_channels
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks = _Level()
            for _ in range(num_res_blocks):
                blocks.res.append(resblock(ch, width))
                ch = width
                has_attn = resolutions[level] in attn_resolutions
                blocks.attn.append(attention(ch) if has_attn else nn.Identity())
                skip_channels.append(ch)
            self.down.append(blocks)
            if level != len(widths) - 1:
                self.downsample.append(_Downsample(ch, downsample_padding))
                skip_channels.append(ch)

        self.mid_res1 = resblock(ch, ch)
        self.mid_attn = attention(ch)
        self.mid_res2 = resblock(ch, ch)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = _Level()
            for _ in range(num_res_blocks + 1):
                blocks.res.append(resblock(ch + skip_channels.pop(), widths[level]))
                ch = widths[level]
                has_attn = resolutions[level] in attn_resolutions
                blocks.attn.append(attention(ch) if has_attn else nn.Identity())
            self.up.append(blocks)
            if level != 0:
                self.upsample.append(_Upsample(ch))

        self.norm_out = nn.GroupNorm(norm_groups, ch, eps=norm_eps)
        self.conv_out = _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        # created last, so an unconditional network draws the same initial weights as before
        self.class_embed = ClassEmbedding(num_classes, temb_dim) if num_classes else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict the objective's target for noisy images ``x`` [B, C, H, W] at timesteps ``t`` [B], given
        class labels ``y`` [B] (None: no label) when the network is conditional."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet(in_channels={self.in_channels}) expects images [B, {self.in_channels}, H, W], "
                f"got shape {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"UNet: image size {height}x{width} is not divisible by {self.factor}, the downsampling "
                f"factor of channel_mult={list(self.channel_mult)}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embed(t)
        if self.class_embed is None:
            unconditional_y(y, "UNet")
        else:
            temb = temb + self.class_embed(y, x.shape[0], x.device)
        temb = F.silu(temb)

        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(cast(Iterable[_Level], self.down)):
            for res, attn in zip(blocks.res, blocks.attn, strict=True):
                h = attn(res(h, temb))
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, temb)), temb)

        for i, blocks in enumerate(cast(Iterable[_Level], self.up)):
            for res, attn in zip(blocks.res, blocks.attn, strict=True):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), temb))
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))
