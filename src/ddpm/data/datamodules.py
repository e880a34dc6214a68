"""The LightningDataModules: the run's data (:class:`~ddpm.data.toy.ToyData`,
:class:`~ddpm.data.images.ImageData`) plus the loaders training needs.

This is the only data module that imports Lightning: sampling and evaluating a trained run build the plain
data classes (:func:`ddpm.build.load_run`), and only ``ddpm-train`` builds these. A DataModule adds the
loaders and Lightning's hooks, nothing else; every other attribute is its data class's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, TensorDataset

from ddpm.data.image_sets import ensure_files, to_unit
from ddpm.data.images import FOLDER, ImageData, resize
from ddpm.data.toy import ToyData

__all__ = ["ImageDataModule", "ShardedBatchSampler", "ToyDataModule", "batch_loader"]


# ----------------------------------------------------------------------------- in-memory batches
class ShardedBatchSampler(DistributedSampler):
    """Yields whole batches of indices: a per-epoch permutation from (seed, epoch), split across ranks.

    It subclasses ``DistributedSampler`` so Lightning leaves it in place under DDP (it shards itself,
    every rank taking the same number of batches), and Lightning's ``set_epoch`` call gives each epoch
    a new, reproducible order. ``resume(epoch, skip)`` drops the first ``skip`` batches of ``epoch``.
    """

    def __init__(
        self, n: int, batch_size: int, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        indices = cast(Dataset, range(n))  # DistributedSampler only takes its len()
        super().__init__(indices, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.n, self.batch_size = n, batch_size
        self._resume: tuple[int, int] | None = None

    def resume(self, epoch: int, skip: int) -> None:
        """Skip the first ``skip`` batches when epoch ``epoch`` is iterated."""
        self._resume = (epoch, skip)

    def __len__(self) -> int:
        """Batches per epoch on this rank (training drops the ragged end)."""
        per_rank = self.n // self.num_replicas
        return per_rank // self.batch_size if self.shuffle else math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.num_replicas
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        for b in range(start, len(self)):
            yield mine[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def batch_loader(
    data: TensorDataset,
    trainer: L.Trainer | None,
    batch_size: int,
    train: bool,
    seed: int,
    collate_fn: Callable | None = None,
    device: torch.device | None = None,
) -> DataLoader:
    """A DataLoader of whole batches of in-memory tensors, sharded per DDP rank and resumable mid-epoch.

    Whole batches are indexed at once (``batch_size=None``): no per-sample collation. ``device`` moves the
    tensors there first (data held on the GPU). Under a trainer that has already stepped (a resumed run),
    the batches the checkpointed run took in this epoch are skipped: the epoch's order is a function of
    (seed, epoch), so the resumed run continues exactly where it stopped.
    """
    if device is not None:
        data = TensorDataset(*(t.to(device) for t in data.tensors))
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ShardedBatchSampler(
        len(data), min(batch_size, len(data)), shuffle=train, seed=seed, num_replicas=world, rank=rank
    )
    if train and trainer is not None and trainer.global_step > 0:
        taken = trainer.global_step * trainer.accumulate_grad_batches  # batches, not optimizer steps
        sampler.resume(trainer.current_epoch, taken % max(1, len(sampler)))
    # Its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG, and a
    # resumed run (which creates one mid-epoch) would then draw different t and noise.
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data, sampler=sampler, batch_size=None, generator=gen, collate_fn=collate_fn)


# ----------------------------------------------------------------------------- toy data
def _pair_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reflow's (samples, noise) batch as the mapping the training step reads its noise from."""
    return {"x": batch[0], "noise": batch[1]}


