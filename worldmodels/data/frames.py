"""V's training frames: the whole set loaded as one tensor, and as a batch source.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), appendix A.1: V trains on
shuffled batches of single frames of the rollouts. :class:`FrameSource` delivers them from
one (N, 3, 64, 64) uint8 tensor held on the device when it fits
(:func:`load_frames`), else as chunk-aligned shuffled batches
read from the HDF5 file (:meth:`~worldmodels.data.datasets.FrameDataset.sample_batches`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from worldmodels.data.datasets import (
    FRAME_BYTES,
    FRAME_SHAPE,
    FrameDataset,
    RolloutDataset,
    Source,
    _as_rollouts,
    _episode_indices,
    available_memory,
)
from worldmodels.errors import DataError
from worldmodels.generative.objective import to_float

__all__ = ["FrameSource", "fits_in_memory", "frame_bytes", "load_frames"]


# ------------------------------------------------------------------ whole set in memory


def frame_bytes(path: Source, episodes: Sequence[int] | None = None) -> int:
    """Raw (uncompressed) bytes of the frames of the chosen episodes."""
    rollouts = _as_rollouts(path)
    return int(rollouts.lengths[_episode_indices(rollouts, episodes)].sum()) * FRAME_BYTES


def fits_in_memory(path: Source, device: str | torch.device = "cpu",
                   fraction: float = 0.5, episodes: Sequence[int] | None = None) -> bool:
    """Whether the raw frames (N x 12 KiB) take at most ``fraction`` of the free memory
    of ``device`` (False when the free memory cannot be determined)."""
    free = available_memory(device)
    return free is not None and frame_bytes(path, episodes) <= fraction * free


def load_frames(path: Source, episodes: Sequence[int] | None = None,
                device: str | torch.device = "cpu",
                staging_frames: int = 8192) -> torch.Tensor:
    """All frames of the chosen episodes, in episode order, as one uint8 tensor
    (N, 3, 64, 64) on ``device``.

    Episodes are decompressed straight into one preallocated tensor (no list of arrays,
    no concatenation). For the CPU that tensor is the result; for another device it is
    allocated there and filled through two pinned host buffers of ``staging_frames``
    frames, so host memory never holds the whole set and decompression overlaps the
    host-to-device copies. The result is the (N, 3, 64, 64) view of the stored
    (N, 64, 64, 3) layout, i.e. torch's ``channels_last`` memory format (what CUDA
    convolutions prefer); call ``.contiguous()`` for NCHW-contiguous memory. Check
    :func:`fits_in_memory` first.
    """
    rollouts = _as_rollouts(path)
    chosen = _episode_indices(rollouts, episodes)
    device = torch.device(device)
    total = int(rollouts.lengths[chosen].sum())
    if device.type == "cpu":
        frames = torch.empty((total, *FRAME_SHAPE), dtype=torch.uint8)
        out, pos = frames.numpy(), 0
        for k in chosen:
            length = int(rollouts.lengths[k])
            rollouts.read(int(k), "frames", 0, length, out=out[pos:pos + length])
            pos += length
        return frames.movedim(-1, -3)
    return _load_frames_staged(rollouts, chosen, device, total, staging_frames)


def _load_frames_staged(rollouts: RolloutDataset, chosen: np.ndarray, device: torch.device,
                        total: int, staging_frames: int) -> torch.Tensor:
    frames = torch.empty((total, *FRAME_SHAPE), dtype=torch.uint8, device=device)
    pin = device.type == "cuda"
    staging = [torch.empty((max(1, min(staging_frames, total)), *FRAME_SHAPE),
                           dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
    copied: list[Any] = [None, None]  # per buffer: an event marking its last copy done
    which, filled, dest = 0, 0, 0

    def flush() -> None:
        nonlocal which, filled, dest
        if filled:
            frames[dest:dest + filled].copy_(staging[which][:filled], non_blocking=pin)
            if pin:
                copied[which] = torch.cuda.Event()
                copied[which].record()
            dest += filled
        which, filled = 1 - which, 0
        if copied[which] is not None:
            copied[which].synchronize()  # the buffer about to be refilled is free again

    for k in chosen:
        length, start = int(rollouts.lengths[k]), 0
        while start < length:
            n = min(length - start, len(staging[which]) - filled)
            rollouts.read(int(k), "frames", start, start + n,
                          out=staging[which].numpy()[filled:filled + n])
            filled += n
            start += n
            if filled == len(staging[which]):
                flush()
    flush()
    if pin:
        torch.cuda.current_stream(device).synchronize()
    return frames.movedim(-1, -3)


class FrameSource:
    """The frames of some episodes: one uint8 tensor on the device, or streamed from HDF5.

    :param rollouts: the open dataset.
    :param episodes: episode indices (a train or validation split).
    :param device: where batches are delivered.
    :param in_memory: hold every frame as one (N, 3, 64, 64) uint8 tensor on ``device``
        (:func:`load_frames`) and draw batches by index;
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
