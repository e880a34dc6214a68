"""Fréchet distance, feature accumulation, repeated toy quality and the offline digits classifier metric."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm.evaluation.classifier import (
    ImageClassifierMetric,
    _fingerprint,
    load_labelled_images,
)
from ddpm.evaluation.features import FeatureFrechetDistance
from ddpm.evaluation.fid import fid_unavailable_reason
from ddpm.evaluation.toy import repeated_quality, spread
from ddpm.metrics import feature_statistics, frechet_distance
from tests.digits_classifier import CACHE_DIR, digits_metric


def random_spd(d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The textbook formula with scipy's general matrix square root of S1 S2 (an independent check)."""
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1.numpy() + s2.numpy() - 2 * covmean))


# ----------------------------------------------------------------------------- frechet_distance
def test_frechet_of_identical_gaussians_is_zero() -> None:
    s = random_spd(16, 0)
    mu = torch.randn(16, dtype=torch.float64)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    singular = torch.zeros(4, 4, dtype=torch.float64)  # a point mass: PSD, not PD
    assert frechet_distance(torch.zeros(4), singular, torch.zeros(4), singular) == 0.0


def test_frechet_matches_closed_forms() -> None:
    # 1D: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    # Commuting (diagonal) covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected)
    # General (non-commuting) covariances against scipy's sqrtm of S1 S2.
    s1, s2 = random_spd(8, 1), random_spd(8, 2)
    m1, m2 = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(scipy_frechet(m1, s1, m2, s2), rel=1e-8)
    with pytest.raises(ValueError, match="shapes do not agree"):
        frechet_distance(m1, s1, m2[:4], s2)


def test_frechet_of_shifted_gaussian_samples_approaches_the_analytic_value() -> None:
    d, n = 4, 200_000
    s1, s2 = random_spd(d, 3), random_spd(d, 4)
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.full((d,), 0.5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = mu1 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = mu2 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    analytic = scipy_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(*feature_statistics(x), *feature_statistics(y)) == pytest.approx(
        analytic, rel=0.02
    )


# ----------------------------------------------------------------------------- the torchmetrics Metric
def test_feature_metric_accumulates_in_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(500, 6, generator=gen)
    fake = torch.randn(400, 6, generator=gen) * 1.5 + 0.3
    metric = FeatureFrechetDistance(6, reset_real=False)
    for chunk in real.split(64):
        metric.update(chunk, real=True)
    for chunk in fake.split(50):
        metric.update(chunk, real=False)
    expected = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-9)

    metric.reset()  # keeps the real side
    metric.update(real, real=False)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-9)  # identical sets
    with pytest.raises(ValueError, match="expected 6"):
        metric.update(torch.zeros(3, 5), real=False)


# ----------------------------------------------------------------------------- toy quality with confidence
def test_repeated_quality_of_data_against_data_is_near_the_floor() -> None:
    rng = np.random.default_rng(0)
    pool = torch.from_numpy(rng.normal(size=(3000, 2)))
    held_out = torch.from_numpy(rng.normal(size=(500, 2)))
    fresh = torch.from_numpy(rng.normal(size=(2500, 2)))
    shifted = fresh + 0.5
    good = repeated_quality(lambda k: fresh[k * 500 :], held_out, pool, 500, repeats=5)
    bad = repeated_quality(lambda k: shifted[k * 500 :], held_out, pool, 500, repeats=5)
    assert good.floor_draws == 5 and good.repeats == 5 and good.n == 500
    assert good.spread_of("ratio").mean < 4  # a data draw is as good as the floor, up to noise
    assert bad.spread_of("ratio").low > 10 * good.spread_of("ratio").high
    summary = good.as_dict()
    assert set(summary["ratio"]) == {"mean", "std", "low", "high", "interval", "values"}
    assert len(summary["draws"]) == 5
    assert "x the data-vs-data floor" in good.headline()


def test_pooled_ratio_is_the_mean_energy_over_the_mean_floor() -> None:
    rng = np.random.default_rng(1)
    pool = torch.from_numpy(rng.normal(size=(2000, 2)))
    held_out = torch.from_numpy(rng.normal(size=(400, 2)))
    # the floor's own chunks as samples: each draw's energy is its floor, so both ratios are exactly 1
    same = repeated_quality(lambda k: pool[k * 400 :], held_out, pool, 400, repeats=5)
    assert same.pooled_ratio == pytest.approx(1.0, abs=1e-12)
    assert same.spread_of("ratio").values == pytest.approx([1.0] * 5, abs=1e-12)
    shifted = repeated_quality(lambda k: pool[k * 400 :] + 0.3, held_out, pool, 400, repeats=5)
    energies = [r.energy for r in shifted.reports]
    floors = [r.energy_floor for r in shifted.reports]
    assert shifted.pooled_ratio == pytest.approx(sum(energies) / sum(floors), rel=1e-12)
    # not the mean of the per-draw ratios: the floors differ from draw to draw
    assert len(set(floors)) == 5
    assert shifted.pooled_ratio != pytest.approx(shifted.spread_of("ratio").mean, rel=1e-6)
    assert shifted.as_dict()["pooled_ratio"] == shifted.pooled_ratio
    assert f"(pooled: {shifted.pooled_ratio:.3g})" in shifted.headline()


