"""Toy datasets (1D and 2D) and :class:`ToyData`, what a toy run's data is (no loaders, no Lightning).

Each generator is ``fn(n, rng, **params) -> float32 array [n, D]`` and registered by name, so a config
picks it with ``dataset: moons``; a generator whose data has classes returns :class:`Labelled` (the points,
their int64 labels and the number of classes): ``gaussian_mixture`` (its components), ``eight_gaussians``
(8), ``moons`` and ``circles`` (2), ``checkerboard`` (which dark square). ``array`` loads the user's own
``.npy`` / ``.csv`` file of shape [N, D] (points) or [N, L] (signals, trajectories), with an optional label
column, or an ``.npz`` with arrays ``x`` and, optionally, ``labels``.

:class:`ToyData` generates or loads the data and holds its normalisation: what sampling and evaluation use.
Training adds the loaders: :class:`ddpm.data.datamodules.ToyDataModule`, the LightningDataModule.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

__all__ = [
    "TOY_DATASETS",
    "Labelled",
    "ToyData",
    "draw_toy_data",
    "load_array",
    "load_labelled_array",
    "make_toy_data",
]


class Labelled(NamedTuple):
    """What a generator of data with classes returns: points [n, D], labels [n] (int64), the class count."""

    x: np.ndarray
    labels: np.ndarray | None  # None (and 0 classes): data without classes, from draw_toy_data
    num_classes: int


Generator = Callable[..., "np.ndarray | Labelled"]
TOY_DATASETS: dict[str, Generator] = {}


def _register(name: str) -> Callable[[Generator], Generator]:
    def decorator(fn: Generator) -> Generator:
        TOY_DATASETS[name] = fn
        return fn

    return decorator


@_register("point")
def point(n: int, rng: np.random.Generator, value: float = 5.0) -> np.ndarray:
    """Seed 001: every sample is the constant x0 = ``value``; shape [n, 1]."""
    return np.full((n, 1), value, dtype=np.float32)


@_register("sine")
def sine(
    n: int,
    rng: np.random.Generator,
    length: int = 100,
    amplitude: tuple[float, float] = (0.5, 1.5),
    frequency: tuple[float, float] = (0.5, 1.5),
) -> np.ndarray:
    """Sine waves A sin(w s + phi) on s in [0, 4 pi] (seed 000's signal is A = w = 1, phi = 0); [n, L]."""
    s = np.linspace(0, 4 * np.pi, length)
    a = rng.uniform(*amplitude, size=(n, 1))
    w = rng.uniform(*frequency, size=(n, 1))
    phi = rng.uniform(0, 2 * np.pi, size=(n, 1))
    return (a * np.sin(w * s[None] + phi)).astype(np.float32)


@_register("gaussian_mixture")
def gaussian_mixture(
    n: int,
    rng: np.random.Generator,
    means: tuple[float, ...] = (-2.0, 0.5, 3.0),
    stds: tuple[float, ...] = (0.5, 0.3, 0.7),
    weights: tuple[float, ...] = (0.3, 0.3, 0.4),
) -> Labelled:
    """A 1D mixture of Gaussians; [n, 1]."""
    if not len(means) == len(stds) == len(weights):
        raise ValueError(
            f"gaussian_mixture: means, stds and weights must have equal lengths, "
            f"got {len(means)}, {len(stds)}, {len(weights)}"
        )
    p = np.asarray(weights, dtype=np.float64)
    k = rng.choice(len(means), size=n, p=p / p.sum())
    x = np.asarray(means)[k] + np.asarray(stds)[k] * rng.standard_normal(n)
    return Labelled(x[:, None].astype(np.float32), k.astype(np.int64), len(means))


@_register("gaussian")
def gaussian(
    n: int, rng: np.random.Generator, mean: tuple[float, float] = (2.0, 2.0), std: float = 0.5
) -> np.ndarray:
    """Seed 003: N(mean, std^2 I) in 2D; [n, 2]."""
    return (np.asarray(mean) + std * rng.standard_normal((n, 2))).astype(np.float32)


def _sk_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


# moons, circles and swiss_roll draw exactly what scikit-learn's make_moons / make_circles /
# make_swiss_roll draw for the same seed (tests/test_toy_data.py compares them bit for bit): importing
# scikit-learn costs about a second, more than sampling a trained toy model, and the commands that only
# sample regenerate the data.
def _two_arcs(outer: np.ndarray, inner: np.ndarray, rs: np.random.RandomState, noise: float) -> Labelled:
    """Both point sets stacked, shuffled and noised in scikit-learn's order of random draws; labelled 0
    (outer) and 1 (inner) as scikit-learn's y."""
    x = np.concatenate([outer, inner])
    y = np.concatenate([np.zeros(len(outer), np.int64), np.ones(len(inner), np.int64)])
    order = np.arange(len(x))
    rs.shuffle(order)  # sklearn.utils.shuffle(X, y, random_state=rs)
    x, y = x[order], y[order]
    return Labelled((x + rs.normal(scale=noise, size=x.shape)).astype(np.float32), y, 2)


@_register("moons")
def moons(n: int, rng: np.random.Generator, noise: float = 0.05) -> Labelled:
    """scikit-learn's two interleaving half circles (``make_moons``); [n, 2]."""
    rs = np.random.RandomState(_sk_seed(rng))
    n_out = n // 2
    n_in = n - n_out
    arc_out, arc_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    outer = np.stack([np.cos(arc_out), np.sin(arc_out)], axis=1)
    inner = np.stack([1 - np.cos(arc_in), 1 - np.sin(arc_in) - 0.5], axis=1)
    return _two_arcs(outer, inner, rs, noise)


@_register("circles")
def circles(n: int, rng: np.random.Generator, noise: float = 0.04, factor: float = 0.5) -> Labelled:
    """scikit-learn's two concentric circles (``make_circles``); [n, 2]."""
    rs = np.random.RandomState(_sk_seed(rng))
    n_out = n // 2
    n_in = n - n_out
    angle_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)  # no point twice at angle 0 and 2 pi
    angle_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    outer = np.stack([np.cos(angle_out), np.sin(angle_out)], axis=1)
    inner = np.stack([np.cos(angle_in) * factor, np.sin(angle_in) * factor], axis=1)
    return _two_arcs(outer, inner, rs, noise)


