"""FID and KID during training (``callbacks.samples.fid_samples``): off in one line without Inception weights;
with a stand-in weights file (torch-fidelity's network with random weights, built without a download, as
tests/test_metrics.py does) the figures and the real-vs-real floor are logged, the reference is cached, and
the same images scored against their own reference give FID 0."""

from __future__ import annotations

import csv
import importlib.util
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ddpm.callbacks import ImageSampleCallback
from ddpm.schedules import NotPureNoiseWarning

needs_fidelity = pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is None, reason="torch-fidelity is not installed"
)


def _stand_in_weights(path: Path) -> Path:
    """torch-fidelity's Inception with random weights, saved where the real file would be (no download)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def test_without_weights_fid_is_off_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    callback = ImageSampleCallback(fid_samples=8, inception_weights=str(tmp_path / "missing.pth"))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(kind="image"))
    assert callback._fid_setup(trainer, SimpleNamespace(device="cpu")) is False  # type: ignore[arg-type]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FID during training is off: ")


def test_bad_fid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fid_samples=1 must be 0"):
        ImageSampleCallback(fid_samples=1)


@needs_fidelity
@pytest.mark.slow
def test_fid_and_its_floor_are_logged_at_validation(tmp_path: Path) -> None:
    from ddpm.data import ImageData
    from ddpm.evaluation.fid import FIDReference, InceptionFeatures
    from tests.helpers import run_train

    weights = _stand_in_weights(tmp_path / "inception.pth")
    cache = tmp_path / "cache"
    overrides = ["experiment=digits", "T=20", "cpu_threads=1", "trainer.max_steps=2",
                 "trainer.val_check_interval=1", "trainer.log_every_n_steps=1", "sampler.steps=null",
                 "final_samples=0", "logger=csv", "print_config=false", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false", "callbacks.samples.num_samples=4",
                 "callbacks.samples.strip_images=0", "callbacks.samples.metric_samples=0",
                 "callbacks.samples.at_end=false", "callbacks.samples.fid_samples=4",
                 "callbacks.samples.fid_reference=8", f"callbacks.samples.inception_weights={weights}",
                 f"callbacks.samples.cache_dir={cache}"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPureNoiseWarning)
        _, run = run_train(tmp_path, overrides)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    fid = [r for r in rows if r.get("val/fid")]
    assert len(fid) == 2  # both validations
    for row in fid:
        assert float(row["val/fid"]) > 0 and float(row["val/fid_floor"]) > 0
        ratio = float(row["val/fid"]) / float(row["val/fid_floor"])
        assert float(row["val/fid_ratio"]) == pytest.approx(ratio, rel=1e-6)
        assert row["val/kid"] and row["val/kid_floor"]
    cached = list((cache / "fid").glob("*.pt"))
    assert len(cached) == 1
    stored = torch.load(cached[0], weights_only=True)
    assert stored["n_ref"] == 8 and set(stored["floors"]) == {"4"}
    # real against real: the reference's own images score FID 0 against it
    data = ImageData(dataset="digits", val_source="test", val_size=None, seed=42)
    features = InceptionFeatures(weights)
    own = features(data.training_images(8))
    reference = FIDReference.load_or_compute(cached[0], lambda: pytest.fail("not cached"), features)
    assert reference.score(own)[0] == pytest.approx(0.0, abs=1e-3)
