"""Image sample quality as ``ddpm-eval`` and the training callback report it: typed arguments in, a small
dataclass with the numbers and a ``headline()`` out (as :mod:`ddpm.evaluation.toy` does for toy data).

- :func:`classifier_metric`: the offline classifier of a dataset (:mod:`ddpm.evaluation.classifier`, trained
  once and cached), or one line saying why there is none.
- :func:`classifier_quality`: K independent draws of n images, each scored by the classifier over the
  held-out floor of the same n (:class:`ClassifierQuality`; one draw: :class:`ClassifierDraw`, the figures
  ``ImageSampleCallback`` logs at validation).
- :func:`image_quality`: ``ddpm-eval``'s image figures: the classifier's over K draws, and FID of all the
  drawn images against training images when torch-fidelity and Inception weights are on disk
  (:class:`ImageQuality`, :class:`FIDScore`).
- :func:`fid_reference` and :func:`fid_against_reference`: FID and KID during training against the cached
  training-image statistics, with the real-vs-real floor of the same n (:class:`ReferenceFID`).

Images are float tensors [N, C, H, W] in **[0, 1]**; ``draw(k, n)`` returns n of them for draw k (seed it by
k). Plain PyTorch: no Lightning, no Hydra.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddpm.evaluation.classifier import CLASSIFIER_DATASETS, ClassifierScores, ImageClassifierMetric
from ddpm.evaluation.fid import FIDReference, InceptionFeatures, fid_unavailable_reason, inception_fid
from ddpm.evaluation.toy import Spread, spread

__all__ = [
    "ClassifierDraw",
    "ClassifierQuality",
    "FIDScore",
    "ImageQuality",
    "ReferenceFID",
    "classifier_metric",
    "classifier_quality",
    "fid_against_reference",
    "fid_reference",
    "image_quality",
]

#: the classifier's figures that get a spread over the draws (and over their floors)
SCORE_KEYS = ("frechet", "class_entropy", "confidence", "classifier_score")


def classifier_metric(
    dataset: str | None,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = print,
) -> ImageClassifierMetric | str:
    """The offline classifier metric of ``dataset`` (trained once and cached under ``cache_dir``), or one
    line saying why there is none: no classifier for that dataset, or its files are not on disk.

    ``log`` gets the lines of a first training (its held-out accuracy, where it was cached).
    """
    if dataset not in CLASSIFIER_DATASETS:
        return f"no offline classifier for dataset {dataset!r} (have {', '.join(CLASSIFIER_DATASETS)})"
    try:
        return ImageClassifierMetric.load_or_train(dataset, data_dir, cache_dir, device=device, log=log)
    except FileNotFoundError as err:
        return str(err)


@dataclass
class ClassifierDraw:
    """The classifier's figures for one draw of n images and for n real held-out images (its floor)."""

    scores: ClassifierScores
    floor: ClassifierScores

    @property
    def n(self) -> int:
        """Images in the draw (and in its floor)."""
        return self.scores.n

    @property
    def ratio(self) -> float:
        """The draw's Fréchet distance over the floor's (1.0: as good as held-out real images)."""
        return self.scores.frechet / self.floor.frechet if self.floor.frechet > 0 else math.nan

    def metrics(self, prefix: str = "val/") -> dict[str, float]:
        """The figures a logger gets: ``classifier_frechet``, ``classifier_ratio``, ``class_balance``,
        ``confidence``."""
        return {
            f"{prefix}classifier_frechet": self.scores.frechet,
            f"{prefix}classifier_ratio": self.ratio,
            f"{prefix}class_balance": self.scores.class_entropy,
            f"{prefix}confidence": self.scores.confidence,
        }

    def headline(self) -> str:
        """One line a person reads."""
        return (
            f"classifier Fréchet {self.scores.frechet:.3g} = {self.ratio:.3g}x held-out real images "
            f"(n={self.n})"
        )


