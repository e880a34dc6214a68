"""Run folders: build a run's objects from its composed config, write its results, load it back.

A run folder (``outputs/<task>/runs/<timestamp>/``) holds ``.hydra/config.yaml`` (the composed config),
``checkpoints/`` (``last.ckpt``, ``best.ckpt``), the loggers' files, ``samples.npz``, ``metrics.json`` and
``plots/``. ``ddpm-sample`` and ``ddpm-viz reverse`` rebuild a run from its own config, not today's
defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ddpm.config import ConfigError, first_line, root_cause
from ddpm.lit_module import DiffusionModule
from ddpm.run_folder import run_dir_of
from ddpm.safe_loading import load_checkpoint, resolved_config

__all__ = [
    "ConfigError",
    "LoadedRun",
    "ResultsNotWrittenError",
    "build",
    "find_checkpoint",
    "load_run",
    "reverse_process_figures",
    "stored_config",
    "write_results",
]


def _instantiate(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    try:
        return instantiate(cfg[key], **kwargs)
    except (InstantiationException, ValueError, TypeError, FileNotFoundError, OmegaConfBaseException) as err:
        raise ConfigError(f"{key}: {first_line(root_cause(err))}") from err


#: keys of the model config that the DiffusionModule takes (how to run the network), not the network class
SPEED_KEYS = ("compile", "channels_last")


def build_model(model_cfg: DictConfig) -> tuple[torch.nn.Module, dict[str, bool]]:
    """The network of a ``model`` config node, and its ``compile`` / ``channels_last`` settings.

    Those two keys say how the DiffusionModule runs the network, so they are not passed to its class.
    """
    node = OmegaConf.to_container(model_cfg, resolve=True)
    speed = {key: bool(node.pop(key, False)) for key in SPEED_KEYS}  # type: ignore[union-attr]
    return _instantiate(OmegaConf.create({"model": node}), "model"), speed


def build(cfg: DictConfig) -> tuple[Any, DiffusionModule]:
    """Instantiate the DataModule and the DiffusionModule (net, diffusion, sampler, optimizer) of a config.

    Raises:
        ConfigError: a bad value, with the config key it came from.
    """
    datamodule = _instantiate(cfg, "data")
    if "data_dim" in cfg.data and cfg.data.data_dim is None:
        with open_dict(cfg):
            cfg.data.data_dim = datamodule.data_dim  # inferred from the user's file
    net, speed = build_model(cfg.model)
    if (
        cfg.optimizer.get("fused")
        and "mixed" in str(cfg.trainer.get("precision"))
        and cfg.trainer.get("gradient_clip_val")
    ):
        with open_dict(cfg):  # Lightning cannot clip a fused optimizer's gradients under mixed precision
            cfg.optimizer.fused = None  # torch's default: foreach on GPUs
    betas = _instantiate(cfg, "schedule")  # on its own first, so an error names the schedule
    diffusion = _instantiate(cfg, "diffusion", betas=betas)
    sampler = _instantiate(cfg, "sampler")
    optimizer = _instantiate(cfg, "optimizer")
    lr_scheduler = _instantiate(cfg, "lr_scheduler") if cfg.get("lr_scheduler") else None
    if lr_scheduler is not None:  # the partial's own checks run now, not after the trainer starts
        try:
            lr_scheduler(optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"lr_scheduler: {first_line(err)}") from err
    module = DiffusionModule(
        net=net,
        diffusion=diffusion,
        sampler=sampler,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        data_shape=datamodule.data_shape,
        max_nonfinite_skips=int(cfg.get("max_nonfinite_skips", 0)),
        **speed,
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return datamodule, module


def _true_moments(datamodule: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    fn = getattr(datamodule, "true_moments", None)
    return fn() if callable(fn) else None


def sample_quality(module: DiffusionModule, datamodule: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """Sample ``n`` with the module's sampler and weights; compare with held-out data in raw units."""
    from ddpm.metrics import moment_errors, quality_report

    gen = torch.Generator(device=module.device).manual_seed(seed)
    samples = datamodule.denormalize(module.sample(n, generator=gen))
    held_out, second = datamodule.reference_data(n)
    report = quality_report(samples, held_out, second)
    out: dict[str, Any] = {"samples": samples.cpu(), "held_out": held_out, "report": report}
    moments = _true_moments(datamodule)
    if moments is not None:
        out["moments"] = moment_errors(samples.cpu(), *moments)
    return out


