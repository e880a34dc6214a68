"""Trust and integrity: opening a run folder runs no code, a resumed run is the same run, one run per folder.

The commands run in-process (their ``main``), so the table-driven cases cost no Lightning import each; two
tests start real ``ddpm-train`` processes, where only processes can show the property (a race for a folder,
SIGKILL).
"""

from __future__ import annotations

import csv
import errno
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from ddpm.build import load_run
from ddpm.cli.eval import main as eval_main
from ddpm.cli.sample import main as sample_main
from ddpm.cli.viz import main as viz_main
from ddpm.config import ConfigError
from ddpm.run_folder import RunFolderError, claim_folder
from ddpm.safe_loading import load_checkpoint
from tests.helpers import CLI_ENV, SHORT, run_train, train_in_process

pytestmark = [
    # T=50 on purpose (not today's default), which stops short of pure noise
    pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning"),
    # the tests copy run folders, so Lightning sees a moved checkpoint folder, as a user's moved run would
    pytest.mark.filterwarnings("ignore:The dirpath has changed from"),
]
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, **CLI_ENV}
# a T that is not today's default (1000): a resume that fell back to the defaults would show it
STORED_T = 50
QUIET = [o for o in SHORT if o != "print_config=false"] + ["print_config=false", "reverse_gif=false"]


class Payload:
    """A pickle that, when loaded without weights_only, creates ``marker``: code from a checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


class CrashOnce(L.Callback):
    """Test helper: raises at ``step`` the first time (a crash between two checkpoints), not on resume."""

    def __init__(self, step: int, flag: str) -> None:
        self.step, self.flag = step, Path(flag)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.flag.exists():
            self.flag.write_text("crashed")
            raise RuntimeError(f"simulated crash at step {self.step}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished toy run (T=50) made by ``ddpm-train`` itself (with its .hydra/), to copy and tamper with."""
    run = tmp_path_factory.mktemp("trained") / "run"
    code, _, err = _train_cli([*QUIET, f"T={STORED_T}", f"hydra.run.dir={run}"])
    assert code == 0, err
    return run


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _gadget(marker: Path) -> dict[str, Any]:
    # an innocent-looking library function that writes a file: the first link of a gadget chain
    return {"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}


def _route(route: str, trained: Path, tmp_path: Path, marker: Path) -> Path:
    """A copy of the trained run with one kind of hostile content."""
    run = _copy(trained, tmp_path / f"run-{route}")
    ckpt_file = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_file, weights_only=True)
    if route == "pickle":
        ckpt["extra"] = Payload(marker)
    elif route == "stored_config":
        ckpt["ddpm_config"]["model"] = _gadget(marker)
    elif route == "stored_config_chain":  # numpy writes a file that torch.load would then unpickle
        ckpt["ddpm_config"]["data"] = {"_target_": "numpy.save", "file": str(marker), "arr": [1]}
        ckpt["ddpm_config"]["model"] = {"_target_": "torch.load", "f": str(marker), "weights_only": False}
    elif route == "hydra_config":
        del ckpt["ddpm_config"]
        hydra_cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        hydra_cfg["model"] = _gadget(marker)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(hydra_cfg))
    for extra in run.glob("checkpoints/*.ckpt"):
        extra.unlink()
    torch.save(ckpt, ckpt_file)
    return run