@dataclass
class ClassifierQuality:
    """The classifier's figures over K independent draws of n images, each with its held-out floor.

    ``floor_draws`` is K when the held-out split holds K * n images (draw k's floor: the disjoint chunk k),
    else 1 (every draw shares the first n); ``classifier`` is :meth:`ImageClassifierMetric.describe`.
    """

    n: int
    draws: list[ClassifierDraw]
    floor_draws: int
    classifier: dict[str, Any]

    @property
    def repeats(self) -> int:
        """K, the number of draws."""
        return len(self.draws)

    @property
    def ratio(self) -> Spread:
        """The spread of the Fréchet ratio (draw over its floor) over the draws."""
        return spread([d.ratio for d in self.draws])

    def spread_of(self, key: str) -> Spread:
        """The spread of one :class:`ClassifierScores` figure (e.g. ``frechet``) over the draws."""
        return spread([getattr(d.scores, key) for d in self.draws])

    def floor_spread_of(self, key: str) -> Spread:
        """The same over the draws' floors."""
        return spread([getattr(d.floor, key) for d in self.draws])

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: ``metric``, ``n``, ``repeats``, ``floor_draws``, ``classifier``, the spreads of
        ``ratio`` and of every figure, the floors' spreads under ``floor``, and each draw's scores."""
        return {
            "metric": "classifier_frechet",
            "n": self.n,
            "repeats": self.repeats,
            "floor_draws": self.floor_draws,
            "classifier": self.classifier,
            "ratio": self.ratio.as_dict(),
            **{key: self.spread_of(key).as_dict() for key in SCORE_KEYS},
            "floor": {key: self.floor_spread_of(key).as_dict() for key in SCORE_KEYS},
            "draws": [d.scores.as_dict() for d in self.draws],
        }

    def headline(self) -> str:
        """One line a person reads."""
        ratio = self.ratio
        mean = {key: self.spread_of(key).mean for key in ("frechet", "class_entropy", "confidence")}
        floors = {key: self.floor_spread_of(key).mean for key in ("frechet", "class_entropy", "confidence")}
        return (
            f"classifier Fréchet distance {mean['frechet']:.3g} = {ratio.mean:.3g} "
            f"± {ratio.std:.2g} x the held-out floor ({floors['frechet']:.3g}, n={self.n}, "
            f"{self.repeats} draws); "
            f"class balance {mean['class_entropy']:.3f} (floor {floors['class_entropy']:.3f}), "
            f"confidence {mean['confidence']:.3f} (floor {floors['confidence']:.3f}); "
            f"classifier held-out accuracy {self.classifier['held_out_accuracy']:.3f}"
        )


def classifier_quality(
    metric: ImageClassifierMetric,
    draw: Callable[[int, int], torch.Tensor],
    n: int,
    repeats: int,
) -> ClassifierQuality:
    """Score ``repeats`` draws of n images each (``draw(k, n)`` -> images in [0, 1]) with their floors.

    n is cut to the held-out split's size first, so each draw and its floor compare equal-sized sets with
    the training split. With ``repeats * n`` held-out images, draw k's floor uses chunk k (disjoint).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be >= 1")
    n = min(n, len(metric.test_features))
    disjoint = len(metric.test_features) >= repeats * n
    draws = []
    for k in range(repeats):
        scores = metric.score(draw(k, n)[:n])
        draws.append(ClassifierDraw(scores, metric.floor(n, chunk=k if disjoint else 0)))
    return ClassifierQuality(n, draws, repeats if disjoint else 1, metric.describe())


@dataclass
class FIDScore:
    """FID of ``n_fake`` generated images against ``n_real`` training images."""

    fid: float
    n_fake: int
    n_real: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: ``fid``, ``n_fake``, ``n_real``."""
        return {"fid": self.fid, "n_fake": self.n_fake, "n_real": self.n_real}

    def headline(self) -> str:
        """One line a person reads."""
        return f"FID {self.fid:.2f} ({self.n_fake} samples vs {self.n_real} training images)"


@dataclass
class ImageQuality:
    """``ddpm-eval``'s figures of an image run: the classifier's over the draws, and FID of the same images
    (``fid``), or the line saying why FID was skipped (``fid_skipped``)."""

    classifier: ClassifierQuality
    fid: FIDScore | None = None
    fid_skipped: str | None = None

    def as_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The results file's ``images`` and ``fid`` sections (a skipped FID: ``{"skipped": why}``)."""
        fid = self.fid.as_dict() if self.fid is not None else {"skipped": self.fid_skipped}
        return self.classifier.as_dict(), fid

    def headline(self) -> str:
        """The classifier's line."""
        return self.classifier.headline()

    def lines(self) -> list[str]:
        """The lines a person reads: ``Quality: <the classifier's headline>``, then FID's (or why not)."""
        fid = self.fid.headline() if self.fid is not None else str(self.fid_skipped)
        return [f"Quality: {self.headline()}", fid]


