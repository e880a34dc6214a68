"""A stored run config is data: read as plain values, never resolved, never built as it is named.

A run folder, a checkpoint, a ``ddpm-export`` safetensors file and a diffusers folder each carry a config
that someone else may have written. Everything here treats it as plain data:

* **Reading.** YAML with a safe loader that refuses every tag (``!!python/object``, ``!!binary``, custom
  ones) and every anchor or alias (no "billion laughs"), JSON with its nesting bounded, and any file only
  when it is a regular file of at most :data:`MAX_BYTES`. The result must be a tree of dicts with string
  keys, lists, strings, numbers, booleans and None, at most :data:`MAX_DEPTH` deep and :data:`MAX_NODES`
  large (:func:`check_plain`); anything else is refused in one line.
* **No interpolation.** No OmegaConf resolver is ever evaluated on stored text (``oc.create``, ``oc.env``,
  ``oc.decode``, ``oc.select``, ddpm-lab's own): a ``${...}`` is an error, never resolved. ddpm-lab stores
  its configs resolved; a run written by an earlier version may hold plain references between keys
  (``T: ${T}``, ``seed: ${seed}``), which :func:`substitute_references` replaces by following key paths in
  the same tree (nothing else).
* **Identity only.** :func:`run_identity` keeps only what defines the trained model (:data:`GROUPS`, the
  top-level :data:`SCALARS`, the trainer's :data:`TRAINER_RECIPE` numbers, the EMA's decay) and the names of
  the run's logger and callback options (:class:`RunIdentity`): what acts on the machine (callbacks'
  folders, loggers and their modes, paths, launchers, devices) is never read from disk. The registry
  (:mod:`ddpm.registry`) then checks each group against the typed signature of the class it names and
  builds it; no ``_target_`` from disk ever reaches Hydra's ``instantiate``.

Plain Python and PyYAML: no torch, no OmegaConf.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ddpm.config import LEARNED_VARIANCES, MODULE_KEYS, ConfigError, first_line

__all__ = [
    "GROUPS",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "SCALARS",
    "TRAINER_RECIPE",
    "RunIdentity",
    "StoredConfigError",
    "check_plain",
    "load_yaml",
    "read_json",
    "read_wandb_id",
    "read_yaml",
    "require_regular_file",
    "run_identity",
    "substitute_references",
    "upgrade_layout",
]

#: the largest stored config read (a run's config is a few KB)
MAX_BYTES = 4 * 1024 * 1024
#: the deepest nesting of dicts and lists in a stored config (ddpm-lab's own are 4 deep)
MAX_DEPTH = 32
#: the most values in a stored config (ddpm-lab's own hold a few hundred)
MAX_NODES = 100_000
#: the longest string kept from a stored config (a path)
MAX_STRING = 4096

#: the config groups that define a trained model: each names one of the registry's classes
GROUPS = (
    "model",
    "schedule",
    "diffusion",
    "loss",
    "timestep_sampler",
    "sampler",
    "data",
    "optimizer",
    "lr_scheduler",
)
#: top-level values that define the run (or how it finishes), with the types they may have
SCALARS: dict[str, tuple[type, ...]] = {
    "T": (int,),
    "seed": (int,),
    "conditional": (bool,),
    "final_samples": (int,),
    "checkpoint_every_n_steps": (int, str, type(None)),
    "reverse_gif": (bool,),
    "max_nonfinite_skips": (int,),
}
#: ``trainer`` values that are the training recipe, not the machine (devices, strategy, folders)
TRAINER_RECIPE: dict[str, tuple[type, ...]] = {
    "max_steps": (int,),
    "max_epochs": (int, type(None)),
    "gradient_clip_val": (int, float, type(None)),
    "gradient_clip_algorithm": (str, type(None)),
    "accumulate_grad_batches": (int,),
    "precision": (str, int),
    "val_check_interval": (int, float, type(None)),
    "check_val_every_n_epoch": (int, type(None)),
    "log_every_n_steps": (int,),
}
#: the string values those may take (checked here: they are not a class's arguments)
_CHOICES = {
    "checkpoint_every_n_steps": ("auto",),
    "gradient_clip_algorithm": ("norm", "value"),
    "precision": ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "64"),
}
#: keys of the data node that name a place on this machine or act on it: taken from today's config
DATA_MACHINE_KEYS = ("cache_dir", "download", "num_workers", "pin_memory", "on_device")
#: the options of ``callbacks`` a stored run may switch on (their settings come from today's conf/)
CALLBACK_OPTIONS = (
    "ema",
    "model_checkpoint",
    "last_checkpoint",
    "loss_by_timestep",
    "lr_monitor",
    "progress_bar",
    "samples",
)
#: the ``callbacks/ema=power`` callback (its identity adds the lengths and the snapshot interval, which
#: :func:`ddpm.registry.checked_identity` checks against its signature)
POWER_EMA = "ddpm.callbacks.PowerEMA"
#: the options of ``logger`` a stored run may switch on (their settings, W&B's mode among them, are today's)
LOGGER_OPTIONS = ("csv", "tensorboard", "wandb")
#: which ``callbacks/samples`` option a stored samples callback was (the class name is only looked up)
SAMPLES_OPTIONS = {
    "ddpm.callbacks.SampleQualityCallback": "toy",
    "ddpm.callbacks.ImageSampleCallback": "images",
}


class StoredConfigError(ConfigError):
    """A stored config that is not plain data of ddpm-lab's options; nothing of it was built or run."""