def test_spread() -> None:
    s = spread([1.0, 2.0, 3.0, 4.0, math.nan])
    assert s.mean == 2.5 and s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert 1.0 < s.low < 1.3 and 3.7 < s.high < 4.0
    assert spread([2.0]).std == 0.0
    assert "±" in s.format()


# ----------------------------------------------------------------------------- the digits classifier
def test_digits_classifier_is_accurate_and_cached() -> None:
    metric = digits_metric()
    assert metric.test_accuracy > 0.9
    assert metric.path is not None and metric.path.is_file()
    again = ImageClassifierMetric.load_or_train("digits", cache_dir=CACHE_DIR, log=lambda _: None)
    assert again.path == metric.path
    assert again.test_accuracy == metric.test_accuracy
    assert torch.allclose(again.train_mean, metric.train_mean)


def test_classifier_cache_key_follows_the_split() -> None:
    """The cache key fingerprints the splits' contents: the same split gives the same key, and moving one
    image between the splits gives another, even for two images of one class and equal ink (which the
    splits' shapes and pixel sums would not tell apart)."""
    data = load_labelled_images("digits")
    assert _fingerprint(load_labelled_images("digits")) == _fingerprint(data)
    ink = data.train_x.flatten(1).sum(1)
    j, i = next(
        (j, i)
        for j in range(len(data.test_y))
        for i in torch.nonzero((ink == data.test_x[j].sum()) & (data.train_y == data.test_y[j])).flatten()
    )
    train_x, test_x = data.train_x.clone(), data.test_x.clone()
    train_x[i], test_x[j] = data.test_x[j], data.train_x[i]
    assert not torch.equal(train_x, data.train_x)
    assert _fingerprint(replace(data, train_x=train_x, test_x=test_x)) != _fingerprint(data)


def test_classifier_metric_separates_real_digits_from_noise_and_collapse() -> None:
    metric = digits_metric()
    data = metric.data
    n = len(data.test_y)
    floor = metric.floor(n)
    real = metric.score(data.train_x[torch.randperm(len(data.train_y), generator=torch.Generator())[:n]])
    noise = metric.score(torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    zeros = data.train_x[data.train_y == 0]
    collapsed = metric.score(zeros.repeat(3, 1, 1, 1)[:n])  # one class only

    assert floor.frechet > 0
    assert real.frechet < 3 * floor.frechet
    assert noise.frechet > 10 * floor.frechet
    assert collapsed.frechet > 10 * floor.frechet
    assert floor.class_entropy > 0.95 and real.class_entropy > 0.95
    assert collapsed.class_entropy < 0.3
    assert floor.confidence > noise.confidence  # (classifiers are over-confident on noise: a weak signal)
    assert floor.classifier_score > 2 * noise.classifier_score
    assert floor.classifier_score > 5 > collapsed.classifier_score
    assert sum(floor.class_histogram) == pytest.approx(1.0)


def test_classifier_metric_inputs() -> None:
    metric = digits_metric()
    x = metric.data.test_x
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        metric.score(x * 2 - 1)  # a [-1, 1] tensor is refused, not silently mis-scored
    big = torch.nn.functional.interpolate(x, size=(16, 16), mode="nearest").expand(-1, 3, -1, -1)
    assert metric.score(big).frechet < 5 * metric.floor(len(x)).frechet  # resized, RGB: still digits

    stream = metric.frechet_metric()
    for chunk in x.split(100):
        stream.update(metric.features_and_probs(chunk)[0], real=False)
    assert float(stream.compute()) == pytest.approx(metric.score(x).frechet, rel=1e-6)


# ----------------------------------------------------------------------------- FID
def test_fid_says_in_one_line_why_it_is_unavailable(tmp_path) -> None:
    reason = fid_unavailable_reason(tmp_path / "missing.pth")
    assert reason is not None and "\n" not in reason and reason.startswith("FID skipped")
    if importlib.util.find_spec("torch_fidelity") is not None:
        assert str(tmp_path / "missing.pth") in reason


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is None, reason="the fid extra is not installed"
)
def test_fid_runs_offline_with_a_weights_file(tmp_path) -> None:
    """torchmetrics' FID with torch-fidelity's Inception from a local file (random weights: plumbing only)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    from ddpm.evaluation.fid import inception_fid

    # Build a weights file without a download: construct the network, skipping its loader.
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    assert fid_unavailable_reason(weights) is None
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert inception_fid(x, x, weights) == pytest.approx(0.0, abs=1e-6)


def test_a_quality_report_reuses_floors_computed_before() -> None:
    """Validation compares against the same data every time: floors given are used as they are, and equal
    what the report computes itself."""
    from ddpm.metrics import quality_report

    gen = torch.Generator().manual_seed(0)
    samples, held_out, second = (torch.randn(300, 2, generator=gen) for _ in range(3))
    fresh = quality_report(samples + 0.5, held_out, second)
    again = quality_report(samples + 0.5, held_out, second, floors=(fresh.energy_floor, fresh.sliced_w_floor))
    assert again == fresh
    given = quality_report(samples + 0.5, held_out, second, floors=(2.0, 4.0))
    assert (given.energy_floor, given.sliced_w_floor, given.energy) == (2.0, 4.0, fresh.energy)
