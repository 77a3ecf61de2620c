"""``benchmark.py collect``: collection throughput and the on-disk format sweep.

1. Collection env-steps/s with one worker and with all workers (pinned, one core each),
   on the same episodes.
2. Storage: the collected frames written as one chunked dataset under each compression
   and chunk length, measuring bytes per frame, write speed (raw MB/s, compression
   included), random single-frame reads/s (each read decompresses its whole chunk) and
   sequential reads/s. The defaults in ``CollectConfig`` (lzf, 50-frame chunks) come from
   this table.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FRAME_BYTES = 64 * 64 * 3


def _throughput(episodes: int, steps: int, workers: int, root: Path) -> dict[str, Any]:
    from worldmodels.config import load_config
    from worldmodels.stages.collect import collect

    cfg = load_config(overrides={"collect": {"episodes": episodes, "max_steps": steps,
                                             "workers": workers, "seed": 100}})
    t0 = time.perf_counter()
    path = collect(cfg, root / f"w{workers}", progress=False)
    dt = time.perf_counter() - t0
    with h5py.File(path, "r") as f:
        frames = int(f["index/length"][()].sum())
    return {"what": f"collect, {workers} worker{'s' * (workers > 1)}",
            "value": frames / dt, "unit": "env-steps/s", "path": path,
            "note": f"{episodes} episodes x {steps} steps in {dt:.1f} s"}


def _storage_rows(frames: np.ndarray, root: Path, rng: np.random.Generator) -> list[dict]:
    rows = []
    n = len(frames)
    picks = rng.integers(0, n, 300)
    for comp, opts in (("none", None), ("lzf", None), ("gzip", 1), ("gzip", 4), ("gzip", 6)):
        for chunk in (1, 10, 20, 50):
            path = root / f"s_{comp}{opts or ''}_{chunk}.h5"
            kw = {} if comp == "none" else {"compression": comp, "compression_opts": opts}
            t0 = time.perf_counter()
            with h5py.File(path, "w") as f:
                f.create_dataset("frames", data=frames, chunks=(chunk, 64, 64, 3), **kw)
            write = time.perf_counter() - t0
            size = path.stat().st_size
            with h5py.File(path, "r", rdcc_nbytes=0) as f:  # no chunk cache: worst case
                ds = f["frames"]
                t0 = time.perf_counter()
                for i in picks:
                    ds[int(i)]
                rand = len(picks) / (time.perf_counter() - t0)
            with h5py.File(path, "r") as f:
                t0 = time.perf_counter()
                f["frames"][()]
                seq = n / (time.perf_counter() - t0)
            name = comp if opts is None else f"{comp}-{opts}"
            rows.append({"compression": name, "chunk": chunk,
                         "bytes/frame": size / n, "ratio": FRAME_BYTES * n / size,
                         "write MB/s": FRAME_BYTES * n / write / 2**20,
                         "random frames/s": rand, "sequential frames/s": seq,
                         "GB per 10k x 1000": size / n * 1e7 / 1e9})
    return rows


def run(episodes: int = 4, steps: int = 500, workers: int = 0) -> list[dict[str, Any]]:
    from worldmodels.utils.parallel import usable_cores

    workers = workers or len(usable_cores())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one = _throughput(episodes, steps, 1, root)
        many = _throughput(episodes, steps, workers, root)
        with h5py.File(one["path"], "r") as f:
            stored = int(f["index/length"][()].sum())
            size = one["path"].stat().st_size
            frames = np.concatenate([g["frames"][()] for g in f["episodes"].values()])
        table = [
            {"what": r["what"], "value": r["value"], "unit": r["unit"], "note": r["note"]}
            for r in (one, many)
        ]
        table.append({"what": "speed-up, all workers vs 1", "value": many["value"] / one["value"],
                      "unit": "x", "note": f"{workers} workers"})
        table.append({"what": "dataset on disk (default format)", "value": size / stored,
                      "unit": "bytes/frame",
                      "note": f"{size / stored * 1000 / 2**20:.2f} MiB per 1000-step episode"})
        storage = _storage_rows(frames, root, np.random.default_rng(0))
    from worldmodels.benchmark import format_table

    print(format_table(storage))
    print()
    return table
