"""Datasets that read the HDF5 rollout store: episodes, frames for V, sequences for M.

Ha & Schmidhuber (2018, arXiv:1803.10122) train V (the VAE) on individual frames drawn
from 10,000 random-policy CarRacing episodes and M (the MDN-RNN) on fixed-length
sequences of the same episodes. This module gives both views of one
``rollouts.h5`` (format in :mod:`worldmodels.data.rollouts`):

* :class:`RolloutDataset`: whole episodes as numpy arrays, ``episode(k)``;
* :class:`FrameDataset`: every frame of the chosen episodes, one ``(3, 64, 64)`` uint8
  tensor per item, plus :meth:`FrameDataset.sample_batches`, a chunk-aligned shuffled
  batch iterator for V;
* :func:`~worldmodels.data.frames.load_frames` / ``fits_in_memory`` (in
  :mod:`worldmodels.data.frames`): the whole frame set as one tensor (on the GPU when it fits: the fastest way to feed V, no reading at all during training).

Design choices.

* **Lazy, per-process HDF5 handles.** An HDF5 handle must not be shared across ``fork``
  and cannot be pickled, yet torch's ``DataLoader`` copies the dataset into each worker
  process. So a handle is opened on first use and remembered together with the process
  id that opened it; a worker (forked or spawned) sees a different pid and opens its
  own. ``__getstate__`` drops the handle, so every dataset pickles.
* **Everything cheap is read once at construction** (episode lengths, seeds, chunk sizes,
  the collect config) and validated there, so a foreign, truncated or inconsistent file
  fails at once with a one-line :class:`~worldmodels.errors.DataError`, not in a worker
  process halfway through an epoch.
* **Reads follow the chunking.** Frames are stored gzip-compressed in chunks of
  ``chunk_frames`` (default 10) consecutive frames of one episode, so reading one frame
  decompresses its whole chunk. Random single-frame access therefore pays for ~10
  frames and delivers one; :meth:`FrameDataset.sample_batches` instead reads whole
  chunks in random order into a shuffle buffer and deals out shuffled batches, delivering
  every decompressed frame. Measured (``scripts/benchmark.py data``, 4 episodes x 300
  steps, gzip-6, 10-frame chunks, file in the page cache, one core of a 2-core CPU
  machine): random single frames ~2,100 frames/s, chunk-aligned shuffled batches
  ~22,000 frames/s (10x faster), ``load_frames`` ~480 MB/s. (M trains on latents,
  :class:`~worldmodels.data.latents.LatentSequences`, not on frames.)
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from worldmodels.data.rollouts import DATASET_NAME, FIELDS, episode_name, open_rollouts
from worldmodels.errors import DataError

FRAME_SHAPE = (64, 64, 3)
FRAME_BYTES = int(np.prod(FRAME_SHAPE))
ACTION_DIM = 3

# Per-field (shape after T, dtype kind) the reader accepts: 'u' unsigned int, 'f' float,
# 'b' bool.
_FIELD_SPECS: dict[str, tuple[tuple[int, ...], str]] = {
    "frames": (FRAME_SHAPE, "u"),
    "actions": ((ACTION_DIM,), "f"),
    "rewards": ((), "f"),
    "terminated": ((), "b"),
    "truncated": ((), "b"),
}


def resolve_rollouts_path(path: str | os.PathLike[str]) -> Path:
    """``<run>/rollouts.h5`` for a run directory, ``path`` itself for a file."""
    path = Path(path)
    return path / DATASET_NAME if path.is_dir() else path


class RolloutDataset:
    """Read-only view of a ``rollouts.h5``: whole episodes as numpy arrays.

    :param path: a run directory, or the ``rollouts.h5`` file inside it.
    :raises DataError: the file is missing, truncated, not a rollouts file, or its
        episodes disagree with its index (one-line message naming the problem).

    ``len(ds)`` is the number of (complete) episodes; ``ds.episode(k)`` (or ``ds[k]``)
    returns episode ``k``. Attributes read at construction: ``lengths`` (E,) int64 steps
    per episode, ``seeds`` (E,) int64 track seeds, ``chunk_lengths`` (E,) int64 frames per
    HDF5 chunk, ``num_frames``, ``config`` (the stored collect config dict).

    Safe to hand to ``DataLoader`` workers: the HDF5 handle is opened lazily per process
    and never pickled. Use as a context manager, or call :meth:`close`, to release it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = resolve_rollouts_path(path)
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None
        f = open_rollouts(self.path)
        try:
            self._read_index(f)
        except BaseException:
            f.close()
            raise
        self._handle, self._handle_pid = f, os.getpid()

    def _read_index(self, f: h5py.File) -> None:
        where = str(self.path)
        try:
            self.config: dict[str, Any] = json.loads(f.attrs["config"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where} has no readable collect config; collect it again") from None
        num_episodes = int(f.attrs["num_episodes"])
        try:
            seeds = np.asarray(f["index/seed"][()], dtype=np.int64)
            lengths = np.asarray(f["index/length"][()], dtype=np.int64)
        except (KeyError, OSError, ValueError, TypeError):
            raise DataError(
                f"{where} is incomplete (unreadable index/seed or index/length); collect it again"
            ) from None
        if seeds.shape != (num_episodes,) or lengths.shape != (num_episodes,):
            raise DataError(
                f"{where} is inconsistent: index has {seeds.shape} seeds and {lengths.shape} "
                f"lengths for {num_episodes} episodes; collect it again"
            )
        chunk_lengths = np.empty(num_episodes, dtype=np.int64)
        episodes = f["episodes"]
        for k in range(num_episodes):
            chunk_lengths[k] = self._check_episode(episodes, k, int(lengths[k]))
        self.seeds = seeds
        self.lengths = lengths
        self.chunk_lengths = chunk_lengths
        self.num_frames = int(lengths.sum())

    def _check_episode(self, episodes: h5py.Group, k: int, length: int) -> int:
        """Check episode ``k``'s frames against the index; return its frames per chunk.

        Only ``frames`` is opened here (opening an HDF5 dataset costs ~50 us: 10,000
        episodes x 5 fields would take seconds); the small fields are checked by
        :meth:`read`, which opens them anyway.
        """
        name = episode_name(k)
        if length < 1:
            raise DataError(f"{self.path} is inconsistent: index says episode {k} has {length} steps")
        group = episodes.get(name)
        if not isinstance(group, h5py.Group):
            raise DataError(f"{self.path} is incomplete: episode group episodes/{name} is missing")
        frames = group.get("frames")
        if not isinstance(frames, h5py.Dataset):
            raise DataError(f"{self.path} is incomplete: episodes/{name}/frames is missing")
        self._check_field(frames, k, "frames", length)
        return int(frames.chunks[0]) if frames.chunks is not None else length

    def _check_field(self, ds: h5py.Dataset, k: int, field: str, length: int) -> None:
        tail, kind = _FIELD_SPECS[field]
        if ds.shape != (length, *tail) or ds.dtype.kind != kind:
            raise DataError(
                f"{self.path} is inconsistent: episodes/{episode_name(k)}/{field} has shape "
                f"{ds.shape} {ds.dtype}, expected {(length, *tail)} (index length {length}); "
                "collect it again"
            )

    # ------------------------------------------------------------------ handle management

    @property
    def file(self) -> h5py.File:
        """This process's open HDF5 handle (opened on first use, reopened after fork)."""
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            # After fork the parent's handle object is inherited but must not be used:
            # drop it first, so the child's copy is closed before the file is reopened.
            self._handle = None
            self._handle = open_rollouts(self.path)
            self._handle_pid = pid
        return self._handle

    def close(self) -> None:
        """Close this process's handle; the dataset reopens it if used again."""
        if self._handle is not None and self._handle_pid == os.getpid():
            with contextlib.suppress(Exception):
                self._handle.close()
        self._handle = None
        self._handle_pid = None

    def __enter__(self) -> RolloutDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ----------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.lengths)

    def __repr__(self) -> str:
        return f"RolloutDataset({str(self.path)!r}, episodes={len(self)}, frames={self.num_frames})"

    def check_index(self, k: int) -> int:
        """``k`` as an int in ``0..len-1``; IndexError otherwise (no negative indexing:
        episode numbers are seeds' offsets, not positions)."""
        k = operator.index(k)
        if not 0 <= k < len(self):
            raise IndexError(f"episode {k} out of range: {self.path} has {len(self)} episodes (0..{len(self) - 1})")
        return k

    def group(self, k: int) -> h5py.Group:
        """The HDF5 group of episode ``k`` (for readers that slice it themselves)."""
        return self.file[f"episodes/{episode_name(self.check_index(k))}"]

    def read(self, k: int, field: str, start: int = 0, stop: int | None = None,
             out: np.ndarray | None = None) -> np.ndarray:
        """Steps ``start:stop`` of one field of episode ``k`` (read into ``out`` if given).

        :param field: one of ``frames`` (T, 64, 64, 3) uint8, ``actions`` (T, 3),
            ``rewards``, ``terminated``, ``truncated`` (T,).
        :raises DataError: the bytes on disk cannot be read (corrupt chunk).
        """
        if field not in _FIELD_SPECS:
            raise KeyError(f"unknown field {field!r}; fields: {', '.join(FIELDS)}")
        length = int(self.lengths[self.check_index(k)])
        stop = length if stop is None else stop
        if not 0 <= start <= stop <= length:
            raise IndexError(f"steps {start}:{stop} out of range for episode {k} of length {length}")
        try:
            ds = self.group(k).get(field)
            if not isinstance(ds, h5py.Dataset):
                raise DataError(f"{self.path} is incomplete: episodes/{episode_name(k)}/{field} is missing")
            if field != "frames":  # frames were checked at construction
                self._check_field(ds, k, field, length)
            if out is None:
                return ds[start:stop]
            if stop > start:
                ds.read_direct(out, np.s_[start:stop])
            return out
        except (OSError, RuntimeError) as e:
            raise DataError(
                f"cannot read episodes/{episode_name(k)}/{field} of {self.path} "
                f"(corrupt or truncated: {e}); collect it again"
            ) from None

    def episode(self, k: int) -> dict[str, Any]:
        """Episode ``k``: ``frames`` (T, 64, 64, 3) uint8, ``actions`` (T, 3) float32,
        ``rewards`` (T,) float64, ``terminated`` (T,) bool, ``truncated`` (T,) bool (numpy
        arrays) and the int ``seed`` of its track.

        :raises IndexError: ``k < 0`` or ``k >= len(self)``.
        """
        k = self.check_index(k)
        ep: dict[str, Any] = {field: self.read(k, field) for field in FIELDS}
        ep["seed"] = int(self.seeds[k])
        return ep

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.episode(k)