# ----------------------------------------------------------------------------- reading
def require_regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` when it is a regular file (following symlinks), before anything opens it.

    A FIFO would block the reader forever, a device could be endless: both are refused.

    Raises:
        ConfigError: missing, or not a regular file, in one line naming it.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as err:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        raise ConfigError(f"{what} {str(p)!r} is {kind}; refused before opening it")
    return p


def _read_text(path: Path, source: str) -> str:
    require_regular_file(path, source)
    if path.stat().st_size > MAX_BYTES:
        raise StoredConfigError(
            f"{source} is {path.stat().st_size} bytes, over the {MAX_BYTES} a config may be"
        )
    try:
        with path.open("rb") as fh:
            return fh.read(MAX_BYTES + 1).decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StoredConfigError(f"{source} cannot be read: {first_line(err)}") from None


def read_yaml(path: str | os.PathLike[str], source: str | None = None) -> dict[str, Any]:
    """A stored YAML config (a mapping) as plain data: see :func:`load_yaml`.

    Raises:
        StoredConfigError: in one line naming the file and what is wrong.
    """
    where = source or str(Path(path))
    data = load_yaml(path, where)
    if not isinstance(data, dict):
        raise StoredConfigError(f"{where} is not a run config (a {type(data).__name__}, not a mapping)")
    return data


def load_yaml(path: str | os.PathLike[str], source: str | None = None) -> Any:
    """A YAML file someone else may have written, as plain data (a mapping, a list or a scalar).

    Its events are checked before anything is built from them: an explicit tag (``!!python/object``,
    ``!!binary``, ``!custom``) or an anchor or alias (``&a`` / ``*a``: ddpm-lab never writes them, and
    they make "billion laughs" bombs) is refused; the nesting and size are bounded.

    Raises:
        StoredConfigError: in one line naming the file and what is wrong.
    """
    p = Path(path)
    where = source or str(p)
    text = _read_text(p, where)
    depth = events = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            events += 1
            if events > MAX_NODES:
                raise StoredConfigError(f"{where} holds more than {MAX_NODES} values; refused")
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise StoredConfigError(
                    f"{where} uses a YAML anchor or alias (&/*), which a stored config may not; refused"
                )
            tag = getattr(event, "tag", None)
            if tag is not None and isinstance(event, yaml.NodeEvent):
                raise StoredConfigError(
                    f"{where} uses the YAML tag {tag!r}, which a stored config may not; refused"
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise StoredConfigError(f"{where} is nested more than {MAX_DEPTH} deep; refused")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise StoredConfigError(f"{where} is not valid YAML: {first_line(err)}") from None
    check_plain(data, where)
    return data


def read_json(text: str, source: str) -> dict[str, Any]:
    """A stored JSON config (a safetensors file's metadata) as plain data, its size and nesting bounded.

    Raises:
        StoredConfigError: in one line naming ``source``.
    """
    if len(text) > MAX_BYTES:
        raise StoredConfigError(f"{source} is {len(text)} characters, over the {MAX_BYTES} a config may be")
    depth = deepest = 0
    for ch in text:  # the nesting before parsing: the parser would recurse once per level
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise StoredConfigError(f"{source} is nested more than {MAX_DEPTH} deep; refused")
        elif ch in "]}":
            depth -= 1
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise StoredConfigError(f"{source} is not JSON: {first_line(err)}") from None
    if not isinstance(data, dict):
        raise StoredConfigError(f"{source} is not a run config (a {type(data).__name__}, not a mapping)")
    check_plain(data, source)
    return data


def check_plain(tree: Any, source: str) -> None:
    """Refuse anything but dicts with string keys, lists, strings, numbers, booleans and None, nested at
    most :data:`MAX_DEPTH` deep with at most :data:`MAX_NODES` values (walked without recursion).

    Raises:
        StoredConfigError: naming the key and the type or bound.
    """
    stack: list[tuple[Any, str, int]] = [(tree, "", 0)]
    seen = 0
    while stack:
        node, key, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise StoredConfigError(f"{source} holds more than {MAX_NODES} values; refused")
        if depth > MAX_DEPTH:
            raise StoredConfigError(f"{source} is nested more than {MAX_DEPTH} deep (at {key}); refused")
        if isinstance(node, dict):
            for name, value in node.items():
                if not isinstance(name, str):
                    raise StoredConfigError(
                        f"{source}: key {name!r} under {key or 'the top'} is not a string"
                    )
                stack.append((value, f"{key}.{name}" if key else name, depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((value, f"{key}[{i}]", depth + 1) for i, value in enumerate(node))
        elif not isinstance(node, str | bool | int | float | type(None)):
            raise StoredConfigError(
                f"{source}: {key or 'the config'} is a {type(node).__name__}; a stored config holds only "
                "plain values"
            )


# ----------------------------------------------------------------------------- references
#: where a plain reference in an earlier version's ``.hydra/config.yaml`` may point: ddpm-lab's own keys
#: (``paths`` holds ddpm-lab's own values for today's folders, never the stored ones)
REFERENCE_ROOTS = ("T", "seed", "conditional", "trainer", "data", "model", "diffusion", "schedule", "paths")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def substitute_references(
    node: Any, tree: Mapping[str, Any], key: str, source: str, _seen: tuple = ()
) -> Any:
    """``node`` with plain references between keys (``${T}``, ``${data.data_dim}``) replaced by the values
    they name in ``tree``; any other ``${...}`` (a resolver such as ``${oc.env:X}``, an escaped ``\\${``,
    a nested one) is refused, never resolved.

    Raises:
        StoredConfigError: naming the key, when a string holds anything but plain references, names a key
            that is not there, or refers to itself.
    """
    if isinstance(node, dict):
        return {k: substitute_references(v, tree, f"{key}.{k}", source, _seen) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_references(v, tree, f"{key}[{i}]", source, _seen) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def refuse(why: str) -> StoredConfigError:
        return StoredConfigError(
            f"{key}={node!r} in {source} {why}; a stored config is read as plain values, and only plain "
            "references to other keys (such as ${T}) are followed"
        )

    if _REFERENCE.sub("", node).count("${") or "\\${" in node:
        raise refuse("is an interpolation that is never resolved")
    whole = _REFERENCE.fullmatch(node)
    refs = [whole.group(1)] if whole else _REFERENCE.findall(node)
    values = {}
    for ref in refs:
        if ref in _seen:
            raise refuse(f"refers to itself through ${{{ref}}}")
        root = ref.split(".", 1)[0]
        if root not in REFERENCE_ROOTS:
            raise refuse(
                f"refers to ${{{ref}}}, outside the keys a reference may name ({', '.join(REFERENCE_ROOTS)})"
            )
        try:
            target = _lookup(tree, ref)
        except KeyError:
            raise refuse(f"refers to ${{{ref}}}, which the config does not hold") from None
        if (
            root != "paths"
            and not isinstance(target, bool | int | float | type(None))
            and "${" not in str(target)
        ):
            raise refuse(f"refers to ${{{ref}}}, which is not a number or a switch")
        values[ref] = substitute_references(copy.deepcopy(target), tree, ref, source, (*_seen, ref))
    if whole:
        return values[whole.group(1)]
    if any(isinstance(v, dict | list) for v in values.values()):
        raise refuse("embeds a whole node in a string")
    return _REFERENCE.sub(lambda m: str(values[m.group(1)]), node)


def _refuse_interpolation(node: Any, key: str, source: str) -> None:
    """Refuse any ``${`` in a config ddpm-lab stored resolved: it can only have been put there by hand."""
    stack = [(node, key)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str) and "${" in value:
            raise StoredConfigError(
                f"{where}={value!r} in {source} is an interpolation, which is never resolved: ddpm-lab "
                "stores its configs resolved, so a stored config holds plain values only"
            )


# ----------------------------------------------------------------------------- identity
#: ``diffusion`` keys of the layout before the loss and the timestep sampler were groups of their own, and
#: their names in today's ``loss`` node
_LOSS_KEYS = {
    "loss_weighting": "weighting",
    "min_snr_gamma": "min_snr_gamma",
    "vlb_weight": "vlb_weight",
    "vlb_decoder": "decoder",
    "offset_noise": "offset_noise",
    "cond_drop_prob": "cond_drop_prob",
}
#: which of today's ``loss`` classes takes each key
_LOSS_ARGUMENTS = {
    "SimpleLoss": ("distance", "weighting", "min_snr_gamma", "offset_noise", "cond_drop_prob"),
    "HybridLoss": ("vlb_weight", "decoder", "weighting", "min_snr_gamma", "offset_noise", "cond_drop_prob"),
    "VLBLoss": ("decoder", "offset_noise", "cond_drop_prob"),
}
_TIMESTEP_SAMPLERS = {"uniform": "UniformTimesteps", "loss_second_moment": "LossSecondMomentTimesteps"}


def _split_diffusion(diffusion: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(diffusion, loss, timestep_sampler) nodes from an earlier ``diffusion`` node that held all three."""
    kind = diffusion.get("loss", "mse")
    cls = (
        {"hybrid": "HybridLoss", "vlb": "VLBLoss"}.get(kind, "SimpleLoss") if isinstance(kind, str) else kind
    )
    values = {_LOSS_KEYS[k]: v for k, v in diffusion.items() if k in _LOSS_KEYS}
    if cls == "SimpleLoss":
        values["distance"] = kind
    loss: dict[str, Any] = {"_target_": f"ddpm.losses.{cls}", "_partial_": True}
    # a key the class does not take (an earlier vlb run's loss_weighting: none) was unused there too
    loss.update((k, v) for k, v in values.items() if k in _LOSS_ARGUMENTS.get(str(cls), values))
    sampler = diffusion.get("timestep_sampler", "uniform")
    name = _TIMESTEP_SAMPLERS.get(sampler, sampler) if isinstance(sampler, str) else repr(sampler)
    timestep_sampler = {
        "_target_": f"ddpm.timestep_sampling.{name}",
        "_partial_": True,
    }
    kept = {
        k: v for k, v in diffusion.items() if k not in _LOSS_KEYS and k not in ("loss", "timestep_sampler")
    }
    return kept, loss, timestep_sampler


#: the ``_target_`` of DDPM's chain, the diffusion every stored layout before EDM's had
CHAIN_TARGET = "ddpm.diffusion.GaussianDiffusion"


def upgrade_layout(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run config written by an earlier ddpm-lab, in today's layout (a copy).

    ``diffusion.T`` and ``diffusion.betas`` go (T is stated once, at the root, and the schedule builds the
    betas); ``model.compile`` / ``model.channels_last`` go (they say how today's machine runs the network:
    ``module``, never read from disk); the loss and the timestep sampler, once keys of ``diffusion``
    (``loss: mse``, ``timestep_sampler: uniform``, ``vlb_weight``...), become the ``loss`` and
    ``timestep_sampler`` nodes (a config without them, such as a diffusers folder's, gets L_simple and
    uniform t, conf/'s defaults). Unknown values are carried over as they are, for the registry to refuse.
    """
    out = dict(cfg)
    model, diffusion = out.get("model"), out.get("diffusion")
    if isinstance(model, dict):
        out["model"] = {k: v for k, v in model.items() if k not in MODULE_KEYS}
    if isinstance(diffusion, dict):
        diffusion, loss, timestep_sampler = _split_diffusion(diffusion)
        out.setdefault("loss", loss)
        out.setdefault("timestep_sampler", timestep_sampler)
        # DDPM's chain: a partial that the schedule's betas complete (a continuous process takes none)
        chain = diffusion.get("_target_", CHAIN_TARGET) == CHAIN_TARGET
        out["diffusion"] = {
            **{k: v for k, v in diffusion.items() if k not in ("T", "betas")},
            **({"_partial_": True} if chain else {}),
        }
    return out


@dataclass
class RunIdentity:
    """What a stored run supplies: its identity, and which of ddpm-lab's logger and callback options it had.

    ``config`` is in today's layout and holds only :data:`GROUPS` (each node's ``_target_`` still the text
    that was stored: :mod:`ddpm.registry` checks and builds it), the :data:`SCALARS` present, ``trainer``
    with the :data:`TRAINER_RECIPE` values present and ``callbacks.ema`` (decay, update_starting_at_step)
    when the run had EMA. ``loggers`` names the run's logger options (``csv``, ``wandb``...);
    ``callbacks`` maps each of its callback options to the numbers and booleans it was set with (their
    folders, names and modes are never read). Nothing in it holds a ``${``.
    """

    config: dict[str, Any]
    loggers: tuple[str, ...] = ()
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: str | None = None  # the callbacks/samples option (toy | images), when the run had one


def _scalar(value: Any, types: tuple[type, ...], key: str, source: str) -> Any:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if ok and isinstance(value, str):
        ok = value in _CHOICES.get(key.rsplit(".", 1)[-1], ())
    if ok and isinstance(value, float) and value != value:  # NaN
        ok = False
    if not ok:
        allowed = " or ".join(sorted({t.__name__ for t in types} - {"NoneType", "str"}))
        choices = _CHOICES.get(key.rsplit(".", 1)[-1])
        if choices:
            allowed = f"{allowed} or one of {', '.join(choices)}" if allowed else ", ".join(choices)
        raise StoredConfigError(f"{key}={value!r} in {source} is invalid; it must be {allowed or 'null'}")
    return value


def _numbers(node: Any) -> dict[str, Any]:
    """The top-level numbers and booleans of a callback's stored settings (nothing else is carried)."""
    if not isinstance(node, dict):
        return {}
    return {
        k: v
        for k, v in node.items()
        if isinstance(v, bool | int | float)
        and not (isinstance(v, float) and v != v)
        and not k.startswith("_")
    }


def run_identity(stored: Mapping[str, Any], source: str, references: bool = False) -> RunIdentity:
    """The identity of a stored run config (plain data, already read): see :class:`RunIdentity`.

    ddpm-lab stores its configs resolved (a checkpoint's ``ddpm_config``, an export's metadata): a ``${``
    in their identity is refused. Only with ``references`` (Hydra's ``.hydra/config.yaml``, which holds
    the composition unresolved) are plain references inside the identity followed
    (:func:`substitute_references`). The rest of the stored config is never looked at, so a resolver in a
    path or a logger is inert.

    Raises:
        StoredConfigError: a group is missing or not a mapping, a value has the wrong type, or a string holds
            an interpolation; in one line naming the key.
    """
    check_plain(stored, source)
    tree = upgrade_layout(dict(stored))

    def plain(node: Any, key: str) -> Any:
        if references:
            return substitute_references(node, tree, key, source)
        _refuse_interpolation(node, key, source)
        return node

    config: dict[str, Any] = {}
    for group in GROUPS:
        node = tree.get(group)
        if group == "lr_scheduler" and not node and isinstance(node, dict | type(None)):
            config[group] = None  # lr_scheduler=none: null, or an empty node
            continue
        if not isinstance(node, dict):
            shown = repr(node) if len(repr(node)) <= 80 else repr(node)[:77] + "..."
            raise StoredConfigError(
                f"{group} in {source} is {shown}; a run config names its {group} as a mapping"
            )
        node = dict(node)
        if references and group == "model" and isinstance(node.get("out_mult"), str):
            # an earlier .hydra/config.yaml: ${ddpm.out_mult:...}, derived again from diffusion.variance
            variance = (tree.get("diffusion") or {}).get("variance", "fixed_large")
            node["out_mult"] = 2 if variance in LEARNED_VARIANCES else 1
        if group == "data":
            for key in DATA_MACHINE_KEYS:
                node.pop(key, None)
        config[group] = plain(node, group)
    for key, types in SCALARS.items():
        if key in tree:
            value = plain(tree[key], key)
            config[key] = _scalar(value, types, key, source)
    for key in ("T", "seed"):
        if key not in config:
            raise StoredConfigError(f"{source} holds no {key}; it is not a ddpm-lab run config")
    trainer = tree.get("trainer")
    if isinstance(trainer, dict):
        config["trainer"] = {
            key: _scalar(
                plain(trainer[key], f"trainer.{key}"),
                types,
                f"trainer.{key}",
                source,
            )
            for key, types in TRAINER_RECIPE.items()
            if key in trainer
        }
    callbacks_node = tree.get("callbacks")
    callbacks: dict[str, Any] = callbacks_node if isinstance(callbacks_node, dict) else {}
    options: dict[str, dict[str, Any]] = {}
    samples = None
    for name in CALLBACK_OPTIONS:
        node = callbacks.get(name)
        if not isinstance(node, dict):
            continue
        if name == "samples":
            samples = SAMPLES_OPTIONS.get(str(node.get("_target_")))
            if samples is None:
                continue  # not one of ddpm-lab's samples callbacks: not switched on
        options[name] = _numbers(node)
    if "ema" in options:
        ema = callbacks["ema"]
        power = ema.get("_target_") == POWER_EMA  # callbacks/ema=power: its lengths define the run too
        config["callbacks"] = {
            "ema": {
                **({"_target_": POWER_EMA} if power else {}),
                "decay": _scalar(
                    ema.get("decay", 0.999),
                    (int, float, type(None)) if power else (int, float),
                    "callbacks.ema.decay",
                    source,
                ),
                "update_starting_at_step": _scalar(
                    ema.get("update_starting_at_step"),
                    (int, type(None)),
                    "callbacks.ema.update_starting_at_step",
                    source,
                ),
                **{key: ema.get(key) for key in ("sigma_rels", "snapshot_every_n_steps") if power},
            }
        }
    loggers_node = tree.get("logger")
    loggers: dict[str, Any] = loggers_node if isinstance(loggers_node, dict) else {}
    names = tuple(name for name in LOGGER_OPTIONS if isinstance(loggers.get(name), dict))
    return RunIdentity(config=config, loggers=names, callbacks=options, samples=samples)


_WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def read_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id a run folder's ``.wandb_id`` holds (W&B's ids are letters, digits, ``-`` and ``_``),
    or None when there is none.

    Raises:
        StoredConfigError: the file holds anything else (it would reach W&B and the run's config).
    """
    path = Path(run_dir) / ".wandb_id"
    if not path.exists():
        return None
    text = _read_text(path, str(path)).strip()
    if not _WANDB_ID.fullmatch(text):
        raise StoredConfigError(f"{path} holds {text[:40]!r}, which is not a W&B run id; refused")
    return text
