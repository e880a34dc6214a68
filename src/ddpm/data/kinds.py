"""What every data class of a run offers, as a type: :class:`RunData`.

:class:`~ddpm.data.toy.ToyData`, :class:`~ddpm.data.images.ImageData` and
:class:`~ddpm.data.images.ImageScale` (published weights without a dataset) all satisfy it; code that
needs more (a toy set's ``training_data``, an image set's labels) narrows by ``kind`` or by class.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch

__all__ = ["DataKind", "RunData"]

#: what a run's samples are, for the code that draws and scores them
DataKind = Literal["toy", "image"]


class RunData(Protocol):
    """A run's data as the commands that sample and evaluate it see it."""

    @property
    def kind(self) -> DataKind:
        """``"toy"`` (vectors [D]) or ``"image"`` ([C, H, W])."""
        ...

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one sample as the network sees it."""
        ...

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw units -> the network's scale."""
        ...

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The network's scale -> raw units."""
        ...

    def held_out(self, n: int | None = None) -> torch.Tensor:
        """Held-out data in raw units (the first ``n``)."""
        ...
