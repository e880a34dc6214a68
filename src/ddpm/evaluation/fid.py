"""FID with torchmetrics' ``FrechetInceptionDistance``, only when Inception weights are on disk.

torchmetrics' Inception feature extractor comes from ``torch-fidelity`` (the optional extra
``uv sync --extra fid``), which would download its weights (``weights-inception-2015-12-05-6726825d.pth``,
the TF-FID port) on first use. Nothing can be downloaded here, so the weights file must already exist:
``--inception-weights PATH``, else ``$DDPM_INCEPTION_WEIGHTS``, else torch hub's cache
(``$TORCH_HOME/hub/checkpoints/``). The path is always passed explicitly, so no download is attempted.

Images are float tensors [N, C, H, W] in **[0, 1]** (grayscale is repeated to 3 channels; torchmetrics
resizes to 299x299).

During training (``callbacks.samples.fid_samples``) the training images' side is computed once and cached
(:class:`FIDReference`): the Inception statistics of ``n_ref`` training images, a subset of their features for
KID, and the real-vs-real floor (held-out images against the same reference) at each n asked for. FID and KID
at small n are biased upward; the floor at the same n shows by how much.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "INCEPTION_WEIGHTS_FILE",
    "FIDReference",
    "InceptionFeatures",
    "feature_statistics64",
    "fid_from_statistics",
    "fid_unavailable_reason",
    "find_inception_weights",
    "inception_fid",
    "kid_from_features",
]

#: bump when the reference's recipe changes, so old cache files are not reused
REFERENCE_VERSION = 1
#: reference features kept for KID (torchmetrics' default subset size is 1000)
KID_FEATURES = 1000

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def find_inception_weights(path: str | Path | None = None) -> Path:
    """Where the Inception weights are expected: ``path``, ``$DDPM_INCEPTION_WEIGHTS`` or torch hub's cache.

    The returned path may not exist; :func:`fid_unavailable_reason` says so.
    """
    if path:
        return Path(path).expanduser()
    if os.environ.get("DDPM_INCEPTION_WEIGHTS"):
        return Path(os.environ["DDPM_INCEPTION_WEIGHTS"]).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def fid_unavailable_reason(path: str | Path | None = None) -> str | None:
    """None when FID can be computed, else one line saying why not."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return "FID skipped: torch-fidelity is not installed (uv sync --extra fid)"
    weights = find_inception_weights(path)
    if not weights.is_file():
        return (
            f"FID skipped: no Inception weights at {weights} (nothing is downloaded here; put "
            f"{INCEPTION_WEIGHTS_FILE} there or pass --inception-weights / set DDPM_INCEPTION_WEIGHTS)"
        )
    return None


def _rgb(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    x = images.float().clamp(0, 1)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_fid(
    fake: torch.Tensor,
    real: torch.Tensor,
    weights: str | Path | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
) -> float:
    """FID between ``fake`` and ``real`` images in [0, 1] (2048-d pool features, statistics in float64).

    Raises:
        RuntimeError: with :func:`fid_unavailable_reason`'s line when torch-fidelity or the weights are
            missing.
    """
    reason = fid_unavailable_reason(weights)
    if reason is not None:
        raise RuntimeError(reason)
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(
        feature=2048,
        normalize=True,  # float images in [0, 1]
        feature_extractor_weights_path=str(find_inception_weights(weights)),
    ).to(device)  # its feature sums are float64 already
    for images, is_real in ((real, True), (fake, False)):
        for batch in _rgb(images).split(batch_size):
            metric.update(batch.to(device), real=is_real)
    return float(metric.compute())


# ----------------------------------------------------------------------------- FID and KID during training
class InceptionFeatures:
    """torchmetrics' Inception (torch-fidelity's port of TF-FID's network) from a weights file on disk:
    2048-d pool features of images in [0, 1].

    Raises:
        RuntimeError: :func:`fid_unavailable_reason`'s line when torch-fidelity or the weights are missing.
    """

    def __init__(
        self, weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 50
    ) -> None:
        reason = fid_unavailable_reason(weights)
        if reason is not None:
            raise RuntimeError(reason)
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.path = find_inception_weights(weights)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(self.path)
        ).to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size

    def identity(self) -> list:
        """What names these weights in a cache key: the file, its size and its modification time."""
        st = self.path.stat()
        return [str(self.path.resolve()), st.st_size, st.st_mtime_ns]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features [N, 2048] (float64) of images [N, 1 or 3, H, W] in [0, 1]."""
        out = []
        for batch in _rgb(images).split(self.batch_size):
            # torchmetrics' FID with normalize=True: [0, 1] floats become uint8 before the network
            out.append(self.net((batch * 255).byte().to(self.device)).double().cpu())
        return torch.cat(out)


def feature_statistics64(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased covariance) of features [N, d] in float64 (FID's Gaussian fit)."""
    f = features.double()
    return f.mean(0), torch.cov(f.T)


