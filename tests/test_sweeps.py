"""Sweeps and cluster jobs: Hydra multirun grids and their summary, Optuna searches, submitit launchers,
the W&B sweep file and the SLURM scripts."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm.cli.common import check_group_overrides
from ddpm.config import CONF_DIR, validate_config
from ddpm.sweeps import JOB_RECORD, SweepSummary, find_metric, write_summary
from ddpm.sweeps import main as sweeps_main
from tests.helpers import cli, compose_cfg, train_in_process

REPO = CONF_DIR.parent
SCRIPTS = REPO / "scripts"

# The least a job can do and still leave everything a sweep job leaves: a checkpoint (validation at the last
# step), csv/metrics.csv, metrics.json. The time goes to importing torch and Lightning, once per process.
TINY = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "data.n_train=512",
    "data.n_val=256",
    "model.hidden=16",
    "model.depth=1",
    "final_samples=32",
    "callbacks.samples.num_samples=32",
    "callbacks.samples.plot=false",
    "callbacks.progress_bar=null",
    "callbacks.loss_by_timestep=null",
    "reverse_gif=false",
    "print_config=false",
    "logger=csv",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def job_overrides(job_dir: Path) -> dict[str, str]:
    """``key=value`` overrides Hydra saved for a job, as a dict."""
    items = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    return dict(item.split("=", 1) for item in items)


# ----------------------------------------------------------------------------- grids and their summary
def test_grid_sweep_runs_each_combination_in_its_own_folder_and_writes_a_summary(tmp_path: Path) -> None:
    """``ddpm-train -m schedule=linear,cosine T=20,40``: 4 jobs, 4 folders, one summary."""
    sweep = tmp_path / "sweep"
    res = cli(
        "ddpm-train",
        "-m",
        "schedule=linear,cosine",
        "T=20,40",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    combos = set()
    for num in range(4):
        job = sweep / str(num)
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").is_file()  # each job logs to its own folder
        over = job_overrides(job)
        saved = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert saved.schedule.name == over["schedule"]
        assert int(over["T"]) == saved.T
        metrics = json.loads((job / "metrics.json").read_text())
        assert math.isfinite(metrics["final/ratio"]) and metrics["final/n"] == 32
        record = json.loads((job / JOB_RECORD).read_text())
        assert record["status"] == "completed" and record["job"] == num
        # the process's start-up is the first job's alone: a later job would otherwise count the earlier ones
        phases = json.loads((job / "timings.json").read_text())["phases_s"]
        assert ("start-up" in phases) == (num == 0) and phases["training"] > 0
        combos.add((over["schedule"], over["T"]))
    assert combos == {(s, t) for s in ("linear", "cosine") for t in ("20", "40")}
    assert not list(sweep.glob("*/wandb"))  # logger=csv: no W&B

    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 4
    # only what differs between jobs gets a column; everything else is on the common line of summary.md
    assert list(rows[0])[:4] == ["job", "status", "schedule", "T"]
    for row in rows:
        job = sweep / row["run_dir"]
        over = job_overrides(job)
        assert row["status"] == "completed"
        assert (row["schedule"], row["T"]) == (over["schedule"], over["T"])
        saved = json.loads((job / "metrics.json").read_text())
        assert float(row["final/ratio"]) == pytest.approx(saved["final/ratio"])
        assert row["overrides"].split() == [str(o) for o in OmegaConf.load(job / ".hydra/overrides.yaml")]
    md = (sweep / "summary.md").read_text()
    assert "4 jobs: 4 completed" in md and "`trainer.max_steps=2`" in md
    assert md.count("| completed |") == 4
    assert "4 jobs: 4 completed" in res.stdout  # printed too
    assert f"Sweep summary: {sweep / 'summary.csv'}" in res.stdout


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")  # T=20 on purpose: fast
def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A grid job with a bad value fails alone: the next job runs, the summary lists it, exit code 1.

    The objective is val/loss, which train() does not return (images experiments optimise it): the value
    the sweeper gets is the last one the job logged.
    """
    sweep = tmp_path / "sweep"
    argv = ["-m", "T=0,20", *TINY, "optimized_metric=val/loss", f"hydra.sweep.dir={sweep}"]
    code = train_in_process([*argv, f"paths.root_dir={tmp_path}"])
    assert code == 1  # fail_on_error: after the summary, as Hydra's basic sweeper would
    failed = json.loads((sweep / "0" / JOB_RECORD).read_text())
    assert failed["status"] == "failed"
    assert "T=0 is invalid" in failed["error"]
    assert "T=0" in failed["overrides"]
    assert not (sweep / "0" / "checkpoints").exists()  # nothing ran
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()  # the job after it did
    rows = {r["job"]: r for r in read_csv(sweep / "summary.csv")}
    assert rows["0"]["status"] == "failed" and "T=0 is invalid" in rows["0"]["error"]
    assert rows["1"]["status"] == "completed" and math.isfinite(float(rows["1"]["final/ratio"]))
    assert (rows["0"]["T"], rows["1"]["T"]) == ("0", "20")
    logged = [
        float(r["val/loss"]) for r in read_csv(sweep / "1" / "csv" / "metrics.csv") if r.get("val/loss")
    ]
    assert logged and float(rows["1"]["objective"]) == pytest.approx(logged[-1])
    assert json.loads((sweep / "1" / JOB_RECORD).read_text())["objective"] == pytest.approx(logged[-1])
    assert rows["0"]["objective"] == ""


