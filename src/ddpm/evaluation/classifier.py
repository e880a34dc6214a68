"""An always-available image metric: a small CNN classifier trained once on the dataset, cached on disk.

Inception weights cannot be downloaded here, so image quality is also measured with a classifier that
needs nothing from the network: scikit-learn's digits (1,797 real 8x8 images shipped with the package),
or MNIST / CIFAR-10 when torchvision's files are already on disk. The classifier trains on a dataset's
official training split and its held-out images are the official test split, both read by the data layer
(:meth:`ddpm.data.image_sets.ImageSplits.load`, the reader the training DataModule uses): a run's
``val_source=test`` validation images are among them, and no run trains on them. From the classifier:

- **Fréchet distance** of its penultimate features (FID's recipe with another feature extractor) between the
  images and the training split, reported beside the **floor**: the same distance for held-out real images
  of the same n. Their ratio is the headline (1.0 is as good as real held-out data).
- **Class balance**: entropy of the mean predicted class distribution over log(K) (1.0 = all classes equally
  often; a mode-collapsed generator scores near 0).
- **Confidence**: mean max-probability (real digits score high; noise and blurry samples low).
- **Classifier score**: exp(E_x KL(p(y|x) || p(y))), the Inception Score's formula with this classifier, in
  [1, K].

Every function takes images as float tensors [N, C, H, W] with values in **[0, 1]** (what an image
DataModule's ``denormalize`` returns). Other sizes or channel counts are resized / converted to the
classifier's input. Plain PyTorch: no Lightning, no Hydra (datasets are read by
:mod:`ddpm.data.image_sets`, which imports neither). Repeated draws scored over their floors, as
``ddpm-eval`` and the training callback report them: :mod:`ddpm.evaluation.images`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.data.image_sets import ImageSplits, default_cache_dir
from ddpm.metrics import feature_statistics, frechet_distance

if TYPE_CHECKING:  # torchmetrics (and the matplotlib it pulls in) only when the streaming metric is asked for
    from ddpm.evaluation.features import FeatureFrechetDistance

__all__ = [
    "CLASSIFIER_DATASETS",
    "ClassifierScores",
    "ImageClassifierMetric",
    "SmallCNN",
    "default_cache_dir",
    "load_labelled_images",
]

#: bump when the architecture or training recipe changes, so old cache files are not reused
CLASSIFIER_VERSION = 1
CLASSIFIER_DATASETS = ("digits", "mnist", "cifar10")
#: training epochs per dataset (digits is tiny: 1,437 training images)
DEFAULT_EPOCHS = {"digits": 40, "mnist": 3, "cifar10": 15}
#: peak learning rate of the one-cycle schedule
PEAK_LR = {"digits": 1e-2, "mnist": 3e-3, "cifar10": 3e-3}
BATCH_SIZE = 128
#: how far outside [0, 1] an image may stray (sampling overshoot) before it is taken for a scale mistake
RANGE_SLACK = 0.05


def load_labelled_images(dataset: str, data_dir: str | Path | None = None) -> ImageSplits:
    """A dataset's official splits (:meth:`ImageSplits.load`) with the images as float32 in [0, 1]:
    ``digits`` (scikit-learn, always offline; the fixed stratified 1,437 / 360 split digits runs train and
    validate on), or ``mnist`` / ``cifar10`` from torchvision files already under ``data_dir`` or
    ``data_dir/<dataset>``.

    Raises:
        ValueError: unknown dataset.
        FileNotFoundError: MNIST / CIFAR-10 files are not on disk.
    """
    if dataset not in CLASSIFIER_DATASETS:
        raise ValueError(f"dataset={dataset!r} has no classifier metric; choose one of {CLASSIFIER_DATASETS}")
    if dataset == "digits":
        return ImageSplits.load(dataset).as_float()
    roots = [Path(data_dir), Path(data_dir) / dataset] if data_dir is not None else []
    for root in roots:
        try:
            return ImageSplits.load(dataset, root).as_float()
        except FileNotFoundError:  # torchvision: "Dataset not found or corrupted"; try the next folder
            continue
    where = ", ".join(str(r) for r in roots) or "(no data_dir given)"
    raise FileNotFoundError(
        f"{dataset} files not found under {where}; nothing is downloaded here: put torchvision's {dataset} "
        "files there or use dataset=digits"
    )


class SmallCNN(nn.Module):
    """Conv-conv-pool-conv-conv-pool, then a ``feature_dim`` penultimate layer and K logits.

    Takes images in [0, 1] of any size >= 4x4.
    """

    def __init__(
        self, in_channels: int, num_classes: int = 10, width: int = 16, feature_dim: int = 64
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, feature_dim] of images in [0, 1]."""
        return self.body(2 * x - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, K]."""
        return self.head(self.dropout(self.features(x)))


@dataclass
class ClassifierScores:
    """What the classifier says about one image set (see the module docstring)."""

    n: int
    frechet: float
    class_entropy: float
    confidence: float
    classifier_score: float
    class_histogram: list[float]

    def as_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)


def _fingerprint(data: ImageSplits) -> str:
    """A hash of the splits' contents (every image and label, in order), for the cache key: other data or
    another split of the same data (even one image moved between the splits) gives another key."""
    h = hashlib.sha1()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().numpy().data)  # the array's bytes, not copied
    return h.hexdigest()[:12]


def _train(
    data: ImageSplits, epochs: int, seed: int, device: torch.device, log: Callable[[str], None]
) -> tuple[SmallCNN, float]:
    threads = torch.get_num_threads()
    # leave the caller's RNG state alone; train with gradients even when called from validation
    # (Lightning runs it under inference_mode)
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(seed)
        if device.type == "cpu":
            # Tiny convolutions: one thread is as fast as two, and far faster on a CPU shared with others.
            torch.set_num_threads(1)
        model = SmallCNN(data.image_shape[0]).to(device)
        lr = PEAK_LR[data.name]
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * math.ceil(len(data.train_y) / BATCH_SIZE)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        gen = torch.Generator().manual_seed(seed)
        x, y = data.train_x.to(device), data.train_y.to(device)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y), generator=gen).to(device)
            for start in range(0, len(y), BATCH_SIZE):
                idx = perm[start : start + BATCH_SIZE]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b.to(device)).argmax(1).cpu() for b in data.test_x.split(1024)])
    accuracy = float((pred == data.test_y).float().mean())
    log(f"classifier for {data.name}: held-out accuracy {accuracy:.3f} after {epochs} epochs")
    return model, accuracy


class ImageClassifierMetric:
    """The trained classifier of one dataset with its reference statistics.

    Build it with :meth:`load_or_train`; then :meth:`score` an image set and :meth:`floor` for real held-out
    data of the same n.
    """

    def __init__(
        self, data: ImageSplits, model: SmallCNN, test_accuracy: float, path: Path | None = None
    ) -> None:
        self.data = data
        self.model = model.eval()
        self.test_accuracy = test_accuracy
        self.path = path
        self.device = next(model.parameters()).device
        train_features, _ = self.features_and_probs(data.train_x)
        self.train_mean, self.train_cov = feature_statistics(train_features)
        self.test_features, self.test_probs = self.features_and_probs(data.test_x)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the classifier was trained on."""
        return self.data.image_shape

    @classmethod
    def load_or_train(
        cls,
        dataset: str,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        epochs: int | None = None,
        seed: int = 0,
        log: Callable[[str], None] = print,
    ) -> ImageClassifierMetric:
        """Load the cached classifier of ``dataset``, or train it (seconds for digits) and cache it.

        The cache file's name carries the recipe version and a fingerprint of the data, so other data or
        another recipe trains a new one. Writes are atomic (a temporary file, then a rename).
        """
        data = load_labelled_images(dataset, data_dir)
        epochs = DEFAULT_EPOCHS[dataset] if epochs is None else int(epochs)
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = f"{dataset}-v{CLASSIFIER_VERSION}-e{epochs}-s{seed}-{_fingerprint(data)}"
        path = cache / "classifiers" / f"{key}.pt"
        device = torch.device(device)
        model = SmallCNN(data.image_shape[0])
        if path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            return cls(data, model.to(device), float(blob["test_accuracy"]), path)
        start = time.perf_counter()
        model, accuracy = _train(data, epochs, seed, device, log)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        meta = {"dataset": dataset, "epochs": epochs, "seed": seed, "version": CLASSIFIER_VERSION}
        torch.save({"state_dict": state, "test_accuracy": accuracy, "meta": json.dumps(meta)}, tmp)
        os.replace(tmp, path)
        log(f"cached it in {path} ({time.perf_counter() - start:.1f} s)")
        return cls(data, model, accuracy, path)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Check the [0, 1] range and convert channels / size to the classifier's input."""
        if images.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        x = images.float()
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
            raise ValueError(
                f"images span [{lo:.2f}, {hi:.2f}]; this metric takes images in [0, 1] "
                "(map [-1, 1] with (x + 1) / 2, or use the DataModule's denormalize)"
            )
        x = x.clamp(0, 1)
        c, h, w = self.image_shape
        if x.shape[1] != c:
            if x.shape[1] == 3 and c == 1:
                x = x.mean(1, keepdim=True)
            elif x.shape[1] == 1 and c == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise ValueError(
                    f"images have {x.shape[1]} channels; the {self.data.name} classifier takes {c}"
                )
        if tuple(x.shape[2:]) != (h, w):
            # Shrink by average pooling (exact for integer factors: a 2x upsampled digit); grow bilinearly.
            if x.shape[2] >= h and x.shape[3] >= w:
                x = F.interpolate(x, size=(h, w), mode="area")
            else:
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def features_and_probs(
        self, images: torch.Tensor, batch_size: int = 1024
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features [N, d] (float64) and class probabilities [N, K] of images in [0, 1]."""
        x = self.prepare(images)
        feats, probs = [], []
        for batch in x.split(batch_size):
            f = self.model.features(batch.to(self.device))
            feats.append(f.double().cpu())
            probs.append(self.model.head(f).softmax(1).double().cpu())
        return torch.cat(feats), torch.cat(probs)

    def _scores(self, features: torch.Tensor, probs: torch.Tensor) -> ClassifierScores:
        k = probs.shape[1]
        marginal = probs.mean(0)
        entropy = float(-(marginal * marginal.clamp(min=1e-12).log()).sum()) / math.log(k)
        # Inception Score's formula: exp(E_x KL(p(y|x) || p(y))).
        kl = (probs * (probs.clamp(min=1e-12).log() - marginal.clamp(min=1e-12).log())).sum(1).mean()
        mean, cov = feature_statistics(features)
        return ClassifierScores(
            n=int(features.shape[0]),
            frechet=frechet_distance(mean, cov, self.train_mean, self.train_cov),
            class_entropy=entropy,
            confidence=float(probs.max(1).values.mean()),
            classifier_score=float(kl.exp()),
            class_histogram=[float(v) for v in probs.argmax(1).bincount(minlength=k).double() / len(probs)],
        )

    def score(self, images: torch.Tensor) -> ClassifierScores:
        """Scores of images [N, C, H, W] in [0, 1] against the training split (N >= 2)."""
        return self._scores(*self.features_and_probs(images))

    def floor(self, n: int, chunk: int = 0) -> ClassifierScores:
        """Scores of n real held-out images (chunk k: images k*n .. (k+1)*n - 1): the data-vs-data floor."""
        n = min(n, len(self.test_features))
        start = chunk * n if (chunk + 1) * n <= len(self.test_features) else 0
        return self._scores(self.test_features[start : start + n], self.test_probs[start : start + n])

    def frechet_metric(self) -> FeatureFrechetDistance:
        """A streaming :class:`FeatureFrechetDistance` with the training split as its fixed real side."""
        from ddpm.evaluation.features import FeatureFrechetDistance

        metric = FeatureFrechetDistance(self.model.feature_dim, reset_real=False)
        train_features, _ = self.features_and_probs(self.data.train_x)
        metric.update(train_features, real=True)
        return metric

    def describe(self) -> dict[str, Any]:
        """Where the classifier came from, for a results file."""
        return {
            "dataset": self.data.name,
            "path": str(self.path) if self.path else None,
            "held_out_accuracy": self.test_accuracy,
            "feature_dim": self.model.feature_dim,
            "input_shape": list(self.image_shape),
            "n_train": len(self.data.train_y),
            "n_held_out": len(self.data.test_y),
        }