@_register("swiss_roll")
def swiss_roll(n: int, rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    """The 2D swiss roll: x and z of scikit-learn's 3D roll (``make_swiss_roll``), scaled by 1/5; [n, 2]."""
    rs = np.random.RandomState(_sk_seed(rng))
    t = 1.5 * np.pi * (1 + 2 * rs.uniform(size=n))
    height = 21 * rs.uniform(size=n)
    x = np.vstack((t * np.cos(t), height, t * np.sin(t)))
    x = (x + noise * rs.standard_normal(size=(3, n))).T
    return (x[:, [0, 2]] / 5.0).astype(np.float32)


@_register("eight_gaussians")
def eight_gaussians(n: int, rng: np.random.Generator, radius: float = 2.0, std: float = 0.1) -> Labelled:
    """Eight Gaussians evenly spaced on a circle (FFJORD's "8gaussians"); [n, 2], labelled by component
    (k at angle 2 pi k / 8)."""
    k = rng.integers(0, 8, size=n)
    angles = 2 * np.pi * k / 8
    centers = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return Labelled((centers + std * rng.standard_normal((n, 2))).astype(np.float32), k.astype(np.int64), 8)


@_register("checkerboard")
def checkerboard(n: int, rng: np.random.Generator, squares: int = 4, size: float = 4.0) -> Labelled:
    """Uniform on the dark squares of a ``squares`` x ``squares`` board of side ``size``; [n, 2], labelled
    by which dark square (squares^2 / 2 classes, column-major)."""
    if squares < 2 or squares % 2:
        raise ValueError(f"checkerboard: squares={squares!r} must be an even integer >= 2")
    cell = size / squares
    col = rng.integers(0, squares, size=n)
    # Dark squares have an even row + column: pick every other row, offset by the column's parity.
    row = 2 * rng.integers(0, squares // 2, size=n) + col % 2
    xy = (np.stack([col, row], axis=1) + rng.uniform(size=(n, 2))) * cell - size / 2
    labels = (col * (squares // 2) + row // 2).astype(np.int64)
    return Labelled(xy.astype(np.float32), labels, squares * squares // 2)


def _labels(path: str | Path, labels: np.ndarray, n: int) -> np.ndarray:
    """The labels of a user's file as int64 0 .. C - 1, one per row, or a one-line ValueError."""
    labels = np.asarray(labels)
    as_int = labels.astype(np.int64) if labels.dtype.kind in "iuf" else None
    if as_int is None or labels.shape != (n,) or not np.array_equal(as_int, labels) or as_int.min() < 0:
        raise ValueError(
            f"data.path={str(path)!r}: its labels must be {n} integers >= 0 (one per row), "
            f"got shape {labels.shape} of dtype {labels.dtype}"
        )
    return as_int


def load_labelled_array(
    path: str | Path, label_column: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's data file and its labels: float32 [N, D] and int64 [N] (None without labels).

    An ``.npz`` holds the points as ``x`` and, optionally, the labels as ``labels``; a ``.npy`` or ``.csv``
    may keep its labels in column ``label_column`` (removed from the points; negative counts from the end).
    """
    p = Path(path)
    if p.suffix == ".npz":
        if not p.is_file():
            raise FileNotFoundError(f"data.path={str(path)!r} does not exist")
        with np.load(p, allow_pickle=False) as arrays:
            if "x" not in arrays:
                raise ValueError(
                    f"data.path={str(path)!r} holds {sorted(arrays)}; it needs an array 'x' [N, D]"
                )
            x = _checked(path, arrays["x"])
            labels = _labels(path, arrays["labels"], len(x)) if "labels" in arrays else None
        return x, labels
    x = load_array(path)
    if label_column is None:
        return x, None
    if not -x.shape[1] <= label_column < x.shape[1] or x.shape[1] < 2:
        raise ValueError(
            f"data.label_column={label_column} is outside the {x.shape[1]} columns of {str(path)!r}"
        )
    column = label_column % x.shape[1]
    return np.delete(x, column, axis=1), _labels(path, x[:, column], len(x))


def _checked(path: str | Path, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"data.path={str(path)!r} holds shape {x.shape}; expected [N, D] with N >= 2")
    if not np.isfinite(x).all():
        raise ValueError(f"data.path={str(path)!r} contains NaN or inf values")
    return x


def load_array(path: str | Path) -> np.ndarray:
    """Load a user's data file (``.npy`` or ``.csv``) as float32 [N, D]; a header row in a CSV is skipped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist; give a .npy or .csv file of shape [N, D]"
        )
    if p.suffix == ".npy":
        x = np.load(p, allow_pickle=False)
    elif p.suffix == ".csv":
        with p.open() as fh:
            first = fh.readline()
        try:
            [float(v) for v in first.strip().split(",")]
            skip = 0
        except ValueError:
            skip = 1
        x = np.loadtxt(p, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise ValueError(f"data.path={str(path)!r} has suffix {p.suffix!r}; allowed: .npy, .csv, .npz")
    return _checked(path, x)


def draw_toy_data(dataset: str, n: int, seed: int, **params: object) -> Labelled:
    """Draw ``n`` samples of a registered toy dataset with a given seed, with their labels (None and 0
    classes for a dataset without classes)."""
    if dataset not in TOY_DATASETS:
        raise ValueError(
            f"data.dataset={dataset!r} is unknown; choose one of {sorted(TOY_DATASETS)} or 'array'"
        )
    out = TOY_DATASETS[dataset](n, np.random.default_rng(seed), **params)
    return out if isinstance(out, Labelled) else Labelled(out, None, 0)


def make_toy_data(dataset: str, n: int, seed: int, **params: object) -> np.ndarray:
    """Draw ``n`` samples of a registered toy dataset with a given seed (the points only)."""
    return draw_toy_data(dataset, n, seed, **params).x


class ToyData:
    """Toy data generated from a seed, or loaded from a file, with train/val splits and normalisation.

    ``kind`` is ``"toy"``: samples are vectors [D] (points, signals, scalars), scored against
    :meth:`held_out` data with the energy distance (:mod:`ddpm.evaluation.toy`). It takes the arguments of
    the config's ``data`` node, loader options included (``batch_size``), so one node builds it or the
    training :class:`~ddpm.data.datamodules.ToyDataModule`, which adds only the loaders.

    Args:
        dataset: a name in :data:`TOY_DATASETS`, or ``array`` to load ``path``.
        data_dim: values per sample (2 for points, L for signals, 1 for scalars); None infers it.
        n_train: training samples (generated datasets).
        n_val: held-out samples for the validation loss and the quality figure.
        batch_size: samples per training step.
        seed: RNG seed; train and val are independent draws (seed and seed + 1).
        normalize: standardise each feature with the training mean and std (undone before reporting).
        path: the file for ``dataset=array``.
        val_fraction: share of an ``array`` file held out for validation.
        params: options of the generator (e.g. ``noise`` for moons, ``value`` for point).
        label_column: ``array`` ``.npy`` / ``.csv`` files: the column that holds integer class labels.

    Data with classes (the labelled generators, an ``.npz`` with ``labels``, a ``label_column``) keeps its
    labels: ``num_classes`` > 0, and the loaders yield ``(x, y)``.
    """

    #: what the data is, for the code that draws and scores samples: ``"toy"`` or ``"image"``
    kind: Literal["toy"] = "toy"

    def __init__(
        self,
        dataset: str = "moons",
        data_dim: int | None = None,
        n_train: int = 20_000,
        n_val: int = 2_000,
        batch_size: int = 256,
        seed: int = 0,
        normalize: bool = True,
        path: str | None = None,
        val_fraction: float = 0.1,
        params: dict | None = None,
        label_column: int | None = None,
    ) -> None:
        super().__init__()  # cooperative: ToyDataModule puts LightningDataModule after this class
        if dataset != "array" and dataset not in TOY_DATASETS:
            raise ValueError(
                f"data.dataset={dataset!r} is unknown; choose one of {sorted(TOY_DATASETS)} or 'array'"
            )
        for arg, value in (("n_train", n_train), ("n_val", n_val), ("batch_size", batch_size)):
            if int(value) < 1:
                raise ValueError(f"data.{arg}={value!r} is invalid; it must be an integer >= 1")
        if dataset == "array" and not path:
            raise ValueError("data.path is missing; dataset=array needs a .npy or .csv file of shape [N, D]")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={val_fraction!r} is outside (0, 1)")
        self.dataset = dataset
        self.n_train, self.n_val, self.batch_size = int(n_train), int(n_val), int(batch_size)
        self.seed = int(seed)
        self.normalize_data = bool(normalize)
        self.path = path
        self.val_fraction = float(val_fraction)
        self.params = dict(params or {})
        self.label_column = label_column
        self.train_raw: torch.Tensor | None = None
        self.val_raw: torch.Tensor | None = None
        #: labels [N] of the training and held-out points (None: data without classes)
        self.train_labels: torch.Tensor | None = None
        self.val_labels: torch.Tensor | None = None
        #: the number of classes the labels take (0: no labels)
        self.num_classes = 0
        self.mean = torch.zeros(1)
        self.std = torch.ones(1)
        self._expected_dim = data_dim
        self.setup()  # cheap, and it lets a bad path or shape fail before any run folder or logger

    def setup(self, stage: str | None = None) -> None:
        """Generate or load the data once; compute the normalisation from the training split."""
        if self.train_raw is not None:
            return
        train_y: np.ndarray | None
        val_y: np.ndarray | None
        if self.dataset == "array":
            assert self.path is not None  # __init__ refuses dataset=array without a path
            x, labels = load_labelled_array(self.path, self.label_column)
            perm = np.random.default_rng(self.seed).permutation(len(x))
            n_val = max(1, round(len(x) * self.val_fraction))
            train, val = x[perm[n_val:]], x[perm[:n_val]]
            if labels is not None:
                self.num_classes = int(labels.max()) + 1
                train_y, val_y = labels[perm[n_val:]], labels[perm[:n_val]]
        else:
            if self.label_column is not None:
                raise ValueError(
                    "data.label_column is for dataset=array; generated datasets carry their labels"
                )
            train, train_y, self.num_classes = draw_toy_data(
                self.dataset, self.n_train, self.seed, **self.params
            )
            val, val_y, _ = draw_toy_data(self.dataset, self.n_val, self.seed + 1, **self.params)
        if self.num_classes:
            assert train_y is not None and val_y is not None  # labels come with classes
            self.train_labels, self.val_labels = torch.from_numpy(train_y), torch.from_numpy(val_y)
        if self._expected_dim is not None and train.shape[1] != int(self._expected_dim):
            raise ValueError(
                f"data.data_dim={self._expected_dim} but dataset {self.dataset!r} has "
                f"{train.shape[1]} values "
                "per sample; fix data.data_dim or leave it null to infer it"
            )
        self.train_raw, self.val_raw = torch.from_numpy(train), torch.from_numpy(val)
        if self.normalize_data:
            self.mean = self.train_raw.mean(0)
            std = self.train_raw.std(0)
            # A constant feature (the point dataset) has std 0: centre it but do not scale it.
            self.std = torch.where(std > 1e-6, std, torch.ones_like(std))

    @property
    def data_dim(self) -> int:
        """Values per sample."""
        assert self.train_raw is not None
        return int(self.train_raw.shape[1])

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample as the network sees it."""
        return (self.data_dim,)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw data -> the network's scale."""
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's scale -> raw data units (for reporting and plots)."""
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def true_moments(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, covariance) of the data distribution where it is known in closed form, else None."""
        if self.dataset == "gaussian":
            mean = torch.tensor(self.params.get("mean", (2.0, 2.0)), dtype=torch.float32)
            return mean, float(self.params.get("std", 0.5)) ** 2 * torch.eye(2)
        if self.dataset == "point":
            return torch.tensor([float(self.params.get("value", 5.0))]), torch.zeros(1, 1)
        return None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The name of each label: its number."""
        return tuple(str(k) for k in range(self.num_classes))

    def class_centres(self) -> torch.Tensor:
        """Each class's mean point [C, D] in raw units (the training data's): the "mode" samples drawn for
        a class are scored against (for eight_gaussians, its component's centre)."""
        assert self.train_raw is not None and self.train_labels is not None
        return torch.stack([self.train_raw[self.train_labels == k].mean(0) for k in range(self.num_classes)])

    def held_out_labels(self, n: int | None = None) -> torch.Tensor | None:
        """The labels of :meth:`held_out`'s points (None: data without classes)."""
        return None if self.val_labels is None else self.val_labels[:n]

    def held_out(self, n: int | None = None) -> torch.Tensor:
        """Up to ``n`` (default all) held-out samples in raw units: what a quality figure compares with."""
        assert self.val_raw is not None
        return self.val_raw[:n]

    def training_data(self, n: int | None = None) -> torch.Tensor:
        """Up to ``n`` (default all) training samples in raw units: the data-vs-data floor's second draw."""
        assert self.train_raw is not None
        return self.train_raw[:n]
