"""Run ownership: nothing is deleted that this process did not create, one writer per run, and no command
writes into another run's folder.

The commands run in-process (``ddpm-train``'s real entry point, the other commands' ``main``); the lock is
shown across processes with ``fork`` (a held lock, a race, a SIGKILL), where only processes show it.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from ddpm.cli.eval import main as eval_main
from ddpm.cli.export import main as export_main
from ddpm.cli.sample import main as sample_main
from ddpm.cli.viz import main as viz_main
from ddpm.run_folder import (
    CLAIM_FILE,
    LOCK_FILE,
    ClaimRunFolder,
    RunFolderError,
    RunLockedError,
    claim_folder,
    enclosing_run,
    lock_run_folder,
    out_problem,
    release_run_lock,
)
from tests.helpers import SHORT, compose_cfg, train_in_process

pytestmark = pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")  # T=50
QUIET = [*SHORT, "reverse_gif=false", "T=50", "callbacks.samples=null", "final_samples=0"]
HOST = os.uname().nodename


def _train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = train_in_process(argv)
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------ nothing deleted that is not ours
@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["ckpt_path=last"], "ckpt_path=last but"),  # reaches train(): the clean-up runs, on a user's folder
        (["ckpt_path=auto", "T=0"], "holds no ddpm-lab run"),  # refused before Hydra writes anything
    ],
)
def test_a_config_error_keeps_a_users_folder(
    overrides: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """``mkdir d; echo x > d/app.log; ddpm-train ckpt_path=last hydra.run.dir=d``: d and app.log stay."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "app.log").write_text("x\n")
    code, err = _train([*overrides, "hydra.run.dir=d", "logger=csv", "print_config=false"], capsys)
    assert code == 2
    assert says in _one_line(err)
    assert _files(tmp_path / "d") == {"app.log": b"x\n"}  # and what the failed start wrote there is gone
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["app.log"]


def test_a_config_error_keeps_another_runs_folder_and_removes_the_one_it_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other"  # claimed by another run that has written no checkpoint yet
    other.mkdir()
    (other / CLAIM_FILE).write_text("pid 1 on elsewhere\n")
    (other / "train.log").write_text("the other run's log\n")
    before = _files(other)
    code, err = _train(["ckpt_path=last", f"hydra.run.dir={other}", "logger=csv"], capsys)
    assert code == 2 and "ckpt_path=last but" in _one_line(err)
    assert _files(other) == before  # the old clean-up removed it whole (only a claim and a log)
    assert sorted(p.name for p in other.iterdir()) == sorted(before)
    # a folder this process created for the failed run is removed whole
    code, err = _train(["ckpt_path=last", "hydra.run.dir=new", "logger=csv"], capsys)
    assert code == 2 and "ckpt_path=last but" in _one_line(err)
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- one writer per run
def _hold(folder: str, ready: Any, done: Any) -> None:
    lock_run_folder(Path(folder))
    ready.set()
    done.wait(60)


def _race(folder: str, barrier: Any, queue: Any) -> None:
    barrier.wait()
    try:
        lock_run_folder(Path(folder))
        queue.put(("locked", os.getpid()))
        barrier.wait()  # hold it until both have tried
    except RunLockedError as err:
        queue.put(("refused", str(err)))
        barrier.wait()


def test_two_writers_racing_for_one_run_one_gets_it_the_other_is_told_who(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # the lock needs no fresh interpreter: quick to start
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    (locked, pid), (refused, message) = got
    assert (locked, refused) == ("locked", "refused")
    assert f"pid {pid} on {HOST}" in message and str(tmp_path) in message and "\n" not in message


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, done))
    holder.start()
    assert ready.wait(60)
    assert (tmp_path / LOCK_FILE).read_text() == f"pid {holder.pid} on {HOST}\n"
    with pytest.raises(RunLockedError, match=f"pid {holder.pid} on {HOST}"):
        lock_run_folder(tmp_path)  # alive: refused
    os.kill(holder.pid, signal.SIGKILL)  # no clean-up of its own: the lock file stays, naming it
    holder.join(60)
    assert (tmp_path / LOCK_FILE).read_text() == f"pid {holder.pid} on {HOST}\n"
    try:
        assert lock_run_folder(tmp_path) is True  # the kernel dropped the dead process's lock
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()} on {HOST}\n"
        assert lock_run_folder(tmp_path) is False  # held already: a no-op, not a refusal of itself
    finally:
        release_run_lock(tmp_path)