class ToyDataModule(ToyData, L.LightningDataModule):
    """:class:`~ddpm.data.toy.ToyData` (same arguments) with its training and validation loaders:
    normalised batches, a 1-tuple of a tensor [B, D] (``(x, y)`` for data with classes), sharded per DDP
    rank and resumable mid-epoch."""

    def _loader(self, x: torch.Tensor, labels: torch.Tensor | None, train: bool) -> DataLoader:
        tensors = (self.normalize(x),) if labels is None else (self.normalize(x), labels)
        return batch_loader(
            TensorDataset(*tensors), getattr(self, "trainer", None), self.batch_size, train, self.seed
        )

    #: a reflow's fixed (samples, noise) pairs on the normalised scale (:meth:`use_pairs`), or None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None

    def use_pairs(self, samples: torch.Tensor, noise: torch.Tensor) -> None:
        """Train on fixed (sample, noise) pairs (a reflow's, :mod:`ddpm.reflow`) instead of the data with
        fresh noise: the training batches become ``{"x": samples, "noise": noise}``; validation keeps the
        held-out data."""
        if samples.shape != noise.shape or tuple(samples.shape[1:]) != tuple(self.data_shape):
            raise ValueError(
                f"pairs of shapes {tuple(samples.shape)} and {tuple(noise.shape)} do not fit this data's "
                f"samples of shape {tuple(self.data_shape)}"
            )
        self.pairs = (samples.float(), noise.float())

    def train_dataloader(self) -> DataLoader:
        """Shuffled, normalised training batches (a 1-tuple of a tensor [B, D], or ``(x, y)``; a reflow's
        pairs as ``{"x", "noise"}``)."""
        if self.pairs is not None:
            return batch_loader(
                TensorDataset(*self.pairs),
                getattr(self, "trainer", None),
                self.batch_size,
                True,
                self.seed,
                collate_fn=_pair_batch,
            )
        assert self.train_raw is not None
        return self._loader(self.train_raw, self.train_labels, train=True)

    def val_dataloader(self) -> DataLoader:
        """Held-out normalised batches, in order."""
        assert self.val_raw is not None
        return self._loader(self.val_raw, self.val_labels, train=False)


# ----------------------------------------------------------------------------- images
class _ToNetwork:
    """Collate (image, label) items into a batch on the network's scale, with the training augmentation.

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, image_size: int, resize_mode: str, flip: bool) -> None:
        self.image_size = image_size
        self.resize_mode = resize_mode
        self.flip = flip

    def __call__(
        self, items: list[tuple[torch.Tensor, torch.Tensor]] | tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(items, tuple):  # a whole batch indexed at once (``on_device``)
            images, labels = items
        else:
            images = torch.stack([item[0] for item in items])
            labels = torch.stack([item[1] for item in items])
        x = resize(to_unit(images), self.image_size, self.resize_mode)
        if self.flip:
            # DDPM sec. 4: random horizontal flips for CIFAR-10, one coin per image.
            mask = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x * 2.0 - 1.0, labels  # DDPM sec. 3.3: [0, 1] -> [-1, 1]


class ImageDataModule(ImageData, L.LightningDataModule):
    """:class:`~ddpm.data.images.ImageData` (same arguments) with its loaders: batches ``(images [B, C, H,
    W] in [-1, 1], labels [B])``, training ones shuffled and randomly flipped when enabled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dataset == FOLDER:
            # decoded (or read from the cache) now: a folder with no readable image fails in one line before
            # the run starts, not inside the trainer
            self.prepare_folder()

    def prepare_data(self) -> None:
        """Download or unpack the files once per node (Lightning calls this on one process)."""
        if self.dataset != FOLDER:
            ensure_files(self.dataset, self.data_dir, self.download)

    def _loader(self, data: TensorDataset, train: bool) -> DataLoader:
        collate = _ToNetwork(self.image_size, self.resize_mode, flip=train and self.random_flip)
        if self.on_device:
            trainer = getattr(self, "trainer", None)
            device = trainer.strategy.root_device if trainer is not None else None
            return batch_loader(data, trainer, self.batch_size, train, self.seed, collate, device)
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(self.seed)) if train else None
        return DataLoader(
            data,
            batch_size=min(self.batch_size, len(data)),
            sampler=sampler,
            drop_last=train,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches ``(images, labels)`` in [-1, 1], randomly flipped when enabled."""
        self.setup()
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in order, never flipped."""
        self.setup()
        assert self.val_set is not None
        return self._loader(self.val_set, train=False)
