"""``ddpm-eval``: evaluate a trained run with its EMA weights; results go to ``<run>/eval/*.json``.

ddpm-eval RUN                                        # the run's sampler: n samples x 5 independent draws
ddpm-eval RUN sampler=ddim sampler.steps=50 --n 2000 --repeats 5
ddpm-eval RUN --bpd                                  # + the variational bound in bits/dim on held-out data
ddpm-eval RUN --bpd --no-quality --bpd-t-samples 50  # only the bound, 50 sampled t per datum (unbiased)
ddpm-eval RUN --compare-samplers sampler=ddim,unipc sampler.steps=5,10,20  # quality against cost, 6 samplers
ddpm-eval COND_RUN --guidance 0,1,2,4                # a conditional run: the guidance trade-off curve
ddpm-eval POWER_RUN --ema-sweep 0.02,0.05,0.1,0.15,0.2  # callbacks/ema=power: quality against EMA length

Toy runs: the energy-distance ratio to the data-vs-data floor (and sliced W1's), mean ± std and a 90%
interval over ``--repeats`` independent sample draws. Image runs (digits, mnist, cifar10): the offline
classifier's Fréchet distance over its held-out floor, class balance and confidence
(:mod:`ddpm.evaluation.classifier`), and FID when torch-fidelity and Inception weights are on disk; both
scored by :func:`ddpm.evaluation.images.image_quality`, which the training callback shares.

The JSON holds: ``run_dir``, ``checkpoint``, ``weights`` (``ema`` when the checkpoint's state_dict is
Lightning's EMA average, else ``raw``), ``kind`` (``toy`` / ``image``), ``sampler``, ``steps``, ``n``,
``repeats``, ``seed``, ``sampling_seconds``, ``samples_per_s``, then ``quality`` (toy: see
:meth:`ddpm.evaluation.toy.RepeatedQuality.as_dict`) or ``images`` (see
:meth:`ddpm.evaluation.images.ClassifierQuality.as_dict`) and ``fid`` (``fid``, ``n_fake``, ``n_real``),
and ``bpd`` (:meth:`ddpm.likelihood.VariationalBound.as_dict` plus ``seconds``, and for toy data
``bits_per_dim_raw_units``). A section that was not computed holds ``{"skipped": "<why>"}``. The numbers
are also added to the run's W&B run (same id and mode) as summary values under ``eval/<name>/``.

``--compare-samplers`` scores a grid of samplers instead of one (:mod:`ddpm.evaluation.sampler_comparison`):
the overrides are comma lists, Hydra multirun style, and the grid is their cross product (each option's other
keys at their conf defaults); without overrides, the default grid: DDPM over all T steps (the reference), DDIM
10/20/50/100, DPM-Solver++ 2M 5/10/20, UniPC 5/10/20 and Heun 3/5/10 (those with steps > T are left out, with
a line saying so; in a given grid they are an error). Each combination gets the quality figure above (toy: the
energy-distance ratio; images: the classifier's Fréchet ratio, no FID) over the same ``--n``, ``--repeats``
and ``--seed``, its NFE (``sampler.nfe``: network evaluations per sample) and its sampling wall seconds.
``<run>/eval/sampler_comparison.json`` holds every row (label, option, overrides, nfe, quality
mean/std/interval, seconds, on_front_nfe, on_front_seconds, ...), ``sampler_comparison.md`` the table sorted
by NFE with the Pareto-front rows marked (also printed) and ``sampler_comparison.png`` quality against NFE and
against seconds. ``--out x.json`` puts the three at ``x.json``, ``x.md`` and ``x.png``; a new comparison
replaces the files of the last one. ``--no-quality`` and ``--bpd`` are refused with it (the bound does not
depend on the sampler), and a comparison adds nothing to W&B.

``--guidance 0,1,2,4`` (class-conditional runs) scores each classifier-free guidance scale w on ``--n``
samples per class (default: toy 500, images 100), every scale drawing the same classes from the same seed:
toy runs the fraction of samples nearest their class's mode and the per-class quality ratio, image runs the
offline classifier's accuracy on the requested labels and its Fréchet ratio
(:mod:`ddpm.evaluation.guidance_curve`). ``<run>/eval/guidance_<sampler>_seed<s>.json`` holds the rows,
the ``.png`` beside it the trade-off curve; with ``--out`` both go under that name.

``--ema-sweep 0.02,0.05,0.1`` (a run trained with ``callbacks/ema=power``) rebuilds the weights of each EMA
length at the last snapshot from the run's snapshots (:func:`ddpm.ema_snapshots.reconstruct`, EDM2 sec. 3.2),
scores each with the run's sampler and the quality figure above (same ``--n``, ``--repeats``, ``--seed``), and
the checkpoint's own EMA weights beside them; it prints the table, names the best length, and writes
``<run>/eval/ema_sweep.json`` and ``ema_sweep.png`` (quality against the length), and adds the figures to the
run's W&B run under ``eval/ema_sweep/``. ``ddpm-ema RUN --sigma-rel <best>`` then writes those weights.

Every value (sampler overrides, ``--device``, ...) and the output folders are checked before the checkpoint
is loaded: a bad one is a one-line error with exit code 2 (a comparison's combinations too; steps > T once the
checkpoint has given T, still before any sampling). The figures are printed before the JSON is written, so
a failing write (exit code 1) never hides them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ddpm.cli.common import (
    add_run_arguments,
    check_guidance,
    check_run_arguments,
    ensure_output_folder,
    ensure_writable,
    fail,
    load_from_args,
    require_conditional,
    sampler_label,
)
from ddpm.config import ConfigError, first_line
from ddpm.data.toy import ToyData
from ddpm.safe_writes import WriteError, write_file, write_files
from ddpm.samplers import NonFiniteSampleError
from ddpm.samplers.base import require_chain

if TYPE_CHECKING:
    from ddpm.build import LoadedRun
    from ddpm.evaluation.classifier import ImageClassifierMetric
    from ddpm.evaluation.sampler_comparison import ComparisonRow, Scored

__all__ = ["evaluate", "main", "sampler_comparison"]

DEFAULT_TOY_N = 2000
#: images: at most this many samples per draw (the floor needs as many held-out images)
DEFAULT_IMAGE_N = 5000
#: the files of --compare-samplers in <run>/eval/ (the .json's name; the .md and .png share its stem)
COMPARISON_NAME = "sampler_comparison.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddpm-eval",
        description="Evaluate a trained ddpm-lab run (run folder or .ckpt) with its EMA weights.",
        epilog="Values and the output folders' writability are checked before the checkpoint is loaded; "
        "the figures are printed before the JSON is written.",
    )
    add_run_arguments(p, seed_help="RNG seed; draw k uses seed + k (default 0)")
    p.add_argument(
        "--n", type=int, default=None, help="samples per draw (toy: 2000; images: the held-out size)"
    )
    p.add_argument("--repeats", type=int, default=5, help="independent sample draws (default 5)")
    p.add_argument("--no-quality", action="store_true", help="skip sampling and the quality metrics")
    p.add_argument("--bpd", action="store_true", help="also compute the variational bound in bits/dim")
    p.add_argument("--bpd-n", type=int, default=1000, help="held-out samples for --bpd (default 1000)")
    p.add_argument(
        "--bpd-t-samples",
        type=int,
        default=None,
        help="sampled timesteps per datum for --bpd (unbiased); default: all T terms",
    )
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="classifier cache (default ~/.cache/ddpm-lab)"
    )
    p.add_argument("--inception-weights", default=None, help="Inception weights for FID (never downloaded)")
    p.add_argument("--fid-real", type=int, default=10000, help="real training images for FID (default 10000)")
    p.add_argument(
        "--compare-samplers",
        action="store_true",
        help="score a grid of samplers, quality against NFE and seconds: the overrides are comma lists "
        "(sampler=ddim,unipc sampler.steps=5,10 is their cross product; none: the default grid); writes "
        "<run>/eval/sampler_comparison.json, .md and .png",
    )
    p.add_argument(
        "--fit-steps",
        type=int,
        default=None,
        metavar="N",
        help="fit an N-step schedule to the run (GITS: dynamic programming over a UniPC-3 teacher on 100 "
        "logsnr points, --n samples, default 256), print it and write <run>/eval/fitted_<N>.json; sample "
        "with it through sampler.timesteps=[...]",
    )
    p.add_argument(
        "--guidance",
        default=None,
        help="class-conditional runs: comma-separated guidance scales (0,1,2,4) to score the class fidelity "
        "against quality trade-off; writes <run>/eval/guidance_*.json and .png",
    )
    p.add_argument(
        "--ema-sweep",
        default=None,
        metavar="S1,S2,...",
        help="a run trained with callbacks/ema=power: comma-separated EMA lengths sigma_rel (0.02,0.05,0.1) "
        "to rebuild from its snapshots and score; writes <run>/eval/ema_sweep.json and .png",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .json (default <run>/eval/<name>.json); with --compare-samplers the .md and .png go "
        "beside it under the same name",
    )
    p.add_argument(
        "--no-wandb", action="store_true", help="do not add the results to the run's W&B run (summary)"
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, low in (
        ("--n", args.n, 2),
        ("--repeats", args.repeats, 1),
        ("--bpd-n", args.bpd_n, 1),
        ("--bpd-t-samples", args.bpd_t_samples, 1),
        ("--fid-real", args.fid_real, 2),
    ):
        if value is not None and value < low:
            fail(f"{flag}={value} is invalid; it must be an integer >= {low}")
    if args.fit_steps is not None:
        if args.fit_steps < 1:
            fail(f"--fit-steps={args.fit_steps} is invalid; it must be an integer >= 1 (at most 100)")
        if args.fit_steps > 100:
            fail(f"--fit-steps={args.fit_steps} is invalid; the schedule is chosen among 100 grid points")
        for flag, given in (
            ("--compare-samplers", args.compare_samplers),
            ("--bpd", args.bpd),
            ("--guidance", args.guidance is not None),
            ("--no-quality", args.no_quality),
        ):
            if given:
                fail(
                    f"--fit-steps with {flag}: fitting a schedule is an evaluation of its own; run them apart"
                )
    if args.compare_samplers and args.no_quality:
        fail("--compare-samplers with --no-quality leaves nothing to compare: it compares sample quality")
    if args.compare_samplers and args.bpd:
        fail(
            "--compare-samplers with --bpd: the bound does not depend on the sampler; "
            "run ddpm-eval RUN --bpd --no-quality on its own"
        )
    if args.guidance is not None:
        from ddpm.evaluation.guidance_curve import parse_scales

        try:
            args.scales = parse_scales(args.guidance)
        except ValueError as err:
            fail(str(err))
        for w in args.scales:
            check_guidance(w)  # the upper bound: a huge scale overflows in the sampler, after the work
        for flag, given in (
            ("--compare-samplers", args.compare_samplers),
            ("--bpd", args.bpd),
            ("--no-quality", args.no_quality),
        ):
            if given:
                fail(
                    f"--guidance with {flag}: the guidance curve is an evaluation of its own; run them apart"
                )
    if args.ema_sweep is not None:
        args.sigma_rels = _parse_sigma_rels(args.ema_sweep)
        for flag, given in (
            ("--compare-samplers", args.compare_samplers),
            ("--bpd", args.bpd),
            ("--no-quality", args.no_quality),
            ("--guidance", args.guidance is not None),
            ("--fit-steps", args.fit_steps is not None),
        ):
            if given:
                fail(f"--ema-sweep with {flag}: the EMA sweep is an evaluation of its own; run them apart")
    if args.no_quality and not args.bpd:
        fail("--no-quality without --bpd leaves nothing to evaluate")
    if args.out is not None and args.out.suffix != ".json":
        fail(f"--out={str(args.out)!r} must end in .json")
    # draw k uses seed + k; a comparison's overrides are comma lists, read by _comparison_grid instead
    check_run_arguments(args, draws=max(args.repeats, 1), overrides=not args.compare_samplers)
    if args.compare_samplers:
        args.grid = _comparison_grid(args.overrides)


def _parse_sigma_rels(text: str) -> list[float]:
    """``--ema-sweep``'s lengths: comma-separated, each a valid sigma_rel, no repeats; or a one-line error."""
    from ddpm.ema import sigma_rel_to_gamma

    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            fail(f"--ema-sweep={text!r}: {part.strip()!r} is not a number; give lengths such as 0.05,0.1")
        try:
            sigma_rel_to_gamma(value)
        except ValueError as err:
            fail(f"--ema-sweep: {first_line(err)}")
        values.append(value)
    if len(set(values)) != len(values):
        fail(f"--ema-sweep={text!r} repeats a length; give each once")
    return values