def image_quality(
    metric: ImageClassifierMetric,
    draw: Callable[[int, int], torch.Tensor],
    n: int,
    repeats: int,
    *,
    inception_weights: str | Path | None = None,
    fid_real: int = 10000,
    device: str | torch.device = "cpu",
) -> ImageQuality:
    """The classifier's figures over ``repeats`` draws of n images (:func:`classifier_quality`), and FID
    of all the drawn images against the first ``fid_real`` training images of the classifier's dataset when
    torch-fidelity and the Inception weights (``inception_weights``, else ``$DDPM_INCEPTION_WEIGHTS``, else
    torch hub's cache) are on disk. Nothing is downloaded.
    """
    drawn: list[torch.Tensor] = []

    def keep(k: int, size: int) -> torch.Tensor:
        drawn.append(draw(k, size))
        return drawn[-1]

    scores = classifier_quality(metric, keep, n, repeats)
    reason = fid_unavailable_reason(inception_weights)
    if reason is not None:
        return ImageQuality(scores, fid_skipped=reason)
    real = metric.data.train_x[:fid_real]
    fake = torch.cat(drawn)
    value = inception_fid(fake, real, inception_weights, device=device)
    return ImageQuality(scores, fid=FIDScore(value, len(fake), len(real)))


# ----------------------------------------------------------------------------- FID and KID during training
@dataclass
class ReferenceFID:
    """FID and KID of n generated images against a cached :class:`~ddpm.evaluation.fid.FIDReference` of
    ``n_ref`` training images, and the same figures of n held-out real images (the floor)."""

    n: int
    n_ref: int
    fid: float
    kid: float
    fid_floor: float
    kid_floor: float

    @property
    def ratio(self) -> float:
        """FID over its floor (inf when the floor is 0)."""
        return self.fid / self.fid_floor if self.fid_floor > 0 else float("inf")

    def metrics(self, prefix: str = "val/") -> dict[str, float]:
        """The figures a logger gets: ``fid``, ``kid``, ``fid_floor``, ``kid_floor``, ``fid_ratio``."""
        return {
            f"{prefix}fid": self.fid,
            f"{prefix}kid": self.kid,
            f"{prefix}fid_floor": self.fid_floor,
            f"{prefix}kid_floor": self.kid_floor,
            f"{prefix}fid_ratio": self.ratio,
        }

    def headline(self) -> str:
        """One line a person reads."""
        return (
            f"FID {self.fid:.2f} = {self.ratio:.3g}x the real-vs-real floor ({self.fid_floor:.2f}, "
            f"n={self.n} vs {self.n_ref} training images); KID {self.kid:.4f} (floor {self.kid_floor:.4f})"
        )


def fid_reference(
    identity: list[Any],
    training_images: Callable[[], torch.Tensor],
    n_ref: int,
    cache_dir: str | Path,
    inception_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    log: Callable[[str], object] = print,
) -> tuple[InceptionFeatures, FIDReference]:
    """The Inception feature extractor and the training images' reference statistics, cached under
    ``cache_dir`` by the data's ``identity`` (JSON-able parts), ``n_ref`` and the weights file; computed from
    ``training_images()`` (``n_ref`` images) on a cache miss.

    Raises:
        RuntimeError: :func:`~ddpm.evaluation.fid.fid_unavailable_reason`'s line when torch-fidelity or the
            weights are missing.
    """
    features = InceptionFeatures(inception_weights, device=device)
    path = FIDReference.cache_file(cache_dir, [*identity, n_ref, features.identity()])
    return features, FIDReference.load_or_compute(path, training_images, features, log=log)


def fid_against_reference(
    reference: FIDReference,
    features: InceptionFeatures,
    images: torch.Tensor,
    held_out: Callable[[int], torch.Tensor],
) -> ReferenceFID:
    """FID and KID of ``images`` (in [0, 1]) against ``reference``, with the floor of as many held-out real
    images (``held_out(n)``; computed once per n and cached in the reference)."""
    n = len(images)
    fid, kid = reference.score(features(images))
    fid_floor, kid_floor = reference.floor(n, held_out, features)
    return ReferenceFID(n, reference.n_ref, fid, kid, fid_floor, kid_floor)
