"""Benchmark of the rollout readers: how fast can V and M be fed from ``rollouts.h5``?

Ha & Schmidhuber (2018, arXiv:1803.10122) train V on frames and M on sequences of the
same 10,000 episodes; at that scale reading, not the model, can be the bottleneck. Rows:

* ``FrameDataset`` random single frames (what a shuffled ``DataLoader`` does): each frame
  decompresses its whole lzf chunk;
* ``FrameDataset`` frames in order (one decompression per chunk, thanks to its cache);
* ``FrameDataset.sample_batches``: whole chunks in random order through a shuffle buffer;
* ``load_frames`` into one tensor, in MB/s of raw frames (CPU, and CUDA when present).

Without a ``path`` a small real dataset is collected into a temporary directory first
(4 episodes x 300 steps, ~10 s). A file just written or read is in the OS page cache, so
these are decompression speeds, not disk speeds.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from worldmodels.data.datasets import FRAME_BYTES, FrameDataset, RolloutDataset
from worldmodels.data.frames import fits_in_memory, load_frames

BATCH_SIZE = 100


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    """Run ``fn`` (which returns a count of things delivered); (count, seconds)."""
    t0 = time.perf_counter()
    count = fn()
    return count, max(time.perf_counter() - t0, 1e-9)


def _row(what: str, value: float, unit: str) -> dict[str, Any]:
    return {"what": what, "value": float(value), "unit": unit}


def _episodes_within(rollouts: RolloutDataset, max_bytes: int) -> list[int]:
    """The first episodes whose raw frames total at most ``max_bytes`` (at least one)."""
    raw = np.cumsum(rollouts.lengths) * FRAME_BYTES
    return list(range(max(1, int(np.searchsorted(raw, max_bytes, side="right")))))


def measure(path: str, quick: bool) -> list[dict[str, Any]]:
    """The rows for an existing ``rollouts.h5`` (or run directory)."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    with RolloutDataset(path) as rollouts:
        frames = FrameDataset(rollouts)
        n = len(frames)
        rows.append(_row("data: dataset size", n, f"frames in {len(rollouts)} episodes"))
        rows.append(_row("data: frames per HDF5 chunk", float(np.median(rollouts.chunk_lengths)), "frames"))

        random_ids = rng.integers(0, n, 200 if quick else 2000)
        count, seconds = _timed(lambda: sum(1 for i in random_ids if frames[int(i)] is not None))
        rows.append(_row("data: FrameDataset random single frames", count / seconds, "frames/s"))

        in_order = range(min(n, 2000 if quick else 20_000))
        count, seconds = _timed(lambda: sum(1 for i in in_order if frames[i] is not None))
        rows.append(_row("data: FrameDataset frames in order", count / seconds, "frames/s"))

        # Endless iterator: several epochs of a small file, part of one of a big file.
        num_batches = (20_000 if quick else 200_000) // BATCH_SIZE
        batches = frames.sample_batches(BATCH_SIZE, rng=0, epochs=None)
        count, seconds = _timed(lambda: sum(len(b) for b in itertools.islice(batches, num_batches)))
        rows.append(_row(f"data: FrameDataset.sample_batches (B={BATCH_SIZE}, chunk-aligned)",
                         count / seconds, "frames/s"))

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        chosen = _episodes_within(rollouts, (256 if quick else 4096) * 2**20)
        for device in devices:
            if not fits_in_memory(rollouts, device, episodes=chosen):
                continue

            def load(device: str = device) -> int:
                x = load_frames(rollouts, episodes=chosen, device=device)
                if x.device.type == "cuda":
                    torch.cuda.synchronize(x.device)
                return x.numel()

            load(device)  # warm-up: CUDA context, pinned allocator, page cache
            count, seconds = _timed(load)
            rows.append(_row(f"data: load_frames -> {device}", count / seconds / 1e6, "MB/s"))
    return rows


def run(path: str | None = None, quick: bool = True) -> list[dict[str, Any]]:
    """Measure the readers on ``path`` (a run directory or ``rollouts.h5``), or on a
    freshly collected 4-episode dataset when ``path`` is None. Rows ``{"what", "value",
    "unit"}``; ``quick`` reads fewer items (seconds, not minutes)."""
    if path is not None:
        return measure(path, quick)
    from worldmodels.config import load_config
    from worldmodels.stages.collect import collect

    cfg = load_config(overrides={"collect": {"episodes": 4, "max_steps": 300, "workers": 2}})
    with tempfile.TemporaryDirectory(prefix="wm-bench-data-") as tmp:
        dataset = collect(cfg, tmp, progress=False)
        return measure(str(dataset), quick)
