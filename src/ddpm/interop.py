"""Weights in and out: diffusers' folders (``UNet2DModel`` + scheduler) and ddpm-lab's own safetensors export.

- :func:`load_diffusers_unet` reads a diffusers ``UNet2DModel`` folder (``config.json`` and
  ``diffusion_pytorch_model.safetensors``, or ``.bin`` read with ``torch.load(weights_only=True)``) whose
  architecture ddpm-lab's :class:`~ddpm.models.UNet` expresses: the DDPM layout of ``google/ddpm-cifar10-32``
  and the 256x256 DDPM models (ResNet blocks, attention at some resolutions and in the middle, conv down- and
  upsampling). Any other setting is refused in one line naming it.
- :func:`load_diffusers_pipeline` also reads ``scheduler/scheduler_config.json`` into ddpm-lab's schedule,
  objective and variance, and returns the same :class:`~ddpm.build.LoadedRun` as a trained run, so
  ``ddpm-sample --pretrained PATH`` and ``ddpm-eval --pretrained PATH`` sample it with any ddpm-lab sampler.
- :func:`export_diffusers` writes a trained ddpm-lab UNet run as a diffusers pipeline folder that
  ``DDPMPipeline.from_pretrained`` loads; :func:`export_safetensors` writes the run's (EMA) weights with its
  config as metadata, which :func:`ddpm.build.load_run` reads back without pickle.

diffusers itself is not imported (it is a dev dependency, for the tests that compare with it): the formats are
JSON and safetensors. Nothing here imports Lightning.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from omegaconf import OmegaConf

from ddpm.config import ConfigError, first_line
from ddpm.diffusion import GaussianDiffusion
from ddpm.models import UNet
from ddpm.safe_loading import SAFETENSORS_CONFIG_KEY, read_safetensors_run
from ddpm.safe_writes import write_file, write_files
from ddpm.sampler_overrides import sampler_option

if TYPE_CHECKING:
    from ddpm.build import LoadedRun

__all__ = [
    "SAFETENSORS_CONFIG_KEY",
    "diffusers_unet_config",
    "export_diffusers",
    "export_safetensors",
    "is_diffusers_folder",
    "load_diffusers_pipeline",
    "load_diffusers_unet",
    "read_safetensors_run",
    "unet_kwargs_from_diffusers",
    "weights_kind",
]

UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
#: the safetensors metadata key that says whether the weights are the EMA average (``ema``) or not (``raw``)
WEIGHTS_KEY = "ddpm_weights"
#: what the exported folders say they were written for (diffusers reads folders of older versions)
DIFFUSERS_VERSION = "0.30.0"
#: the most diffusion steps a diffusers scheduler config may ask for (the published models use 1000 or 4000)
MAX_TIMESTEPS = 1_000_000

#: UNet2DModel's settings ddpm-lab reads; any other key (with a value other than its neutral one) is refused
_UNET_KEYS = {
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "time_embedding_type",
    "time_embedding_dim",
    "freq_shift",
    "flip_sin_to_cos",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "mid_block_scale_factor",
    "downsample_padding",
    "downsample_type",
    "upsample_type",
    "dropout",
    "act_fn",
    "attention_head_dim",
    "norm_num_groups",
    "attn_norm_num_groups",
    "norm_eps",
    "resnet_time_scale_shift",
    "add_attention",
    "class_embed_type",
    "num_class_embeds",
    "num_train_timesteps",
}
#: settings that must have this value (None: absent or null) for ddpm-lab's UNet to express the network
_UNET_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False, None),
    "time_embedding_type": ("positional", None),
    "mid_block_type": ("UNetMidBlock2D", None),
    "mid_block_scale_factor": (1, 1.0, None),
    "downsample_type": ("conv", None),
    "upsample_type": ("conv", None),
    "act_fn": ("silu", "swish", None),
    "resnet_time_scale_shift": ("default", None),
    "add_attention": (True, None),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
}
_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}

_PREDICTION = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCE = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
}
_SCHEDULE = {
    "linear": "linear",
    "scaled_linear": "quadratic",
    "squaredcos_cap_v2": "cosine",
    "sigmoid": "sigmoid",
}


# ----------------------------------------------------------------------------- files
def _read_json(path: Path) -> dict[str, Any]:
    """A diffusers config file as plain data (:func:`ddpm.stored_config.read_json`: bounded, no code)."""
    from ddpm.stored_config import read_json, require_regular_file

    if not path.exists():
        raise ConfigError(f"{path} is missing; a diffusers folder has config files there")
    require_regular_file(path, "diffusers config")
    try:
        text = path.read_text()
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} cannot be read: {first_line(err)}") from None
    return read_json(text, str(path))


def _unet_folder(path: str | Path) -> Path:
    """The UNet's folder of a pipeline folder (``<path>/unet``) or of the UNet folder itself."""
    p = Path(path)
    if (p / "unet" / "config.json").is_file():
        return p / "unet"
    if (p / "config.json").is_file():
        return p
    raise ConfigError(f"{str(p)!r} is not a diffusers UNet2DModel folder: no config.json or unet/config.json")


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers pipeline folder (``model_index.json`` or ``unet/config.json``)."""
    p = Path(path)
    return p.is_dir() and ((p / "model_index.json").is_file() or (p / "unet" / "config.json").is_file())


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of a diffusers model folder: safetensors preferred, ``.bin`` weights-only."""
    for name in UNET_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path)), path
            # weights_only: a .bin is a pickle, and this refuses any object but tensors and containers
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # safetensors' and torch's errors for truncated or foreign files vary
            raise ConfigError(f"{path} cannot be read as weights: {first_line(err)}") from None
        if not isinstance(state, dict):
            raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict")
        return state, path
    raise ConfigError(f"no weights in {folder}: expected {' or '.join(UNET_WEIGHTS)}")