def _comparison_grid(overrides: list[str]) -> list[list[str]]:
    """The combinations of ``--compare-samplers``, every one checked as far as it can be without the run; a
    bad one is a one-line error (status 2)."""
    from ddpm.evaluation.sampler_comparison import DEFAULT_GRID
    from ddpm.sampler_overrides import check_sampler_overrides, sampler_grid

    try:
        if overrides:
            return sampler_grid(overrides)
        for combo in DEFAULT_GRID:  # fixed, but a conf/sampler/ file it names may have changed
            check_sampler_overrides(list(combo))
    except ConfigError as err:
        fail(str(err))
    return [list(combo) for combo in DEFAULT_GRID]


def _check_outputs(args: argparse.Namespace) -> None:
    """Before the checkpoint is read: the JSON's folder, and the run's W&B folder when results go there."""
    run_dir = ensure_output_folder(
        args, "eval", "the sampler comparison" if args.compare_samplers else "the evaluation"
    )
    if not args.compare_samplers and not args.no_wandb and (run_dir / ".wandb_id").is_file():
        ensure_writable(run_dir / "wandb", "the W&B summary", "; pass --no-wandb to skip it")


def _weights_kind(checkpoint: Path) -> str:
    from ddpm.interop import weights_kind

    return weights_kind(checkpoint)


