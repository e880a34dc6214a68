"""Sweeps: one record per job, a summary table per sweep, and the objective a sweeper optimises.

``ddpm-train -m schedule=linear,cosine T=100,1000`` runs each combination in its own folder under
the sweep folder (``hydra.sweep.dir``). :class:`SweepSummary`, a Hydra callback registered in
``conf/hydra/default.yaml``, then

* writes ``sweep_job.json`` into each job's folder when the job ends (its overrides, status, objective and
  error), in the job's own process, so it works the same with the basic launcher and with submitit;
* when the sweep ends, reads every job folder of the sweep and writes ``summary.csv`` and ``summary.md`` into
  the sweep folder (the overrides that differ between jobs, the status and the final metrics of each job,
  from its ``metrics.json``), and prints the table.

A job that raised is recorded as failed and the sweep goes on (``ddpm-train``'s task function catches the
error in multirun mode, see :func:`job_failed`); a job killed before it could write its record (out of
memory) is listed as unfinished; under ``hydra/launcher=slurm`` a job cancelled with ``scancel`` is listed
as cancelled and one that ended without a result (a time limit, a node failure) as failed, with SLURM's
state. ``python -m ddpm.sweeps SWEEP_DIR`` rebuilds the summary of a sweep folder at any time, e.g. while
cluster jobs are still running.

This module is imported by Hydra when it starts any ``ddpm-train`` run, so it stays free of torch and
Lightning at import time.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "JOB_RECORD",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "SweepSummary",
    "SweepTable",
    "collect_jobs",
    "find_metric",
    "finish_wandb_run",
    "in_multirun",
    "is_global_zero",
    "job_failed",
    "objective_value",
    "write_job_record",
    "write_summary",
]

log = logging.getLogger(__name__)

JOB_RECORD = "sweep_job.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"

COMPLETED, FAILED, UNFINISHED = "completed", "failed", "unfinished"
#: a cluster job cancelled (``scancel``) before it ended: recorded by ``ddpm.cluster.SlurmLauncher``
CANCELLED = "cancelled"

# Set by job_failed() in the task function and read by SweepSummary.on_job_end() right after it, in the same
# process: the task function returns a sentinel instead of raising, so Hydra itself sees a completed job.
_pending_failure: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- helpers for the task function
def in_multirun() -> bool:
    """Whether the current Hydra job is one job of a sweep (``-m``, or ``hydra.mode=MULTIRUN``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return HydraConfig.get().mode == RunMode.MULTIRUN


def is_global_zero() -> bool:
    """Whether this process is rank 0 of its job (DDP and SLURM tasks run the job once per rank)."""
    if "lightning" in sys.modules:
        # once a Trainer is set up this is the global rank, not just what the environment said at start
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0
    return all(int(os.environ.get(var) or 0) == 0 for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


def finish_wandb_run(failed: bool = False) -> None:
    """End the active W&B run, if any.

    Lightning's ``WandbLogger`` adopts ``wandb.run`` when one is active, so without this every job of a sweep
    run by the basic launcher (all in one process) would log into the first job's W&B run.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> Any:
    """A YAML file of a job folder as plain data (:func:`ddpm.stored_config.load_yaml`: no tags, no
    aliases, nothing resolved); None when it is missing or refused."""
    from ddpm.config import ConfigError
    from ddpm.stored_config import load_yaml

    try:
        return load_yaml(path) if path.is_file() else None
    except (ConfigError, OSError):
        return None


def _last_logged(csv_path: Path, name: str) -> float | None:
    try:
        with csv_path.open(newline="") as fh:
            values = [row[name] for row in csv.DictReader(fh) if row.get(name) not in (None, "")]
    except (OSError, KeyError, csv.Error):
        return None
    return _float(values[-1]) if values else None


def _checkpoint_monitor_best(ckpt: Path, name: str) -> float | None:
    from ddpm.config import ConfigError
    from ddpm.safe_loading import load_checkpoint

    try:
        state = load_checkpoint(ckpt, mmap=True)
    except ConfigError:  # unreadable, or refused because it pickles more than weights
        return None
    for key, cb_state in (state.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(cb_state, Mapping):
            best = cb_state.get("best_model_score")
            if cb_state.get("monitor") == name and best is not None:
                return float(best)
    return None


def find_metric(name: str, metrics: Mapping[str, Any], run_dir: Path) -> float | None:
    """The value of ``name`` for a finished run, or None when the run never logged it.

    Looked up in order: the metrics ``train()`` returned (the ``final/*`` figures), the run's
    ``metrics.json``, the last value logged to a CSV logger's ``metrics.csv`` in the run folder (for
    ``val/loss`` and other logged metrics), and the best score of a ``ModelCheckpoint`` that monitored
    ``name`` (from ``checkpoints/last.ckpt``; W&B-only runs of images configs with ``val/loss``).
    """
    if name in metrics:
        return _float(metrics[name])
    saved = _read_json(run_dir / "metrics.json")
    if name in saved:
        return _float(saved[name])
    for csv_path in sorted(run_dir.glob("**/metrics.csv")):
        value = _last_logged(csv_path, name)
        if value is not None:
            return value
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return _checkpoint_monitor_best(last, name)
    return None


def objective_value(cfg: DictConfig, metrics: Mapping[str, Any]) -> float | None:
    """What the task function returns to a sweeper: the value of ``cfg.optimized_metric``.

    None when no metric is asked for and on ranks other than 0 (the launchers read rank 0's value). In a
    sweep, a metric that was never logged, or is NaN, fails the job (see :func:`job_failed`), not the sweep.
    """
    name = cfg.get("optimized_metric")
    if not name or not is_global_zero():
        return None
    run_dir = Path(cfg.paths.output_dir)
    value = find_metric(name, metrics, run_dir)
    if value is not None and not math.isnan(value):
        return value
    if value is not None:
        message = f"optimized_metric {name} is NaN"
    else:
        message = (
            f"optimized_metric={name!r} was not logged by this run (not in metrics.json, a CSV log or a "
            f"ModelCheckpoint monitor); logged final metrics: {sorted(k for k in metrics if '/' in k)}"
        )
    if in_multirun():
        job_failed(cfg, LookupError(message), with_traceback=False)
    else:
        log.warning(message)
    return None


def job_failed(cfg: DictConfig, err: BaseException, with_traceback: bool = True) -> None:
    """Record a job of a sweep as failed; the task function returns this (None) instead of raising.

    Hydra's basic sweeper stops the whole sweep (without a summary) when a job raises, and ``ddpm-train``'s
    one-line errors exit the process. The Optuna sweeper (1.3, with Optuna 2.10) marks a trial FAIL when its
    value is not a number (None) and goes on when ``max_failure_rate`` allows (1.0 in
    ``conf/hparams_search/optuna.yaml``); NaN is no sentinel there (Optuna refuses it, and the sweeper's
    fallback then raises and ends the search), and inf would be recorded as a completed trial.
    :class:`SweepSummary` writes the record.
    """
    global _pending_failure
    error = f"{type(err).__name__}: {err}"
    if with_traceback:
        log.error("job failed, the sweep goes on:\n%s", "".join(traceback.format_exception(err)).rstrip())
    else:
        log.error("job failed, the sweep goes on: %s", error)
    print(f"error: {error}", file=sys.stderr)
    if is_global_zero():
        _pending_failure = {"error": error, "output_dir": str(cfg.paths.output_dir)}


# ----------------------------------------------------------------------------- job records and the summary
def _overrides_dict(overrides: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+")] = value
    return out


def _job_sort_key(job: Mapping[str, Any]) -> tuple[int, int | str]:
    num = job.get("job")
    return (0, num) if isinstance(num, int) else (1, str(job.get("run_dir")))


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One dict per job folder under ``sweep_dir``: its record, overrides and ``metrics.json``.

    Job folders are found by their ``sweep_job.json`` (written when the job ended) or, for jobs that never
    wrote one, by Hydra's ``.hydra/overrides.yaml``; those are ``unfinished`` (killed, or still running).
    """
    sweep_dir = Path(sweep_dir)
    folders = {p.parent for p in sweep_dir.rglob(JOB_RECORD)}
    folders |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    jobs = []
    for folder in folders:
        record = _read_json(folder / JOB_RECORD)
        if not record:
            # Hydra's files, read as plain data (an interpolation in them is text, never resolved)
            hydra = (_read_yaml(folder / ".hydra" / "hydra.yaml") or {}).get("hydra")
            job = hydra.get("job") if isinstance(hydra, dict) else None
            num = job.get("num") if isinstance(job, dict) else None
            overrides = _read_yaml(folder / ".hydra" / "overrides.yaml")
            overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
            record = {
                "job": num,
                "status": UNFINISHED,
                "overrides": overrides,
                "error": f"no {JOB_RECORD}: the job was killed, or is still running",
            }
        record["run_dir"] = os.path.relpath(folder, sweep_dir)
        record["metrics"] = {
            k: v for k, v in _read_json(folder / "metrics.json").items() if isinstance(v, int | float)
        }
        jobs.append(record)
    return sorted(jobs, key=_job_sort_key)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


@dataclass
class SweepTable:
    """A sweep's summary: the rows of ``summary.csv`` and the text of ``summary.md``."""

    sweep_dir: Path
    columns: list[str]
    rows: list[dict[str, Any]]
    markdown: str
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def csv_path(self) -> Path:
        """``summary.csv`` in the sweep folder."""
        return self.sweep_dir / SUMMARY_CSV

    @property
    def md_path(self) -> Path:
        """``summary.md`` in the sweep folder."""
        return self.sweep_dir / SUMMARY_MD


def _best(jobs: list[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    scored = [j for j in jobs if j.get("status") == COMPLETED and _finite(j.get("objective"))]
    if not scored:
        return None
    pick = max if str(direction).lower().startswith("max") else min
    return pick(scored, key=lambda j: j["objective"])


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _write_atomic(path: Path, text: str) -> None:
    # submitit jobs and the launching process may write the same summary; readers never see half a file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_job_record(job_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``sweep_job.json`` (job number, status, overrides, objective, error) into a job's folder."""
    job_dir = Path(job_dir)
    # a config error removes the job's folder before training; the record brings back the reason
    job_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(job_dir / JOB_RECORD, json.dumps(dict(record), indent=2) + "\n")
    return job_dir / JOB_RECORD


def write_summary(sweep_dir: Path, direction: str = "minimize") -> SweepTable:
    """Write ``summary.csv`` and ``summary.md`` into ``sweep_dir`` from its job folders; return the table.

    Columns: ``job``, ``status``, one column per override whose value differs between jobs (all overrides
    when there is a single job), ``objective`` (the value returned to the sweeper, when a metric was
    optimised), the final metrics of ``metrics.json``, ``error``, ``run_dir`` and (CSV only) the job's full
    ``overrides``.
    """
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    parsed = [_overrides_dict(j.get("overrides") or []) for j in jobs]
    keys: list[str] = []
    for over in parsed:
        keys += [k for k in over if k not in keys]
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1] if len(jobs) > 1 else keys
    common = [f"{k}={parsed[0][k]}" for k in keys if k not in varying and k in parsed[0]]
    metric_keys: list[str] = []
    for job in jobs:
        metric_keys += [k for k in job["metrics"] if k not in metric_keys]
    has_objective = any(j.get("optimized_metric") for j in jobs)
    columns = ["job", "status", *varying]
    columns += ["objective"] if has_objective else []
    columns += [*metric_keys, "error", "run_dir"]

    rows = []
    for job, over in zip(jobs, parsed, strict=True):
        row = {"job": job.get("job"), "status": job.get("status")}
        row.update({k: over.get(k, "") for k in varying})
        if has_objective:
            row["objective"] = job.get("objective")
        row.update({k: job["metrics"].get(k) for k in metric_keys})
        row.update({"error": job.get("error") or "", "run_dir": job["run_dir"]})
        rows.append(row)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, "overrides"], lineterminator="\n")
    writer.writeheader()
    for row, job in zip(rows, jobs, strict=True):
        writer.writerow({**row, "overrides": " ".join(job.get("overrides") or [])})
    _write_atomic(sweep_dir / SUMMARY_CSV, buf.getvalue())

    failed = [j for j in jobs if j.get("status") != COMPLETED]
    statuses = (COMPLETED, FAILED, CANCELLED, UNFINISHED)
    counts = {s: sum(j.get("status") == s for j in jobs) for s in statuses}
    lines = [f"# Sweep summary: {sweep_dir}", ""]
    lines.append(
        f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s == COMPLETED)
    )
    metric_names = sorted({j["optimized_metric"] for j in jobs if j.get("optimized_metric")})
    if metric_names:
        lines.append(f"objective: {', '.join(metric_names)} ({direction})")
    best = _best(jobs, direction)
    if best is not None:
        lines.append(f"best: job {best.get('job')} (objective {best['objective']:.6g}) in {best['run_dir']}")
    if common:
        lines.append("common overrides: " + " ".join(f"`{c}`" for c in common))
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [_fmt(row[c]).replace("|", "\\|").replace("\n", " ") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    _write_atomic(sweep_dir / SUMMARY_MD, markdown)
    return SweepTable(sweep_dir=sweep_dir, columns=columns, rows=rows, markdown=markdown, failed=failed)


class SweepSummary(Callback):
    """Hydra callback: a record per sweep job, and ``summary.csv`` / ``summary.md`` when the sweep ends.

    Does nothing in single runs. Registered in ``conf/hydra/default.yaml`` as
    ``hydra.callbacks.sweep_summary``.

    Args:
        fail_on_error: exit with code 1 after the summary when a job failed or did not finish (as Hydra's
            basic sweeper does without this callback, but after every job has run). Hyperparameter searches
            turn it off: a failed trial is an outcome there (``conf/hparams_search/optuna.yaml``).
    """

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Write ``sweep_job.json`` into the job's folder (multirun only, rank 0 only)."""
        global _pending_failure
        pending, _pending_failure = _pending_failure, None
        if config.hydra.mode != RunMode.MULTIRUN or not is_global_zero():
            return
        output_dir = Path(config.hydra.runtime.output_dir)
        record: dict[str, Any] = {
            "job": config.hydra.job.get("num"),
            "job_id": config.hydra.job.get("id"),
            "status": COMPLETED,
            "overrides": [str(o) for o in config.hydra.overrides.task],
            "optimized_metric": config.get("optimized_metric"),
            "objective": None,
            "error": None,
        }
        if job_return.status == JobStatus.FAILED:
            err = job_return._return_value  # the property would re-raise the job's exception
            record.update(status=FAILED, error=f"{type(err).__name__}: {err}")
        elif pending is not None and Path(pending["output_dir"]) == output_dir:
            record.update(status=FAILED, error=pending["error"])
        else:
            value = _float(job_return._return_value)
            record["objective"] = value
            if value is not None and math.isnan(value):
                record.update(status=FAILED, error=f"optimized_metric {record['optimized_metric']} is NaN")
        if record["status"] == FAILED:
            record["objective"] = None
        write_job_record(output_dir, record)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write and print the sweep's summary; exit with code 1 if a job failed and ``fail_on_error``."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default="minimize")
        if isinstance(direction, Sequence) and not isinstance(direction, str):
            direction = direction[0] if direction else "minimize"  # multi-objective: rank by the first
        table = write_summary(sweep_dir, direction=str(direction))
        print("\n" + table.markdown + f"\nSweep summary: {table.csv_path} and {table.md_path}")
        if table.failed and self.fail_on_error:
            print(
                f"error: {len(table.failed)} of {len(table.rows)} sweep jobs failed or did not finish "
                f"(jobs {', '.join(str(j.get('job')) for j in table.failed)}); see {table.md_path}",
                file=sys.stderr,
            )
            sys.exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ddpm.sweeps SWEEP_DIR``: (re)write and print the summary of a sweep folder."""
    parser = argparse.ArgumentParser(prog="python -m ddpm.sweeps", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--direction", default="minimize", choices=["minimize", "maximize"])
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    table = write_summary(args.sweep_dir, direction=args.direction)
    print(table.markdown + f"\nSweep summary: {table.csv_path} and {table.md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
