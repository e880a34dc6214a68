"""``ddpm-train``: the Hydra app that trains, samples, plots and reports.

ddpm-train                                   # experiment=toy2d on CPU, about a minute
ddpm-train experiment=seed_point             # seed 001: learn x0 = 5 and regenerate it
ddpm-train schedule=cosine T=200 sampler=ddim sampler.steps=50
ddpm-train -m schedule=linear,cosine T=100,1000   # a sweep
"""

from __future__ import annotations

import contextlib
import errno
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm.cli.common import check_group_overrides, check_moved_keys, fail
from ddpm.config import (
    CONF_DIR,
    ConfigError,
    first_line,
    remove_unstarted_run_dir,
    root_cause,
    validate_config,
)
from ddpm.timings import Phases

# torch and Lightning are imported inside train(), after the config checks: a bad value is
# reported in a second instead of after the 4-5 s it takes to import them on a small CPU.

__all__ = ["TrainingRun", "finish", "fit", "main", "prepare", "train"]

#: when ddpm-train's entry point started (None when :func:`train` is called from other code)
_STARTED: float | None = None


def _callbacks(cfg: DictConfig) -> list[Any]:
    from lightning.pytorch.callbacks import LearningRateMonitor, WeightAveraging

    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not any(c is not None for c in (cfg.get("logger") or {}).values()):
        # it only writes to loggers, and Lightning refuses it without one (logger=none, debug presets)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # EMA swaps its average out at the end of validation, so callbacks that sample with the EMA
    # weights must run before it: put weight averaging last.
    return sorted(callbacks, key=lambda c: isinstance(c, WeightAveraging))


def _loggers(cfg: DictConfig) -> list[Any]:
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        if c is None:
            continue
        mode = {}
        if str(c.get("_target_", "")).endswith("WandbLogger") and c.get("offline") and "mode" not in c:
            # Lightning's offline=True only sets WANDB_MODE, which wandb reads once per process: after an
            # earlier W&B run in this process (ddpm-eval's, a notebook's) the run would go online
            mode = {"mode": "offline"}
        loggers.append(instantiate(c, **mode))
    return loggers


def _resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    last = output_dir / "checkpoints" / "last.ckpt"
    if ckpt == "auto":  # a requeued cluster job: resume from the newest checkpoint, if there is one
        # Lightning's SLURM requeue (SIGUSR1) saves hpc_ckpt_<n>.ckpt in the run folder: newer than
        # last.ckpt, which is only as recent as the last validation or stop
        found = [p for p in (last, *output_dir.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    if ckpt == "last":
        if not last.is_file():
            raise ConfigError(f"ckpt_path=last but {last} does not exist")
        return str(last)
    path = Path(ckpt)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt!r} does not exist")
    return str(path)


def _quiet_expected_resume_warnings(datamodule: Any) -> None:
    """Silence Lightning's warnings that a resume into the same run folder makes by design."""
    import warnings

    # The run continues in its own folder, so its checkpoint folder is not empty.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    from ddpm.data import ToyDataModule

    if isinstance(datamodule, ToyDataModule):
        # Toy loaders resume mid-epoch exactly (ShardedBatchSampler.resume); Lightning cannot know that.
        warnings.filterwarnings("ignore", message=r"You.re resuming from a checkpoint that ended before")


def _config_for_resume(cfg: DictConfig, ckpt_path: str) -> DictConfig:
    """Today's config with the checkpoint's run identity in place (:mod:`ddpm.resume`): the stored config
    is read as plain data and checked against ddpm-lab's options; nothing in it is resolved or built."""
    from hydra.core.hydra_config import HydraConfig

    from ddpm.registry import checked_identity
    from ddpm.resume import merge_for_resume, override_keys
    from ddpm.safe_loading import load_checkpoint
    from ddpm.stored_config import run_identity

    ckpt = load_checkpoint(ckpt_path, mmap=True)  # weights only: runs no code
    if not isinstance(ckpt.get("ddpm_config"), dict):
        raise ConfigError(f"ckpt_path={ckpt_path!r} carries no ddpm-lab run config; it cannot be resumed")
    identity = run_identity(ckpt["ddpm_config"], f"the config stored in {ckpt_path!r}")
    checked_identity(identity)
    from ddpm.build import check_stored_network

    check_stored_network(identity.config["model"])
    typed = override_keys(list(HydraConfig.get().overrides.task), CONF_DIR)
    merged = merge_for_resume(cfg, identity, typed)
    OmegaConf.set_struct(merged, True)
    return merged


def _check_trainer(cfg: DictConfig) -> None:
    """Trainer arguments Lightning does not know, and accelerators this machine does not have."""
    import inspect

    import lightning as L
    import torch

    trainer = cfg.get("trainer") or {}
    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer:
        if key != "_target_" and key not in known:
            raise ConfigError(
                f"trainer.{key} is not an argument of Lightning's Trainer; see "
                "https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-flags"
            )
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU that torch can use; "
            "use trainer=cpu (or trainer.accelerator=auto)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but MPS is not available here; use trainer=cpu")


