"""SLURM jobs for ``hydra/launcher=slurm``: submitit's launcher with the parts a sweep needs on a cluster.

hydra-submitit-launcher submits one SLURM job per sweep point and waits for their results. On top of it:

* **submission errors in one line**: sbatch's refusal (a GPU asked of a partition without GPUs, more CPUs
  or memory than a node has, an unknown partition) names the ``hydra.launcher`` key to change, with no
  traceback, before any job runs;
* **the time-limit signal stops training where it can resume**: SLURM sends ``USR2`` ``signal_delay_s``
  before the limit, and submitit would requeue the job from inside its signal handler, i.e. wherever
  training happens to be. Here the handler asks Lightning to stop as on SIGTERM (at the next batch
  boundary, where ``LastCheckpoint`` saves ``last.ckpt``), and submitit requeues afterwards. The requeued
  job runs in its own folder and ``DDPM_CKPT_PATH=auto`` resumes it from that checkpoint;
* **``scancel`` stops a job whenever it comes**: submitit ignores SIGTERM, so a job cancelled while it
  starts would run on until SLURM's SIGKILL (``KillWait`` later) and could even complete. Outside training
  the job now stops at once; during training Lightning stops at the next batch and saves ``last.ckpt``;
* **cancelled and lost jobs do not stop the sweep**: a job that ended without a result (``scancel``, a
  node failure, too many time limits) is recorded in its folder's ``sweep_job.json`` as ``cancelled`` or
  ``failed`` with SLURM's state, the other jobs' results are kept, and ``ddpm-train -m`` exits with code 1
  after the summary (``ddpm.sweeps.SweepSummary``). Job states come from ``squeue`` (submitit asks
  ``sacct``, which clusters without an accounting database cannot answer: it would wait forever).

This module is imported when Hydra builds the launcher: submitit itself is imported only when jobs are
submitted or run.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import open_dict

from ddpm.sweeps import CANCELLED, FAILED, write_job_record

__all__ = ["SlurmLauncher", "explain_sbatch_error", "slurm_job_states"]

log = logging.getLogger(__name__)

#: SLURM states of a job that has ended (``squeue -t all`` keeps them for MinJobAge, 300 s by default)
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
}


def explain_sbatch_error(message: str, params: dict[str, Any]) -> str:
    """One line for sbatch's refusal of a sweep's jobs, naming the ``hydra.launcher`` key to change."""
    lines = [ln.strip() for ln in message.splitlines() if "error" in ln.lower() and ln.strip()]
    said = re.sub(
        r"^.*?sbatch: error: ",
        "",
        lines[0] if lines else (message.strip().splitlines() or ["no reason given"])[-1],
    )
    partition = params.get("partition") or "the default partition"
    if "generic resource" in said or "gres" in said.lower():
        return (
            f"hydra.launcher.gpus_per_node={params.get('gpus_per_node')}: {partition} has no GPUs "
            f"(sbatch: {said}); on a CPU cluster set hydra.launcher.gpus_per_node=0"
        )
    if "node configuration is not available" in said:
        return (
            f"no node of {partition} has {params.get('tasks_per_node')} x "
            f"hydra.launcher.cpus_per_task={params.get('cpus_per_task')} CPUs and "
            f"hydra.launcher.mem_gb={params.get('mem_gb')} GB (sbatch: {said}); lower them (sinfo -N -l)"
        )
    if "invalid partition" in said.lower():
        return f"hydra.launcher.partition={params.get('partition')}: sbatch: {said} (sinfo -s lists them)"
    return f"sbatch refused the jobs: {said}"


#: why SLURM holds a pending job that no wait will start: the request exceeds what the partition has
NEVER_STARTS = {
    "PartitionConfig": "more CPUs or memory per node than the partition's nodes have",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a longer time limit than the partition allows",
    "BadConstraints": "constraints no node meets",
}


def slurm_job_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """SLURM's state and reason of each job (``123`` or array task ``123_4``) that ``squeue`` still knows.

    A job missing from the answer has left the queue. None when squeue cannot be asked.
    """
    if not job_ids:
        return {}
    fmt = "--format=%i %T %r"
    cmd = ["squeue", "--noheader", "--array", "--states=all", fmt, f"--jobs={','.join(job_ids)}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2:
            states[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else "")
    return states


def _fail(message: str) -> NoReturn:
    # Hydra prints a launcher's exceptions with a traceback; a refused submission is a user error: one line
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _remove_unstarted_sweep_dir(sweep_dir: Path) -> None:
    """Delete a sweep folder none of whose jobs was submitted (it holds only what the launch wrote)."""
    from ddpm.run_folder import CLAIM_FILE

    if sweep_dir.is_dir() and all(
        e.name in (".submitit", "multirun.yaml", CLAIM_FILE) for e in sweep_dir.iterdir()
    ):
        shutil.rmtree(sweep_dir)


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher with one-line submission errors, a time-limit signal that
    checkpoints at a step boundary, and sweeps that survive cancelled jobs (see the module docstring).

    Configured by ``conf/hydra/launcher/slurm.yaml``; the parameters are hydra-submitit-launcher's.
    """

    #: seconds between two looks at the queue, at first and at most (the interval grows with the wait)
    POLL_S = (2.0, 30.0)

    # ------------------------------------------------------------------------------------ in the job
    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run one job of the sweep (in the SLURM job); on the time-limit signal, save, then requeue."""
        from submitit import JobEnvironment

        usr = JobEnvironment._usr_sig()
        requeue = signal.getsignal(usr)  # submitit's: checkpoint the submission, scontrol requeue, exit
        submitit_sigterm = signal.getsignal(signal.SIGTERM)  # submitit's ignores it

        def outside_training(signum: int, frame: Any) -> None:
            # submitit ignores SIGTERM (scancel, scontrol requeue): a job cancelled while it starts would
            # run on until SLURM's SIGKILL, KillWait later, and may even complete. During training Lightning
            # calls this after its own handler (LastCheckpoint hands it the signal at a batch's end, where it
            # saved; Lightning stops there): nothing to do then.
            if signal.getsignal(signal.SIGTERM) is outside_training:
                print("SIGTERM outside training (scancel, requeue): the job stops now", file=sys.stderr)
                raise SystemExit(143)

        signal.signal(signal.SIGTERM, outside_training)
        deferred: list[int] = []  # the signal, once training was asked to stop: requeue when it has

        def stop_then_requeue(signum: int, frame: Any) -> None:
            if deferred:
                return  # SLURM may signal again while the step finishes
            on_sigterm = signal.getsignal(signal.SIGTERM)
            if callable(on_sigterm) and on_sigterm != outside_training:
                deferred.append(signum)
                log.warning("%s: stopping at the next step to save last.ckpt, then requeueing", usr.name)
                on_sigterm(signal.SIGTERM, frame)  # training's: save at the batch's end, then stop there
            elif callable(requeue):
                signal.signal(usr, signal.SIG_IGN)  # requeueing now; a second signal must not requeue twice
                requeue(signum, frame)  # not training (yet or any more): nothing to save first

        if callable(requeue):
            signal.signal(usr, stop_then_requeue)
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:
            if deferred and callable(requeue):
                signal.signal(usr, signal.SIG_IGN)
                requeue(deferred[0], None)  # exits: SLURM runs the job again, DDPM_CKPT_PATH=auto resumes
            raise
        finally:
            signal.signal(signal.SIGTERM, submitit_sigterm)
            if callable(requeue):
                signal.signal(usr, requeue)

    # ------------------------------------------------------------------------------- on the login node
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit one SLURM job per sweep point, wait for all, and return their results.

        Follows hydra-submitit-launcher 1.2's ``launch``; jobs that end without a result are recorded as
        cancelled or failed instead of raising, so the sweep's summary is written.
        """
        import submitit
        from hydra.core.singleton import Singleton
        from hydra.core.utils import filter_overrides
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
        from omegaconf import OmegaConf

        assert self.config is not None
        params = dict(self.params)
        folder = params.pop("submitit_folder")
        max_num_timeout = params.pop("max_num_timeout")
        try:
            executor = submitit.AutoExecutor(
                cluster="slurm", folder=folder, slurm_max_num_timeout=max_num_timeout
            )
        except RuntimeError as err:  # submitit finds no srun
            _fail(f"hydra/launcher=slurm needs SLURM's commands (srun, sbatch) on PATH: {err}")
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            )
        try:
            jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except submitit.core.utils.FailedJobError as err:
            _remove_unstarted_sweep_dir(sweep_dir)
            _fail(explain_sbatch_error(str(err), self.params))
        print(
            f"Submitted SLURM jobs {', '.join(j.job_id for j in jobs)}; logs in {sweep_dir / '.submitit'}",
            flush=True,
        )
        ended = self._wait(jobs)
        numbered = enumerate(zip(jobs, job_overrides, strict=True), start=initial_job_idx)
        return [self._job_return(job, list(over), idx, ended[job.job_id]) for idx, (job, over) in numbered]

    def _wait(self, jobs: Sequence[Any]) -> dict[str, str]:
        """Wait until every job has a result or has left SLURM's queue; the last state seen of each."""
        seen: dict[str, str] = {}
        pending = {j.job_id: j for j in jobs}
        started = time.monotonic()
        while pending:
            states = slurm_job_states(list(pending))  # asked first: a result is written before the job ends
            for job_id, job in list(pending.items()):
                if job.paths.result_pickle.exists():
                    state: str | None = "COMPLETED"
                elif states is None:  # no squeue: submitit's own (sacct) answer
                    state = job.state if job.done() else None
                elif job_id in states:
                    slurm_state, reason = states[job_id]
                    if slurm_state == "PENDING" and reason in NEVER_STARTS:
                        self._refused(jobs, job_id, reason)
                    state = slurm_state if slurm_state in ENDED else None  # requeued: PENDING again
                else:
                    state = "UNKNOWN"  # it left the queue between two looks
                if state is not None:
                    seen[job_id] = state
                    del pending[job_id]
            if pending:
                low, high = self.POLL_S
                time.sleep(min(high, low + (time.monotonic() - started) / 20))
        return seen

    def _refused(self, jobs: Sequence[Any], job_id: str, reason: str) -> NoReturn:
        """SLURM will never start a job of the sweep: cancel them all and say which request is too big."""
        subprocess.run(["scancel", *(j.job_id for j in jobs)], capture_output=True, timeout=60, check=False)
        assert self.config is not None
        _remove_unstarted_sweep_dir(Path(str(self.config.hydra.sweep.dir)))
        p = self.params
        asked = (
            f"hydra.launcher.nodes={p.get('nodes')}, tasks_per_node={p.get('tasks_per_node')}, "
            f"cpus_per_task={p.get('cpus_per_task')}, mem_gb={p.get('mem_gb')}, "
            f"timeout_min={p.get('timeout_min')}"
        )
        _fail(
            f"SLURM holds job {job_id} with reason {reason} ({NEVER_STARTS[reason]}): {asked} on "
            f"partition {p.get('partition')}; the sweep's jobs were cancelled (sinfo -N -l shows the nodes)"
        )

    def _job_return(self, job: Any, overrides: list[str], idx: int, state: str) -> JobReturn:
        """The job's JobReturn; a job without a usable result is recorded in its folder and returns None."""
        reason = None
        if job.paths.result_pickle.exists():
            try:
                result = job.results()[0]
            except Exception as err:  # submitit re-raises what ended the job, e.g. too many time limits
                text = str(err).strip().splitlines()
                reason = next((ln for ln in reversed(text) if ln.strip()), type(err).__name__).strip()
                status = FAILED
            else:
                if not (isinstance(result, JobReturn) and result.status == JobStatus.FAILED):
                    return result
                reason = f"{type(result._return_value).__name__}: {result._return_value}"
                status = FAILED
        else:
            status = CANCELLED if state == "CANCELLED" else FAILED
            reason = f"SLURM job {job.job_id} ended {state} without a result (log: {job.paths.stderr})"
        job_dir = self._job_dir(overrides, idx)
        write_job_record(
            job_dir,
            {
                "job": idx,
                "job_id": job.job_id,
                "status": status,
                "overrides": [o for o in overrides if not o.startswith("hydra.")],
                "optimized_metric": self.config.get("optimized_metric") if self.config else None,
                "objective": None,
                "error": reason,
            },
        )
        log.error("job %d (SLURM %s) %s: %s", idx, job.job_id, status, reason)
        # COMPLETED with no value: the sweeper goes on (Optuna marks the trial FAIL), the summary says why
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)

    def _job_dir(self, overrides: list[str], idx: int) -> Path:
        """A job's folder, as the job itself names it (``hydra.sweep.dir``/``hydra.sweep.subdir``)."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
