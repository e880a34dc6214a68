"""Choosing the sampler of a trained run from the command line: ``sampler=<option> sampler.<key>=<value>``.

The options are the files of ``conf/sampler/``; the keys are the arguments of the chosen sampler class;
values are typed as a Hydra override would type them (``5`` an int, ``null`` None). Everything here can be
checked before a checkpoint is read (:func:`check_sampler_overrides`), so ``ddpm-sample`` and ``ddpm-eval``
refuse a bad value in one line before any work. ``ddpm-eval --compare-samplers`` takes comma lists, Hydra
multirun style, and :func:`sampler_grid` expands them into one override list per combination. No torch, no
Lightning: OmegaConf (for command-line values) and the sampler classes. A run's stored sampler names its class
by text, which is only looked up among the classes ``conf/sampler/`` names, never imported.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, cast

from hydra.utils import get_class
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm.config import CONF_DIR, ConfigError
from ddpm.stored_config import load_yaml

__all__ = ["check_sampler_overrides", "sampler_config", "sampler_grid", "sampler_option", "sampler_options"]


def sampler_options() -> list[str]:
    """The options of the ``sampler`` config group (``ddpm``, ``ddim``, ...)."""
    return sorted(p.stem for p in (CONF_DIR / "sampler").glob("*.yaml"))


def sampler_option(option: str) -> dict[str, Any]:
    """``conf/sampler/<option>.yaml`` as a dict (plain YAML: the sampler options interpolate nothing).

    Raises:
        ConfigError: no such option, naming the ones there are.
    """
    path = CONF_DIR / "sampler" / f"{option}.yaml"
    if not path.is_file():
        choices = ", ".join(sampler_options())
        raise ConfigError(
            f"sampler={option} is not an option of config group 'sampler'; choose one of {choices}"
        )
    return cast(dict[str, Any], load_yaml(path))  # a mapping file


@cache
def _init_params(cls: type[Any]) -> tuple[str, ...]:
    """The keyword arguments a sampler class takes: the keys its config may set."""
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)


@cache
def _option_classes() -> dict[str, type]:
    """The sampler classes of ``conf/sampler/*.yaml`` by their ``_target_`` text: the samplers a run may
    have (ddpm-lab's own configs name what is imported here, never a stored config)."""
    targets = sorted({sampler_option(option)["_target_"] for option in sampler_options()})
    return {target: get_class(target) for target in targets}


def _check_key(item: str, key: str, sep: str) -> None:
    """Refuse an override that is not ``sampler=...`` or ``sampler.<key>=...``."""
    if not sep:
        raise ConfigError(f"override {item!r} is not key=value; use e.g. sampler=ddim sampler.steps=50")
    if key != "sampler" and not (key.startswith("sampler.") and key != "sampler."):
        raise ConfigError(f"override {key!r} is not supported here; only sampler=... and sampler.<key>=...")


def _split(overrides: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """``sampler=<option>`` (or None) and the ``(key, raw value)`` pairs of ``sampler.<key>=<value>``.

    Like Hydra, the option is applied first and the keys on top, whatever their order on the command line.
    """
    option: str | None = None
    keys: list[tuple[str, str]] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        _check_key(item, key, sep)
        if key == "sampler":
            if option is not None and option != value:
                raise ConfigError(f"sampler= is given twice (sampler={option}, sampler={value}); give one")
            option = value
        else:
            keys.append((key.removeprefix("sampler."), value))
    return option, keys


def _parse_value(key: str, raw: str) -> Any:
    """A command-line value with the type a Hydra override would give it."""
    try:
        node = OmegaConf.from_dotlist([f"v={raw}"])
        return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))["v"]  # a DictConfig's: a dict
    except OmegaConfBaseException as err:
        raise ConfigError(f"sampler.{key}={raw} cannot be read: {str(err).strip().splitlines()[0]}") from None


def _value_problem(cls: type, key: str, raw: str, value: Any) -> str | None:
    """Why ``cls(key=value)`` is refused, in one line naming ``sampler.<key>=<raw>``; None when it is not."""
    try:
        cls(**{key: value})
    except (ValueError, TypeError) as err:
        message = str(err).strip().splitlines()[0]
        own = f"{key}={value!r} "  # the sampler names the value itself: say it as it was typed instead
        if message.startswith(own):
            return f"sampler.{key}={raw} {message.removeprefix(own)}"
        return f"sampler.{key}={raw} is invalid: {message}"
    return None


def _unknown_key(cls_names: str, key: str, raw: str, takes: list[str]) -> str:
    return (
        f"sampler.{key}={raw} is not an option of {cls_names}; it takes {', '.join(takes)} "
        f"(choose another sampler with sampler=<{'|'.join(sampler_options())}>)"
    )


def check_sampler_overrides(overrides: list[str]) -> None:
    """Check ``sampler=<option>`` / ``sampler.<key>=<value>`` before a run is loaded.

    Each key must be an argument of the sampler class and each value one it accepts (the class's own
    checks decide). With ``sampler=<option>`` the class is known; without, the run's sampler is not known
    before its checkpoint is read, so a key or value passes when any sampler of ``conf/sampler/`` takes it
    and :func:`sampler_config` checks the rest.

    Raises:
        ConfigError: one line naming the bad override and what is allowed.
    """
    option, keys = _split(overrides)
    every = _option_classes()
    classes = (every[sampler_option(option)["_target_"]],) if option else tuple(every.values())
    for key, raw in keys:
        takers = [cls for cls in classes if key in _init_params(cls)]
        if not takers:
            names = classes[0].__name__ if len(classes) == 1 else "any sampler"
            takes = sorted({p for cls in classes for p in _init_params(cls)})
            raise ConfigError(_unknown_key(names, key, raw, takes))
        value = _parse_value(key, raw)
        if key == "spacing" and value == "fitted":
            continue  # the run's own schedule: read from its folder when it is loaded (build.sampler_for)
        problems = [_value_problem(cls, key, raw, value) for cls in takers]
        if all(problems):
            raise ConfigError(problems[0])


def sampler_config(run_sampler: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A run's sampler config with ``sampler=<option>`` / ``sampler.<key>=<value>`` applied.

    Raises:
        ConfigError: a key the chosen sampler does not take, or a value that cannot be read.
    """
    option, keys = _split(overrides)
    cfg = dict(sampler_option(option) if option else run_sampler)
    cls = _option_classes().get(str(cfg.get("_target_")))  # a lookup: the text is never imported
    if cls is None:
        raise ConfigError(
            f"sampler._target_={cfg.get('_target_')!r} is not one of ddpm-lab's samplers "
            f"({', '.join(_option_classes())})"
        )
    takes = _init_params(cls)
    for key, raw in keys:
        if key not in takes:
            source = f"sampler={option}" if option else "the run's sampler"
            raise ConfigError(_unknown_key(f"{cls.__name__} ({source})", key, raw, list(takes)))
        cfg[key] = _parse_value(key, raw)
    return cfg


def sampler_grid(overrides: Sequence[str]) -> list[list[str]]:
    """Comma lists, Hydra multirun style, expanded into one checked override list per combination.

    ``sampler=ddim,dpm_solver sampler.steps=5,10`` is the cross product, four lists from
    ``["sampler=ddim", "sampler.steps=5"]`` to ``["sampler=dpm_solver", "sampler.steps=10"]`` (the
    option varies slowest, then the keys in the order given); keys not given keep the option's conf
    defaults. Each combination is checked as :func:`check_sampler_overrides` checks one command line, so a
    key that only some options take (``sampler=ddim,dpm_solver sampler.order=3``) is refused too. No
    overrides give one empty combination: the run's own sampler.

    Raises:
        ConfigError: one line naming the bad override, and its combination when that has several.
    """
    axes: dict[str, list[str]] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        _check_key(item, key, sep)
        if key in axes:
            given = ",".join(axes[key])
            raise ConfigError(
                f"{key}= is given twice ({key}={given}, {item}); list the values in one: {key}=a,b"
            )
        # a list value (sampler.timesteps=[999,500]) is one value; several lists are not a grid here
        values = [value] if value.startswith("[") else value.split(",")
        if "" in values:
            raise ConfigError(f"{item} has an empty value; list the values as {key}=a,b")
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{item} lists {twice[0]} twice; give each value once")
        axes[key] = values
    # The option first: like Hydra, sampler=<option> is applied before the keys.
    keys = sorted(axes, key=lambda k: k != "sampler")
    combos = [
        [f"{k}={v}" for k, v in zip(keys, values, strict=True)]
        for values in itertools.product(*(axes[k] for k in keys))
    ]
    for combo in combos:
        try:
            check_sampler_overrides(combo)
        except ConfigError as err:
            if len(combo) < 2:  # the message names the one override already
                raise
            raise ConfigError(f"{err} (in the combination {' '.join(combo)})") from None
    return combos
