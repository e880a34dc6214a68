"""How much memory there is, and how many samples a network can draw at once within it.

``ddpm-sample`` and ``ddpm-eval`` sample in batches by default, so ``--n 10000000`` runs in bounded memory
instead of as one batch that outgrows the machine: :func:`default_batch_size` takes a quarter of the memory
available on the sampling device (:func:`available_memory`: the GPU's free memory, else the host's
``MemAvailable`` within any cgroup or address-space limit) over the memory one sample needs while it is
drawn (:func:`bytes_per_sample`: the network's activations, measured in a forward pass of one sample,
plus the sampler's working copies), rounded down to a power of two and capped at :data:`MAX_BATCH`.
:func:`check_output_fits` refuses, before any work, an ``--n`` whose samples alone would not fit.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm.config import ConfigError

__all__ = [
    "MAX_BATCH",
    "MEMORY_FRACTION",
    "available_memory",
    "bytes_per_sample",
    "check_output_fits",
    "default_batch_size",
    "format_bytes",
    "sampling_batch_size",
]

#: the largest default batch: beyond it a batch is no faster per sample, only larger
MAX_BATCH = 16384
#: the share of the available memory a default batch may take (the rest: the samples drawn so far, the
#: metrics, other processes)
MEMORY_FRACTION = 0.25
#: copies of one sample a sampler step holds besides the network (x_t, the output, the noise, x0-hat, the
#: mean, a multistep solver's earlier outputs), counted generously
SAMPLER_COPIES = 16


def format_bytes(n: float) -> str:
    """``n`` bytes in words: ``512 B``, ``3.2 MB``, ``4.6 GB``, ``1.2e+07 TB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB" if n < 1e6 else f"{n:.2g} TB"


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # psutil, where installed (macOS, Windows)
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no figure on this platform
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What the process's cgroup (a container's, a job's) still lets it take; None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:  # v1's "no limit" is about 2**63
            return max(limit - usage, 0)
    return None


def _address_space_room() -> int | None:
    """What ``ulimit -v`` (RLIMIT_AS) still lets the process map; None without a limit."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as fh:
            size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return None
    return max(soft - size, 0)


def available_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes that can still be allocated on ``device`` (default: the host), or None when unknown.

    A CUDA device: its free memory (``torch.cuda.mem_get_info``). The host (and Apple's MPS, which shares
    it): ``MemAvailable`` of ``/proc/meminfo`` (psutil or ``sysconf`` elsewhere), lowered to what a cgroup
    memory limit or ``ulimit -v`` leaves.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
        except (RuntimeError, AssertionError):  # no CUDA in this build, or the device went away
            return None
        return int(free)
    figures = [f for f in (_meminfo_available(), _cgroup_room(), _address_space_room()) if f is not None]
    return min(figures) if figures else None


def _activation_bytes(net: nn.Module, call: Callable[[], Any]) -> int:
    """The bytes of every leaf module's output in the forward pass ``call()`` runs (plus each attention
    block's score matrix), as hooks see them: more than is alive at any one moment, a safe bound."""
    total = 0

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        outs = output if isinstance(output, tuple | list) else (output,)
        for out in outs:
            if isinstance(out, torch.Tensor):
                total += out.numel() * out.element_size()
        heads = getattr(module, "heads", None)
        first = inputs[0] if inputs else None
        if isinstance(heads, int) and isinstance(first, torch.Tensor) and first.ndim == 4:
            positions = first.shape[-2] * first.shape[-1]
            total += first.shape[0] * heads * positions * positions * 4  # the scores, if materialised

    hooks = [
        module.register_forward_hook(count)
        for module in net.modules()
        if not any(True for _ in module.children()) or isinstance(getattr(module, "heads", None), int)
    ]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            call()
    finally:
        net.train(was_training)
        for hook in hooks:
            hook.remove()
    return total


def bytes_per_sample(net: nn.Module, data_shape: Sequence[int]) -> int:
    """The memory one sample takes while it is drawn: the network's activations for it (twice for a
    class-conditional network: classifier-free guidance evaluates both branches) and the sampler's copies.

    The activations are measured in one forward pass of one zero sample on the network's device: a
    fraction of a second for ddpm-lab's networks, and cheaper than the ``meta`` device, whose first use
    costs seconds of imports.
    """
    shape = (1, *(int(s) for s in data_shape))
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x, t = torch.zeros(shape, device=device), torch.zeros(1, dtype=torch.long, device=device)
    activations = _activation_bytes(net, lambda: net(x, t))
    guided = 2 if int(getattr(net, "num_classes", 0) or 0) else 1
    return guided * activations + SAMPLER_COPIES * 4 * math.prod(shape)


def default_batch_size(
    net: nn.Module,
    data_shape: Sequence[int],
    device: torch.device | str | None = None,
    n: int | None = None,
    available: int | None = None,
) -> tuple[int, int | None]:
    """The batch size ``ddpm-sample`` and ``ddpm-eval`` sample with when ``--batch-size`` is not given.

    :data:`MEMORY_FRACTION` of the memory available on ``device`` (less the ``n`` samples' own memory)
    over :func:`bytes_per_sample`, rounded down to a power of two (so small changes in free memory rarely
    change it, and with it the samples a seed draws), between 1 and :data:`MAX_BATCH`. When the free memory
    is unknown, the budget is 1 GB.

    Returns:
        (the batch size, the available bytes it was chosen from, or None when unknown).
    """
    per_sample = max(1, bytes_per_sample(net, data_shape))
    avail = available if available is not None else available_memory(device)
    output = 4 * math.prod(int(s) for s in data_shape) * (n or 0)
    budget = (avail - output) * MEMORY_FRACTION if avail is not None else 1e9
    batch = int(min(MAX_BATCH, max(1, budget // per_sample)))
    return 1 << (batch.bit_length() - 1), avail


def check_output_fits(
    n: int, data_shape: Sequence[int], device: torch.device | str | None = None, flag: str = "--n"
) -> None:
    """Refuse ``n`` samples whose values alone (float32, and the copy the data's scale makes of them)
    would exceed the memory available on ``device``.

    Raises:
        ConfigError: in one line naming ``flag``, the bytes needed and the bytes available.
    """
    avail = available_memory(device)
    if avail is None:
        return
    shape = tuple(int(s) for s in data_shape)
    need = 2 * 4 * n * math.prod(shape)
    if need > avail:
        item = "x".join(map(str, shape))
        most = avail // (8 * max(1, math.prod(shape)))
        raise ConfigError(
            f"{flag}={n} is too large: {n} samples of {item} values need {format_bytes(need)} (as float32, "
            f"twice), more than the {format_bytes(avail)} of memory available; use {flag} {most} or fewer"
        )


def sampling_batch_size(
    requested: int | None,
    net: nn.Module,
    data_shape: Sequence[int],
    device: torch.device | str | None = None,
    n: int | None = None,
) -> tuple[int, str]:
    """The batch size a command samples with: ``requested`` (``--batch-size``), else
    :func:`default_batch_size`; and the words that say so, for the line that starts the sampling."""
    if requested is not None:
        return requested, f"batches of {requested} (--batch-size)"
    batch, avail = default_batch_size(net, data_shape, device, n)
    free = f"{format_bytes(avail)} available" if avail is not None else "free memory unknown"
    if n is not None and batch >= n:
        return batch, f"one batch (at most {batch} a batch, chosen from {free}; --batch-size sets it)"
    return batch, f"batches of {batch} (chosen from {free}; --batch-size sets it)"
