"""ddpm-lab's options by name: the classes a run config may name, checked against their typed signatures.

A config names what to build with Hydra's ``_target_`` idiom. A config composed from ``conf/`` and the
command line is the user's own and keeps that idiom; a config read from disk (a run folder, a checkpoint,
an export, a diffusers folder) is data, and its names are only looked up here: :data:`OPTIONS` maps each
group's ``_target_`` text to one of ddpm-lab's classes, :func:`checked_arguments` checks every value against
the type hints of that class's signature (its typed schema: ``int``, ``float``, ``bool``, ``str``,
sequences and optional values of those; a string never holds ``${``), and :func:`build_option` calls the
class itself. No string from disk is imported or passed to ``instantiate``; a name that is not here is
refused in one line.

Your own classes (a network of yours) are added from Python with :func:`register`.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ddpm.config import ConfigError
from ddpm.stored_config import GROUPS, MAX_STRING, RunIdentity, StoredConfigError

__all__ = ["OPTIONS", "Option", "build_option", "checked_arguments", "checked_identity", "find", "register"]


@dataclass(frozen=True)
class Option:
    """One buildable option of a config group.

    Attributes:
        group: the config group (``model``, ``sampler``...).
        target: the ``_target_`` text configs name it by.
        factory: ``module:attribute`` of the class or function (ddpm-lab's own text, imported on use).
        plain: for data, the class without loaders or Lightning that loading a run builds instead.
        completed: arguments that ddpm-lab supplies (the schedule's betas, the network's parameters).
        hints: type hints that replace the signature's (for classes whose signature takes ``**kwargs``).
    """

    group: str
    target: str
    factory: str
    plain: str | None = None
    completed: tuple[str, ...] = ()
    hints: tuple[tuple[str, Any], ...] = ()

    def load(self, plain: bool = False) -> Callable[..., Any]:
        """The class or function (``plain``: the data class without Lightning)."""
        module, _, name = (self.plain if plain and self.plain else self.factory).partition(":")
        return getattr(importlib.import_module(module), name)


_SAMPLERS = (
    "ConsistencySampler",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "EDMSampler",
    "HeunSampler",
    "UniPCSampler",
)
_OPTIMIZERS = ("Adam", "AdamW")

#: group -> ``_target_`` text -> option: everything a stored config may name
OPTIONS: dict[str, dict[str, Option]] = {
    "model": {
        "ddpm.models.MLPDenoiser": Option("model", "ddpm.models.MLPDenoiser", "ddpm.models.mlp:MLPDenoiser"),
        "ddpm.models.UNet": Option("model", "ddpm.models.UNet", "ddpm.models.unet:UNet"),
    },
    "schedule": {
        "ddpm.schedules.make_beta_schedule": Option(
            "schedule", "ddpm.schedules.make_beta_schedule", "ddpm.schedules:make_beta_schedule"
        ),
    },
    "diffusion": {
        "ddpm.diffusion.GaussianDiffusion": Option(
            "diffusion",
            "ddpm.diffusion.GaussianDiffusion",
            "ddpm.diffusion:GaussianDiffusion",
            completed=("betas",),
        ),
        "ddpm.edm.EDMProcess": Option("diffusion", "ddpm.edm.EDMProcess", "ddpm.edm:EDMProcess"),
        "ddpm.flow.FlowProcess": Option("diffusion", "ddpm.flow.FlowProcess", "ddpm.flow:FlowProcess"),
    },
    "loss": {
        f"ddpm.losses.{name}": Option(
            "loss", f"ddpm.losses.{name}", f"ddpm.losses:{name}", completed=("diffusion",)
        )
        for name in ("SimpleLoss", "HybridLoss", "VLBLoss", "EDMLoss")
    }
    | {
        f"ddpm.distillation.{name}": Option(
            "loss", f"ddpm.distillation.{name}", f"ddpm.distillation:{name}", completed=("diffusion",)
        )
        for name in ("ProgressiveDistillationLoss", "ConsistencyDistillationLoss")
    },
    "timestep_sampler": {
        f"ddpm.timestep_sampling.{name}": Option(
            "timestep_sampler",
            f"ddpm.timestep_sampling.{name}",
            f"ddpm.timestep_sampling:{name}",
            completed=("process",),
        )
        for name in (
            "UniformTimesteps",
            "LossSecondMomentTimesteps",
            "LogNormalNoiseLevels",
            "LogitNormalTimes",
            "GridTimes",
        )
    },
    "sampler": {
        f"ddpm.samplers.{name}": Option("sampler", f"ddpm.samplers.{name}", f"ddpm.samplers:{name}")
        for name in _SAMPLERS
    },
    "data": {
        **{
            f"ddpm.data.{kind}DataModule": Option(
                "data", f"ddpm.data.{kind}DataModule", f"ddpm.data.datamodules:{kind}DataModule", plain=plain
            )
            for kind, plain in (("Toy", "ddpm.data.toy:ToyData"), ("Image", "ddpm.data.images:ImageData"))
        },
        **{  # the same classes by their module's name (configs written by hand, tests)
            f"ddpm.data.datamodules.{kind}DataModule": Option(
                "data",
                f"ddpm.data.datamodules.{kind}DataModule",
                f"ddpm.data.datamodules:{kind}DataModule",
                plain=plain,
            )
            for kind, plain in (("Toy", "ddpm.data.toy:ToyData"), ("Image", "ddpm.data.images:ImageData"))
        },
        "ddpm.data.images.ImageScale": Option(
            "data", "ddpm.data.images.ImageScale", "ddpm.data.images:ImageScale"
        ),
    },
    "optimizer": {
        f"torch.optim.{name}": Option(
            "optimizer", f"torch.optim.{name}", f"torch.optim:{name}", completed=("params",)
        )
        for name in _OPTIMIZERS
    },
    "lr_scheduler": {
        "ddpm.optim.warmup_lr": Option(
            "lr_scheduler", "ddpm.optim.warmup_lr", "ddpm.optim:warmup_lr", completed=("optimizer",)
        ),
    },
    "callbacks.ema": {
        "ddpm.callbacks.EMA": Option(
            "callbacks.ema",
            "ddpm.callbacks.EMA",
            "ddpm.callbacks:EMA",
            hints=(("decay", float), ("update_starting_at_step", int | None)),
        ),
        "ddpm.callbacks.PowerEMA": Option(
            "callbacks.ema",
            "ddpm.callbacks.PowerEMA",
            "ddpm.callbacks:PowerEMA",
            hints=(
                ("sigma_rels", collections.abc.Sequence[float]),
                ("snapshot_every_n_steps", int),
                ("decay", float | None),
                ("update_starting_at_step", int | None),
            ),
        ),
    },
}

#: DataModules take their data class's arguments (``ImageDataModule(*args, **kwargs)``): check those
_SIGNATURE_OF = {
    "ddpm.data.datamodules:ImageDataModule": "ddpm.data.images:ImageData",
    "ddpm.data.datamodules:ToyDataModule": "ddpm.data.toy:ToyData",
}


def register(group: str, target: str, cls: type | Callable[..., Any], plain: type | None = None) -> Option:
    """Add your own class (a network of yours) under ``group`` as ``target``, so that runs naming it load.

    Its signature's type hints are its schema: give every argument a hint (``int``, ``float``, ``bool``,
    ``str``, ``Sequence[int]``, ``X | None``).
    """
    option = Option(
        group,
        target,
        f"{cls.__module__}:{cls.__qualname__}",
        plain=f"{plain.__module__}:{plain.__qualname__}" if plain else None,
    )
    OPTIONS.setdefault(group, {})[target] = option
    _hints.cache_clear()
    return option


def find(group: str, target: Any) -> Option | None:
    """The option ``target`` names in ``group`` (a plain lookup: nothing is imported), or None."""
    return OPTIONS.get(group, {}).get(target) if isinstance(target, str) else None


@functools.cache
def _hints(option: Option) -> tuple[dict[str, Any], dict[str, bool], Any]:
    """(type hint of each argument, whether it is required, the hint of ``**kwargs`` or None)."""
    if option.hints:  # spelled out: the class takes ``**kwargs`` (and importing it would load Lightning)
        return dict(option.hints), dict.fromkeys(dict(option.hints), False), None
    factory = _SIGNATURE_OF.get(option.factory, option.factory)
    module, _, name = factory.partition(":")
    obj = getattr(importlib.import_module(module), name)
    func = obj if inspect.isfunction(obj) else obj.__init__
    hints = typing.get_type_hints(func)
    params = inspect.signature(obj).parameters
    args, required, var = {}, {}, None
    for pname, param in params.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            var = hints.get(pname, Any)
        elif param.kind is not inspect.Parameter.VAR_POSITIONAL and pname not in option.completed:
            args[pname] = hints.get(pname, Any)
            required[pname] = param.default is inspect.Parameter.empty
    return args, required, var


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"a list of {inner}" if origin is not tuple else f"({inner})"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any, depth: int = 0) -> bool:
    """Whether a plain value fits a type hint; anything the hint does not spell out (``Any``, a tensor, a
    class) fits nothing, so only plain values of known shape are ever passed on."""
    if depth > 4:
        return False
    if hint is Any:
        return False
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str) and "${" not in value and len(value) <= MAX_STRING
    if hint is dict:  # toy data's params: names to numbers, strings or lists of numbers
        return isinstance(value, dict) and all(
            isinstance(k, str)
            and k != "_target_"
            and _matches(v, float | str | bool | list[float], depth + 1)
            for k, v in value.items()
        )
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a, depth + 1) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list | tuple) or len(value) > 64:
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(
                _matches(v, a, depth + 1) for v, a in zip(value, args, strict=True)
            )
        inner = args[0] if args else Any
        return all(_matches(v, inner, depth + 1) for v in value)
    return False


def checked_arguments(
    group: str, node: Mapping[str, Any], key: str | None = None
) -> tuple[Option, dict[str, Any]]:
    """The option a config node names and its arguments, each checked against the class's type hints.

    Args:
        group: the config group (``model``...), which says where to look the name up.
        node: the node as plain data (``_target_``, ``_partial_`` and the arguments).
        key: the node's key in the config, for messages (default: ``group``).

    Raises:
        ConfigError: the name is not one of the group's options, an argument is not the class's, or a value
            has the wrong type; in one line naming the key and what is allowed.
    """
    where = key or group
    target = node.get("_target_")
    option = find(group, target)
    if option is None:
        known = ", ".join(sorted(OPTIONS.get(group, {}))) or "none"
        raise StoredConfigError(
            f"{where}._target_={target!r} is not one of ddpm-lab's {group} options ({known}); a stored "
            "config may name only those (register your own class with ddpm.registry.register)"
        )
    hints, required, var = _hints(option)
    kwargs: dict[str, Any] = {}
    for name, value in node.items():
        if name in ("_target_", "_partial_", "_recursive_", "_convert_"):
            continue
        hint = hints.get(name, var if var is not None else None)
        if hint is None:
            raise StoredConfigError(
                f"{where}.{name} is not an argument of {target} (its arguments: {', '.join(hints)})"
            )
        if var is not None and name not in hints:
            hint = float | bool | str  # **kwargs: float (a schedule's beta_start, scale_to_T...)
        if not _matches(value, hint):
            raise StoredConfigError(f"{where}.{name}={value!r} is invalid; it must be {_type_name(hint)}")
        kwargs[name] = list(value) if isinstance(value, tuple) else value
    missing = [name for name, needed in required.items() if needed and name not in kwargs]
    if missing:
        raise StoredConfigError(f"{where} lacks {', '.join(missing)}, which {target} needs")
    return option, kwargs


def build_option(
    group: str, node: Mapping[str, Any], key: str | None = None, plain: bool = False, **completion: Any
) -> Any:
    """Build a checked node with ddpm-lab's own class: a partial node (``_partial_: true``) is completed
    with ``completion`` (the schedule's betas, the network's parameters), or returned as a partial when
    none is given.

    Raises:
        ConfigError: see :func:`checked_arguments`; the class's own refusal (a bad name such as
            ``objective: epsilon``) in one line naming the key.
    """
    option, kwargs = checked_arguments(group, node, key)
    factory = option.load(plain=plain)
    try:
        if node.get("_partial_") and not completion:
            return functools.partial(factory, **kwargs)
        return factory(**kwargs, **completion)
    except (ValueError, TypeError, FileNotFoundError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key or group}: {text}") from None


def checked_identity(identity: RunIdentity) -> dict[str, Any]:
    """A stored run's identity config with every group checked against its option (nothing built).

    Raises:
        ConfigError: the first group that names an unknown class or holds a value of the wrong type.
    """
    config = identity.config
    for group in GROUPS:
        node = config.get(group)
        if node is None and group == "lr_scheduler":
            continue
        assert isinstance(node, dict), group  # run_identity: every group but lr_scheduler is a mapping
        checked_arguments(group, node)
    ema = (config.get("callbacks") or {}).get("ema")
    if ema is not None:
        checked_arguments("callbacks.ema", {"_target_": "ddpm.callbacks.EMA", **ema}, "callbacks.ema")
    return config
