"""ddpm-eval --compare-samplers without a trained run: the Pareto fronts, the grid, the rows, the table, the
figure, and the one-line refusals made before the checkpoint is read. The end-to-end comparison of a trained
toy run is in tests/test_eval.py, beside the trained run it shares."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from ddpm.cli.eval import main as eval_main
from ddpm.config import ConfigError
from ddpm.diffusion import GaussianDiffusion
from ddpm.evaluation.sampler_comparison import (
    DEFAULT_GRID,
    ComparisonCase,
    ComparisonRow,
    Scored,
    compare_samplers,
    comparison_label,
    comparison_table,
    mark_fronts,
    pareto_front,
)
from ddpm.evaluation.toy import spread
from ddpm.sampler_overrides import check_sampler_overrides, sampler_grid
from ddpm.samplers import DDIMSampler, DDPMSampler, HeunSampler, NonFiniteSampleError, Sampler
from ddpm.schedules import make_beta_schedule
from ddpm.viz import plot_sampler_comparison, save_figure


# ---------------------------------------------------------------------------- the Pareto front
def test_a_dominated_point_is_off_the_front_and_exact_ties_stay() -> None:
    nan = math.nan
    costs = [5, 5, 10, 10, 20, 20, 20, 40, 50, 3]
    quality = [3.0, 2.0, 2.0, 1.5, 1.5, 1.2, 1.2, 1.3, 1.0, nan]
    assert pareto_front(costs, quality) == [
        False,  # as cheap as (5, 2.0) and worse
        True,
        False,  # as good as (5, 2.0), dearer
        True,
        False,  # as good as (10, 1.5), dearer
        True,  # (20, 1.2) twice: an exact tie, both stay
        True,
        False,  # dearer and worse than (20, 1.2)
        True,  # the dearest, but the best
        False,  # no quality: never on the front, and it pushes nothing off (it is the cheapest)
    ]


def test_every_point_off_the_front_is_dominated_by_one_on_it() -> None:
    gen = torch.Generator().manual_seed(0)
    costs = torch.randint(1, 8, (60,), generator=gen).tolist()  # many equal costs and qualities
    quality = (torch.randint(1, 8, (60,), generator=gen) / 4).tolist()
    front = pareto_front(costs, quality)
    points = list(zip(costs, quality, strict=True))
    for i, (c, q) in enumerate(points):
        dominators = [j for j, (c2, q2) in enumerate(points) if c2 <= c and q2 <= q and (c2 < c or q2 < q)]
        assert front[i] == (not dominators), (c, q)
        if dominators:
            assert any(front[j] for j in dominators)  # a front point dominates it
    assert front[min(range(60), key=lambda i: (quality[i], costs[i]))]  # the cheapest of the best
    with pytest.raises(ValueError, match="2 costs but 1 qualities"):
        pareto_front([1, 2], [1.0])


# ---------------------------------------------------------------------------- the grid
def test_the_grid_is_the_cross_product_with_the_option_first() -> None:
    grid = sampler_grid(["sampler.steps=5,10,20", "sampler=ddim,dpm_solver"])
    assert grid == [
        [f"sampler={option}", f"sampler.steps={steps}"]
        for option in ("ddim", "dpm_solver")
        for steps in (5, 10, 20)
    ]
    grid = sampler_grid(["sampler=dpm_solver", "sampler.order=2,3", "sampler.steps=5,10"])
    assert len(grid) == 4 and grid[1] == ["sampler=dpm_solver", "sampler.order=2", "sampler.steps=10"]
    assert sampler_grid(["sampler.steps=5,10"]) == [["sampler.steps=5"], ["sampler.steps=10"]]
    assert sampler_grid([]) == [[]]  # no overrides: the run's own sampler


def test_the_default_grid() -> None:
    options = [combo[0].removeprefix("sampler=") for combo in DEFAULT_GRID]
    assert options == ["ddpm"] + ["ddim"] * 4 + ["dpm_solver"] * 3 + ["unipc"] * 3 + ["heun"] * 3
    assert DEFAULT_GRID[0] == ("sampler=ddpm",)  # all T steps: the reference
    steps = [int(c[1].removeprefix("sampler.steps=")) for c in DEFAULT_GRID[1:]]
    assert steps == [10, 20, 50, 100, 5, 10, 20, 5, 10, 20, 3, 5, 10]
    for combo in DEFAULT_GRID:
        check_sampler_overrides(list(combo))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["sampler=ddim,lms"], "sampler=lms is not an option of config group 'sampler'; choose one of"),
        (
            ["sampler=ddim,dpm_solver", "sampler.order=2"],
            "sampler.order=2 is not an option of DDIMSampler; it takes eta, guidance_scale, spacing, steps",
        ),
        (["sampler=dpm_solver", "sampler.order=2,4"], "sampler.order=4 is invalid; choose one of 1, 2, 3"),
        (["sampler=ddim", "sampler.steps=0,5"], "sampler.steps=0 is invalid; steps must be an integer >= 1"),
        (["sampler.steps=5,"], "sampler.steps=5, has an empty value"),
        (["sampler.steps=5,5"], "sampler.steps=5,5 lists 5 twice"),
        (["sampler.steps=5", "sampler.steps=10"], "sampler.steps= is given twice"),
        (["steps=5,10"], "override 'steps' is not supported here"),
    ],
)
def test_a_bad_combination_is_named(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        sampler_grid(overrides)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1
    if needle.startswith(("sampler.order=2 is", "sampler.order=4", "sampler.steps=0")):
        assert "(in the combination sampler=" in str(err.value)  # which one of the grid it was


# ---------------------------------------------------------------------------- rows, table, figure
@pytest.fixture
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(make_beta_schedule("linear", 20, warn=False))


def test_compare_samplers_counts_network_evaluations_and_keeps_a_diverged_row(
    diffusion: GaussianDiffusion, tmp_path: Path
) -> None:
    cases = [
        ComparisonCase(["sampler=ddpm"], DDPMSampler()),
        ComparisonCase(["sampler=ddim", "sampler.steps=5"], DDIMSampler(steps=5)),
        ComparisonCase(["sampler=heun", "sampler.steps=3"], HeunSampler(steps=3)),
        ComparisonCase(["sampler=ddim", "sampler.steps=4", "sampler.eta=1.0"], DDIMSampler(steps=4, eta=1.0)),
    ]
    quality = {"DDPMSampler": 1.1, "DDIMSampler": 2.0, "HeunSampler": 1.5}
    warmed: list[Sampler] = []

    def score(sampler: Sampler) -> Scored:
        if getattr(sampler, "eta", 0.0) == 1.0:
            raise NonFiniteSampleError("sampling produced 3 non-finite values at step 2/4")
        nfe = sampler.nfe(diffusion)
        q = quality[type(sampler).__name__]
        return Scored(spread([q - 0.1, q + 0.1]), seconds=0.01 * nfe, samples=200, details={"n": 100})

    lines: list[str] = []
    rows = compare_samplers(cases, diffusion, score, warm_up=warmed.append, log=lines.append, progress=False)
    assert [r.nfe for r in rows] == [20, 5, 5, 4]  # Heun: 3 noise levels, 2 * 3 - 1 evaluations
    assert [r.label for r in rows] == ["ddpm 20", "ddim 5", "heun 3", "ddim 4 eta=1.0"]
    assert [r.reference for r in rows] == [True, False, False, False]
    assert warmed == [cases[3].sampler]  # the cheapest, once
    assert rows[2].on_front_nfe and rows[0].on_front_nfe and not rows[1].on_front_nfe
    assert rows[2].seconds_per_1000 == pytest.approx(0.25)
    failed = rows[3]
    assert failed.error is not None and "non-finite" in failed.error and math.isnan(failed.quality.mean)
    assert not failed.on_front_nfe and not failed.on_front_seconds
    assert len(lines) == 4 and lines[3].startswith("ddim 4 eta=1.0: NFE 4, failed:")
    assert failed.as_dict()["error"] == failed.error and "error" not in rows[0].as_dict()

    table = comparison_table(rows, "energy distance / floor")
    body = table.splitlines()[2:]
    assert len(body) == 4
    assert body[0].startswith("| ddim 4 eta=1.0 | 4 | failed: sampling produced")  # sorted by NFE
    assert body[-1].startswith("| ddpm 20 (reference) | 20 | 1.1 ± 0.14 |") and body[-1].endswith(
        "| NFE, s |"
    )

    fig = plot_sampler_comparison([r.as_dict() for r in rows], "energy distance / floor")
    with Image.open(save_figure(fig, tmp_path / "comparison.png")) as im:
        assert im.size == (12 * 120, int(4.8 * 120))


def test_a_label_without_an_option_names_the_run_sampler(diffusion: GaussianDiffusion) -> None:
    assert comparison_label(["sampler.steps=7"], DDIMSampler(steps=7), diffusion) == "ddim 7"
    assert comparison_label([], DDPMSampler(), diffusion) == "ddpm 20"
    row = ComparisonRow("x", None, [], "x", 1, spread([1.0]), 1.0, 0)
    mark_fronts([row])
    assert math.isnan(row.seconds_per_1000) and not row.on_front_seconds and row.on_front_nfe


# ---------------------------------------------------------------------------- refused before the checkpoint
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["sampler=ddim,lms"], "sampler=lms is not an option of config group 'sampler'"),
        (["sampler=ddim,unipc", "sampler.eta=0.5"], "sampler.eta=0.5 is not an option of UniPCSampler"),
        (["sampler=ddim", "sampler.stepz=5,10"], "sampler.stepz=5 is not an option of DDIMSampler"),
        (["sampler=ddim,heun", "sampler.steps=0,5"], "sampler.steps=0 is invalid; steps must be an integer"),
        (["sampler=dpm_solver", "sampler.order=4", "sampler.steps=5,10"], "sampler.order=4 is invalid"),
        (["sampler=ddim", "sampler.eta=-1,0"], "sampler.eta=-1 is invalid; eta must be a finite number >= 0"),
        (["--no-quality"], "--compare-samplers with --no-quality leaves nothing to compare"),
        (["--bpd"], "--compare-samplers with --bpd: the bound does not depend on the sampler"),
        (["--out", "x.txt"], "must end in .json"),
        (["--repeats", "0"], "--repeats=0"),
    ],
)
def test_bad_comparisons_are_one_line_before_any_work(
    fake_run: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    before = sorted(fake_run.parent.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        eval_main([str(fake_run), "--compare-samplers", *args, "--n", "10"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert needle in err, err
    assert sorted(fake_run.parent.rglob("*")) == before  # no eval/ folder, no file


def test_a_good_comparison_goes_on_to_read_the_checkpoint(fake_run: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="work started"):
        eval_main([str(fake_run), "--compare-samplers", "sampler=ddim,unipc", "sampler.steps=5,10"])