@dataclass
class TrainingRun:
    """One run, built and ready to fit (:func:`prepare`): what :func:`fit` and :func:`finish` act on.

    ``trainer.callbacks`` may be extended before :func:`fit` (``scripts/benchmark.py`` inserts its step
    timer before the last one, the validation timer, which times the others' validation work).
    """

    cfg: DictConfig
    output_dir: Path
    ckpt_path: str | None
    datamodule: Any
    module: Any
    trainer: Any
    loggers: list[Any]
    phases: Phases
    fit_seconds: float = 0.0


def _start_phases() -> Phases:
    global _STARTED
    phases = Phases()
    if _STARTED is not None:  # ddpm-train's own process: Hydra's composition and the config checks
        phases.add("start-up", time.perf_counter() - _STARTED)
        _STARTED = None  # the later jobs of a sweep in this process have no start-up of their own
    return phases


def _configure_loggers(cfg: DictConfig, output_dir: Path, resumed: bool) -> None:
    """A resumed run continues its W&B run; a CSV log never overwrites an earlier part's."""
    if resumed and cfg.get("logger") and cfg.logger.get("wandb"):
        from ddpm.stored_config import read_wandb_id

        run_id = read_wandb_id(output_dir)  # checked: a W&B run id, never an interpolation
        if run_id is not None:
            with open_dict(cfg):
                cfg.logger.wandb.id = run_id
                cfg.logger.wandb.resume = "allow"
    if cfg.get("logger") and cfg.logger.get("csv"):
        # Lightning's CSVLogger deletes an existing metrics.csv in its folder: a resumed part (or a
        # requeued job that starts again from step 0) gets its own, and the first part's log is kept
        csv_dir = Path(cfg.logger.csv.save_dir) / cfg.logger.csv.name
        if resumed or (csv_dir / "metrics.csv").is_file():
            with open_dict(cfg):
                cfg.logger.csv.version = f"resumed_{len(list(csv_dir.glob('resumed_*'))) + 1}"