# ----------------------------------------------------------------------------- the UNet's configuration
def _refuse(where: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(
        f"{where}: {key}={json.dumps(value, default=str)} is not supported by ddpm-lab's UNet ({why})"
    )


def _invalid(where: str, key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{where}: {key}={json.dumps(value, default=str)} is invalid; it must be {what}")


def _int_setting(config: Mapping[str, Any], key: str, default: int | None, where: str, low: int = 1) -> Any:
    """``config[key]`` as an integer >= ``low`` (absent or null: ``default``), else a one-line error."""
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _invalid(where, key, value, f"an integer >= {low}")
    return value


def _float_setting(
    config: Mapping[str, Any],
    key: str,
    default: float,
    where: str,
    low: float,
    high: float | None = None,
    with_low: bool = False,
) -> float:
    """``config[key]`` as a finite number above ``low`` (or equal to it, ``with_low``) and below ``high``;
    absent or null: ``default``."""
    value = config.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (low <= value if with_low else low < value)
        or (high is not None and not value < high)
    ):
        if high is None:
            bound = f">= {low:g}" if with_low else f"> {low:g}"
        else:
            bound = f"in {'[' if with_low else '('}{low:g}, {high:g})"
        raise _invalid(where, key, value, f"a number {bound}")
    return float(value)


def _bool_setting(config: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(where, key, value, "true or false")
    return value


def _list_setting(config: Mapping[str, Any], key: str, where: str, kind: type[Any], what: str) -> list[Any]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list | tuple) or any(
        isinstance(v, bool) or not isinstance(v, kind) or (kind is int and v < 1) for v in value
    ):
        raise _invalid(where, key, value, f"a list of {what}")
    return list(value)


def _check_image_size(size: int, base: int, where: str) -> None:
    """Refuse a ``sample_size`` whose images could not even be held in memory, one at a time."""
    from ddpm.memory import available_memory, format_bytes

    avail = available_memory()
    need = 4 * base * size * size  # the first level's feature map of one image, float32
    if avail is not None and need > avail:
        raise _refuse(
            where,
            "sample_size",
            size,
            f"one image's first feature map, {base} x {size} x {size} float32, needs {format_bytes(need)}, "
            f"more than the {format_bytes(avail)} of memory available",
        )


def unet_kwargs_from_diffusers(config: Mapping[str, Any], where: str = "config.json") -> dict[str, Any]:
    """The :class:`~ddpm.models.UNet` arguments of a diffusers ``UNet2DModel`` config, plus
    ``flip_sin_to_cos`` (how the weights of the first time-embedding layer are ordered).

    Every value is checked before anything is allocated: numbers must be numbers of the right range, and
    the network's parameter count (:func:`ddpm.network_size.check_network_size`) and one image's first
    feature map must fit in the memory available.

    Raises:
        ConfigError: a setting ddpm-lab's UNet cannot express, a value of the wrong type or range, or a
            network too large for this machine, in one line naming it.
    """
    from ddpm.network_size import check_network_size

    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ConfigError(f"{where}: _class_name={cls!r} is not supported; ddpm-lab reads UNet2DModel only")
    for key, value in config.items():
        if not str(key).startswith("_") and key not in _UNET_KEYS:
            raise _refuse(where, key, value, "a setting ddpm-lab does not know")
    for key, allowed in _UNET_FIXED.items():
        if config.get(key) not in allowed:
            shown = [a for a in allowed if a is not None]
            raise _refuse(where, key, config.get(key), f"only {json.dumps(shown[0] if shown else None)} is")
    down = _list_setting(config, "down_block_types", where, str, "block names")
    up = _list_setting(config, "up_block_types", where, str, "block names")
    widths = _list_setting(config, "block_out_channels", where, int, "integers >= 1")
    for key, blocks, known in (("down_block_types", down, _DOWN), ("up_block_types", up, _UP)):
        bad = [b for b in blocks if b not in known]
        if bad:
            raise _refuse(
                where, key, blocks, f"{bad[0]} is not a block of the DDPM layout ({', '.join(known)})"
            )
    if not widths or len(down) != len(widths) or len(up) != len(widths):
        raise ConfigError(
            f"{where}: block_out_channels={widths}, down_block_types and up_block_types must have one entry "
            "per level"
        )
    attn = [_DOWN[b] for b in down]
    if [_UP[b] for b in reversed(up)] != attn:
        raise _refuse(
            where, "up_block_types", up, "attention must sit at the same levels as on the down path"
        )
    base = widths[0]
    if any(w % base for w in widths):
        raise _refuse(
            where, "block_out_channels", widths, f"every width must be a multiple of the first, {base}"
        )
    if base % 2:
        raise _refuse(where, "block_out_channels", widths, "the first width must be even")
    size = config.get("sample_size")
    if isinstance(size, list | tuple) and size:
        if any(s != size[0] for s in size):
            raise _refuse(where, "sample_size", size, "images must be square")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _refuse(where, "sample_size", size, "a positive integer is needed")
    in_ch = _int_setting(config, "in_channels", 3, where)
    out_ch = _int_setting(config, "out_channels", 3, where)
    if out_ch != in_ch:
        raise _refuse(
            where, "out_channels", out_ch, f"it must equal in_channels={in_ch}: one prediction per pixel"
        )
    temb = config.get("time_embedding_dim")
    if temb not in (None, 4 * base):
        raise _refuse(where, "time_embedding_dim", temb, f"DDPM's is 4 x {base} = {4 * base}")
    shift = config.get("freq_shift")
    if shift not in (None, 0, 1) or isinstance(shift, bool):
        raise _refuse(where, "freq_shift", shift, "0 or 1")
    padding = config.get("downsample_padding")
    if padding not in (None, 0, 1) or isinstance(padding, bool):
        raise _refuse(where, "downsample_padding", padding, "0 (TF's SAME) or 1")
    groups = _int_setting(config, "norm_num_groups", 32, where)
    if config.get("attn_norm_num_groups") not in (None, groups):
        raise _refuse(where, "attn_norm_num_groups", config["attn_norm_num_groups"], f"it must be {groups}")
    # attention_head_dim null: one head of the block's width (diffusers: heads = width // head_dim)
    head_dim = _int_setting(config, "attention_head_dim", None, where)
    attn_widths = {w for w, a in zip(widths, attn, strict=True) if a} | {widths[-1]}
    heads = 1
    if head_dim is not None:
        counts = {w // head_dim for w in attn_widths}
        if any(w % head_dim for w in attn_widths) or len(counts) != 1:
            raise _refuse(
                where,
                "attention_head_dim",
                head_dim,
                f"every attention width ({sorted(attn_widths)}) must hold the same number of heads",
            )
        heads = counts.pop()
    kwargs = {
        "in_channels": in_ch,
        "image_size": size,
        "base_channels": base,
        "channel_mult": [w // base for w in widths],
        "num_res_blocks": _int_setting(config, "layers_per_block", 2, where),
        "attn_resolutions": [size // 2**i for i, a in enumerate(attn) if a],
        "dropout": _float_setting(config, "dropout", 0.0, where, low=0.0, high=1.0, with_low=True),
        "num_heads": heads,
        "norm_groups": groups,
        "norm_eps": _float_setting(config, "norm_eps", 1e-5, where, low=0.0),
        "time_freq_shift": int(shift or 0),
        "downsample_padding": "tf_same" if padding == 0 else "symmetric",
    }
    flip = _bool_setting(config, "flip_sin_to_cos", True, where)
    _check_image_size(size, base, where)
    check_network_size("UNet", kwargs, where)  # before anything of its size is allocated
    return {**kwargs, "flip_sin_to_cos": flip}


def diffusers_unet_config(net: UNet, dropout: float = 0.0) -> dict[str, Any]:
    """The diffusers ``UNet2DModel`` config of a ddpm-lab :class:`~ddpm.models.UNet` (the inverse of
    :func:`unet_kwargs_from_diffusers`).

    Raises:
        ConfigError: the network has several heads over attention levels of different widths, which
            diffusers' one ``attention_head_dim`` cannot express.
    """
    widths = [net.base_channels * m for m in net.channel_mult]
    attn = [net.image_size // 2**i in net.attn_resolutions for i in range(len(widths))]
    head_dim = None
    if net.num_heads > 1:
        attn_widths = {w for w, a in zip(widths, attn, strict=True) if a} | {widths[-1]}
        if len(attn_widths) != 1:
            raise ConfigError(
                f"model.num_heads={net.num_heads} over attention widths {sorted(attn_widths)}: diffusers' "
                "UNet2DModel keeps the head size fixed, so it cannot express a fixed number of heads"
            )
        head_dim = attn_widths.pop() // net.num_heads
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": net.image_size,
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "freq_shift": net.time_embed.freq_shift,
        "flip_sin_to_cos": True,  # ddpm-lab's features are [cos, sin]
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": widths,
        "layers_per_block": net.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0 if net.downsample_padding == "tf_same" else 1,
        "dropout": float(dropout),
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "norm_num_groups": net.norm_groups,
        "norm_eps": net.norm_eps,
        "resnet_time_scale_shift": "default",
        "add_attention": True,
    }


# ----------------------------------------------------------------------------- weight names
_RES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}
#: diffusers' names of an attention block before 0.15 (the DDPM checkpoints were converted with them)
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _their_prefix(ours: str) -> str:
    """diffusers' module name for one of ddpm-lab's UNet module names (``down.1.res.0`` ->
    ``down_blocks.1.resnets.0``)."""
    p = ours.split(".")
    fixed = {
        "time_embed.mlp.0": "time_embedding.linear_1",
        "time_embed.mlp.2": "time_embedding.linear_2",
        "conv_in": "conv_in",
        "conv_out": "conv_out",
        "norm_out": "conv_norm_out",
        "mid_res1": "mid_block.resnets.0",
        "mid_attn": "mid_block.attentions.0",
        "mid_res2": "mid_block.resnets.1",
    }
    for mine, theirs in fixed.items():
        if ours == mine or ours.startswith(mine + "."):
            return theirs + ours[len(mine) :]
    if p[0] in ("down", "up"):
        blocks = "down_blocks" if p[0] == "down" else "up_blocks"
        kind = {"res": "resnets", "attn": "attentions"}[p[2]]
        rest = ".".join(p[4:])
        return f"{blocks}.{p[1]}.{kind}.{p[3]}" + (f".{rest}" if rest else "")
    if p[0] in ("downsample", "upsample"):
        blocks = "down_blocks" if p[0] == "downsample" else "up_blocks"
        sampler = "downsamplers" if p[0] == "downsample" else "upsamplers"
        return f"{blocks}.{p[1]}.{sampler}.0." + ".".join(p[2:])
    raise KeyError(ours)


def _param_pairs(net: UNet) -> list[tuple[str, str, str]]:
    """(ddpm-lab key, diffusers key, how) for every parameter: ``how`` is ``same``, ``qkv`` (three linear
    layers stacked into one 1x1 conv), ``proj`` (a linear layer as a 1x1 conv)."""
    pairs = []
    for key in net.state_dict():
        module, _, param = key.rpartition(".")
        owner, _, leaf = module.rpartition(".")
        if leaf == "qkv":
            pairs.append((key, f"{_their_prefix(owner)}.to_{{q,k,v}}.{param}", "qkv"))
        elif leaf == "proj":
            pairs.append((key, f"{_their_prefix(owner)}.to_out.0.{param}", "proj"))
        elif (leaf == "norm" and ".attn." in f".{module}.") or module == "mid_attn.norm":
            pairs.append((key, f"{_their_prefix(owner)}.group_norm.{param}", "same"))
        elif leaf in _RES and (".res." in f".{module}." or owner in ("mid_res1", "mid_res2")):
            pairs.append((key, f"{_their_prefix(owner)}.{_RES[leaf]}.{param}", "same"))
        else:
            pairs.append((key, f"{_their_prefix(module)}.{param}", "same"))
    return pairs


def _modern_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' current attention names for a state dict that may use the pre-0.15 ones."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if "attentions" in parts and len(parts) >= 3 and parts[-2] in _LEGACY_ATTN:
            key = ".".join([*parts[:-2], _LEGACY_ATTN[parts[-2]], parts[-1]])
        out[key] = value
    return out


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """The input columns of the first time-embedding layer reordered between [sin, cos] and [cos, sin]."""
    half = w.shape[1] // 2
    return torch.cat([w[:, half:], w[:, :half]], dim=1)


def _from_diffusers(net: UNet, state: dict[str, torch.Tensor], flip_sin_to_cos: bool, where: str) -> None:
    state = _modern_names(state)
    used: set[str] = set()
    mine: dict[str, torch.Tensor] = {}
    for ours, theirs, how in _param_pairs(net):
        names = [theirs.replace("{q,k,v}", c) for c in "qkv"] if how == "qkv" else [theirs]
        missing = [n for n in names if n not in state]
        if missing:
            raise ConfigError(f"{where}: the weights lack {missing[0]} (needed for ddpm-lab's {ours})")
        used.update(names)
        tensors = [state[n] for n in names]
        value = torch.cat(tensors) if how == "qkv" else tensors[0]
        if how in ("qkv", "proj") and value.ndim == 2:
            value = value[:, :, None, None]  # a linear layer over channels is a 1x1 conv
        if ours == "time_embed.mlp.0.weight" and not flip_sin_to_cos:
            value = _swap_halves(value)  # diffusers' flip_sin_to_cos=false: features [sin, cos]
        mine[ours] = value
    extra = sorted(set(state) - used)
    if extra:
        raise ConfigError(f"{where}: the weights hold {extra[0]}, which ddpm-lab's UNet has no place for")
    try:
        net.load_state_dict(mine)
    except RuntimeError as err:
        detail = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ConfigError(f"{where}: the weights do not fit their config: {detail[-1]}") from None


def _to_diffusers(net: UNet) -> dict[str, torch.Tensor]:
    state = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for ours, theirs, how in _param_pairs(net):
        value = state[ours].detach().cpu()
        if how == "qkv":
            for name, part in zip("qkv", value.chunk(3), strict=True):
                out[theirs.replace("{q,k,v}", name)] = (
                    part.flatten(1).contiguous() if part.ndim == 4 else part
                )
        elif how == "proj":
            out[theirs] = value.flatten(1).contiguous() if value.ndim == 4 else value
        else:
            out[theirs] = value.contiguous()
    return out


def _unet(kwargs: dict[str, Any], where: str) -> UNet:
    try:
        return UNet(**kwargs)
    except ValueError as err:
        raise ConfigError(f"{where}: {first_line(err)}") from None


def load_diffusers_unet(path: str | Path) -> UNet:
    """A ddpm-lab :class:`~ddpm.models.UNet` with the weights of a diffusers ``UNet2DModel`` folder.

    Args:
        path: the UNet's folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``), or a
            pipeline folder holding it as ``unet/``.

    Raises:
        ConfigError: a setting ddpm-lab's UNet cannot express, or weights that do not fit, in one line.
    """
    folder = _unet_folder(path)
    kwargs = unet_kwargs_from_diffusers(_read_json(folder / "config.json"), str(folder / "config.json"))
    flip = kwargs.pop("flip_sin_to_cos")
    net = _unet(kwargs, str(folder / "config.json"))
    state, weights = _read_weights(folder)
    _from_diffusers(net, state, flip, str(weights))
    return net.eval()


# ----------------------------------------------------------------------------- the scheduler
def diffusion_config_from_scheduler(config: Mapping[str, Any], where: str) -> tuple[int, dict, dict]:
    """(T, the ``schedule`` node, the ``diffusion`` node) of a diffusers scheduler config.

    Raises:
        ConfigError: a setting ddpm-lab cannot express, or a value of the wrong type or range (at most
            :data:`MAX_TIMESTEPS` steps), in one line naming it.
    """

    def refuse(key: str, why: str) -> ConfigError:
        shown = json.dumps(config.get(key), default=str)
        return ConfigError(f"{where}: {key}={shown} is not supported ({why})")

    def choice(key: str, default: str, options: Mapping[str, str], hint: str = "") -> str:
        value = config.get(key)
        value = default if value is None else value
        if not isinstance(value, str) or value not in options:
            raise refuse(key, f"choose one of {', '.join(options)}{hint}")
        return value

    T = config.get("num_train_timesteps")
    T = 1000 if T is None else T
    if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_TIMESTEPS:
        raise refuse("num_train_timesteps", f"an integer from 1 to {MAX_TIMESTEPS} is needed")
    if config.get("trained_betas") is not None:
        raise refuse("trained_betas", "ddpm-lab builds betas from a named schedule")
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if config.get(key):
            raise refuse(key, "only false is")
    name = choice("beta_schedule", "linear", _SCHEDULE)
    schedule: dict[str, Any] = {
        "_target_": "ddpm.schedules.make_beta_schedule",
        "name": _SCHEDULE[name],
        "T": T,
    }
    if name != "squaredcos_cap_v2":
        schedule.update(
            beta_start=_float_setting(config, "beta_start", 1e-4, where, low=0.0, high=1.0),
            beta_end=_float_setting(config, "beta_end", 0.02, where, low=0.0, high=1.0),
        )
    else:
        schedule.update(s=0.008, max_beta=0.999)  # diffusers' betas_for_alpha_bar("cosine")
    prediction = choice("prediction_type", "epsilon", _PREDICTION)
    # DDPMScheduler's default variance
    variance = choice("variance_type", "fixed_small", _VARIANCE, "; learned variances are not read")
    bound = _float_setting(config, "clip_sample_range", 1.0, where, low=0.0)
    diffusion = {
        "_target_": "ddpm.diffusion.GaussianDiffusion",
        "_partial_": True,
        "objective": _PREDICTION[prediction],
        "variance": _VARIANCE[variance],
        "clip_denoised": _bool_setting(config, "clip_sample", True, where),
        "clip_range": [-bound, bound],
    }
    return T, schedule, diffusion


def _scheduler_config(cfg: Any, betas: torch.Tensor) -> dict[str, Any]:
    """A ``DDPMScheduler`` config for a run's schedule and diffusion nodes (named schedules by name, others
    as ``trained_betas``)."""
    sched = cfg.schedule
    T = int(betas.numel())
    out: dict[str, Any] = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": T,
    }
    named = {v: k for k, v in _SCHEDULE.items()}
    name = sched.get("name")
    if name == "linear" and not sched.get("scale_to_T"):
        out.update(beta_schedule="linear", beta_start=float(sched.beta_start), beta_end=float(sched.beta_end))
    elif name in ("quadratic", "sigmoid"):
        out.update(
            beta_schedule=named[name], beta_start=float(sched.beta_start), beta_end=float(sched.beta_end)
        )
    elif (
        name == "cosine"
        and float(sched.get("s", 0.008)) == 0.008
        and float(sched.get("max_beta", 0.999)) == 0.999
    ):
        out.update(beta_schedule="squaredcos_cap_v2")
    else:
        out.update(beta_schedule="linear", trained_betas=[float(b) for b in betas])
    diff = cfg.diffusion
    low, high = (float(v) for v in diff.get("clip_range", (-1.0, 1.0)))
    if diff.get("clip_denoised") and low != -high:
        raise ConfigError(f"diffusion.clip_range={[low, high]}: diffusers clips to a symmetric range only")
    objective = {v: k for k, v in _PREDICTION.items()}[str(diff.get("objective", "eps"))]
    out.update(
        variance_type=str(diff.get("variance", "fixed_large")),
        clip_sample=bool(diff.get("clip_denoised", False)),
        clip_sample_range=high,
        prediction_type=objective,
        thresholding=False,
        timestep_spacing="leading",
        steps_offset=0,
    )
    return out


# ----------------------------------------------------------------------------- pipelines
def load_diffusers_pipeline(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    sampler_overrides: Sequence[str] = (),
    dataset: str | None = None,
    data_dir: str | Path | None = None,
) -> LoadedRun:
    """A diffusers DDPM pipeline folder (``unet/`` and ``scheduler/scheduler_config.json``, as
    ``google/ddpm-cifar10-32`` is published) as a :class:`~ddpm.build.LoadedRun`, sampled by ddpm-lab.

    Its sampler is DDPM over all T steps (what ``DDPMPipeline`` does) unless ``sampler_overrides`` choose
    another. The images are on DDPM's [-1, 1] scale.

    Args:
        path: the pipeline folder.
        map_location: the device the model is put on.
        sampler_overrides: ``sampler=<option>`` / ``sampler.<key>=<value>``.
        dataset: the image set the weights were trained on (``cifar10``...), for ``ddpm-eval``'s metrics
            and held-out images; None: no data, the images' scale only.
        data_dir: where that set's files are.

    Raises:
        ConfigError: a setting ddpm-lab cannot express, missing files or weights that do not fit.
    """
    from ddpm import registry
    from ddpm.build import LoadedRun, build_for_sampling, sampler_for

    folder = Path(path)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if not sched_path.is_file():
        raise ConfigError(f"{str(folder)!r} is not a diffusers pipeline folder: {sched_path} is missing")
    unet_dir = _unet_folder(folder)
    kwargs = unet_kwargs_from_diffusers(_read_json(unet_dir / "config.json"), str(unet_dir / "config.json"))
    flip = kwargs.pop("flip_sin_to_cos")
    T, schedule, diffusion = diffusion_config_from_scheduler(_read_json(sched_path), str(sched_path))
    size, channels = kwargs["image_size"], kwargs["in_channels"]
    if dataset is None:
        data: dict[str, Any] = {
            "_target_": "ddpm.data.images.ImageScale",
            "channels": channels,
            "image_size": size,
        }
    else:
        data = {
            "_target_": "ddpm.data.ImageDataModule",
            "dataset": dataset,
            "data_dir": str(data_dir or "data"),
            "channels": channels,
            "image_size": size,
            "val_source": "test",
            "val_size": None,
        }
    plain: dict[str, Any] = {
        "T": T,
        "model": {"_target_": "ddpm.models.UNet", **kwargs},
        "schedule": schedule,
        "diffusion": diffusion,
        "sampler": sampler_option("ddpm"),  # DDPMPipeline's sampler: ancestral over all T steps
        "data": data,
    }
    for group in ("model", "schedule", "diffusion", "data"):  # each value checked against its class
        registry.checked_arguments(group, plain[group], f"{group} (from {folder})")
    cfg = OmegaConf.create({**plain, "pretrained": str(folder)})  # checked values: no ${ in any string
    data_obj, model = build_for_sampling(cfg)
    state, weights = _read_weights(unet_dir)
    _from_diffusers(cast(UNet, model.net), state, flip, str(weights))  # model: ddpm.models.UNet
    model.to(map_location).eval()
    sampler = sampler_for(cfg, sampler_overrides, model)
    return LoadedRun(model, data_obj, cfg, weights, folder, sampler)


def _check_exportable(run: LoadedRun) -> tuple[UNet, GaussianDiffusion]:
    net, diffusion = run.model.net, run.model.diffusion
    if not isinstance(diffusion, GaussianDiffusion):
        raise ConfigError(
            f"diffusion={type(diffusion).__name__}: diffusers' DDPMPipeline runs DDPM's chain of T steps; "
            "only DDPM runs can be written as one"
        )
    if not isinstance(net, UNet):
        raise ConfigError(
            f"model={type(net).__name__}: only UNet runs can be written as a diffusers UNet2DModel"
        )
    if run.data.kind != "image":
        raise ConfigError("the run's data is not images; diffusers' DDPMPipeline draws images")
    return net, diffusion


def export_diffusers(run: LoadedRun | str | Path, path: str | Path) -> Path:
    """Write a trained ddpm-lab UNet run (its EMA weights) as a diffusers DDPM pipeline folder: ``unet/``
    (``config.json``, ``diffusion_pytorch_model.safetensors``), ``scheduler/scheduler_config.json`` and
    ``model_index.json``; ``DDPMPipeline.from_pretrained(path)`` loads and samples it.

    Raises:
        ConfigError: the run is not a UNet image run, or a setting diffusers cannot express.
        WriteError: a file could not be written (:func:`ddpm.safe_writes.write_files`); none is truncated.
    """
    from safetensors.torch import save_file

    from ddpm.build import load_run

    if isinstance(run, str | Path):
        run = load_run(run)
    net, diffusion = _check_exportable(run)
    dropout = float(run.config.model.get("dropout", 0.0) or 0.0)
    unet_config = diffusers_unet_config(net, dropout)
    scheduler = _scheduler_config(run.config, diffusion.betas.detach().cpu())
    out = Path(path)
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    texts = [json.dumps(item, indent=2) + "\n" for item in (unet_config, scheduler, index)]
    weights = _to_diffusers(net)
    files = [
        out / "unet" / UNET_WEIGHTS[0],
        out / "unet" / "config.json",
        out / "scheduler" / "scheduler_config.json",
        out / "model_index.json",
    ]

    def write(tmp: list[Path]) -> None:
        save_file(weights, str(tmp[0]))
        for text, file in zip(texts, tmp[1:], strict=True):
            file.write_text(text)

    # each file whole (a temporary file, synced, renamed): a kill or a full disk never leaves a truncated
    # one, and an earlier export stays loadable until every new file is written
    write_files(files, write)
    return out


# ----------------------------------------------------------------------------- ddpm-lab's own weights
def export_safetensors(
    run: LoadedRun | str | Path, path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a run's weights (the EMA average when the run had EMA) as one safetensors file, with the run's
    config (JSON) in its metadata under :data:`SAFETENSORS_CONFIG_KEY`. :func:`ddpm.build.load_run` reads it
    back (``ddpm-sample RUN.safetensors``) without pickle: the config is read as data
    (:mod:`ddpm.stored_config`). ``metadata`` adds string entries (``ddpm-ema``: the length and step).
    """
    from safetensors.torch import save_file

    from ddpm.build import load_run

    if isinstance(run, str | Path):
        run = load_run(run)
    config = OmegaConf.to_container(run.config, resolve=True)
    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = {
        **(metadata or {}),
        SAFETENSORS_CONFIG_KEY: json.dumps(config),
        WEIGHTS_KEY: weights_kind(run.checkpoint),
        "format": "pt",
    }
    write_file(out, lambda tmp: save_file(state, str(tmp), metadata=entries))  # whole, or the old file
    return out


def weights_kind(checkpoint: str | Path) -> str:
    """Which weights a loaded run's file holds: ``ema`` (Lightning's EMA average in the checkpoint's
    state_dict), ``raw``, or ``pretrained`` (a diffusers folder's weights)."""
    path = Path(checkpoint)
    if path.name in UNET_WEIGHTS:
        return "pretrained"
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get(WEIGHTS_KEY, "raw")
    from ddpm.safe_loading import load_checkpoint

    ckpt = load_checkpoint(path, mmap=True)  # weights only, like load_run: runs no code
    # Lightning's WeightAveraging moves the live weights to current_model_state and saves the average.
    return "ema" if "current_model_state" in ckpt else "raw"
