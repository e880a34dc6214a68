"""The documentation cannot drift from the code (issue 35).

- Every ``ddpm-train`` / ``-sample`` / ``-eval`` / ``-viz`` / ``-export`` / ``-ema`` command line in README.md
  and docs/**/*.md, in code blocks and in inline code, is checked: ``ddpm-train``'s overrides pass the
  command's own one-line checks (group choices, moved keys), compose with Hydra against ``conf/`` (a
  multirun's sweeps expanded) and pass :func:`ddpm.config.validate_config`; the other commands' arguments
  parse with their own parsers, and their sampler overrides pass the checks made before a checkpoint is read.
- Every markdown table of measured figures names, in its section, the command or script that measured it.
- ``mkdocs build --strict`` succeeds, and the built tutorial holds its equations and figures and an API page
  a known docstring.

Placeholders: ``RUN``, ``<time>``, ``/path/to/...`` stand for what the reader has; they are taken as they
are (``<...>`` becomes a plain word; the metavariables ``N`` and ``S`` of usage lines, numbers) and only
reach places where any string is valid (a run folder, a checkpoint path), except ``data=array``'s
``data.path``, which the config checks open, and which this test points at a real file. Tokens with
``...`` are elisions in prose and are left out. A ``$ `` line in an output block whose output is an
``error:`` line shows a refusal on purpose and is not checked here (the refusals are tested where they are
made). Inline code that names a command with one option only (`ddpm-eval --bpd`) or ``ddpm-viz reverse``
names it in prose and is not a command line.
"""

from __future__ import annotations

import contextlib
import html
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMANDS = ("ddpm-train", "ddpm-sample", "ddpm-eval", "ddpm-viz", "ddpm-export", "ddpm-ema")
_COMMAND = re.compile(r"^(?:uv run\s+)?(" + "|".join(COMMANDS) + r")(?:\s+(.*))?$")
#: at most this many jobs of one documented sweep are composed (the first ones, in Hydra's order)
MAX_SWEEP_JOBS = 8
#: metavariables of usage lines in prose (`--fit-steps N`, `--sigma-rel S`): numbers the reader chooses
METAVARIABLES = {"N": "8", "S": "0"}


@dataclass(frozen=True)
class CommandLine:
    """One documented command line: where it is, which command, and its arguments."""

    where: str
    command: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: {self.command} {shlex.join(self.args)}"


def _arguments(rest: str) -> list[str] | None:
    """The arguments of a command line: comments dropped, ``<placeholder>`` made a word, elisions left out."""
    rest = re.sub(r"<([^<>\s]+)>", lambda m: re.sub(r"\W", "_", m.group(1)).upper(), rest)
    try:
        words = shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote: not a command line
        return None
    words = [w for w in words if "..." not in w]
    # usage syntax in prose: `--step N` is a number, `[--step N]` an optional argument
    words = [w[1:] if w.startswith("[-") else w for w in words]
    words = [w[:-1] if w.endswith("]") and "[" not in w else w for w in words]
    return [METAVARIABLES.get(w, w) for w in words]


def _fenced_lines(lines: list[str], start: int, path: str) -> Iterator[CommandLine]:
    """The command lines of one fenced block's body (``lines``; ``start``: its first line's number)."""
    logical: list[tuple[int, str]] = []
    buffer, first = "", 0
    for i, line in enumerate(lines):
        if not buffer:
            first = start + i
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        logical.append((first, buffer + line))
        buffer = ""
    for k, (number, line) in enumerate(logical):
        text = line.strip()
        shown = text.startswith("$ ")
        text = text.removeprefix("$ ").strip()
        match = _COMMAND.match(text)
        if not match:
            continue
        after = logical[k + 1][1].strip() if k + 1 < len(logical) else ""
        if shown and after.startswith("error:"):
            continue  # a refusal shown on purpose
        args = _arguments(match.group(2) or "")
        if args is not None:
            yield CommandLine(f"{path}:{number}", match.group(1), tuple(args))