def prepare(cfg: DictConfig) -> TrainingRun:
    """Check a composed config and build its run: the resumed run's identity (``ckpt_path``), the config
    checks, the DataModule and DiffusionModule, the callbacks, loggers and Trainer.

    A resumed run (``ckpt_path``) trains the config stored in its checkpoint: today's command line may
    change only what :data:`ddpm.resume.SAFE_ON_RESUME` lists.

    Raises:
        ConfigError: a bad config value, before any training, logger or checkpoint is created (a run folder
            this process created for it is removed again).
    """
    output_dir = Path(cfg.paths.output_dir)
    phases = _start_phases()
    try:
        ckpt_path = _resolve_ckpt_path(cfg, output_dir)
        if ckpt_path:
            cfg = _config_for_resume(cfg, ckpt_path)
        validate_config(cfg)
        with phases.time("imports"):
            import lightning as L

            from ddpm.build import build
            from ddpm.callbacks import LossByTimestepCallback, ValidationTimer

        setup_started = time.perf_counter()
        if cfg.get("cpu_threads"):
            import torch

            torch.set_num_threads(int(cfg.cpu_threads))
        _check_trainer(cfg)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule, module = build(cfg)
        # the timer last: it times the others' validation work
        callbacks = [*_callbacks(cfg), ValidationTimer(phases)]
        for callback in callbacks:
            if isinstance(callback, LossByTimestepCallback):
                callback.phases = phases  # its figure at the end of fit is a figure, not training
    except ConfigError:
        remove_unstarted_run_dir(output_dir)
        raise
    if cfg.get("print_config", True):
        print(OmegaConf.to_yaml(cfg, resolve=True))
    _configure_loggers(cfg, output_dir, resumed=bool(ckpt_path))
    if ckpt_path:
        _quiet_expected_resume_warnings(datamodule)
    loggers = _loggers(cfg)
    try:
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    except InstantiationException as err:  # Lightning's own checks of its arguments
        remove_unstarted_run_dir(output_dir)
        raise ConfigError(f"trainer: {first_line(root_cause(err))}") from None
    if trainer.is_global_zero:
        for logger in loggers:
            logger.log_hyperparams(module.run_config or {})
            if type(logger).__name__ == "WandbLogger":
                (output_dir / ".wandb_id").write_text(str(logger.version) + "\n")
        batch = getattr(datamodule, "batch_size", None)
        if batch is not None:
            accumulate = trainer.accumulate_grad_batches
            print(
                f"Batch: {batch} per device x {trainer.world_size} devices x {accumulate} accumulated "
                f"= {batch * trainer.world_size * accumulate} per optimizer step"
            )
    if trainer.world_size > 1:
        print(_placement(trainer), flush=True)
    slow = _cpu_fallback_warning(cfg, trainer, module)
    if slow and trainer.is_global_zero:
        print(slow, file=sys.stderr, flush=True)
    phases.add("set-up", time.perf_counter() - setup_started)  # build, loggers (W&B starts here), trainer
    return TrainingRun(cfg, output_dir, ckpt_path, datamodule, module, trainer, loggers, phases)


#: a network above this many parameters trains slowly enough on a CPU that a run which fell back to one says
#: so: unet_tiny (0.27M, experiment=digits) trains in minutes there; unet_mnist has 6.5M, unet_cifar10 35.7M
CPU_WARNING_PARAMETERS = 1_000_000


def _cpu_fallback_warning(cfg: DictConfig, trainer: Any, module: Any) -> str | None:
    """One line for a run whose ``trainer.accelerator=auto`` found no GPU and trains a large network on the
    CPU: that it will be slow, and what to shrink; None otherwise (a GPU, an explicit accelerator, a small
    network). An explicit ``trainer=gpu`` is refused before this (:func:`_check_trainer`)."""
    from lightning.pytorch.accelerators import CPUAccelerator

    auto = str(cfg.trainer.get("accelerator", "auto")) == "auto"
    if not auto or not isinstance(trainer.accelerator, CPUAccelerator):
        return None
    net = getattr(module, "net", None)
    params = sum(p.numel() for p in net.parameters()) if net is not None else 0
    if params <= CPU_WARNING_PARAMETERS:
        return None
    batch, steps = (cfg.get("data") or {}).get("batch_size"), cfg.trainer.get("max_steps")
    return (
        "warning: no GPU here, so trainer.accelerator=auto trains on the CPU: slow for a "
        f"{params / 1e6:.1f}M-parameter network, batch {batch}, {steps} steps; to try it, shrink it "
        "(model=unet_tiny data.batch_size=32 trainer.max_steps=200 final_samples=16) or run it where a GPU is"
    )


def _placement(trainer: Any) -> str:
    """Where this process of a multi-process run trains, one line per rank: its rank, node and local rank,
    and under SLURM the node's name and SLURM_NODEID (a multi-node run whose ranks share a node is
    misconfigured, and this shows it)."""
    import os
    import socket

    where = f"Rank {trainer.global_rank} of {trainer.world_size}: node rank {trainer.node_rank}, local rank "
    where += f"{trainer.local_rank}, on {os.environ.get('SLURMD_NODENAME') or socket.gethostname()}"
    if os.environ.get("SLURM_NODEID") is not None:
        where += f" (SLURM job {os.environ.get('SLURM_JOB_ID')}, SLURM_NODEID {os.environ['SLURM_NODEID']})"
    return where