class ResultsNotWrittenError(OSError):
    """The final results were computed but could not be written; the message carries the figures."""


@contextlib.contextmanager
def _figures_kept_on_failure(figures: str) -> Iterator[None]:
    """A failed write (a full disk, a folder gone read-only) becomes an error that still shows the figures."""
    try:
        yield
    except OSError as err:
        where = f" {err.filename}" if getattr(err, "filename", None) else ""
        raise ResultsNotWrittenError(
            f"could not write the results{where}: {err.strerror or err}; computed: {figures}"
        ) from err


#: the most images ``plots/samples_grid.png`` shows (all ``n`` go to ``samples.npz``)
GRID_IMAGES = 256


def _write_image_results(
    module: DiffusionModule, datamodule: Any, output_dir: Path, n: int, batch_size: int = 256
) -> dict[str, Any]:
    """Images: ``samples.npz`` (uint8 [N, H, W, C]), ``plots/samples_grid.png`` and ``metrics.json``."""
    from ddpm.viz.grid import save_image_grid, to_uint8

    # Lightning's teardown leaves the module on the CPU after fit; sampling T steps of a UNet there
    # would take hours for CIFAR-10, so use the GPU when there is one.
    home = module.device
    device = torch.device("cuda") if torch.cuda.is_available() else home
    module.to(device)
    try:
        gen = torch.Generator(device=device).manual_seed(12345)
        start = time.perf_counter()
        x = module.sample(n, generator=gen, batch_size=batch_size)
        seconds = time.perf_counter() - start
    finally:
        module.to(home)
    images = datamodule.denormalize(x).cpu()
    metrics = {"final/n": n, "final/sample_seconds": seconds}
    with _figures_kept_on_failure(f"{n} samples drawn in {seconds:.1f} s"):
        np.savez_compressed(output_dir / "samples.npz", samples=to_uint8(images))
        grid = save_image_grid(images[:GRID_IMAGES], output_dir / "plots" / "samples_grid.png")
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"metrics": metrics, "report": None, "plot": grid, "moments": None}


def write_results(module: DiffusionModule, datamodule: Any, output_dir: Path, n: int) -> dict[str, Any]:
    """After training: EMA samples -> ``samples.npz``, ``metrics.json`` and a plot.

    Toy data (a DataModule with ``reference_data``): raw-unit samples and held-out data in the .npz, the
    quality report, ``plots/samples_vs_data.png``. Images: uint8 samples [N, H, W, C] in the .npz,
    ``plots/samples_grid.png`` (the first 256), no quality report (``report`` is None).
    """
    from ddpm import viz

    output_dir.mkdir(parents=True, exist_ok=True)
    if not hasattr(datamodule, "reference_data"):
        return _write_image_results(module, datamodule, output_dir, n)
    result = sample_quality(module, datamodule, n, seed=12345)
    report = result["report"]
    metrics = {f"final/{k}": v for k, v in report.as_dict().items()}
    for k, v in result.get("moments", {}).items():
        metrics[f"final/{k}"] = v
    plot_path = output_dir / "plots" / "samples_vs_data.png"
    with _figures_kept_on_failure(f"Quality (EMA weights, {n} samples): {report.headline()}"):
        np.savez_compressed(
            output_dir / "samples.npz",
            samples=result["samples"].numpy(),
            held_out=result["held_out"].numpy(),
        )
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
        fig = viz.plot_samples_vs_data(result["samples"].numpy(), result["held_out"].numpy())
        viz.save_figure(fig, plot_path)
    return {"metrics": metrics, "report": report, "plot": plot_path, "moments": result.get("moments")}


