"""Cluster jobs against a real SLURM: sweeps, requeue and exact resume, time limits, scancel, DDP, sbatch,
and DDP across two nodes.

Marked ``slurm`` and left out of the default run. They need SLURM's commands and a cluster with a CPU
partition (``DDPM_SLURM_PARTITION``, default ``debug``), e.g. the cluster of
``scripts/slurm_local_cluster.sh start`` (export the ``SLURM_CONF`` it prints), and skip with a reason
otherwise. The two-node tests need two nodes in it (``start DIR --nodes 2``: two slurmd daemons on this
host), and the one-node DDP tests a node with 2 CPUs (``--cpus-per-node 2``). ``.ci/run`` starts such a
cluster and runs ``pytest -m slurm``. Each job is a few dozen to a few thousand steps of a small MLP on one
CPU per task; the jobs run this checkout's Python on the same filesystem.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.config import CONF_DIR
from ddpm.sweeps import JOB_RECORD
from tests.helpers import CLI_ENV

pytestmark = pytest.mark.slurm

REPO = CONF_DIR.parent
PARTITION = os.environ.get("DDPM_SLURM_PARTITION", "debug")
DDPM_TRAIN = str(Path(sys.executable).parent / "ddpm-train")

# A CPU cluster: one CPU and 1 GB per job, no GPU
CPU_LAUNCHER = [
    "hydra/launcher=slurm",
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]

# A small MLP; steps=N is a validation at the end only, and a checkpoint every N/10 steps (at least 50)
RUN = [
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=10",
    "data.n_train=2048",
    "data.n_val=256",
    "model.hidden=32",
    "model.depth=2",
    "T=100",
    "final_samples=64",
    "callbacks.samples.num_samples=64",
    "callbacks.samples.plot=false",
    "callbacks.progress_bar=null",
    "callbacks.loss_by_timestep=null",
    "reverse_gif=false",
    "print_config=false",
    "logger=csv",
    "cpu_threads=1",
]


def steps(n: int) -> list[str]:
    return [f"trainer.max_steps={n}", f"trainer.val_check_interval={n}"]


def _slurm(*args: str, check: bool = True, cwd: Path | None = None) -> str:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=60, cwd=cwd)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


@pytest.fixture(scope="module")
def cluster() -> str:
    """The partition the jobs go to; skips when no SLURM cluster answers."""
    if shutil.which("sbatch") is None:
        pytest.skip(
            "SLURM's commands are not installed (apt-get install -y slurmctld slurmd slurm-client munge; "
            "then scripts/slurm_local_cluster.sh start)"
        )
    res = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%a"], capture_output=True, text=True)
    if res.returncode != 0 or "up" not in res.stdout:
        why = (res.stderr.strip().splitlines() or ["no such partition"])[-1]
        pytest.skip(
            f"no SLURM cluster with an available partition {PARTITION!r} answers ({why}); start one with "
            "scripts/slurm_local_cluster.sh start and export the SLURM_CONF it prints"
        )
    return PARTITION


class Sweep:
    """``ddpm-train -m`` with the SLURM launcher, running in the background while a test acts on its jobs."""

    def __init__(self, tmp_path: Path, overrides: list[str]) -> None:
        self.dir = tmp_path / "sweep"
        self.name = f"ddpm-test-{uuid.uuid4().hex[:8]}"  # the SLURM job name: this test's jobs only
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        self.started = time.monotonic()
        sweep_dir = f"hydra.sweep.dir={self.dir}"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [DDPM_TRAIN, "-m", *CPU_LAUNCHER, f"hydra.launcher.name={self.name}", *overrides, sweep_dir],
                cwd=tmp_path,
                env={**os.environ, **CLI_ENV},
                stdout=out,
                stderr=err,
            )

    def jobs(self) -> dict[str, tuple[str, str]]:
        """SLURM job id -> (state, restarts) of this sweep's jobs that SLURM still lists."""
        out = _slurm("squeue", "-h", "--array", "-t", "all", "-n", self.name, "-o", "%i %T")
        jobs = {}
        for line in out.splitlines():
            job_id, state = line.split()
            restarts = re.search(r"Restarts=(\d+)", _slurm("scontrol", "show", "job", job_id))
            jobs[job_id] = (state, restarts.group(1) if restarts else "?")
        return jobs

    def wait_for(self, what: str, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"ddpm-train ended while waiting for {what}:\n{self.stderr()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s; jobs {self.jobs()}")
            time.sleep(0.5)

    def wait_for_state(self, job_id: str, state: str, timeout: float = 60) -> None:
        """SLURM lists a job as RUNNING or COMPLETING for a moment after its result was written."""
        deadline = time.monotonic() + timeout
        while self.jobs().get(job_id, ("",))[0] != state and time.monotonic() < deadline:
            time.sleep(0.5)

    def release_when_held(self, job_id: str, timeout: float = 120) -> None:
        """SLURM holds a requeued job for about 2 minutes (its BeginTime); start it again now."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _slurm("scontrol", "show", "job", job_id)
            if "JobState=PENDING" in info:
                if "Reason=BeginTime" in info:
                    _slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
                return
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} was not requeued within {timeout} s")

    def finish(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.seconds = time.monotonic() - self.started
            print(f"sweep {self.name}: {self.seconds:.0f} s, exit code {self.proc.returncode}")

    def stderr(self) -> str:
        return self.err.read_text()

    def record(self, num: int) -> dict:
        return json.loads((self.dir / str(num) / JOB_RECORD).read_text())


@pytest.fixture
def sweeps(cluster: str) -> Iterator[list[Sweep]]:
    """Sweeps a test starts; their jobs are cancelled when it ends, whatever happened."""
    started: list[Sweep] = []
    yield started
    for sweep in started:
        if sweep.proc.poll() is None:
            sweep.proc.kill()
        subprocess.run(["scancel", "-n", sweep.name], capture_output=True)


def start(sweeps: list[Sweep], tmp_path: Path, overrides: list[str]) -> Sweep:
    sweep = Sweep(tmp_path, overrides)
    sweeps.append(sweep)
    return sweep


def weights(job_dir: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """The step of a run's last.ckpt, and its tensors: weights (EMA and current), optimizer, random state."""
    ckpt = torch.load(job_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = ("state_dict", "current_model_state", "averaging_state", "optimizer_states", "rng_states")
    return ckpt["global_step"], tensors({k: ckpt[k] for k in keys})


def csv_parts(job_dir: Path) -> list[list[int]]:
    """The steps each part of a run logged: csv/metrics.csv, then csv/resumed_1/metrics.csv, ..."""
    resumed = sorted((job_dir / "csv").glob("resumed_*"), key=lambda p: int(p.name.split("_")[1]))
    parts = []
    for path in [job_dir / "csv" / "metrics.csv", *(p / "metrics.csv" for p in resumed)]:
        with path.open(newline="") as fh:
            parts.append(sorted({int(row["step"]) for row in csv.DictReader(fh) if row["step"]}))
    return parts


def tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested checkpoint entry, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = (
        tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else []
    )
    return {k: v for key, sub in items for k, v in tensors(sub, f"{prefix}/{key}").items()}


def wait_for_job(job_id: str, timeout: float) -> str:
    """The state a job ends in (COMPLETED, FAILED...); cancelled and an error after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = _slurm("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").strip()
        if state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still {state} after {timeout:.0f} s")


#: ddpm-train's line per rank of a multi-process run, and its digest of the weights each rank ends with
PLACEMENT = re.compile(
    r"^Rank (\d+) of (\d+): node rank (\d+), local rank (\d+), on (\S+) "
    r"\(SLURM job \S+, SLURM_NODEID (\d+)\)$",
    re.MULTILINE,
)
DIGEST = re.compile(r"^Weights at the end, rank (\d+) of (\d+): sha256 ([0-9a-f]{64})$", re.MULTILINE)


def assert_two_nodes_in_step(output: str) -> None:
    """Both ranks of a two-node run ran, on different nodes (SLURM_NODEID 0 and 1), and ended with equal
    weights. ``output``: the ranks' logs together (a requeued job's logs hold each start; the last counts)."""
    placed = {int(m[1]): (m[5], m[6], m[2]) for m in PLACEMENT.finditer(output)}
    assert sorted(placed) == [0, 1], output[-3000:]
    assert {world for _, _, world in placed.values()} == {"2"}
    assert sorted(node_id for _, node_id, _ in placed.values()) == ["0", "1"], placed
    assert placed[0][0] != placed[1][0], placed  # two slurmd nodes (n1, n2), not two tasks of one
    digests = {int(m[1]): m[3] for m in DIGEST.finditer(output)}
    assert sorted(digests) == [0, 1], output[-3000:]
    assert digests[0] == digests[1], digests


@pytest.fixture(scope="module")
def two_nodes(cluster: str) -> str:
    """The partition, when it has two nodes that take jobs; skips otherwise."""
    out = _slurm("sinfo", "-h", "-N", "-p", cluster, "-o", "%N %t")
    up = {name for name, state in (ln.split() for ln in out.splitlines()) if state.rstrip("*~#") in UP}
    if len(up) < 2:
        pytest.skip(
            f"partition {cluster!r} has {len(up)} node(s) up; the two-node tests need 2: "
            "scripts/slurm_local_cluster.sh start DIR --nodes 2 (see its --cpus-per-node)"
        )
    return cluster


#: node states (sinfo %t) that take jobs
UP = ("idle", "mix", "alloc")

#: one process on each of two nodes, Lightning's ranks and main address from SLURM's variables
TWO_NODES = [
    "hydra.launcher.nodes=2",
    "hydra.launcher.tasks_per_node=1",
    "trainer=ddp",
    "trainer.num_nodes=2",
    "trainer.devices=1",
    "trainer.accelerator=cpu",
]


# ----------------------------------------------------------------------------- tests
def test_requests_the_cluster_cannot_meet_are_one_line(cluster: str, tmp_path: Path) -> None:
    """The default launcher settings (a GPU, 8 CPUs, 64 GB) on a small CPU cluster."""

    def sweep(*overrides: str) -> list[str]:
        launcher = ["hydra/launcher=slurm", f"hydra.launcher.partition={cluster}"]
        res = subprocess.run(
            [DDPM_TRAIN, "-m", *launcher, "T=20,40", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            cwd=tmp_path,
            env={**os.environ, **CLI_ENV},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "sweep").exists()  # no job ran: no sweep folder is left
        return [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]

    assert sweep() == [
        f"error: hydra.launcher.gpus_per_node=1: {cluster} has no GPUs (sbatch: Invalid generic resource "
        "(gres) specification); on a CPU cluster set hydra.launcher.gpus_per_node=0"
    ]
    # sbatch takes the jobs, SLURM holds them for ever: the sweep cancels them and says why
    (error,) = sweep("hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1000")
    assert "reason PartitionConfig" in error and "cpus_per_task=1000" in error, error
    assert "the sweep's jobs were cancelled" in error


def test_a_two_job_sweep_completes_and_its_summary_lists_both(sweeps: list[Sweep], tmp_path: Path) -> None:
    sweep = start(sweeps, tmp_path, [*RUN, *steps(40), "schedule=linear,cosine"])
    assert sweep.finish() == 0, sweep.stderr()[-3000:]
    summary = (sweep.dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",completed," in row for row in summary[1:]), summary
    for num in (0, 1):
        record = sweep.record(num)
        assert record["status"] == "completed"
        assert re.fullmatch(r"\d+_\d", record["job_id"])  # a SLURM array task ran it
        assert list((sweep.dir / ".submitit" / record["job_id"]).glob("*_log.out"))
        assert weights(sweep.dir / str(num))[0] == 40


def test_scontrol_requeue_resumes_the_job_exactly(sweeps: list[Sweep], tmp_path: Path) -> None:
    """Two identical jobs; the first is requeued while it trains: both end with the same weights."""
    n = 3000
    sweep = start(sweeps, tmp_path, [*RUN, *steps(n), "seed=7,7"])
    job0 = sweep.dir / "0"
    # the first periodic checkpoint (step 300): it trains, and not at its end
    sweep.wait_for("checkpoint of job 0", lambda: (job0 / "checkpoints" / "last.ckpt").is_file())
    job_id = next(j for j in sweep.jobs() if j.endswith("_0"))
    _slurm("scontrol", "requeue", job_id)
    sweep.release_when_held(job_id)
    assert sweep.finish() == 0, sweep.stderr()[-3000:]

    sweep.wait_for_state(job_id, "COMPLETED")
    assert sweep.jobs()[job_id] == ("COMPLETED", "1")  # it ran twice
    parts = csv_parts(job0)
    assert len(parts) == 2 and parts[0][-1] < n, parts  # stopped early, then went on where it stopped
    assert max(parts[1]) >= n - 10 and min(parts[1]) > max(parts[0]) - 10, parts
    log = next((sweep.dir / ".submitit" / job_id).glob("*_log.err")).read_text()
    assert "SIGTERM at step" in log  # the first part saved on SLURM's signal, and its log is kept
    (step_a, a), (step_b, b) = weights(job0), weights(sweep.dir / "1")
    assert step_a == step_b == n
    assert a.keys() == b.keys() and any(k.startswith("/current_model_state") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    samples = [np.load(sweep.dir / num / "samples.npz")["samples"] for num in ("0", "1")]
    assert np.array_equal(*samples)  # drawn after training: the random state was resumed too


def test_scancel_of_one_job_keeps_the_other_and_fails_the_sweep(sweeps: list[Sweep], tmp_path: Path) -> None:
    """Job 1 is cancelled once Hydra made its folder: inside submitit, which ignores SIGTERM (the job would
    run on until SIGKILL, KillWait = 30 s later, and on a fast machine complete), before or as it trains."""
    sweep = start(sweeps, tmp_path, [*RUN, "seed=1,2", *steps(3000)])
    sweep.wait_for("job 1's folder", lambda: (sweep.dir / "1").is_dir())
    job_id = next(j for j in sweep.jobs() if j.endswith("_1"))
    _slurm("scancel", job_id)
    assert sweep.finish() == 1
    log = next((sweep.dir / ".submitit" / job_id).glob("*_log.err")).read_text()
    assert "the job stops now" in log or "SIGTERM at step" in log, log[-2000:]
    assert sweep.record(0)["status"] == "completed"
    assert weights(sweep.dir / "0")[0] == 3000
    cancelled = sweep.record(1)
    assert cancelled["status"] == "cancelled" and cancelled["job_id"] == job_id
    assert f"SLURM job {job_id} ended CANCELLED without a result" in cancelled["error"]
    summary = (sweep.dir / "summary.md").read_text()
    assert "2 jobs: 1 completed, 1 cancelled" in summary and "ended CANCELLED" in summary
    errors = [ln for ln in sweep.stderr().splitlines() if ln.startswith("error:")]
    assert errors[-1].startswith("error: 1 of 2 sweep jobs failed or did not finish (jobs 1)")


def test_a_time_limit_saves_requeues_and_completes(sweeps: list[Sweep], tmp_path: Path) -> None:
    """timeout_min=1 and signal_delay_s=45: SLURM sends USR2 15 to 45 s into each part (it looks at time
    limits every 30 s). The run trains for 40 s in all (``trainer.max_time``, which Lightning keeps across
    resumes): longer than the first part can train whatever this machine's speed, within the 5 requeues
    that max_num_timeout allows. A part trains from when it has started up to its signal, which can come
    before it trains at all (requeued without a save) or as the last part finishes its samples; on a
    2-core machine under load 4 parts were not always enough."""
    limit = [f"hydra.launcher.{k}" for k in ("timeout_min=1", "signal_delay_s=45", "max_num_timeout=5")]
    sweep = start(sweeps, tmp_path, [*RUN, *steps(10**6), "+trainer.max_time=00:00:00:40", *limit])
    job = sweep.dir / "0"
    released: set[tuple[str, str]] = set()

    def requeued_and_released() -> bool:
        for job_id, (state, restarts) in sweep.jobs().items():
            if state == "PENDING" and restarts != "0" and (job_id, restarts) not in released:
                sweep.release_when_held(job_id)
                released.add((job_id, restarts))
        return sweep.proc.poll() is not None

    deadline = time.monotonic() + 480  # up to 6 parts of at most a minute, each queued again
    while not requeued_and_released() and time.monotonic() < deadline:
        time.sleep(1)
    assert sweep.finish() == 0, sweep.stderr()[-3000:]
    assert sweep.record(0)["status"] == "completed"
    assert 1 <= len(released) <= 5, released
    log = next((sweep.dir / ".submitit").glob("*/*_log.err")).read_text()
    assert log.count("Caught signal SIGUSR2") == len(released)
    saved = [int(m) for m in re.findall(r"SIGTERM at step (\d+): saved", log)]
    assert len(saved) >= 1 and saved == sorted(saved)  # each signal saved, and each part went on from there
    parts = [p for p in csv_parts(job) if p]
    assert all(min(b) > max(a) - 10 for a, b in itertools.pairwise(parts)), parts
    step, _ = weights(job)
    # The time limit can fall due just as SLURM's signal comes: that part saves and is requeued, and the last
    # part restores at the saved step and stops at once; otherwise the last part trained on from its save.
    last_part = log.rsplit("Restoring states", 1)[-1]
    assert step > saved[-1] or (step == saved[-1] and "Time limit reached" in last_part), (step, saved)
    assert max(parts[-1]) >= step - 10
    assert "Trained" in (next((sweep.dir / ".submitit").glob("*/*_log.out")).read_text())


def test_ddp_with_two_slurm_tasks_on_cpu(sweeps: list[Sweep], tmp_path: Path) -> None:
    """trainer=ddp_cpu (2 devices) on a CPU cluster: 2 SLURM tasks, Lightning takes its ranks from SLURM."""
    sweep = start(sweeps, tmp_path, [*RUN, *steps(40), "trainer=ddp_cpu", "cpu_threads=1"])
    assert sweep.finish() == 0, sweep.stderr()[-3000:]
    record = sweep.record(0)
    assert record["status"] == "completed"
    logs = sorted((sweep.dir / ".submitit" / record["job_id"]).glob("*_log.out"))
    assert len(logs) == 2  # one per SLURM task
    out = "\n".join(p.read_text() for p in logs)
    assert "per device x 2 devices" in out
    assert weights(sweep.dir / "0")[0] == 40


def test_the_sbatch_script_runs_ddp_through_srun(cluster: str, tmp_path: Path) -> None:
    """scripts/slurm_multinode.sbatch on one node with 2 CPU tasks: srun starts both ranks."""
    job_id = _slurm(
        "sbatch",
        "--parsable",
        f"--partition={cluster}",
        "--nodes=1",
        "--ntasks-per-node=2",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--mem=2G",
        "--time=10",
        f"--export=ALL,DDPM_TRAIN={DDPM_TRAIN},WANDB_MODE=offline,MPLBACKEND=Agg",
        str(REPO / "scripts" / "slurm_multinode.sbatch"),
        "trainer.accelerator=cpu",
        *RUN,
        *steps(40),
        cwd=tmp_path,  # the script runs in the folder it was submitted from
    ).strip()
    state = wait_for_job(job_id, 240)
    out = next(tmp_path.glob(f"slurm-*-{job_id}.out")).read_text()
    assert state == "COMPLETED", out[-3000:]
    run = tmp_path / "outputs" / "ddp" / "slurm" / job_id
    assert weights(run)[0] == 40
    assert "per device x 2 devices" in out


# ----------------------------------------------------------------------------- two nodes
def test_ddp_on_two_nodes_through_submitit(two_nodes: str, sweeps: list[Sweep], tmp_path: Path) -> None:
    """hydra/launcher=slurm with nodes=2: one SLURM task per node, one run folder, one result."""
    sweep = start(sweeps, tmp_path, [*RUN, *steps(40), *TWO_NODES])
    assert sweep.finish() == 0, sweep.stderr()[-3000:]
    record = sweep.record(0)
    assert record["status"] == "completed"
    logs = sorted((sweep.dir / ".submitit" / record["job_id"]).glob("*_log.out"))
    assert len(logs) == 2  # one per SLURM task
    out = "\n".join(p.read_text() for p in logs)
    assert_two_nodes_in_step(out)
    assert "per device x 2 devices" in out
    # one run folder (rank 1 wrote into rank 0's), one result
    assert sorted(p.name for p in sweep.dir.iterdir() if not p.name.startswith(".")) == [
        "0",
        "multirun.yaml",
        "summary.csv",
        "summary.md",
    ]
    assert not (tmp_path / "outputs").exists()
    summary = (sweep.dir / "summary.csv").read_text().splitlines()
    assert len(summary) == 2 and ",completed," in summary[1], summary
    assert len(list(sweep.dir.rglob("samples.npz"))) == 1
    assert weights(sweep.dir / "0")[0] == 40


def test_the_sbatch_script_runs_ddp_on_two_nodes(two_nodes: str, tmp_path: Path) -> None:
    """scripts/slurm_multinode.sbatch with --nodes=2 --ntasks-per-node=1: srun starts a rank on each node."""
    job_id = _slurm(
        "sbatch",
        "--parsable",
        f"--partition={two_nodes}",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--mem=1G",
        "--time=10",
        f"--export=ALL,DDPM_TRAIN={DDPM_TRAIN},WANDB_MODE=offline,MPLBACKEND=Agg",
        str(REPO / "scripts" / "slurm_multinode.sbatch"),
        "trainer.accelerator=cpu",
        *RUN,
        *steps(40),
        cwd=tmp_path,
    ).strip()
    state = wait_for_job(job_id, 300)
    out = next(tmp_path.glob(f"slurm-*-{job_id}.out")).read_text()
    assert state == "COMPLETED", out[-3000:]
    assert_two_nodes_in_step(out)
    assert "per device x 2 devices" in out
    runs = tmp_path / "outputs" / "ddp" / "slurm"
    assert [p.name for p in runs.iterdir()] == [job_id]  # one run folder
    assert len(list((tmp_path / "outputs").rglob("samples.npz"))) == 1  # one result
    assert weights(runs / job_id)[0] == 40


def test_a_two_node_job_requeued_mid_training_resumes_and_completes(
    two_nodes: str, sweeps: list[Sweep], tmp_path: Path
) -> None:
    """scontrol requeue of a running two-node job: both ranks stop at one step, rank 0 saves, and the job's
    second start resumes from that checkpoint on both nodes and completes."""
    n = 300
    sweep = start(sweeps, tmp_path, [*RUN, *steps(n), *TWO_NODES])
    job = sweep.dir / "0"
    # the first periodic checkpoint (step 50): it trains, and not at its end
    sweep.wait_for("a checkpoint of the job", lambda: (job / "checkpoints" / "last.ckpt").is_file(), 240)
    (job_id,) = sweep.jobs()
    _slurm("scontrol", "requeue", job_id)
    sweep.release_when_held(job_id)
    assert sweep.finish(timeout=600) == 0, sweep.stderr()[-3000:]

    sweep.wait_for_state(job_id, "COMPLETED")
    assert sweep.jobs()[job_id] == ("COMPLETED", "1")  # it ran twice
    assert sweep.record(0)["status"] == "completed"
    parts = csv_parts(job)
    assert len(parts) == 2 and parts[0][-1] < n, parts  # stopped early, then went on where it stopped
    assert max(parts[1]) >= n - 10 and min(parts[1]) > max(parts[0]) - 10, parts
    logs = sorted((sweep.dir / ".submitit" / job_id).glob("*_log.*"))
    err = "\n".join(p.read_text() for p in logs if p.name.endswith("_log.err"))
    assert "SIGTERM at step" in err and "Restoring states" in err, err[-3000:]
    out = "\n".join(p.read_text() for p in logs if p.name.endswith("_log.out"))
    assert_two_nodes_in_step(out)
    assert weights(job)[0] == n
