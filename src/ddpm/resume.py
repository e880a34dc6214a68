"""A resumed run is the same run: its identity comes from its checkpoint; the machine is today's.

``ddpm-train ckpt_path=RUN`` (or ``last`` / ``auto``) continues the run stored in the checkpoint. What the
run supplies is only its identity (:class:`ddpm.stored_config.RunIdentity`, checked by
:mod:`ddpm.registry`): the network, the schedule, the diffusion, the sampler, the data, the optimizer and
its LR schedule, T, the seed, the EMA's decay and the trainer's recipe numbers (steps, clipping, precision,
intervals), and which of ddpm-lab's logger and callback options it had. Everything that acts on the machine
comes from today's ``conf/`` and command line: the loggers' and callbacks' settings (their folders, names,
W&B's mode), the paths, the devices and strategy, the launcher. A run trained with ``logger=csv`` resumes
with CSV; a logger or callback stored in the run that is not one of ddpm-lab's options is never built.

The command line may change only what is safe mid-run, :data:`SAFE_ON_RESUME`; an override of the identity
to another value is refused, naming the key and both values. Plain OmegaConf: no torch, no Lightning.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ddpm.config import CONF_DIR, ConfigError
from ddpm.stored_config import DATA_MACHINE_KEYS, GROUPS, POWER_EMA, RunIdentity

__all__ = ["SAFE_ON_RESUME", "is_safe_on_resume", "merge_for_resume", "override_keys"]

#: keys (and key prefixes ending in ".") that an override may change when a run resumes
SAFE_ON_RESUME = (
    "trainer.",
    "logger",
    "callbacks.",
    "sampler.",
    "sampler",
    "module.compile",
    "module.channels_last",
    "data.num_workers",
    "data.pin_memory",
    "data.on_device",
    "data.download",
    "checkpoint_every_n_steps",
    "final_samples",
    "reverse_gif",
    "print_config",
    "max_nonfinite_skips",
    "ckpt_path",
    "optimized_metric",
    "task_name",
    "paths.",
)
#: ...except these: the EMA's decay defines the averaged weights the run produces
UNSAFE_ON_RESUME = ("callbacks.ema.",)

_ABSENT = object()


def is_safe_on_resume(key: str) -> bool:
    """Whether an override of ``key`` (dotted) may differ from the checkpoint's value on resume."""
    if any(key == p.rstrip(".") or key.startswith(p) for p in UNSAFE_ON_RESUME):
        return False
    return any(
        key.startswith(p) if p.endswith(".") else key == p or key.startswith(p + ".") for p in SAFE_ON_RESUME
    )


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; lists and empty mappings are leaves."""
    if isinstance(node, Mapping) and node:
        for name, value in node.items():
            yield from _leaves(value, f"{prefix}.{name}" if prefix else str(name))
    else:
        yield prefix, node


def _package_keys(conf_dir: Path, group: str, option: str) -> list[str]:
    """The config keys a ``group=option`` override sets: the group's package, or (for a ``_global_``
    option such as an experiment) the keys its file sets and the packages of the groups it overrides."""
    path = conf_dir / group / f"{option}.yaml"
    if option in ("null", "none") or not path.is_file():
        return [group.replace("/", ".")]
    text = path.read_text()
    header = re.search(r"^#\s*@package\s+(\S+)", text, flags=re.MULTILINE)
    package = header.group(1) if header else group.replace("/", ".")
    if package != "_global_":
        return [package]
    body = yaml.safe_load(text) or {}
    keys = [key for key, _ in _leaves({k: v for k, v in body.items() if k != "defaults"})]
    for entry in body.get("defaults") or []:
        if isinstance(entry, dict):
            for name, choice in entry.items():
                sub = str(name).removeprefix("override ").strip().lstrip("/")
                if sub != "_self_" and choice is not None:
                    keys += _package_keys(conf_dir, sub, str(choice))
    return keys


def override_keys(overrides: list[str], conf_dir: Path) -> list[str]:
    """The config keys (each standing for itself and every key under it) that command-line overrides set.

    ``trainer.max_steps=10`` sets ``trainer.max_steps``; ``schedule=cosine`` sets ``schedule``;
    ``precision=bf16-mixed`` sets ``trainer`` (its package); ``experiment=x`` sets what its file sets.
    """
    keys: list[str] = []
    for item in overrides:
        key, _, value = str(item).partition("=")
        key = key.lstrip("+~").split("@", 1)[0]
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if (conf_dir / key).is_dir():
            keys += _package_keys(conf_dir, key, value)
        else:
            keys.append(key)
    return keys


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _touches(key: str, typed: list[str]) -> bool:
    """Whether the command line set ``key``, something under it, or a node above it."""
    return any(t == key or t.startswith(key + ".") or key.startswith(t + ".") for t in typed)


def _node(cfg: Any, key: str) -> Any:
    """The value at ``key`` as plain data (resolved), or absent."""
    value = OmegaConf.select(cfg, key, default=_ABSENT) if isinstance(cfg, DictConfig) else _ABSENT
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _show(value: Any) -> str:
    return "(not set)" if value is _ABSENT else repr(value)


def _today_option(path: Path, name: str | None = None) -> Any:
    """A node of today's ``conf/`` (the user's own files, with their interpolations): a logger or callback
    option's settings."""
    node = OmegaConf.load(path)
    if name is None:
        return node
    assert isinstance(node, DictConfig), path  # conf/'s option files are mappings
    return node.get(name)