def fid_from_statistics(
    mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor
) -> float:
    """The Fréchet distance of two Gaussians, with torchmetrics' FID computation."""
    from torchmetrics.image.fid import _compute_fid

    # Heusel et al. 2017, eq. 6: ||m1 - m2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))
    return float(_compute_fid(mean1.double(), cov1.double(), mean2.double(), cov2.double()))


def kid_from_features(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 10, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID (Bińkowski et al. 2018): the mean over ``subsets`` random subsets of torchmetrics' unbiased
    polynomial-kernel MMD^2 between real and fake features (subsets of at most ``subset_size``)."""
    from torchmetrics.image.kid import poly_mmd

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got {len(real)} and {len(fake)}")
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(len(real), generator=gen)[:size]]
        f = fake[torch.randperm(len(fake), generator=gen)[:size]]
        # Bińkowski et al. 2018, eq. 4: k(x, y) = (x.y / d + 1)^3, unbiased MMD^2
        scores.append(poly_mmd(r.double(), f.double()))
    return float(torch.stack(scores).mean())


@dataclass
class FIDReference:
    """The training images' side of FID and KID, computed once and cached, and the real-vs-real floors.

    ``mean`` and ``cov`` fit ``n_ref`` training images' features; ``kid_features`` keep up to
    :data:`KID_FEATURES` of them; ``floors`` maps n to (FID, KID) of n held-out real images against this
    reference: what a perfect generator scores at that n.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    kid_features: torch.Tensor
    n_ref: int
    path: Path
    floors: dict[int, tuple[float, float]] = field(default_factory=dict)

    @staticmethod
    def cache_file(cache_dir: str | Path, key: list) -> Path:
        """Where the reference of ``key`` (the dataset's identity, as JSON-able parts) is cached."""
        digest = hashlib.sha256(json.dumps([REFERENCE_VERSION, *key]).encode()).hexdigest()[:24]
        return Path(cache_dir) / "fid" / f"{digest}.pt"

    @classmethod
    def load_or_compute(
        cls,
        path: Path,
        training_images: Callable[[], torch.Tensor],
        features: InceptionFeatures,
        log: Callable[[str], object] = print,
    ) -> FIDReference:
        """The cached reference at ``path``, else the features of ``training_images()`` (then cached)."""
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                floors = {int(n): (float(v[0]), float(v[1])) for n, v in stored["floors"].items()}
                return cls(
                    stored["mean"], stored["cov"], stored["kid_features"], int(stored["n_ref"]), path, floors
                )
            except Exception as err:  # a truncated or foreign file: compute it again
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                log(f"FID reference {path} unreadable ({reason}); computing it again")
        images = training_images()
        log(f"FID reference: Inception features of {len(images)} training images (once; cached in {path})")
        f = features(images)
        mean, cov = feature_statistics64(f)
        ref = cls(mean, cov, f[:KID_FEATURES].clone(), len(f), path)
        ref.save()
        return ref

    def save(self) -> None:
        """Write the reference whole (a temporary file replaced into place)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".partial-{os.getpid()}")
        floors = {str(n): list(v) for n, v in self.floors.items()}
        torch.save(
            {"mean": self.mean, "cov": self.cov, "kid_features": self.kid_features, "n_ref": self.n_ref,
             "floors": floors},
            tmp,
        )  # fmt: skip
        tmp.replace(self.path)

    def score(self, fake: torch.Tensor) -> tuple[float, float]:
        """(FID, KID) of features ``fake`` [n, 2048] against this reference."""
        return fid_from_statistics(self.mean, self.cov, *feature_statistics64(fake)), kid_from_features(
            self.kid_features, fake
        )

    def floor(
        self, n: int, held_out: Callable[[int], torch.Tensor], features: InceptionFeatures
    ) -> tuple[float, float]:
        """(FID, KID) of ``n`` held-out real images against this reference, computed once per n (cached)."""
        if n not in self.floors:
            self.floors[n] = self.score(features(held_out(n)))
            self.save()
        return self.floors[n]
