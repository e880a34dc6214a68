"""A residual MLP denoiser for low-dimensional data: a scalar, a 1D signal, a 2D point."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddpm.models.embeddings import ClassEmbedding, TimestepEmbedding, check_num_classes, unconditional_y


class _ResidualBlock(nn.Module):
    def __init__(self, hidden: int, temb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.temb = nn.Linear(temb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        z = self.act(self.fc1(self.norm(h)) + self.temb(temb))
        return h + self.fc2(self.dropout(z))


class MLPDenoiser(nn.Module):
    """``forward(x, t, y=None)`` for x of shape [B] (scalar data), [B, D] (point) or [B, L] (1D signal).

    Args:
        data_dim: D or L, the number of values per sample (1 for a scalar).
        hidden: width of the residual blocks.
        depth: number of residual blocks.
        time_embed_dim: size of the sinusoidal timestep features.
        dropout: dropout inside the blocks.
        out_mult: outputs per input value: 1, or 2 for a learned variance (the diffusion's
            ``output_multiplier``, which the configs wire in): [B, 2 D] for [B, D] data, [B, 2] for scalars.
        num_classes: class labels ``y`` in 0 .. num_classes - 1 (num_classes is the null label); 0 builds
            the unconditional network, parameter for parameter.
    """

    def __init__(
        self,
        data_dim: int,
        hidden: int = 128,
        depth: int = 3,
        time_embed_dim: int = 64,
        dropout: float = 0.0,
        out_mult: int = 1,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        for arg, value in (
            ("data_dim", data_dim),
            ("hidden", hidden),
            ("depth", depth),
            ("out_mult", out_mult),
        ):
            if value < 1:
                raise ValueError(f"{arg}={value!r} is invalid; it must be an integer >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r} is outside [0, 1)")
        self.data_dim = data_dim
        self.out_mult = out_mult
        self.time_embed = TimestepEmbedding(time_embed_dim)
        temb_dim = 4 * time_embed_dim
        self.inp = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList(_ResidualBlock(hidden, temb_dim, dropout) for _ in range(depth))
        self.out = nn.Linear(hidden, data_dim * out_mult)
        self.act = nn.SiLU()
        # A per-timestep linear path x -> a(t) * x. For Gaussian data the optimal eps is affine in
        # x_t with t-dependent slope, so this lets the net extrapolate linearly beyond the x_t
        # range it was trained on (e.g. x_T ~ N(0, I) when abar[T-1] is far from 0, as in seed 001).
        self.skip = nn.Linear(temb_dim, data_dim)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)
        # created last, so an unconditional network draws the same initial weights as before
        self.class_embed = ClassEmbedding(num_classes, temb_dim) if num_classes else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Predict the objective's target for noisy ``x`` at integer timesteps ``t`` [B], given class labels
        ``y`` [B] (None: no label) when the network is conditional."""
        shape = x.shape
        h = x.reshape(shape[0], -1)
        if h.shape[1] != self.data_dim:
            raise ValueError(f"MLPDenoiser(data_dim={self.data_dim}) got input of shape {tuple(shape)}")
        temb = self.time_embed(t)
        if self.class_embed is None:
            unconditional_y(y, "MLPDenoiser")
        else:
            temb = temb + self.class_embed(y, shape[0], x.device)
        temb = self.act(temb)
        h = self.inp(h)
        for block in self.blocks:
            h = block(h, temb)
        skip = self.skip(temb) * x.reshape(shape[0], -1)
        if self.out_mult == 1:
            return (self.out(self.act(h)) + skip).reshape(shape)
        out = self.out(self.act(h))
        # the per-timestep linear path feeds the prediction; the extra outputs (a variance) follow it
        out = torch.cat([out[:, : self.data_dim] + skip, out[:, self.data_dim :]], dim=1)
        return out.reshape(shape[0], -1, *shape[2:]) if len(shape) > 1 else out