def _refuse_changes(today: DictConfig, run: Mapping[str, Any], typed: list[str]) -> None:
    """Refuse a command-line value that differs from the run's for a key that defines the run.

    Today's values are resolved with the run's own top-level values in place: ``schedule=linear`` on a
    T=100 run means T=100 there (``schedule.T: ${T}``), as the merged config resolves it.
    """
    probe = copy.deepcopy(today)
    OmegaConf.set_struct(probe, False)
    for key, value in run.items():
        if key == "trainer":
            for name, number in value.items():
                if not _touches(f"trainer.{name}", typed):
                    _set(probe, f"trainer.{name}", number)
        elif key not in GROUPS and key != "callbacks" and not _touches(key, typed):
            _set(probe, key, value)
    today_leaves = dict(_leaves(OmegaConf.to_container(probe, resolve=True)))
    run_leaves = dict(_leaves(dict(run)))
    keys = sorted(
        (k for k in today_leaves.keys() | run_leaves.keys() if _under(k, typed) and k.split(".")[0] in run),
        key=lambda k: (k not in today_leaves or k not in run_leaves, k),  # a changed value is named first
    )
    for key in keys:
        if is_safe_on_resume(key) or (key.startswith("data.") and key.split(".")[1] in DATA_MACHINE_KEYS):
            continue
        new, old = today_leaves.get(key, _ABSENT), run_leaves.get(key, _ABSENT)
        if new is _ABSENT and key.startswith("data."):
            continue  # a key today's option does not have: the class's default, as stored
        if new in (None, {}) and old in (None, {}):
            continue  # an empty option (lr_scheduler=none) is stored as null: the same run
        if new != old:
            new, old = _node(today, key), _node(OmegaConf.create(dict(run)), key)
            raise ConfigError(
                f"{key}={_show(new)} cannot change when resuming: the run was trained with "
                f"{key}={_show(old)}; drop the override, or start a new run without ckpt_path"
            )


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def _delete(cfg: DictConfig, key: str) -> None:
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig) and name in node:
        del node[name]


def _apply_typed(merged: DictConfig, today: DictConfig, typed: list[str], prefix: str) -> None:
    """What the command line set under ``prefix`` (``logger``, ``callbacks``), as today's config has it."""
    for key in typed:
        if not _under(key, [prefix]) or key == prefix:
            continue
        value = OmegaConf.select(today, key, default=_ABSENT)
        if value is _ABSENT:
            _delete(merged, key)  # ~callbacks.samples
        else:
            node = OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else value
            _set(merged, key, node)


def _loggers(
    merged: DictConfig, today: DictConfig, run: RunIdentity, typed: list[str], conf_dir: Path
) -> None:
    if "logger" in typed:
        return  # logger=...: today's choice, as composed
    nodes = {name: _today_option(conf_dir / "logger" / f"{name}.yaml", name) for name in run.loggers}
    _set(merged, "logger", {k: OmegaConf.to_container(v, resolve=False) for k, v in nodes.items()} or None)
    _apply_typed(merged, today, typed, "logger")


