"""FID with torchmetrics' ``FrechetInceptionDistance``, only when Inception weights are on disk.

torchmetrics' Inception feature extractor comes from ``torch-fidelity`` (the optional extra
``uv sync --extra fid``), which would download its weights (``weights-inception-2015-12-05-6726825d.pth``,
the TF-FID port) on first use. Nothing can be downloaded here, so the weights file must already exist:
``--inception-weights PATH``, else ``$DDPM_INCEPTION_WEIGHTS``, else torch hub's cache
(``$TORCH_HOME/hub/checkpoints/``). The path is always passed explicitly, so no download is attempted.

Images are float tensors [N, C, H, W] in **[0, 1]** (grayscale is repeated to 3 channels; torchmetrics
resizes to 299x299).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

__all__ = ["INCEPTION_WEIGHTS_FILE", "fid_unavailable_reason", "find_inception_weights", "inception_fid"]

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def find_inception_weights(path: str | Path | None = None) -> Path:
    """Where the Inception weights are expected: ``path``, ``$DDPM_INCEPTION_WEIGHTS`` or torch hub's cache.

    The returned path may not exist; :func:`fid_unavailable_reason` says so.
    """
    if path:
        return Path(path).expanduser()
    if os.environ.get("DDPM_INCEPTION_WEIGHTS"):
        return Path(os.environ["DDPM_INCEPTION_WEIGHTS"]).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def fid_unavailable_reason(path: str | Path | None = None) -> str | None:
    """None when FID can be computed, else one line saying why not."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return "FID skipped: torch-fidelity is not installed (uv sync --extra fid)"
    weights = find_inception_weights(path)
    if not weights.is_file():
        return (
            f"FID skipped: no Inception weights at {weights} (nothing is downloaded here; put "
            f"{INCEPTION_WEIGHTS_FILE} there or pass --inception-weights / set DDPM_INCEPTION_WEIGHTS)"
        )
    return None


def _rgb(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    x = images.float().clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_fid(
    fake: torch.Tensor,
    real: torch.Tensor,
    weights: str | Path | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
) -> float:
    """FID between ``fake`` and ``real`` images in [0, 1] (2048-d pool features, statistics in float64).

    Raises:
        RuntimeError: with :func:`fid_unavailable_reason`'s line when torch-fidelity or the weights are
            missing.
    """
    reason = fid_unavailable_reason(weights)
    if reason is not None:
        raise RuntimeError(reason)
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(
        feature=2048,
        normalize=True,  # float images in [0, 1]
        feature_extractor_weights_path=str(find_inception_weights(weights)),
    ).to(device)  # its feature sums are float64 already
    for images, is_real in ((real, True), (fake, False)):
        for batch in _rgb(images).split(batch_size):
            metric.update(batch.to(device), real=is_real)
    return float(metric.compute())
