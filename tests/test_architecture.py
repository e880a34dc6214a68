"""The layering of docs/architecture.md: every module has a layer, and no import goes up a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: docs/architecture.md's layers, by module (a package's name covers its modules)
LAYERS = {
    # 0. the math: plain PyTorch
    "ddpm.schedules": 0,
    "ddpm.process": 0,
    "ddpm.parameterization": 0,
    "ddpm.diffusion": 0,
    "ddpm.edm": 0,
    "ddpm.flow": 0,
    "ddpm.losses": 0,
    "ddpm.distillation": 0,
    "ddpm.timestep_sampling": 0,
    "ddpm.samplers": 0,
    "ddpm.models": 0,
    "ddpm.oracle": 0,
    "ddpm.optim": 0,
    "ddpm.metrics": 0,
    "ddpm.likelihood": 0,
    "ddpm.sampling_model": 0,
    "ddpm.ema": 0,
    # 1. plain support: data on disk, evaluation, configs, files, figures; no Lightning
    "ddpm.data.image_sets": 1,
    "ddpm.data.toy": 1,
    "ddpm.data.images": 1,
    "ddpm.data.kinds": 1,
    "ddpm.data.image_folder": 1,
    "ddpm.evaluation": 1,
    "ddpm.config": 1,
    "ddpm.resolvers": 1,
    "ddpm.safe_loading": 1,
    "ddpm.memory": 1,
    "ddpm.network_size": 1,
    "ddpm.stored_config": 1,
    "ddpm.safe_writes": 1,
    "ddpm.sampler_overrides": 1,
    "ddpm.resume": 1,
    "ddpm.run_folder": 1,
    "ddpm.timings": 1,
    "ddpm.ema_snapshots": 1,
    "ddpm.viz": 1,
    # 2. Lightning
    "ddpm.lit_module": 2,
    "ddpm.data.datamodules": 2,
    "ddpm.data": 2,  # the package: its lazy exports include the DataModules
    "ddpm.callbacks": 2,
    "ddpm.checkpointing": 2,
    "ddpm.sweeps": 2,
    "ddpm.cluster": 2,  # a Hydra launcher: submitit and SLURM, beside the sweeps it runs
    # 3. assembly
    "ddpm.build": 3,
    "ddpm.reflow": 3,
    "ddpm.distill": 3,
    "ddpm.registry": 3,
    "ddpm.results": 3,
    "ddpm.interop": 3,
    # 4. commands
    "ddpm.cli": 4,
    "ddpm": 4,  # the package's lazy exports
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    while module:
        if module in LAYERS:
            return LAYERS[module]
        module = module.rpartition(".")[0]
    return None


def _ddpm_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``ddpm`` import in a file, inside functions and TYPE_CHECKING blocks too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ddpm"]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "ddpm"
        ):
            # `from ddpm import viz` imports the module ddpm.viz; `from ddpm.x import name` the module ddpm.x
            names = (
                [f"{node.module}.{a.name}" for a in node.names] if node.module == "ddpm" else [node.module]
            )
            found += [(node.lineno, name) for name in names]
    return found


MODULES = sorted(SRC.joinpath("ddpm").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_every_module_has_a_layer_and_imports_only_downwards(path: Path) -> None:
    name = _module_name(path)
    layer = _layer(name)
    assert layer is not None, f"{name} has no layer: add it to LAYERS here and to docs/architecture.md"
    upward = [
        f"line {line}: {imported} (layer {_layer(imported)})"
        for line, imported in _ddpm_imports(path)
        if (_layer(imported) or 0) > layer
    ]
    assert not upward, f"{name} (layer {layer}) imports upwards: " + "; ".join(upward)


def test_the_architecture_document_names_every_layered_module() -> None:
    text = (SRC.parents[0] / "docs" / "architecture.md").read_text()
    names = [m.removeprefix("ddpm.").replace(".", "/") for m in LAYERS if m != "ddpm"]
    missing = [n for n in names if f"`{n}`" not in text and f"`{n}/`" not in text]
    assert not missing, f"docs/architecture.md does not name {missing}"


#: import circles that exist today and what removes them; any other circle fails the test below (none are
#: left: the loss moved out of the diffusion class into ddpm.losses, which likelihood imports)
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _circles(graph: dict[str, list[str]]) -> list[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, []))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(frozenset(group))
    return found


def _import_graph() -> dict[str, list[str]]:
    """Each module's ddpm imports (inside functions and TYPE_CHECKING blocks too), as module names."""
    names = {_module_name(p): p for p in MODULES}

    def module_of(name: str) -> str:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name

    return {
        name: sorted({module_of(imported) for _, imported in _ddpm_imports(path)} - {name, ""})
        for name, path in names.items()
    }


def test_the_circle_finder_finds_a_circle_and_only_circles() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["d"]}
    assert _circles(graph) == [frozenset({"a", "b", "c"})]


def test_no_module_imports_itself_round_a_circle() -> None:
    circles = set(_circles(_import_graph()))
    new = [sorted(c) for c in circles - KNOWN_CIRCLES]
    assert not new, f"import circles: {new}; one module must stop importing the other"
    gone = [sorted(c) for c in KNOWN_CIRCLES - circles]
    assert not gone, f"{gone} is no longer a circle: remove it from KNOWN_CIRCLES"
