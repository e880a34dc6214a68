"""Power-function EMA (EDM2, Karras et al. 2024, sec. 3): the math against ema-pytorch (MIT), and the
snapshot files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ema_pytorch.post_hoc_ema import sigma_rel_to_gamma as reference_sigma_rel_to_gamma
from ema_pytorch.post_hoc_ema import solve_weights as reference_solve_weights

from ddpm.ema import (
    SIGMA_REL_MAX,
    combine,
    gamma_to_sigma_rel,
    power_ema_beta,
    sigma_rel_to_gamma,
    solve_weights,
    update_power_ema,
)
from ddpm.ema_snapshots import (
    list_snapshots,
    load_snapshot,
    write_snapshot,
)

SIGMA_RELS = [0.005, 0.01, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.28, 0.3]


# ----------------------------------------------------------------------------- the math
def test_sigma_rel_and_gamma_round_trip() -> None:
    for sigma_rel in SIGMA_RELS:
        assert abs(gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) - sigma_rel) < 1e-9
    for gamma in [-0.38, 0.0, 0.5, 1.0, 3.0, 6.94, 16.97, 50.0, 500.0]:
        assert abs(sigma_rel_to_gamma(gamma_to_sigma_rel(gamma)) - gamma) < 1e-9 * max(1.0, gamma)
    # EDM2's two tracked lengths (sec. 3.1)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("sigma_rel", [0.0, -0.1, SIGMA_REL_MAX, 0.5, float("nan")])
def test_sigma_rel_out_of_range_is_refused(sigma_rel: float) -> None:
    with pytest.raises(ValueError, match="sigma_rel="):
        sigma_rel_to_gamma(sigma_rel)


def test_sigma_rel_to_gamma_equals_ema_pytorchs() -> None:
    for sigma_rel in SIGMA_RELS:
        ours, theirs = sigma_rel_to_gamma(sigma_rel), reference_sigma_rel_to_gamma(sigma_rel)
        assert abs(ours - theirs) <= 1e-9 * max(1.0, abs(theirs)), sigma_rel


def _random_snapshots(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, float]:
    n = int(rng.integers(2, 16))
    steps = np.sort(rng.choice(np.arange(1, 20_000), n, replace=False)).astype(np.float64)
    gammas = np.array([sigma_rel_to_gamma(s) for s in rng.uniform(0.02, 0.25, n)])
    return steps, gammas, float(rng.integers(1, 20_000)), sigma_rel_to_gamma(rng.uniform(0.02, 0.25))


def test_solve_weights_equals_ema_pytorchs_on_random_snapshot_sets() -> None:
    rng = np.random.default_rng(0)
    f64 = lambda x: torch.as_tensor(np.atleast_1d(x), dtype=torch.float64)  # noqa: E731
    for _ in range(50):
        t_i, gamma_i, t_r, gamma_r = _random_snapshots(rng)
        ours = solve_weights(t_i, gamma_i, t_r, gamma_r)
        theirs = reference_solve_weights(f64(t_i), f64(gamma_i), f64(t_r), f64(gamma_r))[:, 0]
        # the same convention (no normalisation): equal to the solver's rounding
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    # several targets at once: one column each, as in EDM2's Algorithm 3
    t_i, gamma_i, _, _ = _random_snapshots(rng)
    both = solve_weights(t_i, gamma_i, [500.0, 900.0], [3.0, 9.0])
    assert both.shape == (len(t_i), 2)
    torch.testing.assert_close(both[:, 1], solve_weights(t_i, gamma_i, 900.0, 9.0))


def test_a_tracked_length_at_a_snapshots_step_is_that_snapshot() -> None:
    steps = [100 * k for k in range(1, 11)]
    gammas = [sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)]
    t_i = [t for t in steps for _ in gammas]
    gamma_i = [g for _ in steps for g in gammas]
    for j, (t, gamma) in enumerate(zip(t_i, gamma_i, strict=True)):
        unit = torch.zeros(len(t_i), dtype=torch.float64)
        unit[j] = 1.0
        torch.testing.assert_close(solve_weights(t_i, gamma_i, t, gamma), unit, rtol=0, atol=1e-8)


def test_duplicate_snapshots_get_the_least_norm_coefficients() -> None:
    coefficients = solve_weights([100, 100, 200], [6.94, 6.94, 6.94], 100, 6.94)  # a singular system
    torch.testing.assert_close(coefficients, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_the_update_weighs_each_step_by_the_power_profile() -> None:
    """EDM2 eq. 1-2: after t steps, the weights of step tau are the profile's mass on (tau - 1, tau],
    (tau / t)^(gamma + 1) - ((tau - 1) / t)^(gamma + 1), which sum to 1."""
    t, gamma = 40, sigma_rel_to_gamma(0.1)
    assert power_ema_beta(1, gamma) == 0.0
    eye = torch.eye(t, dtype=torch.float64)  # the weights at step tau: the tau-th unit vector
    average = [torch.full((t,), float("nan"), dtype=torch.float64)]  # step 1 overwrites it
    for step in range(1, t + 1):
        update_power_ema(average, [eye[step - 1]], step, gamma)
    tau = torch.arange(1, t + 1, dtype=torch.float64)
    expected = (tau / t) ** (gamma + 1) - ((tau - 1) / t) ** (gamma + 1)
    torch.testing.assert_close(average[0], expected, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="step=0"):
        power_ema_beta(0, gamma)


def test_reconstruction_converges_as_snapshots_get_denser() -> None:
    """A random walk of 'weights' averaged by the tracked EMAs exactly: the length 0.05 at the last step,
    rebuilt without its own snapshot, is closer the denser the snapshots (EDM2 sec. 3.2)."""
    generator = torch.Generator().manual_seed(0)
    n, dim = 200, 256
    walk = torch.cumsum(torch.randn(n, dim, generator=generator, dtype=torch.float64), 0)
    gammas = {s: sigma_rel_to_gamma(s) for s in (0.05, 0.10)}
    errors = []
    for every in (10, 5, 2):
        averages = {s: [torch.zeros(dim, dtype=torch.float64)] for s in gammas}
        snapshots: list[tuple[int, float, float, torch.Tensor]] = []
        for step in range(1, n + 1):
            for s, gamma in gammas.items():
                update_power_ema(averages[s], [walk[step - 1]], step, gamma)
                if step % every == 0:
                    snapshots.append((step, gamma, s, averages[s][0].clone()))
        truth, other = averages[0.05][0], averages[0.10][0]
        used = [x for x in snapshots if not (x[0] == n and x[2] == 0.05)]
        c = solve_weights([x[0] for x in used], [x[1] for x in used], n, gammas[0.05])
        rebuilt = combine(({"w": x[3]} for x in used), c)["w"]
        errors.append(float((rebuilt - truth).norm() / (other - truth).norm()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, errors


def test_combine_sums_in_float64_and_keeps_each_dtype() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}
    out = combine([a, b], [0.25, 0.75])
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], torch.tensor([2.5, 5.0]))
    assert int(out["n"]) == 4  # not averaged: the last one's
    with pytest.raises(ValueError, match="same tensors"):
        combine([a, {"v": torch.zeros(2)}], [0.5, 0.5])


# ----------------------------------------------------------------------------- snapshot files
def test_snapshot_files_carry_step_and_gamma_and_refuse_foreign_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ddpm.config import ConfigError

    gamma = sigma_rel_to_gamma(0.05)
    state = {"net.w": torch.arange(6.0).reshape(2, 3).t(), "net.b": torch.ones(2)}  # a non-contiguous one
    path = write_snapshot(tmp_path, state, 120, gamma, 0.05)
    assert path.name == "sigma0.05_step00000120.safetensors"
    (snapshot,) = list_snapshots(tmp_path)
    assert (snapshot.step, snapshot.gamma, snapshot.sigma_rel) == (120, gamma, 0.05)
    loaded = load_snapshot(snapshot)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "sigma0.1_step00000001.safetensors"))  # no metadata
    with pytest.raises(ConfigError, match="not a power-EMA snapshot"):
        list_snapshots(tmp_path)
    with pytest.raises(ConfigError, match="kept no power-EMA snapshots"):
        list_snapshots(tmp_path / "missing")