def _callbacks(
    merged: DictConfig, today: DictConfig, run: RunIdentity, typed: list[str], conf_dir: Path
) -> None:
    if "callbacks" in typed:
        return  # callbacks=...: today's choice, as composed
    nodes: dict[str, Any] = {}
    for name, numbers in run.callbacks.items():
        if name == "samples":
            if run.samples is None or "callbacks.samples" in typed:
                continue
            node = _today_option(conf_dir / "callbacks" / "samples" / f"{run.samples}.yaml")
        elif name == "ema":  # callbacks/ema=default or =power, as the run's identity names it
            power = run.config.get("callbacks", {}).get("ema", {}).get("_target_") == POWER_EMA
            node = _today_option(conf_dir / "callbacks" / "ema" / ("power.yaml" if power else "default.yaml"))
        else:
            node = _today_option(conf_dir / "callbacks" / f"{name}.yaml", name)
        if not isinstance(node, DictConfig):
            continue
        plain = cast(dict[str, Any], OmegaConf.to_container(node, resolve=False))  # a DictConfig's: a dict
        for key, value in numbers.items():  # the run's numbers and switches for the settings today has
            current = plain.get(key, _ABSENT)
            if current is None or (isinstance(current, bool | int | float) and not isinstance(current, str)):
                plain[key] = value
        nodes[name] = plain
    if "ema" in nodes and "callbacks" in run.config:
        nodes["ema"].update(run.config["callbacks"]["ema"])
    _set(merged, "callbacks", nodes or None)
    _apply_typed(merged, today, typed, "callbacks")
    if "callbacks.samples" in typed:
        value = OmegaConf.select(today, "callbacks.samples", default=_ABSENT)
        if value is _ABSENT:
            _delete(merged, "callbacks.samples")
        else:
            _set(
                merged,
                "callbacks.samples",
                OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else value,
            )


def _data_node(stored: Mapping[str, Any], today: DictConfig, typed: list[str]) -> dict[str, Any]:
    """The run's data node with today's machine settings: where the data is (``paths.data_dir``), the
    loader's workers and pinning, the cache folder; never a download the command line did not ask for."""
    node = dict(stored)
    current = _node(today, "data")
    if isinstance(current, dict) and (current.get("_target_"), current.get("dataset")) == (
        stored.get("_target_"),
        stored.get("dataset"),
    ):
        node.update({k: current[k] for k in DATA_MACHINE_KEYS if k in current and k != "download"})
    data_dir = _node(today, "paths.data_dir")
    if "data_dir" in node and isinstance(data_dir, str):
        node["data_dir"] = data_dir  # a moved project reads its data where it is now
    for key in DATA_MACHINE_KEYS:
        value = _node(today, f"data.{key}")
        if _touches(f"data.{key}", typed) and value is not _ABSENT:
            node[key] = value
    return node


def merge_for_resume(
    today: DictConfig, run: RunIdentity, typed: list[str], conf_dir: Path = CONF_DIR
) -> DictConfig:
    """The config a resumed run trains with.

    Args:
        today: the config composed from today's ``conf/`` and the command line.
        run: the stored run's identity (:func:`ddpm.stored_config.run_identity`, checked by
            :func:`ddpm.registry.checked_identity`).
        typed: the keys the command line set (:func:`override_keys`).
        conf_dir: where today's logger and callback options are read.

    Returns:
        Today's config with the run's identity in place (each group node whole, as stored), the run's
        logger and callback options with today's settings, and what the command line set where it may.

    Raises:
        ConfigError: the command line changes a key that must not change on resume, naming the key, the
            stored value and the new one.
    """
    identity = run.config
    _refuse_changes(today, identity, typed)
    merged = copy.deepcopy(today)
    OmegaConf.set_struct(merged, False)
    with open_dict(merged):
        for key, value in identity.items():
            if key == "trainer":
                for name, number in value.items():
                    if not _touches(f"trainer.{name}", typed):
                        _set(merged, f"trainer.{name}", number)
            elif key == "callbacks":
                continue  # the EMA's decay: with the callbacks below
            elif key == "sampler":
                if "sampler" in typed:
                    continue  # sampler=<option>: today's, as the command line set it
                _set(merged, "sampler", value)
                for typed_key in typed:  # sampler.steps=...: the run's sampler with that value
                    value = _node(today, typed_key)
                    if typed_key.startswith("sampler.") and value is not _ABSENT:
                        _set(merged, typed_key, value)
            elif key == "data":
                _set(merged, "data", _data_node(value, today, typed))
            elif is_safe_on_resume(key) and _touches(key, typed):
                continue  # final_samples=..., checkpoint_every_n_steps=...: today's
            else:
                _set(merged, key, value)
        _loggers(merged, today, run, typed, conf_dir)
        _callbacks(merged, today, run, typed, conf_dir)
    return merged