def _train_cli(argv: list[str], capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    """``ddpm-train ARGV`` in this process (Hydra's real entry point); returns (exit code, stdout, stderr).

    Without ``capsys`` (a module fixture) the output is not captured and comes back empty.
    """
    code = train_in_process(argv)
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err


def _cli(command: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    mains = {"sample": sample_main, "eval": eval_main, "viz": viz_main}
    capsys.readouterr()
    try:
        code = mains[command](argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- loading runs no code
ROUTES = ["pickle", "stored_config", "stored_config_chain", "hydra_config"]
COMMANDS = {
    "sample": lambda run: ("sample", [str(run), "--n", "8"]),
    "eval": lambda run: ("eval", [str(run), "--n", "8", "--repeats", "1", "--no-wandb"]),
    "viz": lambda run: ("viz", ["reverse", str(run), "--n", "8", "--no-gif", "--out", str(run / "r.png")]),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_opening_a_hostile_run_folder_runs_no_code(
    route: str, command: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "PWNED"
    run = _route(route, trained, tmp_path, marker)
    code, err = _cli(*COMMANDS[command](run), capsys)
    assert not marker.exists()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert ("not one of ddpm-lab's model options" in lines[0]) or ("could run code" in lines[0]), lines[0]


@pytest.mark.parametrize("route", ROUTES)
def test_resuming_a_hostile_run_runs_no_code(
    route: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    run = _route(route, trained, tmp_path, marker)
    code, _, err = _train_cli([f"ckpt_path={run}", *QUIET], capsys)
    assert not marker.exists()
    if route == "hydra_config":
        # a checkpoint without a stored config cannot be resumed: .hydra/config.yaml is never trusted for it
        assert code == 2 and "carries no ddpm-lab run config" in err, err
    else:
        assert code == 2, err
        assert "not one of ddpm-lab's" in err or "could run code" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_replayed_overrides_are_not_read_on_resume(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    # .hydra/overrides.yaml once was replayed on resume; the config now comes from the checkpoint only
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    run = _copy(trained, tmp_path / "run")
    gadget = ["+model._target_=numpy.savetxt", f"+model.fname={marker}", "+model.X=[1.0]"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(gadget))
    code, out, err = _train_cli([f"ckpt_path={run}", "trainer.max_steps=6", *QUIET], capsys)
    assert code == 0, err
    assert not marker.exists()
    assert f"Run folder: {run}" in out
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["ddpm_config"]["T"] == STORED_T


def test_every_shipped_option_of_a_run_group_is_registered_and_checks() -> None:
    """Each option conf/ offers for the groups a stored run names is in the registry, and its composed
    values pass the registry's typed check (so a run trained with it loads)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ddpm.config import CONF_DIR
    from ddpm.registry import checked_arguments, find
    from ddpm.stored_config import GROUPS

    checked = 0
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for group in GROUPS:
            for path in sorted((REPO / "conf" / group).glob("[!_]*.yaml")):
                overrides = ["~experiment", f"{group}={path.stem}", "paths.root_dir=/tmp"]
                if group == "model":
                    overrides.append("data=cifar10" if "unet" in path.stem else "data=moons")
                if path.stem in ("array", "image_folder"):
                    overrides.append(f"data.path={path}")
                cfg = compose("train", overrides=[*overrides, "paths.output_dir=/tmp/x"])
                node = OmegaConf.to_container(cfg[group], resolve=True)
                if not node:
                    continue  # lr_scheduler=none
                assert find(group, node["_target_"]) is not None, (group, path.stem)
                checked_arguments(group, node)
                checked += 1
    GlobalHydra.instance().clear()
    assert checked >= 25, checked


def test_the_registry_refuses_unknown_names_and_wrong_types_and_takes_registered_classes() -> None:
    from ddpm.registry import OPTIONS, build_option, checked_arguments, register
    from ddpm.stored_config import StoredConfigError

    with pytest.raises(StoredConfigError, match=r"model\._target_='numpy\.savetxt' is not one of ddpm-lab's"):
        checked_arguments("model", {"_target_": "numpy.savetxt", "fname": "x"})
    mlp = {"_target_": "ddpm.models.MLPDenoiser", "data_dim": 2}
    with pytest.raises(
        StoredConfigError, match=r"model\.hidden='\$\{oc\.env:HOME\}' is invalid; it must be int"
    ):
        checked_arguments("model", {**mlp, "hidden": "${oc.env:HOME}"})
    with pytest.raises(
        StoredConfigError, match=r"model\.hiden is not an argument of ddpm\.models\.MLPDenoiser"
    ):
        checked_arguments("model", {**mlp, "hiden": 3})
    with pytest.raises(StoredConfigError, match=r"model\.hidden=True is invalid"):
        checked_arguments("model", {**mlp, "hidden": True})
    net = build_option("model", {**mlp, "hidden": 8})
    assert (
        net.net[0].out_features == 8 if hasattr(net, "net") else sum(p.numel() for p in net.parameters()) > 0
    )
    # a user's own class, added from Python, loads by its name
    try:
        register("model", "mypkg.TinyNet", torch.nn.Linear)
        layer = build_option("model", {"_target_": "mypkg.TinyNet", "in_features": 3, "out_features": 2})
        assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (2, 3)
    finally:
        OPTIONS["model"].pop("mypkg.TinyNet", None)


def test_a_truncated_checkpoint_is_one_clear_error(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes((trained / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(bad)


# ----------------------------------------------------------------------------- a resumed run is the same run
def test_resume_from_a_loose_checkpoint_trains_the_stored_model(trained: Path, tmp_path: Path) -> None:
    loose = tmp_path / "elsewhere.ckpt"
    shutil.copy(trained / "checkpoints" / "last.ckpt", loose)
    stored = load_checkpoint(loose)
    # no T, data or model on the command line: today's defaults (T=1000) must not leak in
    metrics, run = run_train(tmp_path / "new", [*QUIET, f"ckpt_path={loose}", "trainer.max_steps=7"])
    assert metrics["global_step"] == 7
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    for key in ("T", "model", "data", "diffusion", "optimizer"):
        assert resumed["ddpm_config"][key] == stored["ddpm_config"][key], key
    assert resumed["ddpm_config"]["trainer"]["max_steps"] == 7  # a safe key the command line set


def _in_the_earlier_layout(trained: Path, dest: Path) -> Path:
    """A copy of the run whose stored config is in the layout written before 2026-12: T also under
    ``diffusion`` (``diffusion.betas`` a copy of the schedule), compile / channels_last under ``model``, and
    the loss and the timestep sampler as keys of ``diffusion``, as ``conf/diffusion/default.yaml`` had
    them."""
    run = _copy(trained, dest)
    for ckpt_file in run.glob("checkpoints/*.ckpt"):
        ckpt = torch.load(ckpt_file, weights_only=True)
        cfg = ckpt["ddpm_config"]
        module = cfg.pop("module")
        cfg["model"].update(compile=module["compile"], channels_last=module["channels_last"])
        diffusion = {k: v for k, v in cfg["diffusion"].items() if k != "_partial_"}
        loss, timestep_sampler = cfg.pop("loss"), cfg.pop("timestep_sampler")
        assert loss["_target_"] == "ddpm.losses.SimpleLoss", loss
        assert timestep_sampler["_target_"] == "ddpm.timestep_sampling.UniformTimesteps", timestep_sampler
        diffusion.update(
            loss=loss["distance"],
            loss_weighting=loss["weighting"],
            min_snr_gamma=loss["min_snr_gamma"],
            vlb_weight=0.001,
            vlb_decoder="auto",
            timestep_sampler="uniform",
            offset_noise=loss["offset_noise"],
            cond_drop_prob=loss["cond_drop_prob"],
        )
        cfg["diffusion"] = {**diffusion, "T": cfg["T"], "betas": dict(cfg["schedule"])}
        torch.save(ckpt, ckpt_file)
    return run


def test_a_run_stored_in_the_earlier_layout_loads_and_resumes(trained: Path, tmp_path: Path) -> None:
    run = _in_the_earlier_layout(trained, tmp_path / "old")
    loaded = load_run(run)
    assert loaded.model.diffusion.num_timesteps == STORED_T
    assert "compile" not in loaded.config.model and "module" not in loaded.config  # the machine's, not read
    assert "T" not in loaded.config.diffusion and loaded.config.diffusion._partial_
    assert "loss" not in loaded.config.diffusion and loaded.config.loss._target_ == "ddpm.losses.SimpleLoss"
    steps = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    metrics, _ = run_train(tmp_path / "new", [*QUIET, f"ckpt_path={run}", f"trainer.max_steps={steps + 2}"])
    assert metrics["global_step"] == steps + 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("T=1000", f"T=1000 cannot change when resuming: the run was trained with T={STORED_T}"),
        ("model.hidden=64", "model.hidden=64 cannot change when resuming: the run was trained with model"),
        ("schedule=cosine", "schedule.name='cosine' cannot change when resuming"),
        ("optimizer.lr=0.5", "optimizer.lr=0.5 cannot change when resuming"),
        ("data=circles", "data.dataset='circles' cannot change when resuming"),
        ("callbacks.ema.decay=0.5", "callbacks.ema.decay=0.5 cannot change when resuming"),
    ],
)  # fmt: skip
def test_resume_refuses_an_override_that_changes_the_run(
    override: str, message: str, trained: Path, tmp_path: Path
) -> None:
    run = _copy(trained, tmp_path / "run")
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_train(tmp_path / "new", [*QUIET, f"ckpt_path={run}", override])
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before


def test_ckpt_path_auto_resumes_the_stored_run_and_keeps_its_config(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = _copy(trained, tmp_path / "run")
    config_yaml = (run / ".hydra" / "config.yaml").read_bytes()
    overrides_yaml = (run / ".hydra" / "overrides.yaml").read_bytes()
    steps = load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"]
    # the run's own overrides are not repeated: the stored config (T=50) is what resumes
    code, out, err = _train_cli(
        ["ckpt_path=auto", f"hydra.run.dir={run}", f"trainer.max_steps={steps + 3}", "logger=csv",
         "print_config=false", "callbacks.progress_bar=null", "trainer.enable_progress_bar=false"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert f"Trained {steps + 3} steps" in out
    assert (run / ".hydra" / "config.yaml").read_bytes() == config_yaml
    assert (run / ".hydra" / "overrides.yaml").read_bytes() == overrides_yaml
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["ddpm_config"]["T"] == STORED_T
    assert (run / "csv" / "metrics.csv").is_file() and (run / "csv" / "resumed_1" / "metrics.csv").is_file()


# ----------------------------------------------------------------------------- checkpoints by steps
def _steps(path: Path) -> set[int]:
    with path.open(newline="") as fh:
        return {int(row["step"]) for row in csv.DictReader(fh) if row.get("train/loss")}


def test_a_crash_between_validations_loses_at_most_one_interval(tmp_path: Path, monkeypatch) -> None:
    flag = tmp_path / "crashed"
    args = [
        *[o for o in QUIET if not o.startswith(("trainer.max_steps", "trainer.val_check_interval"))],
        "trainer.max_steps=40",
        "trainer.val_check_interval=1000",  # no validation before the crash: only the step checkpoints
        "checkpoint_every_n_steps=10",
        "+callbacks.crash._target_=tests.test_trust.CrashOnce",
        "+callbacks.crash.step=25",
        f"+callbacks.crash.flag={flag}",
    ]
    with pytest.raises(RuntimeError, match="simulated crash at step 25"):
        run_train(tmp_path, args)
    run = tmp_path / "run"
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 20
    first = _steps(run / "csv" / "metrics.csv")
    assert first and max(first) >= 20
    metrics, _ = run_train(tmp_path, [*args, "ckpt_path=last"])
    assert metrics["global_step"] == 40
    second = _steps(run / "csv" / "resumed_1" / "metrics.csv")
    assert (
        min(second) == 20 and max(second) <= 40
    )  # from the checkpoint on: the batch after step 20 is redone
    assert _steps(run / "csv" / "metrics.csv") == first  # the first part's log is kept


def test_auto_interval_is_a_tenth_of_the_run() -> None:
    from ddpm.checkpointing import LastCheckpoint

    cb = LastCheckpoint("x")
    assert cb.interval(2000) == 200  # the default toy run: a kill loses at most 10%
    assert cb.interval(800_000) == LastCheckpoint.AUTO_MAX_INTERVAL
    assert cb.interval(40) == LastCheckpoint.AUTO_MIN_INTERVAL  # a smoke test is not saved every step
    assert cb.interval(-1) == 1000
    assert LastCheckpoint("x", every_n_steps=0).interval(2000) is None
    with pytest.raises(ValueError, match="every_n_steps=-3"):
        LastCheckpoint("x", every_n_steps=-3)


@pytest.mark.slow
def test_sigkill_then_auto_resumes_from_the_last_step_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "ddpm-train")
    first = [*QUIET, f"T={STORED_T}", "trainer.max_steps=100000", "trainer.val_check_interval=100000",
             "checkpoint_every_n_steps=20", "trainer.log_every_n_steps=5"]  # fmt: skip
    proc = subprocess.Popen(
        [exe, *first, f"hydra.run.dir={run}"], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    saved = load_checkpoint(last)["global_step"]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_log = _steps(run / "csv" / "metrics.csv")
    lost = max(killed_log) - load_checkpoint(last)["global_step"]
    assert saved % 20 == 0 and lost <= 20 + 5  # at most one interval (and one logging period) lost
    config_yaml = (run / ".hydra" / "config.yaml").read_bytes()

    resume_at = load_checkpoint(last)["global_step"]
    res = subprocess.run(
        [exe, "ckpt_path=auto", f"hydra.run.dir={run}", f"trainer.max_steps={resume_at + 10}"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(last)["global_step"] == resume_at + 10
    assert load_checkpoint(last)["ddpm_config"]["T"] == STORED_T  # the run's own config, not today's
    assert (run / ".hydra" / "config.yaml").read_bytes() == config_yaml
    assert _steps(run / "csv" / "metrics.csv") == killed_log  # the first part's log is kept
    resumed_log = _steps(run / "csv" / "resumed_1" / "metrics.csv")  # the stored log_every_n_steps=5
    assert resume_at <= min(resumed_log) and resume_at + 5 <= max(resumed_log) <= resume_at + 10


# ----------------------------------------------------------------------------- one run, one folder
def _claim_one(folder: str, barrier: Any, queue: Any) -> None:
    barrier.wait()
    try:
        queue.put(str(claim_folder(Path(folder), may_rename=True, may_reuse=False)[0]))
    except RunFolderError as err:
        queue.put(f"error: {err}")


def test_processes_racing_for_one_default_name_get_distinct_folders(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # the claim needs no fresh interpreter: quick to start
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    target = tmp_path / "runs" / "2026-12-01_10-00-00"
    procs = [ctx.Process(target=_claim_one, args=(str(target), barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert len(set(got)) == n and not any(g.startswith("error") for g in got), got
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(Path(g).name for g in got)


@pytest.mark.slow  # two Lightning imports at once; the fast suite races claim_folder in 6 processes above
def test_two_ddpm_train_processes_started_together_get_two_folders(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "ddpm-train")
    args = [
        exe,
        *QUIET,
        "trainer.max_steps=2",
        "task_name=race",
        "final_samples=16",
        "callbacks.samples=null",
    ]
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outs]
    folders = sorted((tmp_path / "outputs" / "race" / "runs").iterdir())
    assert len(folders) == 2
    reported = {o.strip().splitlines()[-1].rsplit("Run folder: ", 1)[1] for o, _ in outs}
    assert reported == {str(f) for f in folders}
    for folder in folders:  # each folder holds one whole run: its config, its checkpoint, its samples
        assert (folder / ".hydra" / "config.yaml").is_file()
        assert load_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == 2
        assert (folder / "samples.npz").is_file()


def test_a_second_run_into_the_same_folder_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = _copy(trained, tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = _train_cli([f"hydra.run.dir={run}", *QUIET], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: hydra.run.dir={run} already holds another run; give a new folder, or resume that run "
        f"with ckpt_path={run}"
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched


# ----------------------------------------------------------------------------- bad values: one line
CUDA = torch.cuda.is_available()
NO_GPU_CASE = pytest.param(
    ["trainer=gpu"], "trainer.accelerator=gpu", marks=pytest.mark.skipif(CUDA, reason="has a GPU")
)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
        (["seed=abc"], "seed='abc'"),
        (["+trainer.max_stepz=5"], "trainer.max_stepz"),
        NO_GPU_CASE,
        (["T=18000"], "T=18000 is too long for this schedule"),
        (["T=0"], "T=0 is invalid"),
        (["checkpoint_every_n_steps=-1"], "checkpoint_every_n_steps=-1"),
        (["schedule=nope"], "schedule=nope"),
        (["optimizer.lr=-1"], "optimizer.lr=-1"),
        (["sampler=ddim", "sampler.steps=5000"], "sampler.steps=5000"),
        (["data=array", "data.path=/no/such/file.npy"], "data.path='/no/such/file.npy'"),
        (["trainer.enable_progress_bar=false"], "enable_progress_bar=False"),
        (["ckpt_path=last"], "ckpt_path=last"),
        (["ckpt_path=/no/such/run"], "ckpt_path='/no/such/run'"),
        (["model._target_=os.system"], "model: "),
    ],
)  # fmt: skip
def test_ddpm_train_bad_values_are_one_line_and_leave_no_folder(
    overrides: list[str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _train_cli([*overrides, "logger=csv", "print_config=false"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("runs/*"))


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("file", "is a file, where a folder is expected"),
        (errno.EROFS, "read-only file system"),
        (errno.ENOSPC, "no space left on device"),
    ],
)
def test_ddpm_train_unwritable_run_folder_is_one_line(
    where: Any, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if where == "file":
        (tmp_path / "blocker").write_text("a file")
        monkeypatch.setenv("DDPM_ROOT", str(tmp_path / "blocker"))
    else:  # root ignores permissions and the disk is not full: the failing write is simulated

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError(where, os.strerror(where))

        monkeypatch.setattr("ddpm.run_folder.write_probe", refuse)
    code, _, err = _train_cli(["logger=csv", "print_config=false"], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and reason in err, err
    assert not any((tmp_path / "outputs").rglob("runs/*"))


def test_a_full_disk_at_the_end_still_shows_the_computed_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def full_disk(file: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr("ddpm.results.np.savez_compressed", full_disk)
    code, _, err = _train_cli([*QUIET, f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "could not write the results" in lines[0] and "No space left on device" in lines[0]
    assert "computed: Quality (EMA weights, 64 samples): energy distance" in lines[0]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 4  # kept


def test_merge_for_resume_keeps_the_run_and_takes_only_safe_overrides(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from ddpm.resume import merge_for_resume
    from ddpm.stored_config import run_identity

    stored = {
        "T": 50,
        "seed": 1,
        "paths": {"output_dir": "/old/place/run"},
        "trainer": {"max_steps": 500, "default_root_dir": "/old/place/run", "log_every_n_steps": 5},
        "model": {"_target_": "ddpm.models.MLPDenoiser", "hidden": 128},
        "schedule": {"_target_": "ddpm.schedules.make_beta_schedule", "name": "linear", "T": 50},
        "diffusion": {"_target_": "ddpm.diffusion.GaussianDiffusion", "_partial_": True},
        "sampler": {"_target_": "ddpm.samplers.DDIMSampler", "steps": 10},
        "data": {"_target_": "ddpm.data.ToyDataModule", "dataset": "moons", "num_workers": 9},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01},
        "lr_scheduler": None,
        "logger": {"csv": {"_target_": "x", "save_dir": "/elsewhere"}, "evil": {"_target_": "os.system"}},
        "callbacks": {
            "samples": {"_target_": "ddpm.callbacks.SampleQualityCallback", "num_samples": 10},
            "ema": {"_target_": "ddpm.callbacks.EMA", "decay": 0.99},
            "evil": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": "/other/run"},
        },
    }
    today = OmegaConf.create(
        {
            "T": 1000,  # today's default, not set on the command line
            "seed": 1,
            "paths": {"output_dir": str(tmp_path / "run")},
            "trainer": {"max_steps": 900, "default_root_dir": "${paths.output_dir}", "devices": 1},
            "model": {"_target_": "ddpm.models.MLPDenoiser", "hidden": 128},
            "lr_scheduler": {"warmup_steps": 5},
            "logger": {"wandb": {"offline": False}},
            "callbacks": {"ema": {"decay": 0.999}, "samples": {"num_samples": 1000}},
            "checkpoint_every_n_steps": "auto",  # not part of the run's identity: today's
        }
    )
    run = run_identity(stored, "test")
    merged = merge_for_resume(today, run, typed=["trainer.max_steps", "callbacks.samples.num_samples"])
    assert merged.T == 50 and merged.model.hidden == 128 and merged.lr_scheduler is None
    assert merged.trainer.max_steps == 900  # set on the command line, and safe
    assert (
        merged.trainer.log_every_n_steps == 5 and merged.trainer.devices == 1
    )  # the run's recipe, today's machine
    assert (
        OmegaConf.to_container(merged.trainer)["default_root_dir"] == "${paths.output_dir}"
    )  # where it is now
    assert "num_workers" not in merged.data  # the machine's: today's option or the class's default
    # the run's options, with today's settings; what is not one of ddpm-lab's options is never taken
    assert set(merged.logger) == {"csv"} and merged.logger.csv.save_dir == str(tmp_path / "run")
    assert set(merged.callbacks) == {"samples", "ema"}
    assert (
        merged.callbacks.ema.decay == 0.99 and merged.callbacks.samples.num_samples == 1000
    )  # typed: today's
    assert merged.checkpoint_every_n_steps == "auto"
    no_schedule = r"lr_scheduler=\{'warmup_steps': 5\} cannot change when resuming: .* with lr_scheduler=None"
    with pytest.raises(ConfigError, match=no_schedule):
        merge_for_resume(today, run, typed=["lr_scheduler"])  # the run had no LR schedule
    with pytest.raises(
        ConfigError, match="T=1000 cannot change when resuming: the run was trained with T=50"
    ):
        merge_for_resume(today, run, typed=["T"])


def test_resume_takes_the_runs_data_and_todays_machine_settings_for_it() -> None:
    """A checkerboard run resumed with today's default data (moons): moons' ``noise`` must not reach the
    checkerboard; the loaders' settings come from today's node only when it is the run's own option."""
    from omegaconf import OmegaConf

    from ddpm.resume import merge_for_resume
    from ddpm.stored_config import run_identity

    toy = "ddpm.data.datamodules.ToyDataModule"
    data = {"_target_": toy, "dataset": "checkerboard", "params": {"squares": 4}, "n_train": 512}
    stored = {"T": 5, "seed": 0, "data": data, "lr_scheduler": None}
    for group in ("model", "schedule", "diffusion", "sampler", "optimizer"):
        stored[group] = {"_target_": "x"}
    run = run_identity(stored, "test")
    moons = {"_target_": toy, "dataset": "moons", "params": {"noise": 0.05}, "n_train": 4096, "on_device": 1}
    merged = merge_for_resume(OmegaConf.create({"data": moons}), run, typed=[])
    assert OmegaConf.to_container(merged.data) == data
    same = {**moons, "dataset": "checkerboard", "params": {"squares": 4}}  # a newer default n_train, too
    merged = merge_for_resume(OmegaConf.create({"data": same}), run, typed=[])
    assert merged.data.n_train == 512 and merged.data.on_device == 1
    # an experiment on the command line names the keys it sets, today's option may lack some of them
    merged = merge_for_resume(
        OmegaConf.create({"data": moons}), run, typed=["data.num_workers", "sampler.steps"]
    )
    assert "num_workers" not in merged.data and merged.sampler == {"_target_": "x"}


def test_a_checkpoint_without_its_config_loads_from_the_real_hydra_config(
    trained: Path, tmp_path: Path
) -> None:
    """Hydra's own .hydra/config.yaml (unresolved: ${T}, ${paths.data_dir}, ${ddpm.out_mult:...}) still
    opens: plain references are followed by key path, the derived out_mult is derived again, paths are
    today's; nothing in it is resolved by OmegaConf."""
    run = _copy(trained, tmp_path / "run")
    assert "${" in (run / ".hydra" / "config.yaml").read_text()
    for ckpt_file in run.glob("checkpoints/*.ckpt"):
        ckpt = torch.load(ckpt_file, weights_only=True)
        del ckpt["ddpm_config"]
        torch.save(ckpt, ckpt_file)
    loaded = load_run(run)
    assert loaded.model.diffusion.num_timesteps == STORED_T and loaded.config.schedule.T == STORED_T
    assert loaded.config.model.out_mult == 1 and loaded.loggers == ("csv",)
    assert loaded.model.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 2)


def test_a_stored_samplers_class_is_looked_up_never_imported() -> None:
    from ddpm.sampler_overrides import sampler_config

    # a name that is not one of conf/sampler's classes is refused before anything would import it
    with pytest.raises(
        ConfigError, match=r"sampler\._target_='os\.system' is not one of ddpm-lab's samplers"
    ):
        sampler_config({"_target_": "os.system", "steps": 3}, ["sampler.steps=5"])
    run_sampler = {"_target_": "ddpm.samplers.DDIMSampler", "steps": 3}
    assert sampler_config(run_sampler, ["sampler.steps=5"]) == {**run_sampler, "steps": 5}
