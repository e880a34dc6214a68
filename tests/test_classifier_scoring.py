"""ddpm.evaluation.images: the image figures ddpm-eval and the training callback share, with stand-in
classifiers and features whose numbers are known, and the real digits classifier."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ddpm.evaluation.classifier import ClassifierScores
from ddpm.evaluation.fid import FIDReference, feature_statistics64
from ddpm.evaluation.images import (
    ClassifierDraw,
    FIDScore,
    classifier_metric,
    classifier_quality,
    fid_against_reference,
    image_quality,
)
from tests.digits_classifier import CACHE_DIR, digits_metric


def _scores(n: int, frechet: float, entropy: float, confidence: float) -> ClassifierScores:
    return ClassifierScores(n, frechet, entropy, confidence, classifier_score=2.0, class_histogram=[0.5, 0.5])


class StandInClassifier:
    """Ten held-out images. A draw's Fréchet distance is its images' mean value; held-out chunk k's floor
    is 0.5 + 1.5 k."""

    test_features = torch.zeros(10, 2)
    data = SimpleNamespace(train_x=torch.zeros(6, 1, 2, 2))

    def __init__(self) -> None:
        self.floors: list[tuple[int, int]] = []

    def score(self, images: torch.Tensor) -> ClassifierScores:
        return _scores(len(images), float(images.mean()), 0.5, 0.9)

    def floor(self, n: int, chunk: int = 0) -> ClassifierScores:
        self.floors.append((n, chunk))
        return _scores(n, 0.5 + 1.5 * chunk, 0.95, 0.8)

    def describe(self) -> dict:
        return {"dataset": "stand-in", "held_out_accuracy": 0.875}


def draw_constant(k: int, n: int) -> torch.Tensor:
    """Draw k: n + 3 images of value k + 1 (the extra three must be cut off)."""
    return torch.full((n + 3, 1, 2, 2), float(k + 1))


def test_classifier_quality_scores_each_draw_over_its_own_floor() -> None:
    metric = StandInClassifier()
    quality = classifier_quality(metric, draw_constant, n=5, repeats=2)  # type: ignore[arg-type]
    assert metric.floors == [(5, 0), (5, 1)]  # 10 held-out images: two disjoint chunks of 5
    assert quality.n == 5 and quality.repeats == 2 and quality.floor_draws == 2
    assert [d.n for d in quality.draws] == [5, 5]
    assert [d.ratio for d in quality.draws] == [2.0, 1.0]  # 1 / 0.5 and 2 / 2
    assert quality.ratio.mean == 1.5 and quality.ratio.std == pytest.approx(2**-0.5)
    assert quality.headline() == (
        "classifier Fréchet distance 1.5 = 1.5 ± 0.71 x the held-out floor (1.25, n=5, 2 draws); "
        "class balance 0.500 (floor 0.950), confidence 0.900 (floor 0.800); "
        "classifier held-out accuracy 0.875"
    )
    out = quality.as_dict()
    assert list(out) == [
        "metric", "n", "repeats", "floor_draws", "classifier", "ratio",
        "frechet", "class_entropy", "confidence", "classifier_score", "floor", "draws",
    ]  # fmt: skip
    assert out["metric"] == "classifier_frechet" and out["classifier"]["dataset"] == "stand-in"
    assert out["ratio"]["values"] == [2.0, 1.0] and out["frechet"]["values"] == [1.0, 2.0]
    assert out["floor"]["frechet"]["values"] == [0.5, 2.0] and out["floor"]["confidence"]["mean"] == 0.8
    assert [d["frechet"] for d in out["draws"]] == [1.0, 2.0] and out["draws"][0]["n"] == 5


def test_classifier_quality_cuts_n_to_the_held_out_split_and_shares_one_floor() -> None:
    metric = StandInClassifier()
    quality = classifier_quality(metric, draw_constant, n=50, repeats=3)  # type: ignore[arg-type]
    assert quality.n == 10 and quality.floor_draws == 1 and metric.floors == [(10, 0)] * 3
    assert [d.ratio for d in quality.draws] == [2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="repeats=0"):
        classifier_quality(metric, draw_constant, n=5, repeats=0)  # type: ignore[arg-type]


def test_one_draw_gives_the_callbacks_figures() -> None:
    draw = ClassifierDraw(_scores(64, 3.0, 0.5, 0.9), _scores(64, 1.5, 0.95, 0.8))
    assert draw.metrics("val/") == {
        "val/classifier_frechet": 3.0,
        "val/classifier_ratio": 2.0,
        "val/class_balance": 0.5,
        "val/confidence": 0.9,
    }
    assert draw.headline() == "classifier Fréchet 3 = 2x held-out real images (n=64)"
    assert math.isnan(ClassifierDraw(draw.scores, _scores(64, 0.0, 1, 1)).ratio)  # a zero floor: no ratio


def test_image_quality_without_inception_weights_skips_fid_in_one_line(tmp_path: Path) -> None:
    metric = StandInClassifier()
    asked: list[tuple[int, int]] = []

    def draw(k: int, n: int) -> torch.Tensor:
        asked.append((k, n))
        return draw_constant(k, n)

    quality = image_quality(
        metric,  # type: ignore[arg-type]
        draw,
        n=4,
        repeats=2,
        inception_weights=tmp_path / "missing.pth",
    )
    assert asked == [(0, 4), (1, 4)] and quality.fid is None
    images, fid = quality.as_dicts()
    assert images == quality.classifier.as_dict() and images["ratio"]["values"] == [2.0, 1.0]
    reason = str(quality.fid_skipped)
    assert fid == {"skipped": reason} and reason.startswith("FID skipped") and "\n" not in reason
    assert quality.lines() == [f"Quality: {quality.classifier.headline()}", reason]


def test_fid_score_says_its_numbers() -> None:
    score = FIDScore(12.3456, 720, 1437)
    assert score.as_dict() == {"fid": 12.3456, "n_fake": 720, "n_real": 1437}
    assert score.headline() == "FID 12.35 (720 samples vs 1437 training images)"


def test_fid_against_a_reference_is_the_mean_shift_over_the_floor(tmp_path: Path) -> None:
    """Features that are the pixels: images shifted by 1 in each of 4 dimensions (same covariance) are at
    FID 4 from the reference's Gaussian; the floor of their n is given, so its ratio is 2."""
    real = torch.randn(400, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    features = lambda images: images.flatten(1).double()  # noqa: E731
    mean, cov = feature_statistics64(features(real))
    reference = FIDReference(mean, cov, features(real)[:100], 400, tmp_path / "ref.pt", {400: (2.0, 0.01)})
    fid = fid_against_reference(
        reference,
        features,  # type: ignore[arg-type]
        real + 1,
        held_out=lambda n: pytest.fail("the floor of n=400 is cached"),
    )
    assert fid.n == 400 and fid.n_ref == 400
    assert fid.fid == pytest.approx(4.0, abs=1e-6) and fid.ratio == pytest.approx(2.0, abs=1e-6)
    assert fid.kid > 0.01 and (fid.fid_floor, fid.kid_floor) == (2.0, 0.01)
    assert list(fid.metrics("val/")) == [
        "val/fid",
        "val/kid",
        "val/fid_floor",
        "val/kid_floor",
        "val/fid_ratio",
    ]
    assert fid.headline() == (
        f"FID 4.00 = 2x the real-vs-real floor (2.00, n=400 vs 400 training images); KID {fid.kid:.4f} "
        "(floor 0.0100)"
    )


def test_classifier_metric_names_what_it_lacks() -> None:
    assert classifier_metric("celeba", cache_dir=CACHE_DIR) == (
        "no offline classifier for dataset 'celeba' (have digits, mnist, cifar10)"
    )
    missing = classifier_metric("mnist", "/nonexistent-ddpm-data", CACHE_DIR)
    assert isinstance(missing, str) and missing.startswith("mnist files not found under /nonexistent")


def test_training_images_score_near_the_digits_floor() -> None:
    metric = digits_metric()
    train = metric.data.train_x
    found = classifier_metric("digits", cache_dir=CACHE_DIR, log=lambda line: pytest.fail(line))  # cached
    assert found is not metric and found.test_accuracy == metric.test_accuracy  # type: ignore[union-attr]
    quality = classifier_quality(metric, lambda k, n: train[k * 100 : k * 100 + n], n=100, repeats=3)
    assert quality.n == 100 and quality.repeats == 3 and quality.floor_draws == 3
    report = quality.as_dict()
    assert len(report["draws"]) == 3 and len(report["ratio"]["values"]) == 3
    assert report["ratio"]["mean"] < 3
    assert report["classifier"]["held_out_accuracy"] == metric.test_accuracy
    assert quality.headline().endswith(f"classifier held-out accuracy {metric.test_accuracy:.3f}")