def _bpd(run: LoadedRun, args: argparse.Namespace, log: list[str]) -> dict[str, Any]:
    from ddpm.likelihood import variational_bound
    from ddpm.losses import infer_bins

    data = run.data
    x = data.normalize(data.held_out(args.bpd_n)).to(run.model.device)  # the bound is on the network's scale
    if len(x) == 0:
        raise ConfigError("the run's data has no validation data for --bpd")
    if data.kind == "image":
        bins = infer_bins(x)
        decoder = "discretized" if bins else "gaussian"
        if bins is None:
            log.append(
                "bits/dim: held-out images are not on an even grid in [-1, 1]; continuous decoder used"
            )
    else:
        bins, decoder = None, "gaussian"
    start = time.perf_counter()
    vb = variational_bound(
        require_chain(run.model.diffusion, "--bpd"),
        run.model.net,
        x,
        decoder=decoder,
        bins=bins or 256,
        t_samples=args.bpd_t_samples,
        batch_size=args.batch_size,
        generator=torch.Generator(device=x.device).manual_seed(args.seed),
        progress=True,
    )
    out = {**vb.as_dict(), "seconds": time.perf_counter() - start}
    log.append(f"Bits/dim: {vb.headline()}")
    std = data.std if isinstance(data, ToyData) else None
    if decoder == "gaussian" and std is not None and std.numel() in (1, vb.dims):
        # -log p_raw(x) = -log p_net(z) + sum_d log std_d for z = (x - mean) / std.
        log_std = std.double().log().expand(vb.dims).mean() / math.log(2)
        out["bits_per_dim_raw_units"] = vb.bits_per_dim + float(log_std)
        log.append(f"          {out['bits_per_dim_raw_units']:.4f} bits/dim in the data's raw units")
    return out


