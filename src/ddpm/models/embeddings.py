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


def check_num_classes(num_classes: object) -> int:
    """``num_classes`` as an int >= 0 (0: an unconditional network), or a one-line ValueError."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(
            f"num_classes={num_classes!r} is invalid; it must be an integer >= 0 (0: unconditional)"
        )
    return num_classes


class ClassEmbedding(nn.Module):
    """A learned vector per class label, added to the timestep embedding (improved-diffusion's
    ``label_emb``; Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").

    Labels are ``0 .. num_classes - 1``; index ``num_classes`` is the null label ("no class"), which label
    dropout trains and the unconditional branch of classifier-free guidance asks for. ``y=None`` means the
    null label for the whole batch.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embed = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Embeddings [B, dim] of the labels ``y`` [B] (integers in 0 .. num_classes)."""
        if y is None:
            y = torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
        elif y.shape != (batch,) or y.is_floating_point() or y.is_complex():
            raise ValueError(
                f"y has shape {tuple(y.shape)} and dtype {y.dtype}; it must be integer labels of shape "
                f"[{batch}] (one per sample, 0 .. {self.num_classes - 1}, or {self.num_classes} for no label)"
            )
        return self.embed(y.to(device=device, dtype=torch.long))


def unconditional_y(y: torch.Tensor | None, name: str) -> None:
    """Raise a one-line ValueError when labels reach a network built without classes."""
    if y is not None:
        raise ValueError(f"{name} was built with num_classes=0 (unconditional) and takes no labels y")
