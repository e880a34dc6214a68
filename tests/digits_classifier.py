"""The offline digits classifier, trained once per test session into a temporary cache folder."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from ddpm.evaluation.classifier import ImageClassifierMetric

CACHE_DIR = Path(tempfile.mkdtemp(prefix="ddpm-lab-test-cache-"))
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)


@functools.cache
def digits_metric() -> ImageClassifierMetric:
    """The default digits classifier (about 5 s to train on a free 2-core CPU), shared by the test files."""
    return ImageClassifierMetric.load_or_train("digits", cache_dir=CACHE_DIR, log=lambda _: None)
