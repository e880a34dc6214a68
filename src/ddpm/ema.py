"""Power-function EMA and its post-hoc reconstruction (EDM2: Karras et al. 2024, "Analyzing and Improving
the Training Dynamics of Diffusion Models", sec. 3 and appendix C.1-C.3). Plain PyTorch and NumPy.

A power-function EMA of exponent ``gamma`` weighs the weights of training step ``tau <= t`` in proportion to
``tau ** gamma``: at step ``t`` its profile is ``p(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on
``(0, t]``, which it follows with the step-dependent decay :func:`power_ema_beta`. Its length is the
profile's standard deviation relative to ``t``, ``sigma_rel`` (:func:`gamma_to_sigma_rel`); unlike a fixed
decay it stays the same fraction of training however long the run is. A training run keeps two of them and
stores snapshots of both every so often; afterwards the weights of any other length at any step are a
linear combination of the snapshots whose profiles best match the target profile in least squares
(:func:`solve_weights`, from the closed-form inner products of power-function profiles,
:func:`profile_inner_product`), combined by :func:`combine`.

ddpm-lab's training callback is :class:`ddpm.callbacks.PowerEMA`; the snapshot files are
:mod:`ddpm.ema_snapshots`; ``ddpm-ema`` writes a reconstruction as a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "SIGMA_REL_MAX",
    "combine",
    "gamma_to_sigma_rel",
    "power_ema_beta",
    "profile_inner_product",
    "sigma_rel_to_gamma",
    "solve_weights",
    "update_power_ema",
]

#: the largest relative standard deviation a power-function profile has (at gamma = (sqrt(5) - 3) / 2, where
#: d sigma_rel / d gamma = 0); every sigma_rel in (0, SIGMA_REL_MAX) has one exponent above that
GAMMA_AT_MAX = (math.sqrt(5.0) - 3.0) / 2.0
SIGMA_REL_MAX = math.sqrt((GAMMA_AT_MAX + 1) / ((GAMMA_AT_MAX + 2) ** 2 * (GAMMA_AT_MAX + 3)))


def gamma_to_sigma_rel(gamma: float) -> float:
    """The relative standard deviation of the power-function profile of exponent ``gamma`` (> -1)."""
    gamma = float(gamma)
    if not math.isfinite(gamma) or gamma <= -1:
        raise ValueError(f"gamma={gamma!r} must be a finite number > -1")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))  # EDM2 eq. 3


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent of the power-function EMA whose relative standard deviation is ``sigma_rel``.

    ``sigma_rel`` must be in (0, :data:`SIGMA_REL_MAX` ~ 0.3003); of the two exponents with that length
    the larger (the one above ``GAMMA_AT_MAX`` ~ -0.382) is returned, so ``gamma_to_sigma_rel`` inverts it
    for every ``gamma >= GAMMA_AT_MAX``. EDM2's sigma_rel = 0.05 is gamma ~ 16.97, 0.10 is gamma ~ 6.94.
    """
    sigma_rel = float(sigma_rel)
    if not math.isfinite(sigma_rel) or not 0 < sigma_rel < SIGMA_REL_MAX:
        raise ValueError(f"sigma_rel={sigma_rel!r} must be in (0, {SIGMA_REL_MAX:.4f})")
    s = sigma_rel**-2
    # EDM2 Algorithm 2: eq. 3 squared is the cubic gamma^3 + 7 gamma^2 + (16 - s) gamma + (12 - s) = 0
    coefficients = (1.0, 7.0, 16.0 - s, 12.0 - s)
    gamma = float(np.roots(coefficients).real.max())
    for _ in range(3):  # Newton's method on the same cubic: the eigenvalue solver's root to full precision
        value = ((gamma + 7.0) * gamma + 16.0 - s) * gamma + 12.0 - s
        slope = (3.0 * gamma + 14.0) * gamma + 16.0 - s
        if slope == 0:
            break
        gamma -= value / slope
    return gamma


def power_ema_beta(step: int, gamma: float) -> float:
    """The decay of a power-function EMA of exponent ``gamma`` at optimizer step ``step`` (>= 1):
    ``avg = beta * avg + (1 - beta) * weights``. At step 1 it is 0: the average starts as the weights."""
    if step < 1:
        raise ValueError(f"step={step!r} must be >= 1 (the first optimizer step is 1)")
    return (1.0 - 1.0 / step) ** (gamma + 1.0)  # EDM2 eq. 1-2


def update_power_ema(
    averages: list[torch.Tensor], current: list[torch.Tensor], step: int, gamma: float
) -> None:
    """One step of a power-function EMA over lists of tensors (one foreach kernel per list), in place."""
    beta = power_ema_beta(step, gamma)
    with torch.no_grad():
        if beta == 0.0:
            torch._foreach_copy_(averages, current)
        else:
            torch._foreach_lerp_(averages, current, 1.0 - beta)  # EDM2 eq. 1


def _as_float64(x: float | Sequence[float] | torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor) else x).to(
        torch.float64
    )