def _weights_digest(module: Any) -> str:
    """SHA-256 of the network's weights (names, shapes, dtypes and bytes, in order): equal on every DDP rank
    when the ranks stayed in step."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fit(run: TrainingRun) -> None:
    """``Trainer.fit`` on the run (from its checkpoint when it resumes); a SIGTERM saves and exits 143."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    start = time.perf_counter()
    try:
        # weights_only: a checkpoint to resume from runs no code either (it holds only tensors and
        # plain containers, see ddpm.safe_loading)
        run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.ckpt_path, weights_only=True)
    except SIGTERMException:
        saved = run.output_dir / "checkpoints" / "last.ckpt"
        print(
            f"SIGTERM at step {run.trainer.global_step}: saved {saved}; "
            f"resume with: ddpm-train ckpt_path={run.output_dir}",
            file=sys.stderr,
        )
        raise SystemExit(143) from None
    run.fit_seconds = time.perf_counter() - start
    seconds = run.phases.seconds
    in_fit = seconds.get("validation", 0.0) + seconds.get("loss-by-timestep figure", 0.0)
    run.phases.add("training", run.fit_seconds - in_fit)


def _final_results(run: TrainingRun, summary: list[str]) -> dict[str, Any]:
    """The final samples with the EMA weights, their files and figures (rank 0), and lines for ``summary``."""
    from ddpm.results import reverse_process_figures, write_results

    cfg, phases, module, datamodule = run.cfg, run.phases, run.module, run.datamodule
    with phases.time("final samples"):
        final = write_results(module, datamodule, run.output_dir, cfg.final_samples)
    for logger in run.loggers:
        logger.log_metrics(final["metrics"], step=run.trainer.global_step)
    if final["report"] is None:  # images: a grid and uint8 samples, no quality figure
        npz = run.output_dir / "samples.npz"
        summary.append(f"Samples (EMA weights, {cfg.final_samples}): {final['plot']}, {npz}")
    else:
        headline = final["report"].headline()
        summary.append(f"Quality (EMA weights, {cfg.final_samples} samples): {headline}")
        if cfg.get("reverse_gif", True):
            # 2D scatters need many points; chains and signals are drawn a few at a time.
            n = 300 if tuple(module.data_shape) == (2,) else 32
            plots = run.output_dir / "plots"
            with phases.time("reverse process figures"):
                reverse_process_figures(
                    module, datamodule, plots / "reverse_process.png", plots / "reverse_process.gif", n=n
                )
    if final.get("classes") is not None:
        summary.append(f"By class (EMA weights): {final['classes'].headline()}")
    if final["moments"]:
        summary.append("Moments: " + ", ".join(f"{k} {v:.4f}" for k, v in final["moments"].items()))
    return final["metrics"]