def _toy_quality(run: LoadedRun, draw, n: int, repeats: int, log: list[str]) -> dict[str, Any]:
    from ddpm.evaluation.toy import repeated_quality

    data = run.data
    assert isinstance(data, ToyData)  # called for kind "toy": ToyData is the one toy data class
    held_out, pool = data.held_out(), data.training_data()
    n = min(n, len(held_out), len(pool))  # sample only what the floor can match
    result = repeated_quality(lambda k: draw(k, n), held_out, pool, n, repeats)
    log.append(f"Quality: {result.headline()}")
    return {"metric": "energy_distance", **result.as_dict()}


def _data_dir(run: LoadedRun) -> str | None:
    data = run.config.get("data", {})
    for key in ("data_dir", "root", "path"):
        if data.get(key):
            return str(data.get(key))
    paths = run.config.get("paths", {})
    return str(paths.get("data_dir")) if paths.get("data_dir") else None


def _classifier(
    run: LoadedRun, cache_dir: Path | None, log: Callable[[str], None]
) -> ImageClassifierMetric | str:
    """The offline classifier metric of an image run's dataset (trained once and cached), or why there is
    none, as a string (:func:`ddpm.evaluation.images.classifier_metric`)."""
    from ddpm.evaluation.images import classifier_metric

    dataset = run.config.get("data", {}).get("dataset")
    return classifier_metric(dataset, _data_dir(run), cache_dir, device=run.model.device, log=log)


def _load(args: argparse.Namespace, overrides: list[str]) -> LoadedRun:
    """The run (or ``--pretrained`` weights), with ``args.batch_size`` set to the batch size every sampling
    and the bound use: ``--batch-size``, else one chosen from the free memory (said on a line)."""
    from ddpm.memory import sampling_batch_size

    run = load_from_args(args, overrides)
    model = run.model
    args.batch_size, batches = sampling_batch_size(args.batch_size, model.net, model.data_shape, model.device)
    print(f"Network evaluations in {batches}")
    return run


def _drawer(
    run: LoadedRun, sampler: Any, args: argparse.Namespace, timing: dict[str, float]
) -> Callable[[int, int], torch.Tensor]:
    """``draw(k, n)``: n samples with ``sampler`` and seed ``--seed + k`` in the data's units; the sampling
    alone is timed, into ``timing`` (``seconds``, ``samples``)."""
    model = run.model
    image = run.data.kind == "image"

    def draw(k: int, n: int) -> torch.Tensor:
        gen = torch.Generator(device=model.device).manual_seed(args.seed + k)
        start = time.perf_counter()
        x = model.sample(n, sampler=sampler, generator=gen, progress=True, batch_size=args.batch_size)
        timing["seconds"] += time.perf_counter() - start
        timing["samples"] += n
        out = run.data.denormalize(x).cpu()
        return out.clamp(0, 1) if image else out  # images: denormalize gives [0, 1]; clip the overshoot

    return draw


def _header(run: LoadedRun, sampler: Any, steps: int) -> dict[str, Any]:
    """What every result file starts with: the run, its weights and the sampler."""
    return {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "weights": _weights_kind(run.checkpoint),
        "kind": run.data.kind,
        "sampler": repr(sampler),
        "steps": steps,
    }


def evaluate(run: LoadedRun, sampler: Any, args: argparse.Namespace, log: list[str]) -> dict[str, Any]:
    """Run the requested evaluations on a loaded run; lines for the person go to ``log``."""
    model = run.model
    steps = len(sampler.timesteps(model.diffusion))
    image = run.data.kind == "image"
    result: dict[str, Any] = {**_header(run, sampler, steps), "repeats": args.repeats, "seed": args.seed}
    timing: dict[str, float] = {"seconds": 0.0, "samples": 0}
    draw = _drawer(run, sampler, args, timing)

    if args.no_quality:
        result["quality"] = {"skipped": "--no-quality"}
    elif image:
        from ddpm.evaluation.images import image_quality

        metric = _classifier(run, args.cache_dir, log.append)
        if isinstance(metric, str):
            log.append(f"Classifier metric skipped: {metric}")
            result["images"], result["fid"] = {"skipped": metric}, {"skipped": metric}
        else:
            images = image_quality(
                metric,
                draw,
                args.n or DEFAULT_IMAGE_N,
                args.repeats,
                inception_weights=args.inception_weights,
                fid_real=args.fid_real,
                device=model.device,
            )
            log.extend(images.lines())
            result["images"], result["fid"] = images.as_dicts()
        result["n"] = result["images"].get("n")
    else:
        n = args.n or DEFAULT_TOY_N
        result["quality"] = _toy_quality(run, draw, n, args.repeats, log)
        result["n"] = result["quality"]["n"]
    if timing["samples"]:
        result["sampling_seconds"] = timing["seconds"]
        result["samples_per_s"] = timing["samples"] / timing["seconds"]
        log.append(
            f"Sampling: {timing['samples']} samples in {timing['seconds']:.1f} s "
            f"({result['samples_per_s']:.1f} samples/s, {steps} network evaluations each)"
        )
    result["bpd"] = _bpd(run, args, log) if args.bpd else {"skipped": "no --bpd"}
    return result


