"""A resumed run is the same run: its config comes from its checkpoint, not from today's defaults.

``ddpm-train ckpt_path=RUN`` (or ``last`` / ``auto``) continues the run stored in the checkpoint: the
network, the diffusion, the data, the optimizer and everything else it was trained with. The command line
may change only what is safe to change mid-run, :data:`SAFE_ON_RESUME`: how long and on what it trains
(``trainer.*``, ``precision``), logging, callbacks (not the EMA, whose average *is* the result), the
sampler used for samples, checkpoint and output settings. An override of anything else to a value other
than the stored one is refused, naming the key and both values. Today's defaults never leak in: a key
the command line did not set keeps the stored value.

Keys whose value today is derived from where the run lives (``${paths.*}``, ``${hydra:...}``: the run
folder, the data folder) take today's value, so a run folder that was moved or copied writes into its new
place, not the old one. Plain OmegaConf: no torch, no Lightning.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from ddpm.config import CONF_DIR, ConfigError

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


@functools.cache
def _config_groups(conf_dir: Path) -> tuple[str, ...]:
    """The dotted package of every config group folder (``data``, ``callbacks.samples``, ...)."""
    return tuple(str(d.relative_to(conf_dir)).replace("/", ".") for d in conf_dir.rglob("*") if d.is_dir())


def _same_option(key: str, today_raw: Mapping[str, Any], stored_flat: Mapping[str, Any]) -> bool:
    """Whether the config group holding ``key`` is the same option today as in the run.

    An option is told by its ``_target_`` and its names (the string settings both sides have, such as
    ``dataset: checkerboard``); numbers may differ (a default that changed). A key outside any group
    (a top-level key newer than the run) counts as the same.
    """
    group = max((g for g in _config_groups(CONF_DIR) if key.startswith(g + ".")), key=len, default=None)
    if group is None:
        return True
    for name, raw in today_raw.items():
        if not name.startswith(group + ".") or name not in stored_flat:
            continue
        if isinstance(raw, str) and "${" not in raw and raw != stored_flat[name]:
            return False
    return True


def _is_location(raw: Any) -> bool:
    return isinstance(raw, str) and ("${paths." in raw or "${hydra:" in raw)


def _node(cfg: DictConfig, key: str) -> Any:
    """The value at ``key`` as plain data (a whole node where the other side has a leaf), or absent."""
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def _show(value: Any) -> str:
    return "(not set)" if value is _ABSENT else repr(value)


def merge_for_resume(today: DictConfig, stored: Mapping[str, Any], typed: list[str]) -> DictConfig:
    """The config a resumed run trains with.

    Args:
        today: the config composed from today's defaults and the command line.
        stored: the resolved config stored in the checkpoint.
        typed: the keys the command line set (:func:`override_keys`).

    Returns:
        The stored config, with today's location keys and the safe keys the command line set.

    Raises:
        ConfigError: the command line changes a key that must not change on resume, naming the key, the
            stored value and the new one.
    """
    today_raw = dict(_leaves(OmegaConf.to_container(today, resolve=False)))
    stored_flat = dict(_leaves(dict(stored)))
    merged = OmegaConf.create(dict(stored))
    assert isinstance(merged, DictConfig)
    for key, raw in today_raw.items():
        if not (_is_location(raw) or _under(key, typed) or key not in stored_flat):
            continue  # the run's own value
        newer = key not in stored_flat and not _under(key, typed)
        if newer and not _same_option(key, today_raw, stored_flat):
            continue  # a key of today's default option (data=moons' noise) where the run has another
        above = _stored_leaf_above(key, stored_flat)
        if above is None:
            OmegaConf.update(merged, key, raw, merge=False, force_add=True)
        elif _under(key, typed):  # e.g. lr_scheduler=warmup where the run had none: today's whole node
            node = OmegaConf.select(today, above)
            value = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
            OmegaConf.update(merged, above, value, merge=False, force_add=True)
    for key in stored_flat:  # nodes the command line removed (~callbacks.samples): drop them whole
        if key in today_raw or not _under(key, typed):
            continue
        parts = key.split(".")
        prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
        top = next((p for p in prefixes if OmegaConf.select(today, p, default=_ABSENT) is _ABSENT), None)
        if top is None:
            continue  # today holds a node there (a group that had none): replaced above, not removed
        parent, _, name = top.rpartition(".")
        node = OmegaConf.select(merged, parent) if parent else merged
        if isinstance(node, DictConfig) and name in node:
            del node[name]
    # Compare resolved values: schedule.T is ${T}, so `schedule=linear` on a T=100 run means
    # T=100 there, as the merged config resolves it.
    resolved = dict(_leaves(OmegaConf.to_container(merged, resolve=True)))
    # a value that changed is named before one that appeared or vanished (schedule=cosine: its name first)
    keys = sorted(
        (k for k in resolved.keys() | stored_flat.keys() if _under(k, typed)),
        key=lambda k: (k not in resolved or k not in stored_flat, k),
    )
    for key in keys:
        if is_safe_on_resume(key) or _is_location(today_raw.get(key)):
            continue
        new, old = resolved.get(key, _ABSENT), stored_flat.get(key, _ABSENT)
        if new != old:
            new, old = _node(merged, key), _node(OmegaConf.create(dict(stored)), key)
            raise ConfigError(
                f"{key}={_show(new)} cannot change when resuming: the run was trained with "
                f"{key}={_show(old)}; drop the override, or start a new run without ckpt_path"
            )
    return merged


def _stored_leaf_above(key: str, stored_flat: Mapping[str, Any]) -> str | None:
    """The key above ``key`` that the stored config holds as one leaf (a null group, a list), if any."""
    parts = key.split(".")
    return next(
        (".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in stored_flat), None
    )