def extract_commands(text: str, path: str) -> list[CommandLine]:
    """Every ddpm-* command line of a markdown page: in fenced blocks (not Python ones) and inline code."""
    found: list[CommandLine] = []
    lines = text.splitlines()
    prose: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*(```+|~~~+)\s*(\S*)", lines[i])
        if fence:
            mark, lang = fence.group(1), fence.group(2).lower()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(mark):
                j += 1
            if lang not in ("python", "py", "pycon", "yaml", "json"):
                found.extend(_fenced_lines(lines[i + 1 : j], i + 2, path))
            i = j + 1
            continue
        prose.append((i + 1, lines[i]))
        i += 1
    # inline code may run over a line break: read each paragraph as one line
    for _, group in itertools.groupby(prose, key=lambda item: bool(item[1].strip())):
        paragraph = list(group)
        if not paragraph[0][1].strip():
            continue
        joined = " ".join(line.strip() for _, line in paragraph)
        for span in re.findall(r"`([^`]+)`", joined):
            match = _COMMAND.match(span.strip())
            if not match or not match.group(2):
                continue  # the command's name, not a command line
            args = _arguments(match.group(2))
            if args is None:
                continue
            if match.group(1) == "ddpm-viz" and args == ["reverse"]:
                continue  # `ddpm-viz reverse` named in prose: the subcommand, not a command line
            if len(args) == 1 and args[0].startswith("--"):
                continue  # `ddpm-eval --ema-sweep` names an option in prose, not a command line
            found.append(CommandLine(f"{path}:{paragraph[0][0]}", match.group(1), tuple(args)))
    return found


def _all_commands() -> list[CommandLine]:
    found: list[CommandLine] = []
    for path in DOC_FILES:
        found.extend(extract_commands(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))))
    return found


ALL_COMMANDS = _all_commands()


# ------------------------------------------------------------------------------------------- the checks
class DocCommandError(Exception):
    """A documented command line that the code would refuse."""


@contextlib.contextmanager
def _one_line_errors() -> Iterator[io.StringIO]:
    """The commands' own checks print ``error: ...`` and exit: turn that into an exception with the line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            yield err
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise DocCommandError(err.getvalue().strip() or f"exit {exit_.code}") from None


def _sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """A multirun's jobs: each sweep override (``a,b``, ``range``, ``choice``) expanded, the first jobs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(job) for job in itertools.islice(itertools.product(*choices), MAX_SWEEP_JOBS)]


def check_train(args: list[str], array_file: Path) -> None:
    """``ddpm-train ARGS`` as the command checks it before any work: its one-line checks of group
    choices and moved keys, Hydra's composition against conf/, and the run's config checks."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ddpm.cli.common import check_group_overrides, check_moved_keys
    from ddpm.config import CONF_DIR, ConfigError, validate_config

    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if any(a.startswith("-") for a in overrides):
        raise DocCommandError(
            f"ddpm-train takes overrides, not {[a for a in overrides if a.startswith('-')]}"
        )
    with _one_line_errors():
        check_group_overrides(overrides)
        check_moved_keys(overrides)
    if "data=array" in overrides:  # the reader's file: the config checks open it, so give them one
        overrides = [f"data.path={array_file}" if o.startswith("data.path=") else o for o in overrides]
    jobs = _sweep_jobs(overrides) if multirun else [overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose("train", overrides=job, return_hydra_config=True)
                validate_config(cfg)
            except ConfigError as err:
                raise DocCommandError(f"error: {err}") from None
            except Exception as err:
                raise DocCommandError(f"{type(err).__name__}: {err}".splitlines()[0]) from None


def _sampler_overrides(args: object, compare: bool = False) -> None:
    """The sampler overrides of ddpm-sample / ddpm-eval, checked as they are before a checkpoint is read."""
    from ddpm.config import ConfigError
    from ddpm.sampler_overrides import check_sampler_overrides, sampler_grid

    overrides = list(args.overrides)  # type: ignore[attr-defined]
    run = args.run  # type: ignore[attr-defined]
    if args.pretrained is not None and run is not None and "=" in run:  # type: ignore[attr-defined]
        overrides = [run, *overrides]  # --pretrained P sampler=...: the first override lands in RUN
    try:
        for combo in sampler_grid(overrides) if compare else [overrides]:
            check_sampler_overrides(list(combo))
    except ConfigError as err:
        raise DocCommandError(f"error: {err}") from None


def check_other(command: str, args: list[str]) -> None:
    """The arguments of ddpm-sample / -eval / -viz / -export / -ema, parsed as the command parses them."""
    if command == "ddpm-sample":
        from ddpm.cli.sample import _parser

        with _one_line_errors():
            parsed = _parser().parse_intermixed_args(args)
        _sampler_overrides(parsed)
    elif command == "ddpm-eval":
        from ddpm.cli.eval import _parse_sigma_rels
        from ddpm.cli.eval import _parser as eval_parser
        from ddpm.evaluation.guidance_curve import parse_scales

        with _one_line_errors():
            parsed = eval_parser().parse_intermixed_args(args)
            if parsed.ema_sweep is not None:
                _parse_sigma_rels(parsed.ema_sweep)
        if parsed.guidance is not None:
            try:
                parse_scales(parsed.guidance)
            except ValueError as err:
                raise DocCommandError(str(err)) from None
        _sampler_overrides(parsed, compare=parsed.compare_samplers)
    elif command == "ddpm-viz":
        from ddpm.cli.viz import build_parser

        with _one_line_errors():
            build_parser().parse_args(args)
    elif command == "ddpm-export":
        from ddpm.cli.export import _parser as export_parser

        with _one_line_errors():
            parsed = export_parser().parse_args(args)
        if parsed.format not in ("safetensors", "diffusers"):
            raise DocCommandError(f"--format={parsed.format!r} is not safetensors or diffusers")
    elif command == "ddpm-ema":
        from ddpm.cli.ema import _parser as ema_parser

        with _one_line_errors():
            ema_parser().parse_args(args)
    else:
        raise AssertionError(command)


def check_command(line: CommandLine, array_file: Path) -> None:
    """Raise :class:`DocCommandError` when the code would refuse the documented command line."""
    if line.command == "ddpm-train":
        check_train(list(line.args), array_file)
    else:
        check_other(line.command, list(line.args))


@pytest.fixture(scope="module")
def array_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "trajectories.npy"
    np.save(path, np.zeros((16, 3), dtype=np.float32))
    return path


def test_the_pages_have_command_lines_of_every_command() -> None:
    # the extraction finds what it should: each command is documented somewhere, the README's quick start too
    assert {c.command for c in ALL_COMMANDS} == set(COMMANDS)
    readme = [c for c in ALL_COMMANDS if c.where.startswith("README.md")]
    assert any(c.command == "ddpm-train" and not c.args for c in readme)
    assert len(ALL_COMMANDS) > 150


def test_every_documented_command_line_composes_or_parses(array_file: Path) -> None:
    failures = []
    for line in ALL_COMMANDS:
        try:
            check_command(line, array_file)
        except DocCommandError as err:
            failures.append(f"{line}\n    -> {err}")
    assert not failures, f"{len(failures)} documented command line(s) the code refuses:\n" + "\n".join(
        failures
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("```bash\nuv run ddpm-train schedule=nope\n```", "schedule=nope is not an option"),
        ("```bash\nuv run ddpm-train T=0\n```", "T=0 is invalid"),
        ("```bash\nuv run ddpm-train diffusion.T=100\n```", "set T=100 instead"),
        ("```bash\nuv run ddpm-train trainer.max_stepz=5\n```", "max_stepz"),
        ("```bash\nuv run ddpm-train -m schedule=linear,nope\n```", "schedule=nope is not an option"),
        ("```bash\nuv run ddpm-train -m T=100,0\n```", "T=0 is invalid"),
        ("Run `ddpm-sample RUN sampler=ddim sampler.stepz=5` now.", "stepz"),
        ("Run `ddpm-eval RUN --compare-samplers sampler=ddim,nope`.", "nope"),
        ("```bash\nuv run ddpm-eval RUN --repeatz 3\n```", "unrecognized arguments"),
        ("```\nuv run ddpm-viz forward-3d\n```", "invalid choice"),
        ("```bash\nuv run ddpm-export RUN --format onnx\n```", "onnx"),
        ("```bash\nuv run ddpm-ema RUN\n```", "--sigma-rel"),
        ("```bash\nuv run ddpm-train \\\n    T=0\n```", "T=0 is invalid"),  # a continued line
    ],
)
def test_a_command_line_the_code_refuses_is_caught(text: str, complaint: str, array_file: Path) -> None:
    (line,) = extract_commands(text, "page.md")
    with pytest.raises(DocCommandError, match=re.escape(complaint)):
        check_command(line, array_file)


def test_extraction_reads_what_a_reader_reads() -> None:
    text = "\n".join(
        [
            "Train with `uv run ddpm-train data=moons`, or with the",
            "`ddpm-train ckpt_path=RUN",
            "trainer.max_steps=10` command; `ddpm-viz reverse` draws it; `ddpm-sample` samples.",
            "",
            "```python",
            "subprocess.run(['ddpm-train', 'T=0'])",
            "```",
            "",
            "```",
            "$ uv run ddpm-train T=0",
            "error: T=0 is invalid; T must be an integer >= 1",
            "$ uv run ddpm-sample outputs/toy2d/runs/<time> --n 10   # a comment",
            "```",
            "sbatch --export=ALL,DDPM_TRAIN=$PWD/.venv/bin/ddpm-train scripts/x.sbatch T=0",
        ]
    )
    lines = [(c.command, c.args) for c in extract_commands(text, "page.md")]
    assert lines == [
        ("ddpm-sample", ("outputs/toy2d/runs/TIME", "--n", "10")),
        ("ddpm-train", ("data=moons",)),
        ("ddpm-train", ("ckpt_path=RUN", "trainer.max_steps=10")),
    ]


# ------------------------------------------------------------------------------- measured figures
_MEASURED_CELL = re.compile(
    r"^\**[~<>≈]?-?\d[\d,]*(?:\.\d+)?(?:e-?\d+)?(?:\s*± ?\d[\d.]*)?\s*(?:x|%|s|ms|MB|GB|bits/dim)?\**$"
)
_NAMES_A_COMMAND = re.compile(
    r"uv run \S+|`(?:uv run )?ddpm-(?:train|sample|eval|viz|export|ema) [^`]+`|scripts/[\w/]+\.(?:py|sh)"
    r"|python -m scripts\.\w+|^- Command: "
)


def _is_measured(cell: str) -> bool:
    cell = cell.strip()
    return bool(_MEASURED_CELL.match(cell)) and bool(re.search(r"\.\d|±|\d\s*(?:x|%|s|ms)\**$", cell))


def unnamed_measured_tables(text: str) -> list[int]:
    """Line numbers of the markdown tables of measured figures whose section (the text from the previous
    heading, or the page's header for a generated report) names no command or script that measured them."""
    lines = text.splitlines()
    header_command = any(
        re.match(r"^- Command: `", line)
        for line in lines[
            : next(
                (i for i, line in enumerate(lines) if line.startswith("## ") or line.startswith("### ")),
                len(lines),
            )
        ]
    )
    bad, i, fence, section_start = [], 0, False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and re.match(r"^#{1,6} ", line):
            section_start = i
        if fence or not line.startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].startswith("|"):
            i += 1
        body = [row for row in lines[start + 2 : i]]
        cells = [c for row in body for c in row.strip().strip("|").split("|")]
        if sum(_is_measured(c) for c in cells) >= 2:
            context = "\n".join(lines[section_start : min(i + 3, len(lines))])
            if not header_command and not _NAMES_A_COMMAND.search(context):
                bad.append(start + 1)
    return bad


def test_every_measured_table_names_the_command_that_measured_it() -> None:
    failures = []
    measured = 0
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        failures += [f"{path.relative_to(ROOT)}:{n}" for n in unnamed_measured_tables(text)]
        measured += text.count("±")
    assert measured > 50  # the pages do quote measured figures: this test has something to check
    assert not failures, "measured tables whose section names no command or script: " + ", ".join(failures)


def test_the_measured_table_check_can_fail() -> None:
    table = "| run | ratio |\n|---|---|\n| a | 1.81 ± 0.38 |\n| b | 1.15 ± 0.39 |\n"
    options = "| option | default |\n|---|---|\n| `steps` | 18 |\n| `rho` | 7 |\n"
    assert unnamed_measured_tables("# Page\n\nSome figures:\n\n" + table) == [5]
    assert unnamed_measured_tables("# Page\n\nOptions:\n\n" + options) == []
    named = "# Page\n\nMeasured with `uv run python scripts/x.py --seeds 3`:\n\n" + table
    assert unnamed_measured_tables(named) == []
    # a command in another section does not cover this one
    elsewhere = "# Page\n\n`uv run ddpm-train T=10`\n\n## Results\n\n" + table
    assert unnamed_measured_tables(elsewhere) == [7]


# ------------------------------------------------------------------------------------------ the site
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice of its end of life, not a warning
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    return out


def test_the_site_builds_strictly_with_the_tutorial_and_the_api(site: Path) -> None:
    tutorial = (site / "tutorial" / "ddpm-from-the-equations" / "index.html").read_text(encoding="utf-8")
    # the equations reach MathJax: arithmatex's blocks, with the closed form and the loss in them
    blocks = re.findall(r'<div class="arithmatex">(.*?)</div>', tutorial, flags=re.S)
    assert len(blocks) >= 6
    assert any(r"\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon" in b for b in blocks)
    assert any(r"L_\text{simple}" in b for b in blocks)
    assert "mathjax" in tutorial.lower()
    # every figure is an <img> whose file is in the site
    images = re.findall(r'<img[^>]*src="([^"]+\.png)"', tutorial)
    names = {Path(src).name for src in images}
    assert {
        "forward-chain.png",
        "forward-1d.png",
        "forward-2d.png",
        "schedules.png",
        "reverse-oracle.png",
    } <= names
    for src in images:
        assert (site / "tutorial" / "ddpm-from-the-equations" / src).resolve().is_file(), src
    # each equation links to the function that implements it, on the API pages
    assert 'href="../../api/math/#ddpm.diffusion.GaussianDiffusion.q_sample"' in tutorial

    from ddpm.diffusion import GaussianDiffusion
    from ddpm.schedules import make_beta_schedule

    api = (site / "api" / "math" / "index.html").read_text(encoding="utf-8")
    assert 'id="ddpm.schedules.make_beta_schedule"' in api
    # the docstrings' first sentences, as far as their first inline code (rendered as <code>)
    for doc in (make_beta_schedule.__doc__, GaussianDiffusion.q_sample.__doc__):
        assert doc is not None
        first = html.escape(doc.strip().splitlines()[0].split("``")[0].strip(), quote=False)
        assert len(first) > 20 and first in api, first


def test_every_library_module_has_its_api_page() -> None:
    """Layers 0-3 (everything under src/ddpm but the commands) are published: each module is a
    ``::: ddpm.<module>`` block on one of docs/api's pages, so a new module needs a line there."""
    src = ROOT / "src" / "ddpm"
    modules = set()
    for path in src.rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        if (
            parts[0] == "cli"
            or parts == ("__init__",)
            or any(p.startswith("_") and p != "__init__" for p in parts)
        ):
            continue
        modules.add("ddpm." + ".".join(p for p in parts if p != "__init__"))
    documented = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (ddpm[\w.]*)\s*$", page.read_text(encoding="utf-8"), flags=re.M))
    assert len(modules) > 60  # the walk found the library
    assert modules - documented == set(), "library modules missing from docs/api/*.md"
    assert documented - modules == set(), "docs/api/*.md names modules that do not exist"


def test_the_tutorials_python_runs_and_does_what_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    """The tutorial's "The same in Python" block, run as a reader would paste it."""
    import torch

    page = (ROOT / "docs" / "tutorial" / "ddpm-from-the-equations.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"^```python\n(.*?)^```", page, flags=re.S | re.M)
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(code, "ddpm-from-the-equations.md", "exec"), namespace)
    samples = namespace["samples"]
    assert isinstance(samples, torch.Tensor) and samples.shape == (2000, 2)
    # "close to (2, 2) and 0.25 I": the exact eps through DDPM's steps gives the data back
    torch.testing.assert_close(samples.mean(0), torch.tensor([2.0, 2.0]), atol=0.06, rtol=0)
    torch.testing.assert_close(samples.T.cov(), 0.25 * torch.eye(2), atol=0.04, rtol=0)
    assert namespace["x_t"].shape == namespace["x_next"].shape == (512, 2)  # type: ignore[union-attr]
    assert "tensor(" in capsys.readouterr().out
