"""V's training frames as a batch source: one uint8 tensor on the device, or streamed.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), appendix A.1: V trains on
shuffled batches of single frames of the rollouts. :class:`FrameSource` delivers them from
one (N, 3, 64, 64) uint8 tensor held on the device when it fits
(:func:`~worldmodels.data.datasets.load_frames`), else as chunk-aligned shuffled batches
read from the HDF5 file (:meth:`~worldmodels.data.datasets.FrameDataset.sample_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from worldmodels.data.datasets import FrameDataset, RolloutDataset, load_frames
from worldmodels.errors import DataError
from worldmodels.generative.objective import to_float

__all__ = ["FrameSource"]


class FrameSource:
    """The frames of some episodes: one uint8 tensor on the device, or streamed from HDF5.

    :param rollouts: the open dataset.
    :param episodes: episode indices (a train or validation split).
    :param device: where batches are delivered.
    :param in_memory: hold every frame as one (N, 3, 64, 64) uint8 tensor on ``device``
        (:func:`~worldmodels.data.datasets.load_frames`) and draw batches by index;
        otherwise read chunk-aligned shuffled batches from the file
        (:meth:`~worldmodels.data.datasets.FrameDataset.sample_batches`).
    """

    def __init__(self, rollouts: RolloutDataset, episodes: Sequence[int],
                 device: torch.device, in_memory: bool) -> None:
        self.device = device
        self.dataset = FrameDataset(rollouts, episodes)
        self.frames: torch.Tensor | None = None
        if in_memory and len(self.dataset):
            try:
                self.frames = load_frames(rollouts, episodes, device)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if "memory" not in str(e).lower():
                    raise
                raise DataError(f"the frames of {rollouts.path} do not fit in {device} memory: "
                                "pass --in-memory no to stream them from the file") from None

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """The ``len // batch_size`` full batches (B, 3, 64, 64) uint8 of one shuffled pass
        (the last partial batch is dropped, so every batch has the same shape for
        ``torch.compile``), starting after the first ``skip``. The order depends only on
        ``seed`` (and on in-memory vs streamed)."""
        num_batches = len(self) // batch_size
        if self.frames is not None:
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(self), generator=g).to(self.device)
            for i in range(skip, num_batches):
                yield self.frames[perm[i * batch_size:(i + 1) * batch_size]]
            return
        batches = self.dataset.sample_batches(batch_size, rng=np.random.default_rng(seed),
                                              drop_last=True, epochs=1)
        # Resuming mid-epoch re-reads the skipped batches: the shuffle buffer's state
        # depends on them.
        for x in _skip(batches, skip):
            yield x.to(self.device, non_blocking=True)

    def all_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every frame once (the last batch may be smaller), in a fixed order."""
        if self.frames is not None:
            for i in range(0, len(self), batch_size):
                yield self.frames[i:i + batch_size]
            return
        for x in self.dataset.sample_batches(batch_size, rng=0, epochs=1):
            yield x.to(self.device, non_blocking=True)

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` as (len, 3, 64, 64) uint8 on the device."""
        if self.frames is not None:
            return self.frames[torch.as_tensor(list(indices), device=self.device)]
        return torch.stack([self.dataset[int(i)] for i in indices]).to(self.device)

    def variance(self, max_frames: int = 4096) -> float:
        """Pixel variance (in [0, 1] units) of up to ``max_frames`` evenly spaced frames."""
        idx = np.linspace(0, len(self) - 1, min(len(self), max_frames)).round().astype(np.int64)
        if self.frames is None:  # one shuffled read beats random access to each frame
            x = next(iter(self.dataset.sample_batches(len(idx), rng=0)))
        else:
            x = self.take(np.unique(idx))
        return float(to_float(x).var())


def _skip(it: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    for i, x in enumerate(it):
        if i >= n:
            yield x
