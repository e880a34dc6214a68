"""Helpers shared by the test modules: compose a ddpm-train config, train in-process, run a command.

Test modules import these from here, never from one another. Fixtures shared by several modules live in
tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ddpm.cli.train import main as train_main
from ddpm.cli.train import train
from ddpm.config import CONF_DIR
from ddpm.schedules import NotPureNoiseWarning

# A few real steps: checkpoints, a validation with samples and plots, final results.
SHORT = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "final_samples=64",
    "callbacks.samples.num_samples=64",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "logger=csv",
    "print_config=false",
]

#: What a command started by a test runs with on top of the environment: W&B offline and quiet, no display.
CLI_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}


def compose_cfg(root: Path, overrides: list[str], *, run_folder: bool = True) -> DictConfig:
    """Compose conf/train.yaml with its Hydra node, as ddpm-train would, with ``paths.root_dir=root``.

    With ``run_folder`` (a single run about to start): the run folder is ``root / "run"``; it is created and
    set as Hydra's output folder, as when ddpm-train's task starts, so ``train(cfg)`` can run. Without it the
    config is only composed: the config's own ``hydra.run.dir`` is kept (tests check it) and nothing is made.
    """
    GlobalHydra.instance().clear()
    run_dir = root / "run"
    first = [f"hydra.run.dir={run_dir}"] if run_folder else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[*first, f"paths.root_dir={root}", *overrides],
            return_hydra_config=True,
        )
    if run_folder:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    if run_folder:
        from ddpm.run_folder import claim_folder

        claim_folder(run_dir, may_rename=False, may_reuse=True)  # as ddpm-train's start does
    return cfg


def run_train(tmp_path: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Train in this process on ``compose_cfg(tmp_path, overrides)``; returns (final metrics, run folder)."""
    cfg = compose_cfg(tmp_path, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)  # seed settings warn on purpose
        metrics = train(cfg)
    return metrics, Path(cfg.paths.output_dir)


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed command ``args[0]`` (e.g. ddpm-train) with ``args[1:]`` as a new process."""
    exe = Path(sys.executable).parent
    return subprocess.run(
        [str(exe / args[0]), *args[1:]],
        cwd=cwd,
        env={**os.environ, **CLI_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_in_process(argv: list[str]) -> int:
    """``ddpm-train ARGV`` through its real entry point, in this process (no 15 s of imports); the exit code.

    Hydra points the root logger at each job's log file: the handlers it adds are closed afterwards.
    """
    root = logging.getLogger()
    handlers, level, old_argv = list(root.handlers), root.level, sys.argv
    sys.argv = ["ddpm-train", *argv]
    GlobalHydra.instance().clear()
    try:
        train_main()
        code = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1  # a message: 1
    finally:
        sys.argv = old_argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
    return code


def load_script(path: Path, name: str) -> Iterator[ModuleType]:
    """Import a script of ``scripts/`` as module ``name`` for a fixture to yield, then forget it."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