def _job(folder: Path, num: int, overrides: list[str], record: dict | None, metrics: dict | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), folder / ".hydra" / "hydra.yaml")
    if record is not None:
        record = {"job": num, "overrides": overrides, "optimized_metric": "final/ratio", **record}
        (folder / JOB_RECORD).write_text(json.dumps(record))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_summary_of_completed_failed_and_unfinished_jobs(tmp_path: Path, capsys) -> None:
    common = ["trainer.max_steps=10", "logger=csv"]
    _job(
        tmp_path / "0",
        0,
        ["optimizer.lr=0.01", "schedule=linear", *common],
        {"status": "completed", "objective": 1.5},
        {"final/ratio": 1.5, "final/energy": 0.02},
    )
    _job(
        tmp_path / "1",
        1,
        ["optimizer.lr=0.001", "schedule=linear", *common],
        {"status": "failed", "objective": None, "error": "ConfigError: T=0 is invalid"},
        None,
    )
    _job(tmp_path / "2", 2, ["optimizer.lr=0.002", "schedule=cosine", *common], None, None)  # killed
    _job(
        tmp_path / "10",
        10,
        ["optimizer.lr=0.003", "schedule=cosine", *common],
        {"status": "completed", "objective": 1.2},
        {"final/ratio": 1.2, "final/energy": 0.01},
    )
    table = write_summary(tmp_path, direction="minimize")
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]  # by job number, not by name
    assert [r["status"] for r in rows] == ["completed", "failed", "unfinished", "completed"]
    assert table.columns == [
        "job",
        "status",
        "optimizer.lr",
        "schedule",
        "objective",
        "final/ratio",
        "final/energy",
        "error",
        "run_dir",
    ]
    assert rows[1]["error"] == "ConfigError: T=0 is invalid"
    assert "killed" in rows[2]["error"] and rows[2]["optimizer.lr"] == "0.002"
    assert float(rows[3]["final/energy"]) == 0.01
    md = (tmp_path / "summary.md").read_text()
    assert "4 jobs: 2 completed, 1 failed, 1 unfinished" in md
    assert "best: job 10 (objective 1.2)" in md
    assert "common overrides: `trainer.max_steps=10` `logger=csv`" in md
    assert [j["job"] for j in table.failed] == [1, 2]
    assert write_summary(tmp_path, direction="maximize").markdown.count("best: job 0 ") == 1

    # the callback at the end of a sweep: prints the table, exits 1 when a job failed unless told not to
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {}}})
    with pytest.raises(SystemExit) as exc:
        SweepSummary(fail_on_error=True).on_multirun_end(config)
    assert exc.value.code == 1
    out = capsys.readouterr()
    assert "| 10 | completed |" in out.out and "2 of 4 sweep jobs failed or did not finish" in out.err
    SweepSummary(fail_on_error=False).on_multirun_end(config)
    assert "best: job 10" in capsys.readouterr().out

    # python -m ddpm.sweeps SWEEP_DIR: the same summary, on demand
    (tmp_path / "summary.csv").unlink()
    assert sweeps_main([str(tmp_path)]) == 0
    assert len(read_csv(tmp_path / "summary.csv")) == 4
    assert sweeps_main([str(tmp_path / "nothing")]) == 2


