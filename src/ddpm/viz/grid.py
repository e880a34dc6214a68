"""Images as pixels: uint8 arrays for image files and one grid of many images, without matplotlib.

:func:`image_grid` is the one grid layout: the PNG grids of training runs and ``ddpm-sample`` (through
:func:`save_image_grid`) and the image panels of the viz figures and GIFs all use it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

#: Pixels between tiles (and around the grid), filled with white.
GRID_PADDING = 2


def _pixels(unit: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] -> uint8 0..255."""
    # DDPM's convention: round(x * 255) after clipping, as the released samples were written.
    return (unit.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] images in [0, 1] -> uint8 [N, H, W, C] (the layout of image files and FID tools)."""
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    return _pixels(images).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(
    images: torch.Tensor | np.ndarray,
    nrow: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    min_tile: int = 1,
) -> np.ndarray:
    """[N, C, H, W] images -> one float32 [H', W', 3] grid in [0, 1] laid out by torchvision's make_grid.

    Args:
        images: [N, C, H, W], N >= 1; values outside ``value_range`` are clipped.
        nrow: images per row; default a near-square grid.
        value_range: the values shown as black and white: (0, 1) for images from
            ``ImageDataModule.denormalize``, (-1, 1) for the network's own scale.
        min_tile: small images are enlarged by an integer factor (nearest neighbour, no smoothing) until
            each tile is at least this many pixels high, so an 8x8 digit stays readable in a viewer.
    """
    from torchvision.utils import make_grid  # torchvision is slow to import; only image paths need it

    x = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"images must be [N, C, H, W] with N >= 1, got shape {tuple(x.shape)}")
    low, high = value_range
    # In float64, so that the default (0, 1) leaves float32 images exactly as they are.
    unit = ((x.double() - low) / (high - low)).clamp(0.0, 1.0).float()
    scale = max(1, math.ceil(min_tile / unit.shape[-2]))
    if scale > 1:
        unit = unit.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    nrow = nrow or math.ceil(math.sqrt(unit.shape[0]))
    grid = make_grid(unit, nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(
    images: torch.Tensor | np.ndarray,
    path: str | os.PathLike[str],
    nrow: int | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    min_tile: int = 64,
) -> Path:
    """Write :func:`image_grid` of ``images`` to a PNG file (uint8 RGB), creating parent folders.

    Tiles are at least ``min_tile`` = 64 pixels high by default: an 8x8 digit becomes 64x64.
    """
    from PIL import Image

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, nrow=nrow, value_range=value_range, min_tile=min_tile)
    Image.fromarray(_pixels(torch.from_numpy(grid)).numpy()).save(out, format="PNG")
    return out
