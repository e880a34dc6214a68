"""Shared fixtures. Helpers that are not fixtures live in tests/helpers.py; the Gaussian oracle denoiser
that needs no training is part of the library, ddpm.oracle.GaussianOracle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ddpm.samplers import Sampler

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist (addopts: -n auto) runs one worker per core: one torch thread each, and one for the
    # commands a test starts (ddpm-train, DDP's ranks), else the workers' threads contend for the cores
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: unknown under -p no:xdist
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto`` (addopts) for tests named one by one (``pytest tests/test_x.py::name``): no workers, the
    tests run in this process without the workers' start-up (each imports torch); else xdist's count."""
    if config.args and all("::" in arg for arg in config.args):
        return 0
    return None


@pytest.fixture
def gaussian_2d() -> tuple[torch.Tensor, torch.Tensor]:
    """A correlated 2D Gaussian (mu, Sigma)."""
    mu = torch.tensor([1.0, -0.5])
    sigma = torch.tensor([[0.5, 0.3], [0.3, 0.8]])
    return mu, sigma


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder whose checkpoint must never be read, and no sampler may run: both fail the test."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")

    def never(*args: object, **kwargs: object) -> None:
        pytest.fail("work started before the inputs were checked")

    monkeypatch.setattr("ddpm.build.load_run", never)
    monkeypatch.setattr(Sampler, "sample", never)
    monkeypatch.chdir(tmp_path)  # ddpm-viz writes to ./outputs/viz by default
    return run


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained run: four training steps of the default toy config with T = 50 (EMA on, as in every
    run), one per test module that asks for it."""
    from tests.helpers import SHORT, run_train  # here: it imports ddpm-train, which not every test needs

    overrides = [*SHORT, "T=50", "callbacks.samples=null", "final_samples=0"]  # no plots: seconds saved
    _, run_dir = run_train(tmp_path_factory.mktemp("toy"), overrides)
    return run_dir


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four training steps of ``experiment=digits`` (the small UNet on 8x8 digits) with T = 20, trained once
    for every test module that asks for it (tests may add files to it, never change its checkpoint)."""
    import warnings

    from ddpm.schedules import NotPureNoiseWarning
    from tests.helpers import run_train

    overrides = ["experiment=digits", "trainer.max_steps=4", "trainer.val_check_interval=2", "T=20"]
    overrides += ["trainer.log_every_n_steps=1"]
    overrides += ["sampler.steps=null", "callbacks.samples=null", "final_samples=0", "logger=csv"]
    overrides += ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false", "print_config=false"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        _, run_dir = run_train(tmp_path_factory.mktemp("digits"), overrides)
    return run_dir