def finish(run: TrainingRun) -> dict[str, Any]:
    """After :func:`fit`: the final results, the loggers closed, the summary and the time per phase
    (printed, and written to ``<run>/timings.json``); returns the final metrics."""
    trainer, phases = run.trainer, run.phases
    metrics: dict[str, Any] = {"train_seconds": run.fit_seconds, "global_step": trainer.global_step}
    # printed last, after W&B's own closing lines, so the headline ends the output
    summary: list[str] = []
    if trainer.world_size > 1:
        # every rank's line (each in its own log under submitit): equal digests, ranks that stayed in step
        digest = _weights_digest(run.module)
        print(
            f"Weights at the end, rank {trainer.global_rank} of {trainer.world_size}: sha256 {digest}",
            flush=True,
        )
    if trainer.is_global_zero and run.cfg.final_samples > 0:
        metrics.update(_final_results(run, summary))
    with phases.time("loggers"):
        for logger in run.loggers:
            finalize = getattr(logger, "finalize", None)
            if finalize is not None:
                finalize("success")
        from ddpm.sweeps import finish_wandb_run

        finish_wandb_run()  # flushed and closed: a later run in this process starts its own W&B run
    if trainer.is_global_zero:
        print("\n" + "\n".join(summary) if summary else "")
        steps, training = trainer.global_step, phases.seconds.get("training", 0.0)
        notes = [f"{1000 * training / steps:.1f} ms per step"] if steps else []
        if training > 0 and "validation" in phases.seconds:
            # what validating cost this run, against the training it interrupts (a preset keeps it small)
            notes.append(f"validation {100 * phases.seconds['validation'] / training:.1f}% of training")
        print(f"Time: {phases.summary()}" + (f" ({'; '.join(notes)})" if notes else ""))
        with contextlib.suppress(OSError):  # a diagnostic: a read-only folder must not fail a finished run
            phases.write(run.output_dir / "timings.json", steps=steps)
        print(f"Trained {steps} steps in {run.fit_seconds:.1f} s. Run folder: {run.output_dir}")
    return metrics


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one composed config (:func:`prepare`, :func:`fit`, :func:`finish`); returns the
    final metrics. The seconds each phase took are printed at the end and written to ``timings.json``.

    Raises:
        ConfigError: a bad config value, before any training, logger or checkpoint is created.
    """
    run = prepare(cfg)
    fit(run)
    return finish(run)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from ddpm import sweeps

    # In a sweep, a job's error fails that job only: it is recorded (sweep_job.json, the summary) and the
    # sweeper gets None (Optuna: a FAIL trial), where raising or exiting would stop the whole sweep.
    try:
        metrics = train(cfg)
    except ConfigError as err:
        if not sweeps.in_multirun():
            fail(str(err))
        sweeps.job_failed(cfg, err, with_traceback=False)
        return None
    except Exception as err:
        # imported here, not before train(): a bad config value is reported before Lightning loads
        from ddpm.lit_module import NonFiniteLossError
        from ddpm.results import ResultsNotWrittenError

        sweeps.finish_wandb_run(failed=True)
        if sweeps.in_multirun():
            expected = isinstance(err, NonFiniteLossError | ResultsNotWrittenError)
            sweeps.job_failed(cfg, err, with_traceback=not expected)
            return None
        if isinstance(err, NonFiniteLossError | ResultsNotWrittenError):
            fail(str(err), code=1)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:  # a logger's file, hparams.yaml, ...
            where = err.filename or "a file of the run"
            fail(f"no space left on device while writing {where}; the last checkpoint is kept", code=1)
        raise
    # the basic launcher runs a sweep's jobs in this process: each job gets its own W&B run
    sweeps.finish_wandb_run()
    # Sweepers (Optuna) optimise the returned value: cfg.optimized_metric, also when it is not a final/*
    # figure (val/loss, read from the run's logs).
    return sweeps.objective_value(cfg, metrics) if sweeps.in_multirun() else None


def resume_in_run_folder(argv: list[str]) -> list[str]:
    """``ckpt_path=<run folder or its checkpoint>``: continue in that run's folder.

    Only the folder is taken from the command line here (``hydra.run.dir``); the run's config comes from
    its checkpoint (see :func:`train`). A checkpoint outside a run's ``checkpoints/`` folder resumes into
    a new run folder.
    """
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("ckpt_path=")), None)
    if ckpt in (None, "", "null", "last", "auto") or any(a.startswith("hydra.run.dir=") for a in argv):
        return argv
    from ddpm.run_folder import run_dir_of

    run_dir = run_dir_of(Path(ckpt))
    if run_dir is None or not (run_dir / "checkpoints").is_dir():
        return argv
    return [*argv, f"hydra.run.dir={run_dir.resolve()}"]


def main() -> None:
    """Console entry point: check group choices in one line, then hand over to Hydra."""
    global _STARTED
    _STARTED = time.perf_counter()
    check_group_overrides(sys.argv[1:])
    check_moved_keys(sys.argv[1:])
    if "-m" not in sys.argv and "--multirun" not in sys.argv:
        sys.argv[1:] = resume_in_run_folder(sys.argv[1:])
    _hydra_main()