Source = str | os.PathLike[str] | RolloutDataset


def _as_rollouts(source: Source) -> RolloutDataset:
    return source if isinstance(source, RolloutDataset) else RolloutDataset(source)


def _episode_indices(rollouts: RolloutDataset, episodes: Sequence[int] | None) -> np.ndarray:
    if episodes is None:
        return np.arange(len(rollouts), dtype=np.int64)
    return np.asarray([rollouts.check_index(k) for k in episodes], dtype=np.int64)


def _resolve_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _to_chw(frames: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    """(..., H, W, C) uint8 numpy -> (..., C, H, W) uint8 tensor; contiguous NCHW, or
    with ``channels_last`` the no-copy permuted view (torch's channels_last layout)."""
    x = torch.from_numpy(frames).movedim(-1, -3)
    return x if channels_last else x.contiguous()


class FrameDataset(Dataset):
    """Every frame of the chosen episodes, in episode order: item ``i`` -> (3, 64, 64)
    uint8 tensor. For V (the VAE), which sees frames independently.

    :param path: a run directory, its ``rollouts.h5``, or an open :class:`RolloutDataset`.
    :param episodes: episode indices to use (e.g. a train split); default all.

    Global index ``i`` maps to (episode, step) through the cumulative episode lengths
    (``np.searchsorted``). Each ``__getitem__`` decompresses the frame's whole HDF5 chunk,
    which is kept (one chunk per process) so in-order access costs one decompression per
    chunk; random access costs one per frame. For shuffled training batches use
    :meth:`sample_batches` (about 30x faster, see the module docstring) or
    :func:`~worldmodels.data.frames.load_frames` when the frames fit in memory.
    """

    def __init__(self, path: Source, episodes: Sequence[int] | None = None) -> None:
        self.rollouts = _as_rollouts(path)
        self.episodes = _episode_indices(self.rollouts, episodes)
        lengths = self.rollouts.lengths[self.episodes]
        # offsets[j] = global index of the first frame of self.episodes[j]; offsets[-1] = N.
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # The last decompressed chunk (plain numpy data, so valid in forked workers too).
        self._chunk_key: tuple[int, int] | None = None
        self._chunk: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Global frame index -> (episode index k in the file, step t)."""
        n = len(self)
        i = operator.index(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame {i} out of range for {n} frames")
        j = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return int(self.episodes[j]), i - int(self.offsets[j])

    def __getitem__(self, i: int) -> torch.Tensor:
        k, t = self.locate(i)
        chunk_len = int(self.rollouts.chunk_lengths[k])
        c = t // chunk_len
        if self._chunk is None or self._chunk_key != (k, c):
            start = c * chunk_len
            stop = min(start + chunk_len, int(self.rollouts.lengths[k]))
            self._chunk = self.rollouts.read(k, "frames", start, stop)
            self._chunk_key = (k, c)
        return _to_chw(self._chunk[t - c * chunk_len])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_chunk_key"] = state["_chunk"] = None
        return state

    def chunk_blocks(self) -> np.ndarray:
        """(num_blocks, 3) int64 rows ``(k, start, stop)``: the chosen episodes cut at
        their HDF5 chunk boundaries, each row one chunk to read whole."""
        rows = []
        for k in self.episodes:
            length = int(self.rollouts.lengths[k])
            starts = np.arange(0, length, int(self.rollouts.chunk_lengths[k]), dtype=np.int64)
            stops = np.minimum(starts + self.rollouts.chunk_lengths[k], length)
            rows.append(np.stack([np.full_like(starts, k), starts, stops], axis=1))
        return np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)

    def sample_batches(self, batch_size: int, rng: np.random.Generator | int | None = None,
                       buffer_frames: int = 4096, drop_last: bool = False,
                       epochs: int | None = 1,
                       channels_last: bool = False) -> Iterator[torch.Tensor]:
        """Shuffled uint8 batches (B, 3, 64, 64), reading whole HDF5 chunks.

        Each epoch visits the chunks (``chunk_frames`` consecutive frames of one episode)
        in a random order, reads them whole into a shuffle buffer of about
        ``buffer_frames`` frames (~12 KiB each), shuffles the buffer and deals out the
        full batches; the remainder stays for the next fill. Every frame of the chosen
        episodes is yielded exactly once per epoch (the last batch of an epoch is smaller
        unless ``drop_last``). Never holds more than the buffer in memory.

        :param batch_size: frames per batch B.
        :param rng: a ``numpy.random.Generator`` or a seed; the same seed gives the same
            batches.
        :param buffer_frames: shuffle-buffer size; bigger mixes more episodes per batch
            (a batch draws from about ``buffer_frames / chunk_frames`` chunks).
        :param epochs: number of passes; ``None`` for an endless iterator.
        :param channels_last: yield the permuted view (torch's channels_last layout,
            what CUDA convolutions prefer) instead of a contiguous NCHW copy.
        """
        if batch_size < 1 or buffer_frames < 1:
            raise ValueError(f"batch_size and buffer_frames must be >= 1, got {batch_size}, {buffer_frames}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be >= 0 or None, got {epochs}")
        return self._batches(batch_size, _resolve_rng(rng), buffer_frames, drop_last, epochs,
                             channels_last)

    def _batches(self, batch_size: int, rng: np.random.Generator, buffer_frames: int,
                 drop_last: bool, epochs: int | None,
                 channels_last: bool) -> Iterator[torch.Tensor]:
        blocks = self.chunk_blocks()
        if len(blocks) == 0:
            return
        max_chunk = int((blocks[:, 2] - blocks[:, 1]).max())
        capacity = max(buffer_frames, batch_size) + max_chunk + batch_size
        buffer = np.empty((capacity, *FRAME_SHAPE), dtype=np.uint8)
        epoch = 0
        while epochs is None or epoch < epochs:
            epoch += 1
            filled = 0  # frames in buffer[:filled], carried over within the epoch
            order = rng.permutation(len(blocks))
            for n, b in enumerate(order):
                k, start, stop = (int(v) for v in blocks[b])
                self.rollouts.read(k, "frames", start, stop, out=buffer[filled:filled + stop - start])
                filled += stop - start
                if filled < buffer_frames and n < len(order) - 1:
                    continue
                perm = rng.permutation(filled)
                num_full = filled // batch_size
                for j in range(num_full):
                    yield _to_chw(buffer[perm[j * batch_size:(j + 1) * batch_size]], channels_last)
                rest = perm[num_full * batch_size:]
                buffer[:len(rest)] = buffer[rest]
                filled = len(rest)
            if filled and not drop_last:
                yield _to_chw(buffer[:filled].copy(), channels_last)



# ------------------------------------------------------------------ whole set in memory


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` for CUDA, the system's
    MemAvailable otherwise (``/proc/meminfo``, else ``sysconf``); None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    return None


def split_episodes(num_episodes: int, val_fraction: float, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split *by episode* (frames of one episode are
    strongly correlated, so a split by frame would leak).

    :param num_episodes: E, the number of episodes.
    :param val_fraction: share of episodes held out, in [0, 1); at least one episode is
        held out when ``val_fraction > 0`` and E >= 2.
    :param seed: the split depends only on (E, val_fraction, seed).
    :return: sorted int64 arrays ``(train, val)`` partitioning ``range(E)``.
    """
    if num_episodes < 1:
        raise DataError("the dataset has no episodes to split")
    n_val = int(round(num_episodes * val_fraction))
    if val_fraction > 0 and num_episodes >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, num_episodes - 1)
    perm = np.random.default_rng([seed, num_episodes, 0x5B117]).permutation(num_episodes)
    return np.sort(perm[n_val:]).astype(np.int64), np.sort(perm[:n_val]).astype(np.int64)
