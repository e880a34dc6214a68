"""``ddpm-train``: the Hydra app that trains, samples, plots and reports.

ddpm-train                                   # experiment=toy2d on CPU, about a minute
ddpm-train experiment=seed_point             # seed 001: learn x0 = 5 and regenerate it
ddpm-train schedule=cosine T=200 sampler=ddim sampler.steps=50
ddpm-train -m schedule=linear,cosine diffusion.T=100,1000   # a sweep
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm.cli.common import CONF_DIR, check_group_overrides, fail
from ddpm.config import ConfigError, remove_unstarted_run_dir, validate_config

# torch and Lightning are imported inside train(), after the config checks: a bad value is
# reported in a second or two instead of after the ~15 s it takes to import them on a small CPU.

__all__ = ["main", "train"]


def _callbacks(cfg: DictConfig) -> list[Any]:
    from lightning.pytorch.callbacks import WeightAveraging

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    # EMA swaps its average out at the end of validation, so callbacks that sample with the EMA
    # weights must run before it: put weight averaging last.
    return sorted(callbacks, key=lambda c: isinstance(c, WeightAveraging))


def _loggers(cfg: DictConfig) -> list[Any]:
    return [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def _resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last but {last} does not exist")
        return str(last)
    path = Path(ckpt)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt!r} does not exist")
    return str(path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one composed config; returns the final metrics.

    Raises:
        ConfigError: a bad config value, before any training, logger or checkpoint is created.
    """
    output_dir = Path(cfg.paths.output_dir)
    try:
        validate_config(cfg)
        import lightning as L

        from ddpm.runs import build, reverse_process_figures, write_results

        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build(cfg)
        ckpt_path = _resolve_ckpt_path(cfg, output_dir)
        callbacks = _callbacks(cfg)
    except ConfigError:
        remove_unstarted_run_dir(output_dir)
        raise
    if cfg.get("print_config", True):
        print(OmegaConf.to_yaml(cfg, resolve=True))
    loggers = _loggers(cfg)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(module.run_config or {})

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {"train_seconds": train_seconds, "global_step": trainer.global_step}
    if trainer.is_global_zero and cfg.final_samples > 0 and hasattr(datamodule, "reference_data"):
        final = write_results(module, datamodule, output_dir, cfg.final_samples)
        metrics.update(final["metrics"])
        for logger in loggers:
            logger.log_metrics(final["metrics"], step=trainer.global_step)
        print(f"\nQuality (EMA weights, {cfg.final_samples} samples): {final['report'].headline()}")
        if cfg.get("reverse_gif", True):
            # 2D scatters need many points; chains and signals are drawn a few at a time.
            n = 300 if tuple(module.data_shape) == (2,) else 32
            plots = output_dir / "plots"
            reverse_process_figures(
                module, datamodule, plots / "reverse_process.png", plots / "reverse_process.gif", n=n
            )
        if final["moments"]:
            print("Moments: " + ", ".join(f"{k} {v:.4f}" for k, v in final["moments"].items()))
    for logger in loggers:
        finalize = getattr(logger, "finalize", None)
        if finalize is not None:
            finalize("success")
    if trainer.is_global_zero:
        print(f"Trained {trainer.global_step} steps in {train_seconds:.1f} s. Run folder: {output_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except ConfigError as err:
        fail(str(err))
    # Sweepers (Optuna) minimise the returned value.
    objective = cfg.get("optimized_metric")
    if objective and objective in metrics:
        return float(metrics[objective])
    return None


def main() -> None:
    """Console entry point: check group choices in one line, then hand over to Hydra."""
    check_group_overrides(sys.argv[1:])
    _hydra_main()