def _numbers(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    """Numeric leaves of a nested dict as ``prefix/key/subkey`` (lists, e.g. per-draw values, left out)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(_numbers(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _not_in_the_same_second(folder: Path, run_id: str) -> None:
    """W&B names a run's local folder by the second it started: a second part of the same run started in
    that second would write into the first part's folder. Wait for the next second if so."""
    for _ in range(12):
        stamps = {time.strftime("%Y%m%d_%H%M%S"), time.strftime("%Y%m%d_%H%M%S", time.gmtime())}
        if not any(
            (folder / f"{kind}-{stamp}-{run_id}").exists()
            for kind in ("run", "offline-run")
            for stamp in stamps
        ):
            return
        time.sleep(0.25)


def log_to_wandb(run: LoadedRun, result: dict[str, Any], tag: str) -> str:
    """Add the figures to the W&B run the training wrote (same id, same mode), as summary values.

    Summary, not history: an evaluation has no training step, and W&B drops history rows whose step is
    below the run's last one. Returns a line saying what was done.
    """
    from omegaconf import OmegaConf

    from ddpm.config import CONF_DIR
    from ddpm.stored_config import read_wandb_id

    run_id = read_wandb_id(run.run_dir)  # checked: a W&B run id
    if "wandb" not in run.loggers or run_id is None:
        return "W&B: this run has no W&B run (logger without wandb); results are in the JSON only"
    import wandb

    _not_in_the_same_second(run.run_dir / "wandb", run_id)
    # the logger's settings are today's conf/logger/wandb.yaml (its mode among them), never the run's
    wb = OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml").wandb
    mode: Literal["offline", "online"] = "offline" if wb.get("offline", True) else "online"
    wandb_run = wandb.init(
        id=run_id,
        project=str(wb.get("project")),
        dir=str(run.run_dir),
        resume="allow",
        mode=mode,
        settings=wandb.Settings(silent=True),
    )
    figures = _numbers({k: v for k, v in result.items() if k not in ("seed", "repeats")}, f"eval/{tag}")
    wandb_run.summary.update(figures)
    wandb_run.finish()
    return f"W&B: {len(figures)} figures added to run {wandb_run.id} ({mode}) under eval/{tag}/"


# ---------------------------------------------------------------------------- --compare-samplers
def _comparison_cases(run: LoadedRun, grid: list[list[str]], default: bool) -> tuple[list[Any], list[str]]:
    """A sampler for each combination, checked against the run's chain before any sampling; a bad
    combination of a given grid is a one-line error (status 2). The default grid's combinations that do not
    fit the run (steps > T on a short chain) are left out, each with a line saying so."""
    from ddpm.evaluation.sampler_comparison import ComparisonCase

    cases, skipped = [], []
    for combo in grid:
        try:
            cases.append(ComparisonCase(combo, run.make_sampler(combo)))
        except ConfigError as err:
            reason = str(err).strip().splitlines()[0].removeprefix("sampler: ")
            if not default:
                fail(f"{' '.join(combo)}: {reason}")
            skipped.append(f"{' '.join(combo)} left out of the default grid: {reason}")
    return cases, skipped


def _comparison_scorer(run: LoadedRun, args: argparse.Namespace) -> tuple[Callable[[Any], Scored], str, int]:
    """The function that scores one sampler as plain ddpm-eval does (toy: the energy-distance ratio; images:
    the classifier's Fréchet ratio, no FID), the metric's name, and the samples per draw. An image run with no
    classifier is a one-line error (status 2) before any sampling."""
    from ddpm.evaluation.sampler_comparison import Scored
    from ddpm.evaluation.toy import Spread

    quiet: list[str] = []  # each row's own line says it shorter than the metrics' headlines
    if run.data.kind == "image":
        from ddpm.evaluation.images import classifier_quality

        metric = _classifier(run, args.cache_dir, quiet.append)
        if isinstance(metric, str):
            fail(f"--compare-samplers needs the classifier metric of image runs: {metric}")
        n = min(args.n or DEFAULT_IMAGE_N, len(metric.test_features))
        name = "classifier Fréchet distance / floor"

        def quality(draw: Callable[[int, int], torch.Tensor]) -> dict[str, Any]:
            return classifier_quality(metric, draw, n, args.repeats).as_dict()

    else:
        data = run.data
        assert isinstance(data, ToyData)  # kind "toy": ToyData is the one toy data class
        n = min(args.n or DEFAULT_TOY_N, len(data.held_out()), len(data.training_data()))
        name = "energy distance / floor"

        def quality(draw: Callable[[int, int], torch.Tensor]) -> dict[str, Any]:
            return _toy_quality(run, draw, n, args.repeats, quiet)

    def score(sampler: Any) -> Scored:
        timing: dict[str, float] = {"seconds": 0.0, "samples": 0}
        details = quality(_drawer(run, sampler, args, timing))
        return Scored(Spread(**details["ratio"]), timing["seconds"], int(timing["samples"]), details)

    return score, name, n


def _comparison_markdown(result: dict[str, Any], table: str, skipped: list[str]) -> str:
    """The .md file: what was measured, the table, and what the default grid left out."""
    lines = [
        f"# Sampler comparison of {result['run_dir']}",
        "",
        f"Checkpoint `{result['checkpoint']}` ({result['weights']} weights), {result['kind']} data, "
        f"T={result['T']}; {result['repeats']} draws of n={result['n']} samples per combination (draw k uses "
        f"seed {result['seed']} + k), on {result['device']}.",
        "",
        f"Quality: {result['metric']}, mean ± std over the draws (lower is better; 1 = as good as held-out "
        "data). NFE: network evaluations per sample. Seconds: wall time spent sampling, all draws. "
        "front: on the Pareto front of quality against NFE (`NFE`) or against seconds (`s`), by the means; "
        "a difference smaller than the std is within the draws' noise, and seconds depend on the machine's "
        "load.",
        "",
        table.rstrip("\n"),
    ]
    if skipped:
        lines += ["", *skipped]
    return "\n".join(lines) + "\n"


def sampler_comparison(args: argparse.Namespace) -> int:
    """``ddpm-eval RUN --compare-samplers``: score every combination of ``args.grid`` (checked by
    :func:`_check_args`), print the table and write ``sampler_comparison.json``, ``.md`` and ``.png``."""
    from tqdm.auto import tqdm

    from ddpm.evaluation.sampler_comparison import compare_samplers, comparison_table
    from ddpm.viz.figures import plot_sampler_comparison, save_figure

    run = _load(args, [])
    cases, skipped = _comparison_cases(run, args.grid, default=not args.overrides)
    score, metric, n = _comparison_scorer(run, args)
    model = run.model
    weights = _weights_kind(run.checkpoint)
    print(
        f"Sampler comparison of {run.checkpoint}: {len(cases)} combinations, "
        f"{args.repeats} draws of n={n} each"
    )
    for line in skipped:
        print(line)

    def warm_up(sampler: Any) -> None:
        gen = torch.Generator(device=model.device).manual_seed(args.seed)
        model.sample(min(n, args.batch_size or n), sampler=sampler, generator=gen, progress=False)

    try:
        rows: list[ComparisonRow] = compare_samplers(
            cases, model.diffusion, score, warm_up=warm_up, log=tqdm.write
        )
    except (ConfigError, ValueError) as err:
        fail(str(err).strip().splitlines()[0])
    result: dict[str, Any] = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "weights": weights,
        "kind": run.data.kind,
        "metric": metric,
        "T": getattr(model.diffusion, "num_timesteps", None),  # None: a continuous process
        "n": next((r.details["n"] for r in rows if "n" in r.details), n),
        "repeats": args.repeats,
        "seed": args.seed,
        "device": str(model.device),
        "batch_size": args.batch_size,
        "grid": "default" if not args.overrides else list(args.overrides),
        "left_out": skipped,
        "rows": [r.as_dict() for r in rows],
    }
    table = comparison_table(rows, metric)
    # The table first: it is on screen even if a write below fails.
    ema = "the EMA average" if weights == "ema" else "no EMA in this checkpoint"
    print(f"Weights: {weights} ({ema})")
    print(table, end="")
    out = args.out or run.run_dir / "eval" / COMPARISON_NAME
    paths = [out, out.with_suffix(".md"), out.with_suffix(".png")]
    text = json.dumps(result, indent=2, allow_nan=True) + "\n"
    markdown = _comparison_markdown(result, table, skipped)
    figure = plot_sampler_comparison(result["rows"], metric)

    def write(tmp: list[Path]) -> None:
        tmp[0].write_text(text)
        tmp[1].write_text(markdown)
        save_figure(figure, tmp[2])

    try:
        write_files(paths, write)
    except WriteError as err:
        fail(str(err), code=1)
    print(f"Wrote {', '.join(map(str, paths))}")
    return 0


