"""The classifier-free guidance trade-off of a class-conditional run: fidelity to the requested class against
sample quality, one row per guidance scale w (Ho & Salimans 2022, fig. 2's IS / FID curve, with the figures
this project measures offline).

Toy runs: the fraction of samples nearest their class's mode and the per-class quality ratio
(:func:`ddpm.evaluation.toy.class_quality`). Image runs: the offline classifier's accuracy on the requested
labels and its Fréchet distance over the held-out floor (:mod:`ddpm.evaluation.classifier`). Every scale
draws the same classes from the same seed, so the rows differ by w alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ddpm.sampling_model import balanced_labels

__all__ = ["guidance_curve", "parse_scales"]


def parse_scales(text: str) -> list[float]:
    """``"0,1,2,4"`` as guidance scales, each a finite number >= 0, or a one-line ValueError."""
    scales = []
    for part in text.split(","):
        try:
            w = float(part)
        except ValueError:
            raise ValueError(
                f"--guidance {text!r}: {part.strip()!r} is not a number; give e.g. 0,1,2,4"
            ) from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"--guidance {text!r}: {part.strip()} is invalid; guidance scales must be >= 0")
        scales.append(w)
    return scales


def _toy_row(model: Any, data: Any, sampler: Any, w: float, n_per_class: int, seed: int) -> dict[str, Any]:
    from ddpm.evaluation.toy import class_quality

    q = class_quality(model, data, n_per_class, seed=seed, guidance_scale=w, sampler=sampler)
    return {
        "guidance_scale": w,
        "n_per_class": n_per_class,
        "nearest_mode": q.nearest_mode,
        "class_ratio_max": q.worst_ratio,
        "class_ratio_mean": float(sum(q.ratios) / len(q.ratios)),
        "class_ratios": q.ratios,
        "nearest_mode_by_class": q.nearest,
        "headline": q.headline(),
    }


def _image_row(
    model: Any,
    data: Any,
    sampler: Any,
    metric: Any,
    w: float,
    n_per_class: int,
    seed: int,
    batch_size: int | None,
) -> dict[str, Any]:
    classes = model.num_classes
    y = balanced_labels(n_per_class * classes, classes)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    x = model.sample(len(y), sampler=sampler, generator=gen, y=y, guidance_scale=w, batch_size=batch_size)
    images = data.denormalize(x).cpu().clamp(0, 1)
    features, probs = metric.features_and_probs(images)
    correct = probs.argmax(1) == y
    by_class = [float(correct[y == k].double().mean()) for k in range(classes)]
    # the Fréchet figure needs equal n on both sides: at most the held-out split's size
    n = min(len(y), len(metric.test_features))
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    frechet = metric._scores(features[keep], probs[keep]).frechet
    floor = metric.floor(n).frechet
    accuracy = float(correct.double().mean())
    return {
        "guidance_scale": w,
        "n_per_class": n_per_class,
        "accuracy": accuracy,
        "accuracy_by_class": by_class,
        "frechet": frechet,
        "frechet_floor": floor,
        "frechet_ratio": frechet / floor if floor > 0 else math.nan,
        "headline": (
            f"w={w:g}: classifier accuracy on the requested labels {100 * accuracy:.1f}% (worst class "
            f"{100 * min(by_class):.1f}%); classifier Fréchet {frechet / floor:.3g} x the held-out floor "
            f"(n={n})"
        ),
    }


def guidance_curve(
    model: Any,
    data: Any,
    scales: Sequence[float],
    n_per_class: int,
    seed: int = 0,
    metric: Any = None,
    batch_size: int | None = None,
    log: Callable[[str], None] = print,
    sampler: Any = None,
) -> list[dict[str, Any]]:
    """One row of figures per guidance scale for a class-conditional ``model`` (``num_classes > 0``).

    Args:
        model: a loaded run's :class:`~ddpm.sampling_model.SamplingModel` (or the training module).
        data: its data class (toy: labelled :class:`~ddpm.data.toy.ToyData`; images: ``ImageData``).
        scales: the guidance scales w (0 unconditional, 1 conditional).
        n_per_class: samples drawn per class at each scale.
        seed: the sampler's seed, the same at every scale.
        metric: images: the offline :class:`~ddpm.evaluation.classifier.ImageClassifierMetric`.
        batch_size: sample in chunks of this size.
        log: where each row's one-line summary goes.
        sampler: another sampler than the model's own.
    """
    if not getattr(model, "num_classes", 0):
        raise ValueError("the guidance curve needs a class-conditional model (num_classes > 0)")
    rows = []
    for w in scales:
        if data.kind == "image":
            if metric is None:
                raise ValueError("image runs need the offline classifier metric for the guidance curve")
            row = _image_row(model, data, sampler, metric, float(w), n_per_class, seed, batch_size)
        else:
            row = _toy_row(model, data, sampler, float(w), n_per_class, seed)
        log(row["headline"])
        rows.append(row)
    return rows
