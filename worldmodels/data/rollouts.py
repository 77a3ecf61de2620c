"""The HDF5 rollout store: the format, part files and their merge.

Ha & Schmidhuber (2018, arXiv:1803.10122) train V and M on 10,000 random-policy
CarRacing episodes. Collection (:mod:`worldmodels.stages.collect`) stores them here so that
a kill at any moment loses at most the episodes in flight and never leaves a corrupt file.

File format (``<run>/rollouts.h5``, ``format = "worldmodels/rollouts"``, version 1)::

    /                  attrs: format, format_version, config (JSON of the collect
                              section), num_episodes
    /episodes/000000/  attrs: seed, length
        frames         (T, 64, 64, 3) uint8   observation before the action (preprocessed)
        actions        (T, 3) float32         action taken at t (steer, gas, brake)
        rewards        (T,) float64           reward received for that action (exact)
        terminated     (T,) bool              episode terminated by that step
        truncated      (T,) bool              episode truncated by that step
    /index/seed        (E,) int64             per-episode track seed (= seed + k)
    /index/length      (E,) int64             per-episode number of steps T

Crash safety. HDF5 files are not crash-consistent while open for writing, so nothing is
ever appended to a file in place. Each finished episode is written by its worker to its
own part file ``rollouts.parts/ep-000123.h5`` (temp file, ``fsync``, atomic rename). When
all requested episodes exist, the parts (and, when extending, the episodes of an existing
``rollouts.h5``) are copied chunk-for-chunk (``H5Ocopy``, no recompression) into a new
temp file that is renamed over ``rollouts.h5``; then the parts are deleted. Re-running the
same command therefore resumes: finished parts are kept, missing episodes are collected,
and the result is the same as an uninterrupted run, because episode k depends only on
``seed + k``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py

from worldmodels.config import CollectConfig
from worldmodels.data.store import episode_name, merge_parts
from worldmodels.errors import DataError
from worldmodels.utils.io import (
    atomic_path,
)

FORMAT = "worldmodels/rollouts"
FORMAT_VERSION = 1
DATASET_NAME = "rollouts.h5"
PARTS_DIR = "rollouts.parts"
FIELDS = ("frames", "actions", "rewards", "terminated", "truncated")
# Collection settings that change the data; the others (workers, backend, ...) do not.
DATA_KEYS = ("seed", "max_steps", "policy", "brownian_dt", "domain_randomize", "action_repeat",
             "agent", "agent_from", "agent_noise")
#: the data keys of the agent's episodes (iterative training)
AGENT_KEYS = ("agent", "agent_from", "agent_noise")
# What a dataset written before a data key existed was collected with.
_OLD_DEFAULTS = {"action_repeat": 1, "agent": "", "agent_from": 0, "agent_noise": 0.0}



def _compression_kwargs(cfg: CollectConfig) -> dict[str, Any]:
    if cfg.compression == "none":
        return {}
    if cfg.compression == "gzip":
        return {"compression": "gzip", "compression_opts": cfg.compression_level}
    return {"compression": cfg.compression}


def _write_root_attrs(f: h5py.File, cfg: CollectConfig, num_episodes: int) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["config"] = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    f.attrs["num_episodes"] = num_episodes


def write_episode_group(group: h5py.Group, ep: dict[str, Any], cfg: CollectConfig) -> None:
    T = len(ep["frames"])
    chunk = (min(cfg.chunk_frames, T), 64, 64, 3)
    group.create_dataset("frames", data=ep["frames"], chunks=chunk, **_compression_kwargs(cfg))
    for name in FIELDS[1:]:
        group.create_dataset(name, data=ep[name])
    group.attrs["seed"] = int(ep["seed"])
    group.attrs["length"] = T


def write_part(path: Path, k: int, ep: dict[str, Any], cfg: CollectConfig) -> None:
    """Write one episode to its own part file, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_root_attrs(f, cfg, 1)
        write_episode_group(f.create_group(f"episodes/{episode_name(k)}"), ep, cfg)


# Worker-process state: one environment per process, reused across episodes.



def open_rollouts(path: str | os.PathLike[str]) -> h5py.File:
    """Open a rollouts file read-only, with one-line errors for missing, corrupt or
    foreign files."""
    path = Path(path)
    if path.is_dir() or path.suffix not in (".h5", ".hdf5"):  # a run directory
        path = path / DATASET_NAME
    if not path.exists():
        raise DataError(
            f"no rollouts at {path}: run scripts/collect_rollouts.py --run {path.parent} first"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(
            f"{path} is not a readable HDF5 file (truncated or corrupt: {e.args[0] if e.args else e}); "
            "delete it and collect again"
        ) from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise DataError(f"{path} is an HDF5 file but not a worldmodels rollouts file")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        f.close()
        raise DataError(
            f"{path} has rollouts format version {version}; this worldmodels reads {FORMAT_VERSION}"
        )
    try:
        n = int(f.attrs["num_episodes"])
        if any(len(f[name]) != n for name in ("index/seed", "index/length", "episodes")):
            raise KeyError
    except (KeyError, TypeError):
        f.close()
        raise DataError(f"{path} is incomplete (missing episodes or index); collect it again") from None
    return f


def stored_config(f: h5py.File) -> dict[str, Any]:
    return json.loads(f.attrs["config"])


def _same_data(a: dict[str, Any], b: dict[str, Any], episodes: int | None = None) -> list[str]:
    """The data keys on which collection configs ``a`` (stored) and ``b`` differ. With
    ``episodes``, only ``a``'s first ``episodes`` episodes matter: when ``a`` has no agent and
    ``b``'s agent drives from ``agent_from >= episodes`` on, those episodes are the same
    under both, and ``b`` extends ``a`` (the agent keys are then not a difference)."""
    def get(c: dict[str, Any], k: str) -> Any:
        return c.get(k, _OLD_DEFAULTS.get(k))

    diff = [k for k in DATA_KEYS if get(a, k) != get(b, k)]
    no_agent_data = not get(a, "agent") and (not get(b, "agent") or (
        episodes is not None and episodes <= get(b, "agent_from")))
    if no_agent_data:  # no agent drove any of these episodes: its settings do not matter
        diff = [k for k in diff if k not in AGENT_KEYS]
    return diff


def _valid_part(path: Path, k: int, cfg: CollectConfig) -> bool:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                return False
            if _same_data(stored_config(f), dataclasses.asdict(cfg), k + 1):
                return False
            g = f[f"episodes/{episode_name(k)}"]
            return all(name in g for name in FIELDS)
    except (OSError, KeyError, ValueError):
        return False


def consolidate(run_dir: Path, cfg: CollectConfig, episodes: int,
                existing: Path | None) -> Path:
    """Copy the episodes of ``existing`` (if any) and the parts into a new
    ``rollouts.h5``, atomically; then remove the parts (:func:`~worldmodels.data.store.merge_parts`)."""
    old = open_rollouts(existing) if existing is not None else None
    try:
        return merge_parts(run_dir / DATASET_NAME, run_dir / PARTS_DIR, episodes, old,
                           lambda f: _write_root_attrs(f, cfg, episodes))
    finally:
        if old is not None:
            old.close()



def collected_episodes(run_dir: str | os.PathLike[str]) -> Iterable[int]:
    """Episode indices with a finished part file (collection in progress)."""
    parts = Path(run_dir) / PARTS_DIR
    for p in sorted(parts.glob("ep-*.h5")):
        yield int(p.stem[3:])