def guidance_eval(args: argparse.Namespace) -> int:
    """``--guidance``: the trade-off curve over the scales; the figures are printed before the files are
    written."""
    from ddpm.evaluation.guidance_curve import guidance_curve

    run = _load(args, args.overrides)
    require_conditional(run, "--guidance")
    sampler = run.sampler
    steps = len(sampler.timesteps(run.model.diffusion))
    image = run.data.kind == "image"
    n = args.n or (100 if image else 500)
    print(
        f"Guidance curve of {run.checkpoint} with {sampler!r}: w = {', '.join(f'{w:g}' for w in args.scales)}"
    )
    log: list[str] = []
    metric: ImageClassifierMetric | None = None
    if image:
        found = _classifier(run, args.cache_dir, log.append)
        if isinstance(found, str):
            fail(f"the guidance curve of an image run needs the offline classifier: {found}")
        metric = found
    start = time.perf_counter()
    try:
        rows = guidance_curve(
            run.model,
            run.data,
            args.scales,
            n,
            seed=args.seed,
            metric=metric,
            batch_size=args.batch_size,
            log=print,
            sampler=sampler,
        )
    except (ConfigError, ValueError) as err:
        fail(str(err).strip().splitlines()[0])
    except NonFiniteSampleError as err:
        fail(f"{first_line(err)}; nothing was written", code=1)
    result = {
        **_header(run, sampler, steps),
        "seed": args.seed,
        "n_per_class": n,
        "seconds": time.perf_counter() - start,
        "rows": rows,
    }
    if metric is not None:
        result["classifier"] = metric.describe()
    out = args.out or run.run_dir / "eval" / f"guidance_{sampler_label(sampler, steps)}_seed{args.seed}.json"
    from ddpm import viz

    fig = viz.plot_guidance_curve(rows)
    text = json.dumps(result, indent=2, allow_nan=True) + "\n"
    try:
        write_files(
            [out, out.with_suffix(".png")],
            lambda tmp: (tmp[0].write_text(text), viz.save_figure(fig, tmp[1])),
        )
    except WriteError as err:
        fail(str(err), code=1)
    print(f"Wrote {out} and {out.with_suffix('.png')}")
    return 0


