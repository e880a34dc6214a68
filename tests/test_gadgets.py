"""The gadget corpus: a run folder is data, not code (issue 28).

Each case copies one tiny trained toy run and puts one kind of hostile content into one of the three places
a stored config is read from (``place``):

- ``ckpt``: the checkpoint's ``ddpm_config`` dict (``checkpoints/last.ckpt``, the run's other checkpoints
  removed);
- ``yaml``: ``.hydra/config.yaml``, with ``ddpm_config`` deleted from the checkpoint so that the YAML is
  what is read (its clean base is the run's resolved config, as ddpm-lab stores configs from now on);
- ``safetensors``: the ``ddpm_config`` JSON in the metadata of a ``ddpm-export --format safetensors`` file
  (``RUN/export/model.safetensors``, given to the commands as the path to read).

Then it runs a command in this process through its ``main`` (ddpm-sample, ddpm-eval ``--no-wandb``,
ddpm-viz reverse, ddpm-export, ``ddpm-train ckpt_path=RUN``; ``--pretrained`` for diffusers folders) and
checks only what can be observed from outside:

- content in the run's identity (model, data, schedule, diffusion, sampler, optimizer, lr_scheduler, T,
  seed, conditional) or malformed content (YAML tags, an alias bomb, deep nesting): exit code 2, stderr one
  line starting with ``error:`` (ddpm-viz's lines start ``ddpm-viz reverse: error:``), naming the key
  where the route targets one, and nothing else: no marker file, no connection to the local listener, the
  secret in no output and no file, and the run folder as it was (the same entries, the same bytes but for
  the run's own lock and claim files at its top level);
- content only in keys that are never read (top-level ``notes``, extra callbacks and loggers, a W&B
  logger gone online, ``paths``/``ckpt_path``/``hydra`` pointing elsewhere): the command does what it does
  on a clean run (exit 0; a resume trains its extra steps) and none of the effects happen: no marker, no
  connection, no secret, the other run's files unchanged, nothing written elsewhere.

The secret is the value of ``DDPM_GADGET_SECRET`` (random per test), looked for in stdout, stderr and the
bytes of every file under the case's tmp_path (inside zip members too: checkpoints, .npz). The listener is a
TCP socket on 127.0.0.1 that counts connections, one per module (W&B reads its server's address once per
process); W&B's ``WANDB_BASE_URL`` points at it, with an API key set so that an online W&B would really
connect, and so does the ``urllib.request.urlopen`` gadget. The alias bomb runs in a forked child with a
memory limit and a 10-second deadline, so a loader that expands it cannot take the machine with it.

One toy run is trained per module (a few seconds); each case copies it. The cases where a command must
succeed sample 8 points; the resumes train 2 more steps. The exhaustive cross products are marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from ddpm.cli.eval import main as eval_main
from ddpm.cli.export import main as export_main
from ddpm.cli.sample import main as sample_main
from ddpm.cli.viz import main as viz_main
from ddpm.interop import SAFETENSORS_CONFIG_KEY
from tests.helpers import SHORT, train_in_process

pytestmark = [
    # T=50 on purpose (a short chain), which stops short of pure noise
    pytest.mark.filterwarnings("ignore::ddpm.schedules.NotPureNoiseWarning"),
    # the cases copy run folders, so Lightning sees a moved checkpoint folder, as a user's moved run would
    pytest.mark.filterwarnings("ignore:The dirpath has changed from"),
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
]

STORED_T = 50
QUIET = [o for o in SHORT if o != "print_config=false"] + ["print_config=false", "reverse_gif=false"]
SECRET_ENV = "DDPM_GADGET_SECRET"
#: the one line of a refusal: ``error: ...`` (ddpm-viz prefixes its command, as it always has)
ERROR_LINE = re.compile(r"^(ddpm-viz reverse: )?error: ")
#: a command that must refuse has to do it quickly (loading and checking, no work)
REFUSE_SECONDS = 10.0
#: what ddpm-train ckpt_path=RUN is given on top of the run: two more steps, and nothing slow
RESUME_ARGS = [
    "trainer.max_steps=6",
    "print_config=false",
    "callbacks.progress_bar=null",
    "trainer.enable_progress_bar=false",
    "callbacks.samples=null",
]


# ============================================================================ the harness
class Listener:
    """A TCP listener on 127.0.0.1 that counts connections: loopback only, closes each connection at once,
    and stops by itself (``close()`` or after ``lifetime`` seconds)."""

    def __init__(self, lifetime: float = 4 * 3600.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._serve, name="gadget-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    conn, _ = self.sock.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self.connections += 1
                conn.close()
        finally:
            self.sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Ctx:
    """What one case's gadgets point at, and what it checks afterwards."""

    tmp: Path
    marker: Path
    listener: Listener
    secret: str
    connections_before: int
    other: Path | None = None  # another run, which nothing may touch
    elsewhere: Path | None = None  # a folder nothing may create
    other_before: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> str:
        # an innocent-looking library function that writes a file: the first link of a gadget chain
        return f"{{_target_: numpy.savetxt, fname: '{self.marker}', X: [pwned], fmt: '%s'}}"

    def need_other(self, trained: Trained) -> Path:
        if self.other is None:
            self.other = _copy(trained.run, self.tmp / "other")
            self.other_before = _snapshot(self.other)
            self.elsewhere = self.tmp / "elsewhere"
        return self.other


