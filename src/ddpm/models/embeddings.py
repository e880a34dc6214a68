"""Timestep embeddings shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0
) -> torch.Tensor:
    """Transformer-style sinusoidal features of integer (or real) timesteps, shape [B, dim].

    ``freq_shift`` lowers the frequencies' denominator to ``dim // 2 - freq_shift``: DDPM's TF code (and
    diffusers' ``freq_shift=1``) divides by ``half - 1``; improved-diffusion by ``half`` (0, the default).
    """
    half = dim // 2
    # Vaswani et al. sec. 3.5 (as used by DDPM's UNet): [cos(t w_k), sin(t w_k)], w_k = P^(-k/(half-shift)).
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP (DDPM UNet's ``temb``)."""

    def __init__(self, dim: int, out_dim: int | None = None, freq_shift: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.freq_shift = int(freq_shift)
        out_dim = out_dim or 4 * dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed timesteps [B] into [B, out_dim]."""
        return self.mlp(sinusoidal_embedding(t, self.dim, freq_shift=self.freq_shift))