def ema_sweep(args: argparse.Namespace) -> int:
    """``--ema-sweep``: each EMA length rebuilt from the run's power-EMA snapshots and scored as
    ``--compare-samplers`` scores a sampler, beside the checkpoint's own EMA; the table and the best length
    are printed before ``ema_sweep.json`` and ``.png`` are written."""
    from ddpm.ema_snapshots import SNAPSHOT_DIR, list_snapshots, reconstruct
    from ddpm.viz.figures import plot_ema_sweep, save_figure

    run = _load(args, args.overrides)
    folder = run.run_dir / SNAPSHOT_DIR
    try:
        snapshots = list_snapshots(folder)
    except ConfigError as err:
        fail(str(err))
    if not snapshots:
        fail(f"{folder} holds no power-EMA snapshots: train the run with callbacks/ema=power")
    score, metric, n = _comparison_scorer(run, args)
    sampler, model = run.sampler, run.model
    print(
        f"EMA sweep of {run.run_dir}: {len(args.sigma_rels)} lengths at step "
        f"{max(s.step for s in snapshots)}, {args.repeats} draws of n={n} each with {sampler!r}"
    )
    own = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        fixed = score(sampler).quality.as_dict()  # the checkpoint's EMA weights: the fixed decay's
        rows = []
        for sigma_rel in args.sigma_rels:
            rebuilt = reconstruct(snapshots, sigma_rel)
            missing, unexpected = model.load_state_dict(rebuilt.state, strict=False)
            if unexpected or len(missing) == len(own):
                fail(f"the snapshots in {folder} do not hold the weights of {run.checkpoint}'s model")
            quality = score(sampler).quality.as_dict()
            rows.append(
                {"sigma_rel": sigma_rel, "gamma": rebuilt.gamma, "step": rebuilt.step, "quality": quality}
            )
            print(f"sigma_rel {sigma_rel:g}: {quality['mean']:.3g} ± {quality['std']:.2g}")
    except NonFiniteSampleError as err:
        fail(f"{first_line(err)}; nothing was written", code=1)
    finally:
        model.load_state_dict(own)
    best = min(rows, key=lambda r: r["quality"]["mean"])
    lines = [f"| sigma_rel | {metric} (mean ± std) |", "|---:|---:|"]
    lines += [
        f"| {r['sigma_rel']:g} | {r['quality']['mean']:.3g} ± {r['quality']['std']:.2g} |" for r in rows
    ]
    lines.append(f"| the checkpoint's EMA | {fixed['mean']:.3g} ± {fixed['std']:.2g} |")
    print("\n".join(lines))
    better = "better than" if best["quality"]["mean"] < fixed["mean"] else "not better than"
    print(
        f"Best: sigma_rel {best['sigma_rel']:g} ({best['quality']['mean']:.3g}), {better} the checkpoint's "
        f"EMA ({fixed['mean']:.3g}); ddpm-ema {run.run_dir} --sigma-rel {best['sigma_rel']:g} writes its "
        "weights"
    )
    result = {
        **_header(run, sampler, len(sampler.timesteps(model.diffusion))),
        "metric": metric,
        "n": n,
        "repeats": args.repeats,
        "seed": args.seed,
        "rows": rows,
        "checkpoint_ema": fixed,
        "best_sigma_rel": best["sigma_rel"],
        "by_sigma_rel": {f"{r['sigma_rel']:g}": r["quality"]["mean"] for r in rows},
    }
    out = args.out or run.run_dir / "eval" / "ema_sweep.json"
    figure = plot_ema_sweep(rows, metric, fixed)
    text = json.dumps(result, indent=2, allow_nan=True) + "\n"
    try:
        write_files(
            [out, out.with_suffix(".png")], lambda tmp: (tmp[0].write_text(text), save_figure(figure, tmp[1]))
        )
    except WriteError as err:
        fail(str(err), code=1)
    print(f"Wrote {out} and {out.with_suffix('.png')}")
    if not args.no_wandb:
        print(
            log_to_wandb(
                run,
                {"best_sigma_rel": best["sigma_rel"], "by_sigma_rel": result["by_sigma_rel"]},
                "ema_sweep",
            )
        )
    return 0


