"""Denoising networks: plain ``nn.Module``s with ``forward(x, t)``."""

from ddpm.models.embeddings import TimestepEmbedding, sinusoidal_embedding
from ddpm.models.mlp import MLPDenoiser
from ddpm.models.unet import UNet

__all__ = ["MLPDenoiser", "TimestepEmbedding", "UNet", "sinusoidal_embedding"]