@dataclass
class Trained:
    run: Path  # a finished toy run made by ddpm-train
    export: Path  # its ddpm-export --format safetensors file (outside the run)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """These networks are tiny: on a busy 2-core CPU, two torch threads wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One finished toy run (T=50, four steps, no samples) and its safetensors export, per module."""
    root = tmp_path_factory.mktemp("gadgets")
    run = root / "run"
    code = train_in_process(
        [*QUIET, f"T={STORED_T}", "callbacks.samples=null", "final_samples=0", f"hydra.run.dir={run}"]
    )
    assert code == 0
    export = root / "model.safetensors"
    assert export_main([str(run), "--format", "safetensors", "--out", str(export)]) == 0
    return Trained(run, export)


@pytest.fixture(scope="module")
def listener() -> Any:
    """One listener for the module: W&B reads its server's address once per process, so every case points
    it at the same port; each case counts the connections made while it ran."""
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listener: Listener) -> Any:
    """The environment of one case: a secret in the environment, W&B pointed at a local listener (with a
    key it would send), nothing trusted by the user, and the case's tmp_path as the working folder."""
    secret = f"s3cr3t-{secrets.token_hex(12)}"
    monkeypatch.setenv(SECRET_ENV, secret)
    for name in ("DDPM_CKPT_PATH", "WANDB_MODE", "WANDB_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", listener.url)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # a key, so an online W&B would really try to connect
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))  # whatever W&B writes is scanned too
    monkeypatch.chdir(tmp_path)
    yield Ctx(tmp_path, tmp_path / "PWNED", listener, secret, listener.connections)


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def _snapshot(folder: Path) -> dict[str, Any]:
    """Every entry under ``folder``: files by their bytes' hash, folders and links as such.

    The run folder's own bookkeeping files at its top level (``.ddpm_run``, a lock: dot-files beside
    ``checkpoints/``) count by their presence only: a command may take the run's lock and give it back
    (rewriting the holder's pid), but not leave a new entry or change any other byte.
    """
    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir",)
        elif path.parent == folder and path.name.startswith(".") and (folder / "checkpoints").is_dir():
            out[rel] = ("bookkeeping",)
        else:
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    new = sorted(after.keys() - before.keys())
    gone = sorted(before.keys() - after.keys())
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    parts = [
        f"{name}: {keys[:8]}" for name, keys in (("new", new), ("gone", gone), ("changed", changed)) if keys
    ]
    return "; ".join(parts)


def _contains(data: bytes, needle: bytes) -> bool:
    if needle in data:
        return True
    if data[:4] == b"PK\x03\x04":  # a zip (checkpoints, .npz): look inside compressed members too
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return any(needle in zf.read(info) for info in zf.infolist())
        except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):
            return False
    return False