def test_a_second_ddpm_train_into_a_locked_run_is_refused_before_it_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """A run being trained (its lock held: here by this test, through a descriptor of its own) refuses a
    second ``ddpm-train ckpt_path=auto`` in one line naming the holder; once free, the same command trains."""
    monkeypatch.chdir(tmp_path)
    run, _ = claim_folder(tmp_path / "run", may_rename=False, may_reuse=False)  # a run that has just started
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    argv = ["ckpt_path=auto", f"hydra.run.dir={run}", *QUIET]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"pid 4242 on {HOST}\n".encode())
        before = _files(run)
        code, err = _train(argv, capsys)
        assert code == 2
        line = _one_line(err)
        assert f"run folder {run} is in use by another process (pid 4242 on {HOST}" in line, line
        assert _files(run) == before  # no .hydra, no log, no W&B: nothing written
    finally:
        os.close(fd)  # the first writer ends
    code, err = _train(argv, capsys)
    assert code == 0, err
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert (run / LOCK_FILE).read_text() == f"pid {os.getpid()} on {HOST}\n"  # it named itself
    assert lock_run_folder(run) is True  # and released it when its job ended
    release_run_lock(run)


def test_ranks_after_the_first_do_not_lock(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP rank that Lightning started: rank 0 holds the lock
    ClaimRunFolder().on_job_start(config)
    assert not (tmp_path / LOCK_FILE).exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    ClaimRunFolder().on_job_start(config)  # a sweep's job: locked for the job
    assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()} on {HOST}\n"
    ClaimRunFolder().on_job_end(config)  # the basic launcher's next job, in this process, is free to run
    assert lock_run_folder(tmp_path) is True
    release_run_lock(tmp_path)


# ----------------------------------------------------------------------------- DDP tasks started by srun
def _srun_task(monkeypatch: pytest.MonkeyPatch, procid: int, restart: int = 0) -> None:
    """The environment srun gives task ``procid`` of step 4242.0 (``scripts/slurm_multinode.sbatch``)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_PROCID": str(procid)}
    for var, value in {**env, "SLURM_LOCALID": str(procid), "SLURM_RESTART_COUNT": str(restart)}.items():
        monkeypatch.setenv(var, value)


def _sbatch_config(root: Path, folder: Path) -> Any:
    """ddpm-train's config as the sbatch script composes it: its own hydra.run.dir, ckpt_path=auto."""
    return compose_cfg(root, [f"hydra.run.dir={folder}", "ckpt_path=auto"], run_folder=False)


def _hydra_writes(config: Any) -> None:
    """What Hydra's run_job writes once every on_run_start has returned (hydra/core/utils.py): the folder,
    the job's log file, and .hydra/ unless output_subdir is null."""
    run = Path(str(config.hydra.run.dir))
    run.mkdir(parents=True, exist_ok=True)
    with (run / f"{config.hydra.job.name}.log").open("a") as log:
        log.write(f"task {os.environ['SLURM_PROCID']}\n")
    if config.hydra.output_subdir is not None:
        (run / config.hydra.output_subdir).mkdir(exist_ok=True)
        (run / config.hydra.output_subdir / "config.yaml").write_text(f"task {os.environ['SLURM_PROCID']}\n")