def reverse_process_figures(
    module: DiffusionModule,
    datamodule: Any,
    png: Path,
    gif: Path | None,
    n: int = 500,
    seed: int = 0,
    fps: int = 10,
    max_frames: int = 60,
) -> tuple[Path, Path | None]:
    """Sample with the whole chain kept and draw it: a PNG of the reverse process and an animated GIF.

    Toy data are shown in raw units (``datamodule.denormalize``); images stay on the network's [-1, 1]
    scale and get a denoising strip of the predicted x0.
    """
    from ddpm import viz

    gen = torch.Generator(device=module.device).manual_seed(seed)
    result = module.sample(n, return_trajectory=True, generator=gen)
    traj, timesteps = result.trajectory, result.timesteps
    shape = tuple(module.data_shape)
    if len(shape) == 3:
        kind = "image"
        fig = viz.plot_denoising_strip(result.pred_x0 if result.pred_x0 is not None else traj, timesteps)
    else:
        denormalize = getattr(datamodule, "denormalize", None)
        if callable(denormalize):
            traj = denormalize(traj.reshape(-1, *shape)).reshape(traj.shape)
        kind = "2d" if shape == (2,) else "1d"
        fig = viz.plot_reverse_2d(traj, timesteps) if kind == "2d" else viz.plot_reverse_1d(traj, timesteps)
    viz.save_figure(fig, png)
    if gif is None:
        return png, None
    return png, viz.save_reverse_gif(traj, timesteps, gif, kind=kind, fps=fps, max_frames=max_frames)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's ``checkpoints/last.ckpt`` (else its only .ckpt)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"run={str(path)!r} is neither a run folder nor a checkpoint file")
    ckpts = p / "checkpoints"
    if (ckpts / "last.ckpt").is_file():
        return ckpts / "last.ckpt"
    found = sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {str(ckpts)!r}; expected last.ckpt (did the run finish a step?)"
        )
    return found[-1]


def stored_config(ckpt: dict[str, Any], ckpt_path: Path, run_dir: Path) -> DictConfig:
    """The run config a checkpoint was trained with, resolved and checked against the allow-list.

    From the checkpoint itself (``ddpm_config``, written by every ``ddpm-train``), else from the run
    folder's ``.hydra/config.yaml`` with its folders pointed at where the run is now.

    Raises:
        ConfigError: no config found, or it cannot be resolved.
        UntrustedContentError: it names a class that is not on the allow-list.
    """
    if isinstance(ckpt.get("ddpm_config"), dict):
        return resolved_config(ckpt["ddpm_config"], f"the config stored in {str(ckpt_path)!r}")
    hydra_yaml = run_dir / ".hydra" / "config.yaml"
    if not hydra_yaml.is_file():
        raise ConfigError(f"checkpoint {str(ckpt_path)!r} carries no config and {hydra_yaml} is missing")
    try:
        cfg = OmegaConf.load(hydra_yaml)
    except (OSError, OmegaConfBaseException) as err:
        raise ConfigError(f"{hydra_yaml} cannot be read: {first_line(err)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{hydra_yaml} is not a ddpm-lab run config")
    if isinstance(cfg.get("paths"), DictConfig):
        # Hydra saved the folders as ${hydra:...} interpolations, which only resolve inside a Hydra job.
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
            cfg.paths.root_dir = os.environ.get("DDPM_ROOT", os.getcwd())
    return resolved_config(cfg, str(hydra_yaml))


@dataclass
class LoadedRun:
    """A trained run rebuilt from its own config, with EMA weights loaded when the run had EMA."""

    module: DiffusionModule
    datamodule: Any
    config: DictConfig
    checkpoint: Path
    run_dir: Path

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return self.module.data_shape


def load_run(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a run from a run folder or a checkpoint written by ``ddpm-train``.

    The config comes from the checkpoint (``ddpm_config``) or the run folder's ``.hydra/config.yaml``.

    Raises:
        FileNotFoundError: no checkpoint there.
        ConfigError: the checkpoint does not match its config (e.g. another model's weights).
    """
    ckpt_path = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path, map_location=map_location)  # weights only: runs no code
    if "state_dict" not in ckpt:
        raise ConfigError(f"checkpoint {str(ckpt_path)!r} is not a Lightning checkpoint (no state_dict)")
    run_dir = run_dir_of(ckpt_path) or ckpt_path.parent
    cfg = stored_config(ckpt, ckpt_path, run_dir)
    datamodule, module = build(cfg)
    try:
        missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as err:  # same names, other shapes
        detail = str(err).strip().splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ConfigError(
            f"checkpoint {str(ckpt_path)!r} does not match its config's model: {detail}"
        ) from None
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {str(ckpt_path)!r} does not match its config's model: "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    module.to(map_location).eval()
    return LoadedRun(module=module, datamodule=datamodule, config=cfg, checkpoint=ckpt_path, run_dir=run_dir)
