"""The crash-safe episode store shared by ``rollouts.h5`` and ``latents_<V>.h5``.

HDF5 files are not crash-consistent while open for writing, so nothing is ever appended to
a file in place. Each finished episode ``k`` is written on its own, to the part file
``<name>.parts/ep-<k>.h5`` (temp file, ``fsync``, atomic rename: :func:`part_path`); when
every episode exists, :func:`merge_parts` copies the episodes of an existing file and the
parts, chunk for chunk (``H5Ocopy``, no recompression), into a temp file renamed over the
final one, then deletes the parts. A kill at any moment loses at most the episodes in flight
and never leaves a corrupt file; re-running resumes from the parts. The per-format checks
(which settings a part must have been written with) stay with each format
(:mod:`~worldmodels.data.rollouts`, :mod:`~worldmodels.data.latents`).

Layout of both formats::

    /                  attrs: format, format_version, num_episodes, ...
    /episodes/000000/  attrs: seed, length; one dataset per field
    /index/seed        (E,) int64
    /index/length      (E,) int64
    /index/<extra>     (E,) one value per episode (e.g. latents' ``terminated``)
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from worldmodels.utils.io import atomic_path, ensure_dir, remove_stale_tmp

__all__ = ["episode_name", "part_path", "missing_parts", "merge_parts"]


def episode_name(k: int) -> str:
    """The group name of episode ``k``: six digits."""
    return f"{k:06d}"


def part_path(parts: Path, k: int) -> Path:
    """The part file of episode ``k`` in the parts directory ``parts``."""
    return parts / f"ep-{episode_name(k)}.h5"


def missing_parts(parts: Path, episodes: range, valid: Callable[[Path, int], bool],
                  overwrite: bool = False) -> list[int]:
    """The episodes of ``episodes`` still to write: those without a part file that
    ``valid(path, k)`` accepts (an invalid part, e.g. of other settings, is deleted). Creates
    ``parts`` (emptied first with ``overwrite``) and removes temp files a kill left there."""
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    ensure_dir(parts)
    remove_stale_tmp(parts)
    todo = []
    for k in episodes:
        path = part_path(parts, k)
        if path.exists() and valid(path, k):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
        todo.append(k)
    return todo


def merge_parts(final: Path, parts: Path, episodes: int, existing: h5py.File | None,
                write_root_attrs: Callable[[h5py.File], None],
                extra_index: dict[str, tuple[Any, Callable[[h5py.Group], Any]]] | None = None
                ) -> Path:
    """Write ``final`` atomically from episodes ``0 .. episodes-1``: those of ``existing``
    (an open file of the same format, or None) first, the rest from their part files; then
    remove ``parts``.

    :param write_root_attrs: writes the root attributes of the new file.
    :param extra_index: ``{name: (dtype, value_of_episode_group)}``: more ``/index/<name>``
        columns, one value per episode read from its group.
    :return: ``final``.
    """
    extra_index = extra_index or {}
    seeds = np.empty(episodes, dtype=np.int64)
    lengths = np.empty(episodes, dtype=np.int64)
    extra = {name: np.zeros(episodes, dtype=dtype) for name, (dtype, _) in extra_index.items()}
    n_old = int(existing.attrs["num_episodes"]) if existing is not None else 0
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        write_root_attrs(f)
        eps = f.create_group("episodes")
        for k in range(episodes):
            name = episode_name(k)
            src_file = None if k < n_old else h5py.File(part_path(parts, k), "r")
            try:
                src = (existing if src_file is None else src_file)[f"episodes/{name}"]
                src.file.copy(src, eps, name=name)  # H5Ocopy: raw chunks, no recompression
                seeds[k] = src.attrs["seed"]
                lengths[k] = src.attrs["length"]
                for column, (_, value) in extra_index.items():
                    extra[column][k] = value(src)
            finally:
                if src_file is not None:
                    src_file.close()
        f.create_dataset("index/seed", data=seeds)
        f.create_dataset("index/length", data=lengths)
        for column, values in extra.items():
            f.create_dataset(f"index/{column}", data=values)
    shutil.rmtree(parts, ignore_errors=True)
    return final
