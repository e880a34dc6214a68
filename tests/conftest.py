"""Shared fixtures. Helpers that are not fixtures live in tests/helpers.py; the Gaussian oracle denoiser
that needs no training is part of the library, ddpm.oracle.GaussianOracle."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gaussian_2d() -> tuple[torch.Tensor, torch.Tensor]:
    """A correlated 2D Gaussian (mu, Sigma)."""
    mu = torch.tensor([1.0, -0.5])
    sigma = torch.tensor([[0.5, 0.3], [0.3, 0.8]])
    return mu, sigma