def test_find_metric_reads_returned_saved_logged_and_checkpointed_values(tmp_path: Path) -> None:
    """The objective of a sweep can be any metric a run logged, not only its final figures."""
    assert find_metric("final/ratio", {"final/ratio": 1.25}, tmp_path) == 1.25
    (tmp_path / "metrics.json").write_text(json.dumps({"final/energy": 0.5}))
    assert find_metric("final/energy", {}, tmp_path) == 0.5
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,1.0,\n0,1,0.9,0.8\n0,2,0.7,\n0,3,0.6,0.55\n0,4,0.5,\n"
    )
    assert find_metric("val/loss", {}, tmp_path) == 0.55  # the last value logged
    assert find_metric("val/nothing", {}, tmp_path) is None
    (tmp_path / "csv" / "metrics.csv").unlink()
    (tmp_path / "checkpoints").mkdir()
    state = {"monitor": "val/loss", "best_model_score": torch.tensor(0.42), "current_score": None}
    torch.save(
        {"state_dict": {}, "callbacks": {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": state}},
        tmp_path / "checkpoints" / "last.ckpt",
    )
    assert find_metric("val/loss", {}, tmp_path) == pytest.approx(0.42)  # W&B-only runs: the checkpoint
    assert find_metric("val/other", {}, tmp_path) is None


# ----------------------------------------------------------------------------- Optuna
# optuna 2.10's storage module uses SQLAlchemy 1.4 APIs that 2.0 removed (hence the sqlalchemy<2 pin)
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")
def test_optuna_config_composes_and_its_search_space_is_made_of_config_keys(tmp_path: Path) -> None:
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution

    cfg = compose_cfg(tmp_path, ["hparams_search=optuna"], run_folder=False)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert cfg.optimized_metric == "final/ratio" and sweeper.direction == "minimize"
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 1234
    assert sweeper.n_trials == 20 and sweeper.max_failure_rate == 1.0
    assert cfg.hydra.callbacks.sweep_summary.fail_on_error is False
    assert (
        compose_cfg(
            tmp_path, ["hparams_search=optuna", "hydra.sweeper.n_trials=3"], run_folder=False
        ).hydra.sweeper.n_trials
        == 3
    )
    assert compose_cfg(tmp_path, [], run_folder=False).optimized_metric is None  # no search: no objective
    # an experiment names its own metric, which wins over the search's default (images: val/loss)
    assert (
        compose_cfg(
            tmp_path, ["hparams_search=optuna", "experiment=digits"], run_folder=False
        ).optimized_metric
        == "val/classifier_ratio"
    )

    params = {str(k): str(v) for k, v in sweeper.params.items()}
    dists, fixed = create_params_from_overrides([f"{k}={v}" for k, v in params.items()])
    assert not fixed
    assert isinstance(dists["optimizer.lr"], LogUniformDistribution)
    assert (dists["optimizer.lr"].low, dists["optimizer.lr"].high) == (1e-4, 1e-2)
    for key in ("schedule", "T", "diffusion.objective"):
        assert isinstance(dists[key], CategoricalDistribution)
    assert set(dists["diffusion.objective"].choices) == {"eps", "x0", "v"}
    # every point of the space is a valid ddpm-train config
    for schedule in dists["schedule"].choices:
        for objective in dists["diffusion.objective"].choices:
            point = [f"schedule={schedule}", f"diffusion.objective={objective}", "optimizer.lr=0.001"]
            point += [f"T={dists['T'].choices[0]}"]
            cfg = compose_cfg(tmp_path, point, run_folder=False)
            validate_config(cfg)
            assert cfg.schedule.name == schedule and cfg.diffusion.objective == objective


@pytest.mark.slow
def test_optuna_search_records_failed_trials_and_goes_on(tmp_path: Path) -> None:
    """3 TPE trials (seed 1234), one per job; 'score' is no objective, so the trials that draw it fail."""
    sweep = tmp_path / "sweep"
    res = cli(
        "ddpm-train",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "T=choice(20,40)",  # a command-line search space replaces the config's entry
        "diffusion.objective=choice(eps,v,score)",
        *TINY,
        "logger=wandb",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 3
    for row in rows:
        job = sweep / row["run_dir"]
        assert row["T"] in ("20", "40") and 1e-4 <= float(row["optimizer.lr"]) <= 1e-2
        if row["diffusion.objective"] == "score":
            assert row["status"] == "failed" and "objective='score' is unknown" in row["error"]
            assert row["objective"] == ""
        else:
            assert row["status"] == "completed"
            saved = json.loads((job / "metrics.json").read_text())
            assert float(row["objective"]) == pytest.approx(saved["final/ratio"])
    statuses = {r["status"] for r in rows}
    assert statuses == {"completed", "failed"}, "seed 1234 draws 'score' for some trials, not all"
    results = OmegaConf.load(sweep / "optimization_results.yaml")  # the sweeper finished
    best = min(float(r["objective"]) for r in rows if r["status"] == "completed")
    assert results.best_value == pytest.approx(best)
    # each completed trial logged to its own W&B run (the basic launcher runs them all in one process)
    runs = [
        list((sweep / r["run_dir"] / "wandb").glob("offline-run-*"))
        for r in rows
        if r["status"] == "completed"
    ]
    assert all(len(r) == 1 for r in runs)
    assert len({r[0].name.rsplit("-", 1)[-1] for r in runs}) == len(runs)


# ----------------------------------------------------------------------------- submitit launchers
@pytest.mark.slow
def test_local_submitit_sweep_runs_each_job_in_its_own_process(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    res = cli(
        "ddpm-train",
        "-m",
        "hydra/launcher=local_submitit",
        "schedule=linear,cosine",
        "T=20",
        *TINY,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for num in (0, 1):
        job = sweep / str(num)
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert math.isfinite(json.loads((job / "metrics.json").read_text())["final/ratio"])
        record = json.loads((job / JOB_RECORD).read_text())
        assert record["status"] == "completed"
        # submitit's job id (not Hydra's job number) and submitit's own logs: the job ran through submitit
        assert (sweep / ".submitit" / record["job_id"]).is_dir()
        assert list((sweep / ".submitit" / record["job_id"]).glob("*_log.out"))
    rows = read_csv(sweep / "summary.csv")
    assert sorted(r["schedule"] for r in rows) == ["cosine", "linear"]
    assert {r["status"] for r in rows} == {"completed"}


def test_slurm_launcher_config_composes_into_an_sbatch_script(tmp_path: Path, monkeypatch) -> None:
    """hydra/launcher=slurm cannot run here; compose it and render the sbatch script submitit would submit."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    overrides = [
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=4",
        "trainer=ddp",
        "trainer.num_nodes=2",
    ]
    cfg = compose_cfg(tmp_path, overrides, run_folder=False)
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith("SlurmLauncher")
    assert (launcher_cfg.partition, launcher_cfg.nodes, launcher_cfg.gpus_per_node) == ("gpu", 2, 4)
    assert launcher_cfg.tasks_per_node == 4  # one task per GPU
    assert (launcher_cfg.timeout_min, launcher_cfg.signal_delay_s, launcher_cfg.max_num_timeout) == (
        240,
        120,
        3,
    )
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2

    # its jobs resume from their own last.ckpt when requeued: the launcher sets DDPM_CKPT_PATH=auto
    assert cfg.hydra.job.env_set.DDPM_CKPT_PATH == "auto"
    assert cfg.ckpt_path is None
    monkeypatch.setenv("DDPM_CKPT_PATH", "auto")
    assert cfg.ckpt_path == "auto"
    monkeypatch.delenv("DDPM_CKPT_PATH")

    # what SlurmLauncher.launch() builds (it needs srun on PATH to exist; nothing is submitted)
    launcher = instantiate(launcher_cfg)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit", "0")
    for line in (
        "--partition=gpu",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--gpus-per-node=4",
        "--cpus-per-task=8",
        "--mem=64GB",
        "--time=240",
        "--signal=USR2@120",
        "--requeue",
        "--job-name=ddpm-toy2d",
    ):
        assert f"#SBATCH {line}\n" in script, line

    local = compose_cfg(tmp_path, ["hydra/launcher=local_submitit"], run_folder=False).hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher") and local.tasks_per_node == 1


@pytest.mark.parametrize(
    ("overrides", "tasks"),
    [
        ([], 1),  # one GPU, one task
        (["hydra.launcher.gpus_per_node=4", "trainer=ddp"], 4),
        (["hydra.launcher.gpus_per_node=0"], 1),  # a CPU cluster: trainer.devices=1
        (["hydra.launcher.gpus_per_node=0", "trainer=ddp_cpu"], 2),  # 2 CPU processes
        (["hydra.launcher.gpus_per_node=0", "trainer=ddp"], 1),  # devices=-1 is no count of CPU processes
        (["hydra.launcher.gpus_per_node=0", "trainer.devices=auto"], 1),
    ],
)
def test_slurm_tasks_per_node_follow_gpus_or_trainer_devices(
    tmp_path: Path, overrides: list[str], tasks: int
) -> None:
    cfg = compose_cfg(tmp_path, ["hydra/launcher=slurm", *overrides], run_folder=False)
    assert cfg.hydra.launcher.tasks_per_node == tasks


def test_sbatch_refusals_are_explained_in_one_line() -> None:
    from ddpm.cluster import explain_sbatch_error

    params = {"partition": "debug", "gpus_per_node": 1, "tasks_per_node": 1, "cpus_per_task": 8, "mem_gb": 64}
    # the messages submitit raises with, as this machine's SLURM 22.05 printed them
    gres = "sbatch: error: Invalid generic resource (gres) specification"
    config = "sbatch: error: Batch job submission failed: Requested node configuration is not available"
    partition = (
        "sbatch: error: invalid partition specified: gpu\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified"
    )
    assert explain_sbatch_error(gres, params) == (
        "hydra.launcher.gpus_per_node=1: debug has no GPUs (sbatch: Invalid generic resource (gres) "
        "specification); on a CPU cluster set hydra.launcher.gpus_per_node=0"
    )
    assert explain_sbatch_error(config, params).startswith(
        "no node of debug has 1 x hydra.launcher.cpus_per_task=8 CPUs and hydra.launcher.mem_gb=64 GB"
    )
    assert explain_sbatch_error(partition, {**params, "partition": "gpu"}) == (
        "hydra.launcher.partition=gpu: sbatch: invalid partition specified: gpu (sinfo -s lists them)"
    )
    assert all("\n" not in explain_sbatch_error(m, params) for m in (gres, config, partition, "odd\n"))


# ----------------------------------------------------------------------------- W&B sweep file
def _agent_command(sweep: dict, point: dict) -> list[str]:
    """The command a W&B agent runs for one point, built with wandb's own helpers as its agent does."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})
    macros.update(program=[sweep["program"]], env=["/usr/bin/env"], interpreter=["python"])
    out: list[str] = []
    for chunk in map(str, command):  # as wandb_agent.Agent._command_run expands the macros
        if chunk.startswith("${") and chunk.endswith("}"):
            out += macros.get(chunk[2:-1]) or []
        else:
            out.append(chunk)
    return out


def test_wandb_sweep_file_parses_and_its_command_composes(tmp_path: Path, monkeypatch) -> None:
    sweep = yaml.safe_load((SCRIPTS / "wandb_sweep.yaml").read_text())
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'{sweep["program"]} = "ddpm.cli.train:main"' in pyproject
    assert sweep["metric"] == {"name": "final/ratio", "goal": "minimize"}
    assert sweep["method"] in ("bayes", "random", "grid")
    assert "${args_no_hyphens}" in sweep["command"]

    point = {}
    for key, spec in sweep["parameters"].items():
        if "value" in spec:
            point[key] = spec["value"]
        elif "values" in spec:
            point[key] = spec["values"][-1]
        else:
            assert spec["distribution"] == "log_uniform_values" and spec["min"] < spec["max"]
            point[key] = math.sqrt(spec["min"] * spec["max"])
    argv = _agent_command(sweep, point)
    assert argv[:2] == ["/usr/bin/env", "ddpm-train"]
    overrides = argv[2:]
    assert overrides[: len(point)] == [f"{k}={v}" for k, v in point.items()]
    check_group_overrides(overrides)  # what ddpm-train checks first

    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p")
    monkeypatch.setenv("WANDB_RUN_ID", "run42")
    cfg = compose_cfg(tmp_path, overrides, run_folder=False)
    validate_config(cfg)
    for key, value in point.items():
        if (CONF_DIR / key).is_dir():  # a config group
            assert cfg.hydra.runtime.choices[key] == value, key
        else:
            assert OmegaConf.select(cfg, key, throw_on_missing=True) == pytest.approx(value), key
    assert cfg.logger.wandb.offline is False
    assert cfg.hydra.run.dir == f"{tmp_path}/outputs/toy2d/wandb_sweeps/sw33p/run42"


# ----------------------------------------------------------------------------- SLURM scripts
def _fake_command(bin_dir: Path, name: str, log: Path) -> None:
    """An executable ``name`` that appends its arguments, one per line, to ``log``."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "{name}" "$@" >> "{log}"\necho --- >> "{log}"\n')
    path.chmod(0o755)


def _calls(log: Path) -> list[list[str]]:
    return [block.strip().splitlines() for block in log.read_text().split("---\n") if block.strip()]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_slurm_scripts_pass_shellcheck() -> None:
    scripts = [
        SCRIPTS / n for n in ("slurm_multinode.sh", "slurm_multinode.sbatch", "slurm_local_cluster.sh")
    ]
    scripts.append(REPO / ".ci" / "run")
    res = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_slurm_multinode_scripts_compose_a_2x4_ddp_run(tmp_path: Path) -> None:
    """Both scripts run with stand-ins for uv and srun; the ddpm-train overrides they pass must compose."""
    log, bin_dir = tmp_path / "calls.log", tmp_path / "bin"
    for name in ("uv", "srun"):
        _fake_command(bin_dir, name, log)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PARTITION": "gpu"}
    res = subprocess.run(
        ["bash", str(SCRIPTS / "slurm_multinode.sh"), "schedule=cosine"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    (call,) = _calls(log)
    assert call[:4] == ["uv", "run", "ddpm-train", "-m"]
    cfg = compose_cfg(tmp_path, call[4:], run_folder=False)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.schedule.name) == ("ddp", 2, "cosine")
    res = subprocess.run(
        ["bash", str(SCRIPTS / "slurm_multinode.sh")],
        env={**env, "PARTITION": ""},
        text=True,
        capture_output=True,
    )
    assert res.returncode != 0 and "set PARTITION" in res.stderr

    log.unlink()
    slurm_env = {
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
    }
    res = subprocess.run(
        ["bash", str(SCRIPTS / "slurm_multinode.sbatch"), "schedule=cosine"],
        env={**env, **slurm_env},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    sync, srun = _calls(log)
    assert sync == ["uv", "sync", "--frozen"]
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", ".venv/bin/ddpm-train"]
    cfg = compose_cfg(tmp_path, srun[3:], run_folder=False)
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.devices) == ("ddp", 2, 4)
    assert cfg.ckpt_path == "auto" and cfg.schedule.name == "cosine"
    assert cfg.hydra.run.dir == "outputs/ddp/slurm/4242"  # the same folder after a requeue
