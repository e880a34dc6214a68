"""Step schedules fitted to a model (ddpm.samplers.fitting, GITS): the dynamic programming against brute
force, and the fitted schedule on the exact Gaussian oracle against every fixed spacing."""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.exact import affine_moments, relative_frobenius
from ddpm.oracle import GaussianOracle
from ddpm.samplers import DDIMSampler, UniPCSampler
from ddpm.samplers.fitting import _cheapest_path, fit_timesteps
from ddpm.schedules import NotPureNoiseWarning, make_beta_schedule

SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr", "quadratic")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_the_dynamic_programming_finds_the_cheapest_path(seed: int, steps: int) -> None:
    K = 6
    gen = torch.Generator().manual_seed(seed)
    cost = torch.rand(K + 1, K + 1, generator=gen, dtype=torch.float64)
    cost = torch.where(torch.ones_like(cost).triu(1).bool(), cost, torch.inf)  # jumps go forward only
    path, total = _cheapest_path(cost, steps)
    brute = min(
        (sum(float(cost[a, b]) for a, b in itertools.pairwise([0, *inner, K])), [0, *inner, K])
        for inner in itertools.combinations(range(1, K), steps - 1)
    )
    assert path == brute[1] and total == pytest.approx(brute[0])


def _error(sampler, oracle, d, sigma) -> float:
    return relative_frobenius(affine_moments(sampler, oracle, d, 2)[1], sigma)


@pytest.mark.parametrize("steps", [5, 10])
def test_a_fitted_schedule_beats_every_fixed_spacing_on_the_gaussian_oracle(steps: int, gaussian_2d) -> None:
    """Exact covariance errors (the affine map of a deterministic sampler, no Monte Carlo). Measured: DDIM
    fitted 39.7% / 22.3% at 5 / 10 NFE against the best fixed 47.1% / 27.2% (quadratic); UniPC-3 fitted 0.29%
    at 10 NFE, where the best fixed spacing gives 3.6%."""
    mu, sigma = gaussian_2d
    d = GaussianDiffusion(make_beta_schedule("linear", 1000, warn=False))
    oracle = GaussianOracle(d, mu, sigma)
    fitted = fit_timesteps(oracle, d, steps, (512, 2), generator=torch.Generator().manual_seed(0))
    assert len(fitted) == steps and fitted[0] == 999 and min(fitted) > 0
    assert all(a > b for a, b in itertools.pairwise(fitted)) and fitted.cost > 0
    own = _error(DDIMSampler(timesteps=list(fitted)), oracle, d, sigma)
    fixed = {s: _error(DDIMSampler(steps, spacing=s), oracle, d, sigma) for s in SPACINGS}
    assert own < min(fixed.values()), (own, fixed)
    if steps == 10:  # issue's goal: 1% at 10 evaluations or fewer
        assert _error(UniPCSampler(order=3, timesteps=list(fitted)), oracle, d, sigma) < 0.01


def test_too_many_steps_for_the_grid_is_one_line(gaussian_2d) -> None:
    d = GaussianDiffusion(make_beta_schedule("linear", 20, warn=False))
    with pytest.raises(ValueError, match=r"steps=30 > 20, the teacher's grid points") as err:
        fit_timesteps(GaussianOracle(d, *gaussian_2d), d, 30, (8, 2))
    assert "\n" not in str(err.value)


def test_ddpm_eval_fit_steps_prints_and_writes_the_schedule(toy_run: Path, capsys) -> None:
    from ddpm.cli.eval import main as eval_main

    out = toy_run / "eval" / "fitted.json"
    with warnings.catch_warnings():  # the toy run's T = 50 chain ends short of pure noise
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        assert (
            eval_main([str(toy_run), "--fit-steps", "4", "--n", "64", "--no-wandb", "--out", str(out)]) == 0
        )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    listed = ",".join(str(t) for t in result["timesteps"])
    assert result["steps"] == 4 and len(result["timesteps"]) == 4 and result["timesteps"][0] == 49  # T = 50
    assert f"sampler.timesteps=[{listed}]" in printed
    with pytest.raises(SystemExit) as exc:
        eval_main([str(toy_run), "--fit-steps", "0"])
    assert exc.value.code == 2 and "--fit-steps=0 is invalid" in capsys.readouterr().err


def test_spacing_fitted_samples_with_the_runs_schedule(toy_run: Path, tmp_path: Path, capsys) -> None:
    """ddpm-sample / ddpm-eval RUN sampler.spacing=fitted sampler.steps=N read <run>/eval/fitted_N.json (as
    plain data, checked as a custom list); a schedule not fitted yet is one line naming the command."""
    import shutil

    from ddpm.build import load_run
    from ddpm.config import ConfigError

    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "fitted_3.json").write_text(json.dumps({"steps": 3, "timesteps": [49, 20, 6]}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        loaded = load_run(
            run, sampler_overrides=["sampler=ddim", "sampler.spacing=fitted", "sampler.steps=3"]
        )
        assert loaded.sampler.timesteps(loaded.model.diffusion) == [49, 20, 6]
        with pytest.raises(
            ConfigError, match=r"fitted_5.json does not exist \(it has fitted 3 steps\); fit one"
        ):
            loaded.make_sampler(["sampler.spacing=fitted", "sampler.steps=5"])
        (run / "eval" / "fitted_4.json").write_text(json.dumps({"timesteps": [49, 60, 6, 2]}))
        with pytest.raises(
            ConfigError, match=r"sampler.spacing=fitted: timesteps=\[49, 60, 6, 2\] is not strictly"
        ):
            loaded.make_sampler(["sampler.spacing=fitted", "sampler.steps=4"])
    with pytest.raises(ValueError, match=r"spacing='fitted' is a run's schedule"):
        DDIMSampler(spacing="fitted")
