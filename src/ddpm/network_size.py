"""A network's size from its config, before anything is allocated.

A config read from disk (a diffusers ``config.json``, a stored run) can ask for a network that does not fit
in memory (``layers_per_block: 100000``); building it would grow until the machine stops the process.
:func:`parameter_count` computes the parameters of ddpm-lab's :class:`~ddpm.models.UNet` and
:class:`~ddpm.models.MLPDenoiser` in closed form from their arguments (integer arithmetic over the
resolution levels, however many blocks each has), and :func:`check_network_size` refuses, in one line, a
network whose float32 weights would exceed the memory available.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ddpm.config import ConfigError
from ddpm.memory import available_memory, format_bytes
from ddpm.models.mlp import MLPDenoiser
from ddpm.models.unet import UNet

__all__ = ["NETWORKS", "check_network_size", "parameter_count"]

#: the networks whose size is known from their arguments (their class names)
NETWORKS = ("UNet", "MLPDenoiser")


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


def _conv(fan_in: int, fan_out: int, kernel: int) -> int:
    return fan_in * fan_out * kernel * kernel + fan_out


def _norm(channels: int) -> int:  # GroupNorm / LayerNorm: a scale and a shift per channel
    return 2 * channels


def _signature_defaults(cls: type[Any]) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


#: each network's default arguments, read from its signature once (the counts stay in step with the classes)
_DEFAULTS = {"UNet": _signature_defaults(UNet), "MLPDenoiser": _signature_defaults(MLPDenoiser)}


def _integer(args: Mapping[str, Any], key: str, where: str, low: int = 1) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}.{key}={value!r} is invalid; it must be an integer >= {low}")
    return value


def _integers(args: Mapping[str, Any], key: str, where: str, low: int, empty: bool) -> list[int]:
    value = args.get(key)
    items = list(value) if isinstance(value, list | tuple) else None
    if (
        items is None
        or (not items and not empty)
        or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in items)
    ):
        what = "a list" if empty else "a non-empty list"
        raise ConfigError(f"{where}.{key}={value!r} is invalid; it must be {what} of integers >= {low}")
    return items


def _unet(args: Mapping[str, Any], where: str) -> int:
    in_ch = _integer(args, "in_channels", where)
    base = _integer(args, "base_channels", where)
    blocks = _integer(args, "num_res_blocks", where)
    size = _integer(args, "image_size", where)
    classes = _integer(args, "num_classes", where, low=0)
    mult = _integers(args, "channel_mult", where, low=1, empty=False)
    attn_at = set(_integers(args, "attn_resolutions", where, low=0, empty=True))
    out_ch = args.get("out_channels") or in_ch * _integer(args, "out_mult", where)
    if isinstance(out_ch, bool) or not isinstance(out_ch, int):
        raise ConfigError(f"{where}.out_channels={out_ch!r} is invalid; it must be an integer >= 1 or null")
    temb = 4 * base
    widths = [base * m for m in mult]
    attention = [size // 2**level in attn_at for level in range(len(widths))]

    def res(cin: int, cout: int) -> int:  # _ResBlock: norms, two 3x3 convs, the embedding, a 1x1 skip
        skip = _conv(cin, cout, 1) if cin != cout else 0
        return (
            _norm(cin) + _conv(cin, cout, 3) + _linear(temb, cout) + _norm(cout) + _conv(cout, cout, 3) + skip
        )

    def attn(ch: int) -> int:  # _AttentionBlock: a norm, the qkv 1x1 conv and the output 1x1 conv
        return _norm(ch) + _conv(ch, 3 * ch, 1) + _conv(ch, ch, 1)

    total = _linear(base, temb) + _linear(temb, temb) + _conv(in_ch, base, 3)  # time embedding, conv_in
    last = len(widths) - 1
    for level, w in enumerate(widths):  # the down path: blocks ResBlocks (+ attention), then downsampling
        before = base if level == 0 else widths[level - 1]
        total += res(before, w) + (blocks - 1) * res(w, w) + (blocks * attn(w) if attention[level] else 0)
        total += _conv(w, w, 3) if level != last else 0
    total += 2 * res(widths[-1], widths[-1]) + attn(widths[-1])  # the middle
    # The up path: each level takes blocks + 1 skips, newest first: its own level's blocks' outputs, then
    # the level below's downsampling output (the input convolution's for the first level).
    for level in reversed(range(len(widths))):
        w = widths[level]
        came = widths[level + 1] if level != last else widths[-1]
        oldest = widths[level - 1] if level else base
        total += res(came + w, w) + (blocks - 1) * res(2 * w, w) + res(w + oldest, w)
        total += (blocks + 1) * attn(w) if attention[level] else 0
        total += _conv(w, w, 3) if level else 0  # upsampling
    total += _norm(widths[0]) + _conv(widths[0], out_ch, 3)
    return total + ((classes + 1) * temb if classes else 0)


def _mlp(args: Mapping[str, Any], where: str) -> int:
    # data_dim: null is filled in from the data when the network is built; one value is the least it is
    dim = 1 if args.get("data_dim") is None else _integer(args, "data_dim", where)
    hidden = _integer(args, "hidden", where)
    depth = _integer(args, "depth", where)
    features = _integer(args, "time_embed_dim", where)
    out_mult = _integer(args, "out_mult", where)
    classes = _integer(args, "num_classes", where, low=0)
    temb = 4 * features
    block = _norm(hidden) + 2 * _linear(hidden, hidden) + _linear(temb, hidden)
    total = _linear(features, temb) + _linear(temb, temb) + _linear(dim, hidden) + depth * block
    total += _linear(hidden, dim * out_mult) + _linear(temb, dim)  # the output and the linear x path
    return total + ((classes + 1) * temb if classes else 0)


def _kind(kind: str | type) -> str:
    name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
    if name not in NETWORKS:
        raise ConfigError(f"model: {kind!r} is not one of ddpm-lab's networks ({', '.join(NETWORKS)})")
    return name


def parameter_count(kind: str | type, kwargs: Mapping[str, Any], where: str = "model") -> int:
    """The number of parameters of ddpm-lab's network ``kind`` built with ``kwargs``, without building it.

    Args:
        kind: ``UNet`` or ``MLPDenoiser`` (a class, its name or its full name, e.g. a config's
            ``_target_``).
        kwargs: the network's arguments, e.g. a config's ``model`` node (keys starting with ``_`` and
            arguments the size does not depend on are ignored); missing ones take the class's defaults.
        where: the config key of ``kwargs``, for messages.

    Raises:
        ConfigError: an unknown kind, or a structural argument (widths, depths, channels) that is not a
            positive integer, naming the key.
    """
    name = _kind(kind)
    args = {**_DEFAULTS[name], **{k: v for k, v in kwargs.items() if not str(k).startswith("_")}}
    return _unet(args, where) if name == "UNet" else _mlp(args, where)


def check_network_size(
    kind: str | type, kwargs: Mapping[str, Any], where: str = "model", available: int | None = None
) -> int:
    """Refuse a network whose float32 weights would exceed the memory available, before it is built.

    Args:
        kind: ``UNet`` or ``MLPDenoiser`` (see :func:`parameter_count`).
        kwargs: its arguments.
        where: what to name in the message (a config key or a file).
        available: bytes of memory to compare with; default :func:`ddpm.memory.available_memory` of the host.

    Returns:
        The number of parameters.

    Raises:
        ConfigError: ``<where>: N parameters (X GB) exceed the Y GB of memory available; ...``, or a bad
            argument (see :func:`parameter_count`).
    """
    count = parameter_count(kind, kwargs, where)
    avail = available if available is not None else available_memory()
    need = 4 * count
    if avail is not None and need > avail:
        raise ConfigError(
            f"{where}: the network would have {count:,} parameters ({format_bytes(need)} as float32), which "
            f"exceed the {format_bytes(avail)} of memory available; refused before building it"
        )
    return count