def _files_holding(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if _contains(path.read_bytes(), needle.encode()):
                    hits.append(str(path.relative_to(root)))
            except OSError:
                continue
    return hits


# ---------------------------------------------------------------------------- running the commands
@dataclass
class Result:
    code: int | str  # the exit code, or "traceback: <type>" when the command raised
    out: str
    err: str
    seconds: float


def _call(fn: Callable[[], Any]) -> tuple[int | str, str]:
    """Run a command's main: its exit code, and a traceback (as stderr would show it) when it raised."""
    try:
        code = fn()
        return (0 if code is None else code), ""
    except SystemExit as exc:
        return (0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1), ""
    except Exception as exc:
        return f"traceback: {type(exc).__name__}", traceback.format_exc()


def _main_of(command: str, target: Path, ctx: Ctx) -> Callable[[], Any]:
    """The command's main with its argv, reading ``target`` (a run folder or a .safetensors file)."""
    if command == "sample":
        return lambda: sample_main([str(target), "--n", "8", "--no-plot"])
    if command == "eval":
        return lambda: eval_main([str(target), "--n", "8", "--repeats", "1", "--no-wandb"])
    if command == "viz":
        out = ctx.tmp / "viz" / "reverse.png"
        return lambda: viz_main(["reverse", str(target), "--n", "8", "--no-gif", "--out", str(out)])
    if command == "export":
        return lambda: export_main([str(target), "--format", "safetensors"])
    if command == "train":
        return lambda: train_in_process([f"ckpt_path={target}", *RESUME_ARGS])
    raise AssertionError(command)


def _fresh_wandb() -> None:
    """Forget W&B's process-wide settings (read once, at its first run in the process), so that a resume
    sees this case's environment: its server, its folders, no WANDB_MODE."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


def _run(command: str, target: Path, ctx: Ctx, capfd: pytest.CaptureFixture[str]) -> Result:
    if command == "train":
        _fresh_wandb()
    capfd.readouterr()
    start = time.perf_counter()
    code, tb = _call(_main_of(command, target, ctx))
    seconds = time.perf_counter() - start
    if command == "train":
        _fresh_wandb()  # W&B's service process ends here: what it sent is counted for this case
    captured = capfd.readouterr()
    return Result(code, captured.out, captured.err + tb, seconds)


def _run_in_child(command: str, target: Path, ctx: Ctx, deadline: float = REFUSE_SECONDS) -> Result:
    """The command in a forked child (the imports are shared: no start-up cost) with its address space
    capped at 2 GiB above the parent's and SIGKILL at ``deadline``: for inputs that could expand without
    bound. Its output goes to files under the case's tmp_path (scanned for the secret as well)."""
    out_file, err_file, code_file = (ctx.tmp / f"child.{n}" for n in ("out", "err", "code"))
    status = Path("/proc/self/status").read_text()
    vm = int(re.search(r"VmSize:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
    limit = vm + 2 * 1024**3
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code: int | str = "traceback: child"
        try:
            for fd, path in ((1, out_file), (2, err_file)):
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(handle, fd)
                os.close(handle)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            torch.set_num_threads(1)
            code, tb = _call(_main_of(command, target, ctx))
            sys.stderr.write(tb)
        except BaseException:
            sys.stderr.write(traceback.format_exc())
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                code_file.write_text(str(code))
            finally:
                os._exit(0)
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.perf_counter() - start > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    text = code_file.read_text() if code_file.is_file() else f"killed after {seconds:.1f} s"
    code = int(text) if text.lstrip("-").isdigit() else text
    read = lambda p: p.read_text(errors="replace") if p.is_file() else ""  # noqa: E731
    return Result(code, read(out_file), read(err_file), seconds)


# ---------------------------------------------------------------------------- what every case checks
def _effects(res: Result, ctx: Ctx) -> list[str]:
    """The effects no case may have, whatever the command's outcome."""
    problems = []
    if ctx.marker.exists():
        problems.append(f"a gadget ran: {ctx.marker.name} was written")
    connections = ctx.listener.connections - ctx.connections_before
    if connections:
        problems.append(f"{connections} connection(s) to the local listener")
    if ctx.secret in res.out or ctx.secret in res.err:
        problems.append("the secret is in the output")
    holding = _files_holding(ctx.tmp, ctx.secret)
    if holding:
        problems.append(f"the secret is in file(s) {holding[:6]}")
    if ctx.other is not None:
        change = _changes(ctx.other_before, _snapshot(ctx.other))
        if change:
            problems.append(f"another run was written to ({change})")
    if ctx.elsewhere is not None and ctx.elsewhere.exists():
        made = [str(p.relative_to(ctx.elsewhere)) for p in ctx.elsewhere.rglob("*")][:6]
        problems.append(f"a folder elsewhere was created ({made})")
    return problems


def _names(line: str, key: str) -> bool:
    """Whether an error line names ``key`` (as a word: ``T`` is not the T of "The")."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(key)}(?![A-Za-z0-9_])", line) is not None


def assert_refused(res: Result, ctx: Ctx, run: Path, before: dict[str, Any], key: str | None) -> None:
    """Exit 2, one ``error:`` line (naming ``key``), quickly, and no effect at all; the run as it was."""
    problems = _effects(res, ctx)
    if res.code != 2:
        problems.append(f"exit code {res.code!r}, not 2")
    lines = res.err.strip().splitlines()
    if len(lines) != 1:
        problems.append(f"stderr has {len(lines)} lines, not 1")
    elif not ERROR_LINE.match(lines[0]):
        problems.append(f"stderr does not start with 'error: ': {lines[0][:200]!r}")
    elif key is not None and not _names(lines[0], key):
        problems.append(f"the error line does not name {key!r}: {lines[0][:300]!r}")
    if res.seconds > REFUSE_SECONDS:
        problems.append(f"took {res.seconds:.1f} s to refuse")
    change = _changes(before, _snapshot(run))
    if change:
        problems.append(f"the run folder changed ({change})")
    shown = "\n".join(lines[-15:]).replace(ctx.secret, "<SECRET>")
    assert not problems, "; ".join(problems) + f"\n--- stderr (last lines):\n{shown}"


def assert_ran_clean(res: Result, ctx: Ctx) -> None:
    """Exit 0 and none of the effects."""
    problems = _effects(res, ctx)
    if res.code != 0:
        problems.append(f"exit code {res.code!r}, not 0")
    shown = "\n".join(res.err.strip().splitlines()[-15:]).replace(ctx.secret, "<SECRET>")
    assert not problems, "; ".join(problems) + f"\n--- stderr (last lines):\n{shown}"


# ============================================================================ the places
PLACES = ("ckpt", "yaml", "safetensors")
READERS = ("sample", "eval", "viz", "export")  # the commands that open a run without training it


def _place(
    place: str,
    trained: Trained,
    ctx: Ctx,
    edit: Callable[[dict[str, Any], Ctx], None] | None = None,
    raw: str | None = None,
) -> tuple[Path, Path]:
    """A copy of the run with its stored config at ``place`` edited by ``edit`` (or replaced by the text
    ``raw``); returns (the run folder, the path the commands are given)."""
    run = _copy(trained.run, ctx.tmp / "run")
    ckpt_file = run / "checkpoints" / "last.ckpt"
    for extra in run.glob("checkpoints/*.ckpt"):
        if extra != ckpt_file:
            extra.unlink()
    if place == "safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(trained.export), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        cfg = json.loads(metadata[SAFETENSORS_CONFIG_KEY])
        if edit is not None:
            edit(cfg, ctx)
        metadata[SAFETENSORS_CONFIG_KEY] = raw if raw is not None else json.dumps(cfg)
        target = run / "export" / "model.safetensors"
        target.parent.mkdir()
        save_file(state, str(target), metadata=metadata)
        return run, target
    ckpt = torch.load(ckpt_file, weights_only=True)
    if place == "ckpt":
        cfg = ckpt["ddpm_config"]
        if edit is not None:
            edit(cfg, ctx)
        if raw is not None:
            raise AssertionError("raw text goes to the yaml or safetensors place")
    elif place == "yaml":
        cfg = ckpt.pop("ddpm_config")  # the YAML is what is read
        if edit is not None:
            edit(cfg, ctx)
        text = raw if raw is not None else yaml.safe_dump(cfg, sort_keys=False)
        (run / ".hydra" / "config.yaml").write_text(text)
    else:
        raise AssertionError(place)
    torch.save(ckpt, ckpt_file)
    return run, run


# ============================================================================ the routes
def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, name = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[name] = value


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


#: an interpolation of each kind, by name (the escaped ones are text once resolved: a loader that resolves
#: and then re-creates the config turns them into live interpolations)
EXPRESSIONS = {
    "create": "${oc.create:${payload}}",
    "create_escaped": r"\${oc.create:\${payload}}",
    "decode": "${oc.decode:${payload}}",
    "decode_escaped": r"\${oc.decode:\${payload}}",
    "env": "${oc.env:" + SECRET_ENV + "}",
    "env_escaped": r"\${oc.env:" + SECRET_ENV + "}",
    "select": "${oc.select:payload}",
    "ref": "${payload}",
}


def _interpolation(field_: str, expression: str) -> Callable[[dict[str, Any], Ctx], None]:
    def edit(cfg: dict[str, Any], ctx: Ctx) -> None:
        cfg["payload"] = ctx.payload()
        _set(cfg, field_, EXPRESSIONS[expression])

    return edit


def _target(node: str, gadget: Callable[[Ctx], dict[str, Any]]) -> Callable[[dict[str, Any], Ctx], None]:
    def edit(cfg: dict[str, Any], ctx: Ctx) -> None:
        cfg[node] = gadget(ctx)

    return edit


#: unregistered classes and functions in the identity nodes: each would write the marker or connect
TARGETS: dict[str, tuple[str, Callable[[Ctx], dict[str, Any]]]] = {
    "model_savetxt": ("model", lambda c: {"_target_": "numpy.savetxt", "fname": str(c.marker), "X": [1.0]}),
    "data_open": ("data", lambda c: {"_target_": "builtins.open", "file": str(c.marker), "mode": "w"}),
    "optimizer_copyfile": (
        "optimizer",
        lambda c: {
            "_target_": "shutil.copyfile",
            "src": str(c.tmp / "run" / "checkpoints" / "last.ckpt"),
            "dst": str(c.marker),
        },
    ),
    "schedule_torch_save": ("schedule", lambda c: {"_target_": "torch.save", "obj": [1], "f": str(c.marker)}),
    "sampler_urlopen": (
        "sampler",
        lambda c: {"_target_": "urllib.request.urlopen", "url": c.listener.url + "/"},
    ),
    "diffusion_numpy_save": (
        "diffusion",
        lambda c: {"_target_": "numpy.save", "_partial_": True, "file": str(c.marker), "arr": [1]},
    ),
    "lr_scheduler_savetxt": (
        "lr_scheduler",
        lambda c: {"_target_": "numpy.savetxt", "_partial_": True, "fname": str(c.marker), "X": [1.0]},
    ),
}


def _secret_in(dotted: str) -> Callable[[dict[str, Any], Ctx], None]:
    def edit(cfg: dict[str, Any], ctx: Ctx) -> None:
        _set(cfg, dotted, "${oc.env:" + SECRET_ENV + "}")

    return edit


#: hostile content in the run's identity: every command refuses it. name -> (edit, the key the line names)
IDENTITY_ROUTES: dict[str, tuple[Callable[[dict[str, Any], Ctx], None], str | None]] = {
    # 1. escaped interpolation through oc.create / oc.decode, escaped and not
    **{f"model_{e}": (_interpolation("model", e), "model") for e in
       ("create", "create_escaped", "decode", "decode_escaped")},
    # 6. unregistered _target_ in identity nodes
    **{name: (_target(node, gadget), node) for name, (node, gadget) in TARGETS.items()},
    # 3. oc.env secrets in identity values
    **{f"secret_{k.replace('.', '_')}": (_secret_in(k), k.split(".")[0]) for k in
       ("T", "seed", "conditional", "model.hidden", "data.dataset", "schedule.name", "sampler.steps")},
}  # fmt: skip

#: 2. every string field of the identity nodes of the toy run's stored config
#: (test_the_field_list_covers_every_string_of_the_identity checks this list against the run)
IDENTITY_NODES = (
    "model",
    "data",
    "schedule",
    "diffusion",
    "loss",
    "timestep_sampler",
    "sampler",
    "optimizer",
    "lr_scheduler",
)
STRING_FIELDS = (
    "model._target_",
    "data._target_",
    "data.dataset",
    "schedule._target_",
    "schedule.name",
    "diffusion._target_",
    "diffusion.objective",
    "diffusion.variance",
    "loss._target_",
    "loss.distance",
    "loss.weighting",
    "loss.coupling",
    "timestep_sampler._target_",
    "sampler._target_",
    "sampler.spacing",
    "sampler.solver_type",
    "optimizer._target_",
    "lr_scheduler._target_",
    "lr_scheduler.decay",
)
#: the fields the issue names (the name of each group's class and of its data, objective, schedule, spacing)
NAMED_FIELDS = ("model._target_", "data.dataset", "diffusion.objective", "schedule.name", "sampler.spacing")


def _wandb_online(cfg: dict[str, Any], ctx: Ctx) -> None:
    cfg.setdefault("logger", {})["wandb"] = {
        "_target_": "lightning.pytorch.loggers.WandbLogger",
        "project": "gadget",
        "name": "gadget",
        "save_dir": str(ctx.tmp / "run"),
        "offline": False,
        "id": None,
        "group": "",
        "tags": [],
        "job_type": "train",
        "log_model": False,
    }


def _notes_secret(cfg: dict[str, Any], ctx: Ctx) -> None:
    cfg["notes"] = "${oc.env:" + SECRET_ENV + "}"


def _notes_payload(cfg: dict[str, Any], ctx: Ctx) -> None:
    cfg["payload"] = ctx.payload()
    cfg["notes_escaped"] = r"\${oc.create:\${payload}}"
    cfg["notes_live"] = "${oc.create:${payload}}"


def _callbacks_evil(cfg: dict[str, Any], ctx: Ctx, trained: Trained) -> None:
    other = ctx.need_other(trained)
    cfg.setdefault("callbacks", {})["evil"] = {
        "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
        "dirpath": str(other / "checkpoints"),
        "filename": "last",
        "enable_version_counter": False,
        "save_on_train_epoch_end": True,
    }


def _logger_evil(cfg: dict[str, Any], ctx: Ctx, trained: Trained) -> None:
    ctx.need_other(trained)
    assert ctx.elsewhere is not None
    cfg.setdefault("logger", {})["evil"] = {
        "_target_": "lightning.pytorch.loggers.CSVLogger",
        "save_dir": str(ctx.elsewhere),
        "name": "evil",
    }


def _paths_elsewhere(cfg: dict[str, Any], ctx: Ctx, trained: Trained) -> None:
    other = ctx.need_other(trained)
    assert ctx.elsewhere is not None
    where = str(ctx.elsewhere)
    cfg["paths"] = {
        "root_dir": where,
        "data_dir": where + "/data",
        "log_dir": where + "/logs",
        "output_dir": where,
    }
    cfg["ckpt_path"] = str(other / "checkpoints" / "last.ckpt")
    cfg["hydra"] = {"run": {"dir": where}, "runtime": {"output_dir": where, "cwd": where}}
    for name in ("model_checkpoint", "last_checkpoint"):
        if isinstance(cfg.get("callbacks", {}).get(name), dict):
            cfg["callbacks"][name]["dirpath"] = where + "/checkpoints"
    if isinstance(cfg.get("logger", {}).get("csv"), dict):
        cfg["logger"]["csv"]["save_dir"] = where


#: 3, 7, 8. content only in keys that are never read: every command succeeds and none of it happens
UNREAD_ROUTES: dict[str, Callable[[dict[str, Any], Ctx, Trained], None]] = {
    "notes_secret": lambda cfg, ctx, trained: _notes_secret(cfg, ctx),
    "notes_payload": lambda cfg, ctx, trained: _notes_payload(cfg, ctx),
    "callbacks_evil": _callbacks_evil,
    "logger_evil": _logger_evil,
    "wandb_online": lambda cfg, ctx, trained: _wandb_online(cfg, ctx),
    "paths_elsewhere": _paths_elsewhere,
}


def _all_unread(cfg: dict[str, Any], ctx: Ctx, trained: Trained) -> None:
    for name in (
        "notes_secret",
        "notes_payload",
        "callbacks_evil",
        "logger_evil",
        "wandb_online",
        "paths_elsewhere",
    ):
        UNREAD_ROUTES[name](cfg, ctx, trained)


UNREAD_ROUTES["all_unread"] = _all_unread


# ============================================================================ the cases
def _case(route: str, place: str, command: str, marks: Any = ()) -> Any:
    return pytest.param(route, place, command, id=f"{route}-{place}-{command}", marks=marks)


#: the fast suite's share of the cross products (the rest is marked slow): every route with ddpm-sample on the
#: checkpoint; these routes in every place; these with every command
FAST_IN_EVERY_PLACE = (
    "model_create", "model_create_escaped", "model_decode", "model_decode_escaped", "sampler_urlopen",
    "secret_data_dataset",
)  # fmt: skip
FAST_WITH_EVERY_READER = ("model_create_escaped", "secret_data_dataset")
FAST_RESUMES = {("model_create_escaped", "ckpt"), ("model_create_escaped", "yaml"),
                ("optimizer_copyfile", "ckpt"), ("secret_seed", "ckpt")}  # fmt: skip


def _identity_cases() -> list[Any]:
    cases = []
    for route in IDENTITY_ROUTES:
        for place in PLACES:
            for command in (*READERS, "train"):
                if command == "train" and place == "safetensors":
                    continue  # an export is not resumable
                if command == "train":
                    fast = (route, place) in FAST_RESUMES
                elif command == "sample":
                    fast = place == "ckpt" or route in FAST_IN_EVERY_PLACE
                else:
                    fast = place == "ckpt" and route in FAST_WITH_EVERY_READER
                cases.append(_case(route, place, command, () if fast else pytest.mark.slow))
    return cases


@pytest.mark.parametrize(("route", "place", "command"), _identity_cases())
def test_hostile_identity_is_refused(
    route: str, place: str, command: str, trained: Trained, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    edit, key = IDENTITY_ROUTES[route]
    run, target = _place(place, trained, ctx, edit)
    before = _snapshot(run)
    res = _run(command, target, ctx, capfd)
    if command == "train" and place == "yaml":
        key = None  # a checkpoint without its config may be refused for that alone: .hydra/ is not resumed
    assert_refused(res, ctx, run, before, key)


def _field_cases() -> list[Any]:
    cases = []
    for field_ in STRING_FIELDS:
        for expression in EXPRESSIONS:
            for place in PLACES:
                # fast: in the checkpoint, every field with an escaped oc.create, model._target_ with every
                # expression, and a plain reference to the payload (a string where a name belongs); in the
                # other places model._target_ with an escaped oc.create (the secret routes are
                # test_hostile_identity_is_refused's)
                if place == "ckpt":
                    fast = (
                        expression == "create_escaped"
                        or field_ == "model._target_"
                        or (field_, expression) == ("lr_scheduler.decay", "ref")
                    )
                else:
                    fast = field_ == "model._target_" and expression == "create_escaped"
                marks = () if fast else pytest.mark.slow
                cases.append(
                    pytest.param(field_, expression, place, id=f"{field_}-{expression}-{place}", marks=marks)
                )
    return cases


@pytest.mark.parametrize(("field_", "expression", "place"), _field_cases())
def test_interpolation_in_a_string_field_is_refused(
    field_: str, expression: str, place: str, trained: Trained, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    run, target = _place(place, trained, ctx, _interpolation(field_, expression))
    before = _snapshot(run)
    res = _run("sample", target, ctx, capfd)
    assert_refused(res, ctx, run, before, field_.split(".")[0])


def test_the_field_list_covers_every_string_of_the_identity(trained: Trained) -> None:
    cfg = torch.load(trained.run / "checkpoints" / "last.ckpt", weights_only=True)["ddpm_config"]

    def strings(node: Any, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [s for k, v in node.items() for s in strings(v, f"{prefix}.{k}")]
        return [prefix] if isinstance(node, str) else []

    found = {s for name in IDENTITY_NODES for s in strings(cfg.get(name), name)}
    assert found == set(STRING_FIELDS), (found - set(STRING_FIELDS), set(STRING_FIELDS) - found)
    for name in NAMED_FIELDS:
        assert isinstance(_get(cfg, name), str), name


def _unread_cases() -> list[Any]:
    cases = []
    for route in UNREAD_ROUTES:
        for place in PLACES:
            for command in (*READERS, "train"):
                if command == "train" and place != "ckpt":
                    continue  # a resume reads the checkpoint's config; an export is not resumable
                fast = route == "all_unread" and (place == "ckpt" or command == "sample")
                cases.append(_case(route, place, command, () if fast else pytest.mark.slow))
    return cases


@pytest.mark.parametrize(("route", "place", "command"), _unread_cases())
def test_keys_that_are_never_read_do_nothing(
    route: str, place: str, command: str, trained: Trained, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    run, target = _place(place, trained, ctx, lambda cfg, c: UNREAD_ROUTES[route](cfg, c, trained))
    steps = torch.load(trained.run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    res = _run(command, target, ctx, capfd)
    assert_ran_clean(res, ctx)
    if command == "train":  # the resume trained its two steps in the run itself, with the run's identity
        resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert resumed["global_step"] == steps + 2 == 6
        assert resumed["ddpm_config"]["T"] == STORED_T


@pytest.mark.parametrize("place", PLACES)
def test_a_clean_copy_samples(
    place: str, trained: Trained, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    """The control: each place, untouched, is read and sampled (so the refusals above are the gadgets')."""
    run, target = _place(place, trained, ctx)
    res = _run("sample", target, ctx, capfd)
    assert_ran_clean(res, ctx)
    assert list(run.rglob("samples/*.npz")), _snapshot(run).keys()


# ---------------------------------------------------------------------------- 4. YAML tags, alias bombs
def _billion_laughs() -> str:
    """~1 KB of YAML that expands to 9**9 (387 million) leaves."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


#: malformed or tagged YAML in .hydra/config.yaml: name -> (how the text is made, the key the line names)
YAML_ROUTES: dict[str, tuple[Callable[[str, Ctx], str], str | None]] = {
    "python_apply_model": (
        lambda base, c: re.sub(
            r"^model:\n(  .*\n)+",
            f'model: !!python/object/apply:os.system ["touch {c.marker}"]\n',
            base,
            flags=re.MULTILINE,
        ),
        None,
    ),
    "python_apply_notes": (
        lambda base, c: base + f'notes: !!python/object/apply:os.system ["touch {c.marker}"]\n',
        None,
    ),
    "python_name": (
        lambda base, c: base.replace(
            "_target_: ddpm.models.MLPDenoiser", "_target_: !!python/name:os.system ''"
        ),
        None,
    ),
    "custom_tag": (lambda base, c: base.replace("dataset: moons", "dataset: !custom moons"), None),
    "binary": (lambda base, c: base.replace("name: linear", "name: !!binary bGluZWFy"), None),
    "alias_bomb": (lambda base, c: base + _billion_laughs() + "notes: *a8\n", None),
    "alias_bomb_model": (
        lambda base, c: (
            _billion_laughs() + re.sub(r"^model:\n(  .*\n)+", "model: *a8\n", base, flags=re.MULTILINE)
        ),
        None,
    ),
    "deep_yaml": (
        lambda base, c: re.sub(
            r"^model:\n(  .*\n)+", "model: " + "[" * 20000 + "]" * 20000 + "\n", base, flags=re.MULTILINE
        ),
        None,
    ),
}


def _yaml_cases() -> list[Any]:
    cases = []
    for route in YAML_ROUTES:
        for command in (*READERS, "train"):
            fast = command == "sample" or (route, command) in (
                *(("python_apply_model", c) for c in READERS),
                ("alias_bomb_model", "train"),
            )
            marks = () if fast else pytest.mark.slow
            cases.append(pytest.param(route, command, id=f"{route}-{command}", marks=marks))
    return cases


@pytest.mark.parametrize(("route", "command"), _yaml_cases())
def test_tagged_or_exploding_yaml_is_refused_quickly(
    route: str, command: str, trained: Trained, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    make, key = YAML_ROUTES[route]
    base = yaml.safe_dump(
        torch.load(trained.run / "checkpoints" / "last.ckpt", weights_only=True)["ddpm_config"],
        sort_keys=False,
    )
    text = make(base, ctx)
    assert text != base, "the route did not change the YAML"
    run, target = _place("yaml", trained, ctx, raw=text)
    before = _snapshot(run)
    if route.startswith("alias_bomb"):
        res = _run_in_child(command, target, ctx)  # an expanding loader is killed, not waited for
        for name in ("out", "err", "code"):  # the child's own files, outside the run
            (ctx.tmp / f"child.{name}").unlink(missing_ok=True)
    else:
        res = _run(command, target, ctx, capfd)
    assert_refused(res, ctx, run, before, key)


# ---------------------------------------------------------------------------- 5. deep nesting
def _deep_list(depth: int) -> list[Any]:
    node: list[Any] = []
    for _ in range(depth):
        node = [node]
    return node


def _save_deep_checkpoint(run: Path, depth: int) -> None:
    """The checkpoint with ``model.hidden`` a list nested ``depth`` deep (pickled with room to recurse)."""
    ckpt_file = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_file, weights_only=True)
    ckpt["ddpm_config"]["model"]["hidden"] = _deep_list(depth)
    old = sys.getrecursionlimit()
    done: list[BaseException | None] = []

    def save() -> None:
        try:
            torch.save(ckpt, ckpt_file)
            done.append(None)
        except BaseException as err:
            done.append(err)

    sys.setrecursionlimit(max(old, 4 * depth + 1000))
    threading.stack_size(512 * 1024 * 1024)
    try:
        worker = threading.Thread(target=save)
        worker.start()
        worker.join()
    finally:
        threading.stack_size(0)
        sys.setrecursionlimit(old)
    assert done == [None], done


DEEP_CASES = [
    pytest.param(
        "safetensors", command, id=f"json-{command}", marks=() if command == "sample" else pytest.mark.slow
    )
    for command in READERS
] + [
    pytest.param(
        "ckpt",
        command,
        id=f"ckpt-{command}",
        marks=() if command in ("sample", "train") else pytest.mark.slow,
    )
    for command in (*READERS, "train")
]


@pytest.mark.parametrize(("place", "command"), DEEP_CASES)
def test_deeply_nested_config_is_refused(
    place: str, command: str, trained: Trained, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    if place == "safetensors":
        run, target = _place(place, trained, ctx, raw="[" * 100_000 + "]" * 100_000)
    else:
        run, target = _place(place, trained, ctx)
        _save_deep_checkpoint(run, 20_000)
    before = _snapshot(run)
    res = _run(command, target, ctx, capfd)
    assert_refused(res, ctx, run, before, None)


# ---------------------------------------------------------------------------- --pretrained
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny diffusers DDPM pipeline folder (8x8 RGB, random weights), made with diffusers itself."""
    diffusers = pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("pipeline") / "ddpm-tiny"
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=[32, 32],
        layers_per_block=1,
        down_block_types=["DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D"],
        attention_head_dim=None,
        act_fn="silu",
        center_input_sample=False,
        downsample_padding=0,
        flip_sin_to_cos=False,
        freq_shift=1,
        mid_block_scale_factor=1,
        norm_eps=1e-6,
        norm_num_groups=32,
        time_embedding_type="positional",
    )  # fmt: skip  (google/ddpm-cifar10-32's layout, narrower)
    unet.save_pretrained(folder / "unet")
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=20, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
        variance_type="fixed_large", clip_sample=True,
    )  # fmt: skip
    scheduler.save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    return folder


def _inline_payload(ctx: Ctx) -> str:
    return "${oc.create:'{_target_: numpy.savetxt, fname: " + str(ctx.marker) + ', X: [pwned], fmt: "%s"}\'}'


#: hostile values in a diffusers folder's configs: name -> (file, key, value maker)
PRETRAINED_ROUTES: dict[str, tuple[str, str, Callable[[Ctx], Any]]] = {
    "unet_sample_size_env": ("unet", "sample_size", lambda c: "${oc.env:" + SECRET_ENV + "}"),
    "unet_in_channels_create": ("unet", "in_channels", _inline_payload),
    "unet_widths_env": ("unet", "block_out_channels", lambda c: ["${oc.env:" + SECRET_ENV + "}", 32]),
    "unet_layers_text": ("unet", "layers_per_block", lambda c: "two"),
    "unet_norm_eps_text": ("unet", "norm_eps", lambda c: "tiny"),
    "unet_dropout_create": ("unet", "dropout", _inline_payload),
    "unet_groups_list": ("unet", "norm_num_groups", lambda c: [8]),
    "unet_act_fn_env": ("unet", "act_fn", lambda c: "${oc.env:" + SECRET_ENV + "}"),
    "scheduler_T_env": ("scheduler", "num_train_timesteps", lambda c: "${oc.env:" + SECRET_ENV + "}"),
    "scheduler_beta_start_text": ("scheduler", "beta_start", lambda c: "small"),
    "scheduler_beta_end_create": ("scheduler", "beta_end", _inline_payload),
    "scheduler_clip_range_text": ("scheduler", "clip_sample_range", lambda c: "wide"),
    "scheduler_schedule_env": ("scheduler", "beta_schedule", lambda c: "${oc.env:" + SECRET_ENV + "}"),
    "scheduler_prediction_create": ("scheduler", "prediction_type", _inline_payload),
}

PRETRAINED_COMMANDS = {
    "sample": lambda folder, ctx: sample_main(
        ["--pretrained", str(folder), "--n", "4", "--out", str(ctx.tmp / "o" / "s.npz")]
    ),
    "eval": lambda folder, ctx: eval_main(
        [
            "--pretrained",
            str(folder),
            "--n",
            "4",
            "--repeats",
            "1",
            "--no-wandb",
            "--out",
            str(ctx.tmp / "o" / "e.json"),
        ]
    ),
}
PRETRAINED_OUTPUTS = {"sample": "s.npz", "eval": "e.json"}


def _pretrained_copy(pipeline: Path, ctx: Ctx) -> Path:
    return _copy(pipeline, ctx.tmp / "pipeline")


PRETRAINED_CASES = [
    pytest.param(
        route, command, id=f"{route}-{command}", marks=() if command == "sample" else pytest.mark.slow
    )
    for route in PRETRAINED_ROUTES
    for command in sorted(PRETRAINED_COMMANDS)
]


@pytest.mark.parametrize(("route", "command"), PRETRAINED_CASES)
def test_hostile_diffusers_config_is_refused(
    route: str, command: str, pipeline: Path, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    where, key, value = PRETRAINED_ROUTES[route]
    folder = _pretrained_copy(pipeline, ctx)
    path = folder / where / ("config.json" if where == "unet" else "scheduler_config.json")
    config = json.loads(path.read_text())
    config[key] = value(ctx)
    path.write_text(json.dumps(config))
    before = _snapshot(folder)
    capfd.readouterr()
    start = time.perf_counter()
    code, tb = _call(lambda: PRETRAINED_COMMANDS[command](folder, ctx))
    captured = capfd.readouterr()
    res = Result(code, captured.out, captured.err + tb, time.perf_counter() - start)
    assert_refused(res, ctx, folder, before, key)
    assert not (ctx.tmp / "o").exists()


@pytest.mark.parametrize("command", sorted(PRETRAINED_COMMANDS))
def test_a_clean_diffusers_folder_works(
    command: str, pipeline: Path, ctx: Ctx, capfd: pytest.CaptureFixture[str]
) -> None:
    """The control: the untouched folder samples and evaluates with these arguments, so the refusals above
    are the hostile values'."""
    folder = _pretrained_copy(pipeline, ctx)
    capfd.readouterr()
    code, tb = _call(lambda: PRETRAINED_COMMANDS[command](folder, ctx))
    captured = capfd.readouterr()
    assert_ran_clean(Result(code, captured.out, captured.err + tb, 0.0), ctx)
    assert (ctx.tmp / "o" / PRETRAINED_OUTPUTS[command]).is_file()


# ---------------------------------------------------------------------------- the harness itself
def test_the_harness_sees_each_effect(trained: Trained, ctx: Ctx) -> None:
    """The listener counts a connection, the scan finds the secret in a checkpoint, the snapshot sees a new
    file: a case that passes does so because nothing happened, not because nothing was looked at."""
    import urllib.error
    import urllib.request

    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(ctx.listener.url + "/", timeout=5)
    deadline = time.monotonic() + 5
    while ctx.listener.connections == ctx.connections_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ctx.listener.connections - ctx.connections_before == 1
    ctx.connections_before = ctx.listener.connections

    run = _copy(trained.run, ctx.tmp / "run")
    before = _snapshot(run)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["ddpm_config"]["notes"] = os.environ[SECRET_ENV]
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    assert _files_holding(ctx.tmp, ctx.secret) == ["run/checkpoints/last.ckpt"]
    import numpy as np

    np.savez_compressed(run / "s.npz", x=np.frombuffer(ctx.secret.encode() * 50, dtype=np.uint8))
    assert "run/s.npz" in _files_holding(ctx.tmp, ctx.secret)  # inside a compressed member, too
    assert "new: ['s.npz']" in _changes(before, _snapshot(run))
    assert "changed: ['checkpoints/last.ckpt']" in _changes(before, _snapshot(run))
    (run / "s.npz").unlink()
    (run / "checkpoints" / "last.ckpt").unlink()

    # the forked child reports its exit code and output, and is killed at its deadline
    res = _run_in_child("sample", ctx.tmp / "no-such-run", ctx)
    assert res.code == 2 and res.err.startswith("error: "), res
    ctx.marker.write_text("x")
    assert _effects(res, ctx) == [f"a gadget ran: {ctx.marker.name} was written"]
    ctx.marker.unlink()