def profile_inner_product(
    t_a: torch.Tensor, gamma_a: torch.Tensor, t_b: torch.Tensor, gamma_b: torch.Tensor
) -> torch.Tensor:
    """The inner product of the power-function profiles (t_a, gamma_a) and (t_b, gamma_b) (broadcast).

    Both profiles are normalised to integrate to 1 over (0, t]; the integral of their product over
    (0, m], m = min(t_a, t_b), is (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1)
    * (m / t_a)^(gamma_a + 1) * (m / t_b)^(gamma_b + 1) / m, written with ratios <= 1 so that long runs
    and large exponents neither overflow nor underflow.
    """
    m = torch.minimum(t_a, t_b)
    # EDM2 appendix C.3 (Algorithm 3's p_dot_p): the integral of two power-function profiles' product
    scale = (gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)
    return scale * (m / t_a) ** (gamma_a + 1) * (m / t_b) ** (gamma_b + 1) / m


def solve_weights(
    t_i: float | Sequence[float] | torch.Tensor,
    gamma_i: float | Sequence[float] | torch.Tensor,
    t_r: float | Sequence[float] | torch.Tensor,
    gamma_r: float | Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """EDM2 Algorithm 3: the coefficients of the snapshots (steps ``t_i``, exponents ``gamma_i``) whose
    combination best matches, in least squares, the power-function profile of exponent ``gamma_r`` at
    step ``t_r``.

    The normal equations ``A x = b`` of that least-squares problem, with ``A[i, j]`` the inner product of
    snapshot profiles i and j and ``b[i]`` that of snapshot i with the target, solved in float64 (a
    singular ``A``, as when two snapshots are the same profile, gets the least-norm solution). The
    coefficients are not normalised: their sum is near 1 when the target lies within the snapshots' span.

    Args:
        t_i: the snapshots' steps (> 0), broadcast with ``gamma_i`` to one 1-D list.
        gamma_i: the snapshots' exponents (> -1/2).
        t_r: the target's step; a scalar gives a 1-D result, a list one column per target.
        gamma_r: the target's exponent, broadcast with ``t_r``.

    Returns:
        float64 coefficients, ``[n]`` for a scalar target, ``[n, m]`` for ``m`` targets.
    """
    scalar = all(
        not isinstance(x, Iterable) or (isinstance(x, torch.Tensor) and x.ndim == 0) for x in (t_r, gamma_r)
    )
    ti, gi = torch.broadcast_tensors(_as_float64(t_i).reshape(-1), _as_float64(gamma_i).reshape(-1))
    tr, gr = torch.broadcast_tensors(_as_float64(t_r).reshape(-1), _as_float64(gamma_r).reshape(-1))
    if ti.numel() == 0:
        raise ValueError("solve_weights needs at least one snapshot")
    for name, t in (("t_i", ti), ("t_r", tr)):
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
            raise ValueError(f"{name} must hold finite steps > 0")
    for name, g in (("gamma_i", gi), ("gamma_r", gr)):
        if not bool(torch.isfinite(g).all()) or bool((g <= -0.5).any()):
            raise ValueError(f"{name} must hold finite exponents > -1/2")
    rows, columns = (lambda x: x.reshape(-1, 1)), (lambda x: x.reshape(1, -1))
    A = profile_inner_product(rows(ti), rows(gi), columns(ti), columns(gi))  # EDM2 Algorithm 3: A
    b = profile_inner_product(rows(ti), rows(gi), columns(tr), columns(gr))  # EDM2 Algorithm 3: b
    try:
        x = torch.linalg.solve(A, b)  # EDM2 Algorithm 3: the normal equations' solution
    except torch.linalg.LinAlgError:
        x = torch.linalg.lstsq(A, b, driver="gelsd").solution  # singular: the least-norm solution
    return x[:, 0] if scalar else x


def combine(
    snapshots: Iterable[Mapping[str, torch.Tensor]], coefficients: Sequence[float] | torch.Tensor
) -> dict[str, torch.Tensor]:
    """The weighted sum of snapshots (state dicts with the same keys), summed in float64 and returned in
    each tensor's own dtype; tensors that are not floating point (counters) are taken from the last one.

    Snapshots are consumed one at a time, so an iterable that loads each from disk holds one in memory.
    """
    weights = [
        float(c) for c in (coefficients.tolist() if isinstance(coefficients, torch.Tensor) else coefficients)
    ]
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    seen = False
    for snapshot, weight in zip(snapshots, weights, strict=True):
        seen = True
        if total and snapshot.keys() != dtypes.keys():
            raise ValueError("the snapshots do not hold the same tensors")
        for name, tensor in snapshot.items():
            if not tensor.is_floating_point():
                total[name] = tensor.clone()
            elif name not in total:
                dtypes[name] = tensor.dtype
                total[name] = tensor.to(torch.float64) * weight
            else:
                total[name].add_(tensor.to(torch.float64), alpha=weight)
            dtypes.setdefault(name, tensor.dtype)
    if not seen:
        raise ValueError("combine needs at least one snapshot")
    return {name: tensor.to(dtypes[name]) for name, tensor in total.items()}