def fit_schedule(args: argparse.Namespace) -> int:
    """``--fit-steps N``: a step schedule fitted to the run (:func:`ddpm.samplers.fitting.fit_timesteps`)."""
    from ddpm.samplers.fitting import GRID_STEPS, fit_timesteps

    run = _load(args, args.overrides)
    n = args.n or 256
    shape = (n, *run.model.data_shape)
    print(
        f"Fitting a {args.fit_steps}-step schedule to {run.checkpoint} (GITS: {n} teacher samples, "
        f"UniPC-3 on {GRID_STEPS} logsnr points)"
    )
    try:
        fitted = fit_timesteps(
            run.model.net,
            run.model.diffusion,
            args.fit_steps,
            shape,
            generator=torch.Generator(device=run.model.device).manual_seed(args.seed),
            progress=True,
            device=run.model.device,
        )
    except NonFiniteSampleError as err:
        fail(f"{first_line(err)}; nothing was written", code=1)
    listed = ",".join(str(t) for t in fitted)
    print(f"Fitted timesteps: [{listed}] (path cost {fitted.cost:.4g})")
    print(f"Sample with it:   ddpm-sample {args.run} 'sampler.timesteps=[{listed}]'")
    out = args.out or run.run_dir / "eval" / f"fitted_{args.fit_steps}.json"
    result = {
        "steps": args.fit_steps,
        "timesteps": list(fitted),
        "cost": fitted.cost,
        "method": "GITS (Chen et al. 2024): dynamic programming over DDIM jumps on a UniPC-3 teacher",
        "grid": fitted.grid,
        "n": n,
        "seed": args.seed,
        "checkpoint": str(run.checkpoint),
    }
    text = json.dumps(result, indent=2) + "\n"
    try:
        write_file(out, lambda path: path.write_text(text))
    except WriteError as err:
        fail(str(err), code=1)
    print(f"Wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    # intermixed: the overrides may follow a flag (RUN --compare-samplers sampler=ddim,unipc), not only RUN
    args = _parser().parse_intermixed_args(argv)
    _check_args(args)
    _check_outputs(args)
    if args.compare_samplers:
        return sampler_comparison(args)
    if args.fit_steps is not None:
        return fit_schedule(args)
    if args.guidance is not None:
        return guidance_eval(args)
    if args.ema_sweep is not None:
        return ema_sweep(args)
    run = _load(args, args.overrides)
    if args.bpd and run.model.diffusion.discrete is False:
        fail(
            f"--bpd is DDPM's variational bound over a chain of T steps; this run's process is "
            f"{type(run.model.diffusion).__name__} (continuous), whose likelihood (the probability-flow "
            "ODE's) ddpm-eval does not compute: drop --bpd"
        )
    sampler = run.sampler
    print(f"Evaluating {run.checkpoint} with {sampler!r}")
    log: list[str] = []
    try:
        result = evaluate(run, sampler, args, log)
    except (ConfigError, ValueError) as err:
        fail(str(err).strip().splitlines()[0])
    except NonFiniteSampleError as err:  # the run's weights or schedule, not a value given here
        fail(f"{first_line(err)}; nothing was written", code=1)
    label = sampler_label(sampler, result["steps"])
    tag = f"{label}_n{result.get('n') or 0}_k{args.repeats}_seed{args.seed}" + ("_bpd" if args.bpd else "")
    out = args.out or run.run_dir / "eval" / f"{tag}.json"
    # The figures first: they are on screen even if a write below fails.
    ema = "the EMA average" if result["weights"] == "ema" else "no EMA in this checkpoint"
    print(f"Weights: {result['weights']} ({ema})")
    for line in log:
        print(line)
    text = json.dumps(result, indent=2, allow_nan=True) + "\n"
    try:
        write_file(out, lambda path: path.write_text(text))
    except WriteError as err:
        fail(str(err), code=1)
    print(f"Wrote {out}")
    if not args.no_wandb:
        try:
            print(log_to_wandb(run, result, tag))
        except OSError as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            fail(f"could not add the results to the run's W&B run: {reason}", code=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
