"""ddpm-sample, ddpm-eval and ddpm-viz refuse bad values and unwritable outputs in one line, before any work.

Everything runs in-process (``main([...])``); the checks that must come before the checkpoint is read use a
run folder whose checkpoint is not a checkpoint at all, with ``load_run`` and the samplers replaced by
functions that fail the test if they are ever called. One real four-step toy run covers what needs weights:
the figures printed before a final write that fails.
"""

from __future__ import annotations

import errno
import os
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm import safe_writes
from ddpm.cli.eval import main as eval_main
from ddpm.cli.sample import main as sample_main
from ddpm.cli.viz import MAX_BYTES, memory_limit
from ddpm.cli.viz import main as viz_main
from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import Sampler
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule


def _exits(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code of a sample/eval ``main`` that must exit, and its stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code
    return code if isinstance(code, int) else -1, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") or ": error: " in lines[0], err
    return lines[0]


def _no_space(*args: object, **kwargs: object) -> None:
    """A write on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def _left_behind(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---------------------------------------------------------------------------- bad values, sample and eval
BAD_VALUES = [
    (["sampler.steps=-3"], "sampler.steps=-3 is invalid; steps must be an integer >= 1"),
    (["sampler.steps=0"], "sampler.steps=0 is invalid; steps must be an integer >= 1"),
    (["sampler.steps=abc"], "sampler.steps=abc is invalid; steps must be an integer >= 1"),
    (["sampler=ddim", "sampler.steps=null"], "sampler.steps=null is invalid"),
    (["sampler.eta=-1"], "sampler.eta=-1 is invalid; eta must be a finite number >= 0"),
    (["sampler.eta=abc"], "sampler.eta=abc is invalid; eta must be a finite number >= 0"),
    (["sampler=ddim", "sampler.eta=inf"], "sampler.eta=inf is invalid; eta must be a finite number >= 0"),
    (["sampler.stepz=5"], "sampler.stepz=5 is not an option of any sampler; it takes"),
    (["sampler=ddpm", "sampler.eta=0.5"], "sampler.eta=0.5 is not an option of DDPMSampler; it takes"),
    (["sampler._target_=os.system"], "sampler._target_=os.system is not an option"),
    (["sampler.spacing=middle"], "sampler.spacing=middle is unknown; choose one of 'linspace'"),
    (
        ["sampler=lms"],
        "sampler=lms is not an option of config group 'sampler'; choose one of consistency, ddim",
    ),
    (["sampler=ddim", "sampler=ddpm"], "sampler= is given twice"),
    (["steps=5"], "override 'steps' is not supported here"),
    (["--device", "cuda"], "--device=cuda is not available"),
    (["--device", "cuda:3"], "--device=cuda:3 is not available"),
    (["--device", "gpu0"], "--device='gpu0' is not a device; use cpu, cuda, cuda:<index> or mps"),
    (["--device", "meta"], "--device='meta' is not supported here"),
    (["--seed", str(2**64)], f"--seed={2**64} is out of range; use an integer from 0 to 2**64 - 1"),
]


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize(
    ("args", "needle"), BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_bad_values_are_one_line_before_any_work(
    fake_run: Path, capsys: pytest.CaptureFixture[str], command: str, args: list[str], needle: str
) -> None:
    needs = {"cuda": 1, "cuda:3": 4}.get(args[-1], 0)  # CUDA devices that would make the flag valid
    if needs and torch.cuda.device_count() >= needs:
        pytest.skip(f"this machine has {args[-1]}")
    main = sample_main if command == "sample" else eval_main
    before = _left_behind(fake_run)
    code, err = _exits(main, [str(fake_run), *args, "--n", "10"], capsys)
    assert code == 2
    line = _one_line(err)
    assert needle in line, line
    if "--device" in args and "available" in needle:
        assert "--device cpu works" in line
    assert _left_behind(fake_run) == before  # no samples/ or eval/ folder, no file


# ---------------------------------------------------------------------------- outputs that cannot be written
def _raise(code: int) -> Callable[[Path], None]:
    """A stand-in for the writability probe's write that fails with ``code``."""

    def probe(folder: Path) -> None:
        raise OSError(code, os.strerror(code), str(folder))

    return probe


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize(
    ("case", "needle"),
    [
        pytest.param(case, needle, id=case)
        for case, needle in (
            ("samples-is-a-file", "it is a file, not a folder; choose another place with --out"),
            ("out-under-a-file", "somefile' is a file, not a folder"),
            ("read-only", "read-only file system"),
            ("no-permission", "permission denied"),
            ("disk-full", "no space left on device"),
        )
    ],
)
def test_unwritable_outputs_are_one_line_before_any_work(
    fake_run: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    case: str,
    needle: str,
) -> None:
    main, folder = (sample_main, "samples") if command == "sample" else (eval_main, "eval")
    argv = [str(fake_run), "--n", "10"]
    where = fake_run / folder
    if case == "samples-is-a-file":
        where.write_text("")
    elif case == "out-under-a-file":
        (fake_run.parent / "somefile").write_text("")
        where = fake_run.parent / "somefile" / "deeper"
        argv += ["--out", str(where / ("x.npz" if command == "sample" else "x.json"))]
    else:  # root writes anywhere, so a chmod would prove nothing: the probe's own write fails instead
        code = {"read-only": errno.EROFS, "no-permission": errno.EACCES, "disk-full": errno.ENOSPC}[case]
        monkeypatch.setattr(safe_writes, "write_probe", _raise(code))
    before = _left_behind(fake_run.parent)
    code, err = _exits(main, argv, capsys)
    assert code == 2
    line = _one_line(err)
    assert f"cannot write {'samples' if command == 'sample' else 'the evaluation'} to '{where}'" in line
    assert needle in line
    assert _left_behind(fake_run.parent) == before  # the probe made no folder it did not remove


def test_eval_checks_the_wandb_folder_when_results_go_there(
    fake_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fake_run / ".wandb_id").write_text("abc123\n")
    (fake_run / "wandb").write_text("")
    code, err = _exits(eval_main, [str(fake_run)], capsys)
    assert code == 2
    assert _one_line(err) == (
        f"error: cannot write the W&B summary to '{fake_run / 'wandb'}': it is a file, not a folder; "
        "pass --no-wandb to skip it"
    )
    with pytest.raises(pytest.fail.Exception, match="work started"):  # with --no-wandb it goes on to load
        eval_main([str(fake_run), "--no-wandb"])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_a_really_read_only_folder(fake_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = fake_run.parent / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = _exits(sample_main, [str(fake_run), "--out", str(out / "x.npz")], capsys)
    finally:
        out.chmod(0o755)
    assert code == 2 and "permission denied" in _one_line(err)


def test_the_probe_writes_data_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(len(data)) or real_write(fd, data))
    assert safe_writes.writable_problem(tmp_path / "a" / "b", "x") is None
    assert written and written[0] > 0  # a full disk often still accepts an empty file
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- ddpm-viz
VIZ_BAD = [
    (["forward-chain", "--T", "100000000"], "--T=100000000 would need about"),
    (["forward-chain", "--T", "1000000", "--draws", "100"], "--T=1000000 and --draws=100 would need about"),
    (["schedules", "--T", "10000000"], "--T=10000000 (4 schedules) would need about"),
    (["forward-1d", "--length", "100000000"], "--length=100000000 would need about"),
    (["forward-2d", "--n", "10000000", "--timesteps", "0", "5", "9"], "--n=10000000 and 3 --timesteps"),
    (["forward-2d", "--T", "100000000"], "--T=100000000 would need about"),
    (["forward-chain", "--dpi", "6000"], "--dpi=6000 (54000 x 28800 pixels) would need about"),
    (["reverse", "RUN", "--n", "1000000000"], "--n=1000000000 would need about"),
    (["forward-chain", "--seed", str(2**64)], f"--seed={2**64} is out of range"),
    (["forward-chain", "--x0", "inf"], "--x0=inf is invalid; give finite numbers"),
    (["forward-2d", "--mean", "nan", "1"], "--mean=nan 1 is invalid; give finite numbers"),
    (["forward-2d", "--lim", "inf"], "--lim=inf is invalid; give finite numbers"),
    (["forward-chain", "--draws", "-2"], "--draws=-2 is invalid"),
    (["forward-1d", "--length", "0"], "--length=0 is invalid"),
    (["forward-2d", "--n", "0"], "--n=0 is invalid"),
    (["forward-chain", "--T", "0"], "T=0 is invalid"),
    (["reverse", "RUN", "--frames", "0"], "--frames=0 is invalid"),
    (["reverse", "RUN", "--n", "-1"], "--n=-1 is invalid"),
]


@pytest.mark.parametrize(
    ("args", "needle"), VIZ_BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_viz_refuses_bad_and_oversized_values(
    fake_run: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    argv = [str(fake_run) if a == "RUN" else a for a in args]
    assert viz_main(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert needle in line, line
    if "would need" in needle:
        assert "over the limit of" in line and "half the memory available" in line
    assert not (fake_run.parent / "outputs").exists()


def test_viz_memory_limit_is_at_most_two_gib() -> None:
    assert 0 < memory_limit() <= MAX_BYTES == 2 * 1024**3


def test_viz_refuses_a_runs_oversized_chain_before_sampling(
    fake_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reverse: the run's chain (1000 steps of 3x32x32 images) x --n is known once loaded, before sampling."""
    diffusion = GaussianDiffusion(make_beta_schedule("linear", 1000))
    module = types.SimpleNamespace(diffusion=diffusion, data_shape=(3, 32, 32), sample=Sampler.sample)
    loaded = types.SimpleNamespace(model=module, data=None)
    monkeypatch.setattr("ddpm.build.load_run", lambda path: loaded)
    assert viz_main(["reverse", str(fake_run), "--n", "1000"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--n=1000 (the run's chain: 1001 states of 3072 values per sample) would need about" in line


@pytest.mark.parametrize(
    ("case", "needle"),
    [("read-only", "read-only file system"), ("disk-full", "no space left on device")],
)
def test_viz_unwritable_output_before_any_work(
    fake_run: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    needle: str,
) -> None:
    code = errno.EROFS if case == "read-only" else errno.ENOSPC
    monkeypatch.setattr(safe_writes, "write_probe", _raise(code))
    monkeypatch.setattr("ddpm.viz.forward_chain", lambda *a, **k: pytest.fail("computed before the check"))
    assert viz_main(["forward-chain"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"cannot write the figure to '{Path('outputs') / 'viz'}': {needle}" in line
    assert not (fake_run.parent / "outputs").exists()
    (fake_run.parent / "file").write_text("")
    assert viz_main(["reverse", str(fake_run), "--out", "file/r.png"]) == 2
    assert "cannot write the figure to 'file': it is a file, not a folder" in _one_line(
        capsys.readouterr().err
    )


def test_viz_final_write_failure_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", _no_space)
    out = tmp_path / "f.png"
    assert viz_main(["forward-chain", "--T", "10", "--out", str(out)]) == 1
    assert f"could not write {out}: no space left on device" in _one_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no partial file


def test_an_old_file_survives_a_failed_write(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    out.write_text("old")

    def half(path: Path) -> None:
        path.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(safe_writes.WriteError, match=f"could not write {out}: no space left on device"):
        safe_writes.write_file(out, half)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ---------------------------------------------------------------------------- a trained run (toy_run)
@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_sample_and_eval_figures_come_before_a_failing_write(
    toy_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s" / "x.npz"
    with monkeypatch.context() as m:
        m.setattr(np, "savez_compressed", _no_space)
        with pytest.raises(SystemExit) as exc:
            sample_main([str(toy_run), "sampler=ddim", "sampler.steps=5", "--n", "50", "--out", str(out)])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert "Throughput:" in captured.out and "Quality: energy distance" in captured.out
    assert captured.err.strip().splitlines()[-1] == f"error: could not write {out}: no space left on device"
    assert not out.parent.exists() or list(out.parent.iterdir()) == []

    out = tmp_path / "e" / "x.json"
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", _no_space)
        with pytest.raises(SystemExit) as exc:
            eval_main(
                [
                    str(toy_run),
                    "sampler=ddim",
                    "sampler.steps=5",
                    "--n",
                    "50",
                    "--repeats",
                    "2",
                    "--out",
                    str(out),
                ]
            )
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert "Quality: energy distance" in captured.out and "Sampling: 100 samples" in captured.out
    assert captured.err.strip().splitlines()[-1] == f"error: could not write {out}: no space left on device"
    assert "Traceback" not in captured.err


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_a_key_the_runs_sampler_does_not_take_leaves_nothing(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without sampler=..., the run's own sampler (UniPC) is known only once loaded; still no sampling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        code, err = _exits(sample_main, [str(toy_run), "sampler.eta=0.5", "--n", "10"], capsys)
    assert code == 2
    line = _one_line(err)
    assert (
        "sampler.eta=0.5 is not an option of UniPCSampler (the run's sampler); it takes "
        "steps, order, spacing, lower_order_final" in line
    )
    assert not (toy_run / "samples").exists()


@pytest.mark.parametrize(
    ("main", "args", "needle"),
    [
        (sample_main, ["--guidance", "-1"], "--guidance=-1 is invalid; the guidance scale must be >= 0"),
        (sample_main, ["--guidance", "nan"], "--guidance=nan is invalid"),
        (eval_main, ["--guidance", "0,-2"], "--guidance '0,-2': -2 is invalid; guidance scales must be >= 0"),
        (eval_main, ["--guidance", "1,x"], "--guidance '1,x': 'x' is not a number"),
        (eval_main, ["--guidance", "1", "--bpd"], "--guidance with --bpd"),
    ],
)
def test_bad_guidance_is_one_line_before_any_work(
    fake_run: Path, main, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _exits(main, [str(fake_run), *args], capsys)
    assert code == 2 and needle in _one_line(err)


@pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning")
def test_class_flags_on_an_unconditional_run_are_one_line_errors(
    toy_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for main, argv in (
        (sample_main, [str(toy_run), "--class", "3"]),
        (sample_main, [str(toy_run), "--guidance", "2"]),
        (eval_main, [str(toy_run), "--guidance", "0,1"]),
    ):
        code, err = _exits(main, argv, capsys)
        assert code == 2 and "needs a class-conditional run" in _one_line(err)
    assert not (toy_run / "samples").exists() and not (toy_run / "eval").exists()
