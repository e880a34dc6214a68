"""The toy generators: moons, circles and swiss_roll draw what scikit-learn draws, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import make_circles, make_moons, make_swiss_roll

from ddpm.data.toy import _sk_seed, make_toy_data


def _reference(name: str, n: int, seed: int, **params: float) -> np.ndarray:
    """scikit-learn's generator, seeded as make_toy_data seeds it, its output as make_toy_data keeps it."""
    state = _sk_seed(np.random.default_rng(seed))
    if name == "moons":
        x, _ = make_moons(n, noise=params.get("noise", 0.05), random_state=state)
    elif name == "circles":
        x, _ = make_circles(
            n, noise=params.get("noise", 0.04), factor=params.get("factor", 0.5), random_state=state
        )
    else:
        x, _ = make_swiss_roll(n, noise=params.get("noise", 0.5), random_state=state)
        x = x[:, [0, 2]] / 5.0
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["moons", "circles", "swiss_roll"])
@pytest.mark.parametrize(("n", "seed"), [(1, 0), (7, 3), (2000, 42), (20_001, 1)])
def test_generators_draw_what_scikit_learn_draws(name: str, n: int, seed: int) -> None:
    ours = make_toy_data(name, n, seed)
    assert ours.shape == (n, 2) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, _reference(name, n, seed))


@pytest.mark.parametrize(
    ("name", "params"),
    [("moons", {"noise": 0.2}), ("circles", {"noise": 0.1, "factor": 0.3}), ("swiss_roll", {"noise": 0.0})],
)
def test_generator_options_match_scikit_learn(name: str, params: dict[str, float]) -> None:
    np.testing.assert_array_equal(make_toy_data(name, 501, 5, **params), _reference(name, 501, 5, **params))


def test_toy_data_does_not_import_scikit_learn() -> None:
    code = (
        "import sys; from ddpm.data.toy import make_toy_data\n"
        "for name in ('moons', 'circles', 'swiss_roll'): make_toy_data(name, 100, 0)\n"
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