def _task_1_starts_first(config: Any, waiting: Any, queue: Any) -> None:
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # this process only (forked): tell the test that task 1 waits
        waiting.set()
        real_sleep(seconds)

    time.sleep = sleep
    try:
        ClaimRunFolder().on_run_start(config)
    except SystemExit as exc:
        queue.put(("exit", exc.code))
        return
    _hydra_writes(config)
    queue.put(("started", str(config.hydra.run.dir), config.hydra.output_subdir))


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
def test_srun_task_1_starting_first_waits_for_task_0_to_claim_the_folder(
    flock: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """srun starts every task of ``slurm_multinode.sbatch`` at once; here task 1 runs first, then task 0.
    Task 0 claims its new folder: task 1 wrote nothing there before it (no .hydra/, no log to refuse). On a
    file system without flock (Lustre without -o flock) task 0's label is still there to wait for."""
    if not flock:

        def no_flock(fd: int, operation: int) -> None:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

        monkeypatch.setattr("ddpm.run_folder.fcntl.flock", no_flock)
    run = tmp_path / "outputs" / "ddp" / "slurm" / "4242"
    config = _sbatch_config(tmp_path, run)
    ctx = multiprocessing.get_context("fork")
    waiting, queue = ctx.Event(), ctx.Queue()
    _srun_task(monkeypatch, 1)
    task_1 = ctx.Process(target=_task_1_starts_first, args=(config, waiting, queue))
    task_1.start()
    try:
        # task 1 has either written its start (the race) or is waiting for task 0
        deadline = time.monotonic() + 60
        while queue.empty() and not waiting.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        _srun_task(monkeypatch, 0)
        capsys.readouterr()
        try:
            ClaimRunFolder().on_run_start(config)
        except SystemExit:
            pytest.fail(f"task 0 refused its own folder: {capsys.readouterr().err.strip()}")
        _hydra_writes(config)
        assert queue.get(timeout=60) == ("started", str(run), None)  # same folder; .hydra/ is task 0's
    finally:
        task_1.join(60)
        if task_1.is_alive():
            task_1.kill()
        release_run_lock(run)
    assert (run / CLAIM_FILE).read_text() == f"pid {os.getpid()} on {HOST}\n"
    assert (run / LOCK_FILE).read_text() == f"pid {os.getpid()} on {HOST}\nslurm step 4242.0 restart 0\n"
    assert (run / ".hydra" / "config.yaml").read_text() == "task 0\n"
    assert (run / "app.log").read_text() == "task 0\ntask 1\n"  # task 1 wrote only after task 0's claim


def test_srun_tasks_after_the_first_never_write_into_a_folder_task_0_did_not_claim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's folder is refused by task 0, and the other tasks write nothing into it; nor into the run a
    requeued job's earlier start locked, until its task 0 of today has locked it again."""
    monkeypatch.setattr("ddpm.run_folder.FIRST_TASK_WAIT_S", 0.3)
    users = tmp_path / "users"
    users.mkdir()
    (users / "app.log").write_text("x\n")
    _srun_task(monkeypatch, 0)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        ClaimRunFolder().on_run_start(_sbatch_config(tmp_path, users))
    assert "is not empty and holds no ddpm-lab run" in _one_line(capsys.readouterr().err)
    assert _files(users) == {"app.log": b"x\n"}

    earlier = tmp_path / "earlier"  # the run of this job's first start; this is its requeued start
    earlier.mkdir()
    (earlier / CLAIM_FILE).write_text("pid 1 on elsewhere\n")
    (earlier / LOCK_FILE).write_text("pid 1 on elsewhere\nslurm step 4242.0 restart 0\n")
    for folder, restart in ((users, 0), (earlier, 1)):
        before = _files(folder)
        _srun_task(monkeypatch, 1, restart)
        with pytest.raises(SystemExit):
            ClaimRunFolder().on_run_start(_sbatch_config(tmp_path, folder))
        line = _one_line(capsys.readouterr().err)
        assert f"SLURM task 1 waited 0.3 s for task 0 of slurm step 4242.0 restart {restart}" in line, line
        assert f"hydra.run.dir={folder}" in line
        assert _files(folder) == before


# ----------------------------------------------------------------------------- no new run inside a run
def test_a_new_run_inside_a_runs_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run, _ = claim_folder(tmp_path / "run", may_rename=False, may_reuse=False)
    before = _files(run)
    code, err = _train([f"hydra.run.dir={run}/plots/nested", *QUIET], capsys)
    assert code == 2
    assert _one_line(err) == (
        f"error: hydra.run.dir={run}/plots/nested lies inside {run}, the folder of another run; give a "
        "folder outside it"
    )
    assert _files(run) == before and not (run / "plots").exists()


def test_a_sweep_jobs_run_inside_its_sweep_folder_may_still_be_resumed(tmp_path: Path) -> None:
    sweep, _ = claim_folder(tmp_path / "sweep", may_rename=False, may_reuse=False)
    job = sweep / "0"
    (job / "checkpoints").mkdir(parents=True)
    (job / ".hydra").mkdir()
    assert claim_folder(job, may_rename=False, may_reuse=True) == (job, True)  # ckpt_path=auto/<job>
    with pytest.raises(RunFolderError, match="lies inside"):
        claim_folder(sweep / "extra", may_rename=False, may_reuse=True)  # not a run: a new one


# ----------------------------------------------------------------------------- --out into another run
@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two run folders; their checkpoints are not readable: a command refused before reading one says so."""
    runs = []
    for name in ("run", "other"):
        run, _ = claim_folder(tmp_path / name, may_rename=False, may_reuse=False)
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint: never read")
        (run / "samples.npz").write_bytes(b"samples and held_out of " + name.encode())
        (run / "metrics.json").write_text(f'{{"run": "{name}"}}\n')
        runs.append(run)
    return runs[0], runs[1]


def _exit_code(main: Any, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


OUT_CASES = {
    "sample-samples": (sample_main, lambda r, o: [str(r), "--out", str(o / "samples.npz")]),
    "sample-metrics": (sample_main, lambda r, o: [str(r), "--out", str(o / "metrics.npz")]),  # .json beside
    "sample-subfolder": (sample_main, lambda r, o: [str(r), "--out", str(o / "samples" / "x.npz")]),
    "eval": (eval_main, lambda r, o: [str(r), "--no-wandb", "--out", str(o / "eval" / "e.json")]),
    "export": (export_main, lambda r, o: [str(r), "--out", str(o / "export" / "m.safetensors")]),
    "export-diffusers": (export_main, lambda r, o: [str(r), "--format", "diffusers", "--out", str(o)]),
    "viz-reverse": (viz_main, lambda r, o: ["reverse", str(r), "--out", str(o / "r.png")]),
    "viz-schedules": (viz_main, lambda r, o: ["schedules", "--out", str(o / "plots" / "s.png")]),
}


@pytest.mark.parametrize("case", sorted(OUT_CASES))
def test_out_into_another_runs_folder_is_refused_before_the_checkpoint_is_read(
    case: str, two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, other = two_runs
    main, argv = OUT_CASES[case]
    before = _files(other)
    capsys.readouterr()
    assert _exit_code(main, argv(run, other)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: --out=" in err, err
    assert f"lies inside {other}, the folder of another run" in err
    assert _files(other) == before  # its samples (with held_out) and metrics.json are as they were


@pytest.mark.parametrize("name", ["samples.npz", "metrics.npz", "checkpoints/x.npz"])
def test_out_never_replaces_what_training_wrote_in_its_own_run(
    name: str, two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = two_runs
    before = _files(run)
    capsys.readouterr()
    assert _exit_code(sample_main, [str(run), "--out", str(run / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "which the run's training wrote; choose another name" in err, err
    assert _files(run) == before


def test_out_may_go_into_its_own_run_or_outside_any(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    run, other = two_runs
    assert out_problem(run / "samples" / "x.npz", run) is None
    assert enclosing_run(run / "checkpoints" / "last.ckpt") == run  # a command reading it owns the run
    assert enclosing_run(run / "export" / "model.safetensors") == run
    assert out_problem(tmp_path / "elsewhere" / "x.npz", run) is None
    assert out_problem(tmp_path / "x.npz", None) is None
    (tmp_path / "link").symlink_to(other)  # a path through a link is where the link leads
    assert "lies inside" in (out_problem(tmp_path / "link" / "x.npz", run) or "")
    legacy = tmp_path / "legacy"  # a run made before claim files: checkpoints/ beside .hydra/
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / ".hydra").mkdir()
    assert "lies inside" in (out_problem(legacy / "x.npz", run) or "")
