"""The HDF5 latent store (what ``encode.py`` writes) and the sequences M trains on.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.2 and appendix A.2:
every frame of the 10,000 random-policy rollouts is passed through the trained V once and
its posterior ``q(z|x) = N(mu, sigma^2 I)`` is stored as ``(mu, log sigma^2)``; M (the
MDN-RNN) is then trained on sequences of ``z`` drawn afresh from those posteriors at every
batch (the authors' ``rnn_train.py``: ``z = mu + exp(logvar / 2) * randn``), which acts as
data augmentation and lets M see V's uncertainty. For a VQ-VAE V (van den Oord et al.
2017, arXiv:1711.00937) the deterministic code grid is stored instead.

File format (``<run>/latents_<model>.h5``, one per V model, since one run may hold a VAE,
a β-VAE and a VQ-VAE; ``format = "worldmodels/latents"``, version 1)::

    /                  attrs: format, format_version, kind ("gaussian" | "codes"),
                              latent_dim (D, or h*w cells), latent_shape (JSON: [D] or [h, w]),
                              codebook_size (codes only, else 0), num_episodes,
                              vae (JSON: model, kind, step, checkpoint, sha256, model_config),
                              rollouts (JSON: num_episodes, config: the collect config)
    /episodes/000000/  attrs: seed, length
        mu, logvar     (T, D) float32       posterior of frame t (kind "gaussian")
        codes          (T, h, w) int16      code grid of frame t (kind "codes")
        actions        (T, 3) float32       copied from rollouts.h5
        rewards        (T,) float64         copied (exact)
        terminated     (T,) bool            copied
        truncated      (T,) bool            copied
    /index/seed        (E,) int64
    /index/length      (E,) int64
    /index/terminated  (E,) bool            the episode ended by termination (not time-out)

**V's identity** is the SHA-256 of its weights (every tensor of the checkpoint's state dict,
keys, dtypes and shapes included), so a V saved again unchanged keeps its identity while a V
trained further does not. A latents file whose identity differs from the current
``<run>/<model>/best.pt`` (else ``last.pt``) is refused with a one-line error suggesting
``--overwrite``, as is one made from other rollouts.

**Crash safety** follows :mod:`worldmodels.data.rollouts`: HDF5 files are not
crash-consistent while open for writing, so nothing is appended in place. Each encoded
episode goes to its own part file ``latents_<model>.parts/ep-000123.h5`` (temp file,
``fsync``, atomic rename), tagged with V's identity; when every episode exists, the parts
(and, when the rollouts grew, the episodes of the existing file) are copied (``H5Ocopy``)
into a temp file renamed over the final one. Re-running resumes from the finished parts;
parts of another V are discarded.

The sequences M trains on are :mod:`worldmodels.data.sequences`'.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from worldmodels.data.datasets import RolloutDataset
from worldmodels.data.rollouts import _same_data
from worldmodels.data.store import episode_name, merge_parts
from worldmodels.errors import DataError
from worldmodels.utils.io import atomic_path

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "latents_path",
    "open_latents",
    "LatentDataset",
]

FORMAT = "worldmodels/latents"
FORMAT_VERSION = 1
V_MODELS = ("vae", "betavae", "vqvae")
GAUSSIAN_FIELDS = ("mu", "logvar")
CODE_FIELDS = ("codes",)
COPIED_FIELDS = ("actions", "rewards", "terminated", "truncated")
_MAX_INT16_CODES = 2**15 - 1


def latents_path(run_dir: str | os.PathLike[str], model: str = "vae") -> Path:
    """``<run>/latents_<model>.h5``: the latents of V ``model`` (vae, betavae or vqvae)."""
    return Path(run_dir) / f"latents_{model}.h5"


def _parts_dir(run_dir: Path, model: str) -> Path:
    return run_dir / f"latents_{model}.parts"


# ------------------------------------------------------------------------------ V




# ------------------------------------------------------------------------ the store


def open_latents(path: str | os.PathLike[str]) -> h5py.File:
    """Open a latents file read-only, with one-line errors for missing, corrupt, foreign
    or incomplete files.

    :param path: the file, or a run directory (then ``latents_vae.h5`` inside it).
    """
    path = Path(path)
    if path.is_dir():
        path = latents_path(path)
    if not path.exists():
        model = path.stem.removeprefix("latents_") if path.stem.startswith("latents_") else "vae"
        raise DataError(f"no latents at {path}: run scripts/encode.py --run {path.parent} "
                        f"--model {model} first")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path} is not a readable HDF5 file (truncated or corrupt: "
                        f"{e.args[0] if e.args else e}); delete it and encode again") from None
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise DataError(f"{path} is an HDF5 file but not a worldmodels latents file")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        f.close()
        raise DataError(f"{path} has latents format version {version}; this worldmodels "
                        f"reads {FORMAT_VERSION}: encode again with --overwrite")
    try:
        n = int(f.attrs["num_episodes"])
        if any(len(f[name]) != n for name in
               ("index/seed", "index/length", "index/terminated", "episodes")):
            raise KeyError
        json.loads(f.attrs["vae"])
        json.loads(f.attrs["rollouts"])
    except (KeyError, TypeError, ValueError):
        f.close()
        raise DataError(f"{path} is incomplete (missing episodes, index or identity); "
                        "encode again with --overwrite") from None
    return f



def _write_root_attrs(f: h5py.File, layout: dict[str, Any], identity: dict[str, Any],
                      rollouts_id: dict[str, Any], num_episodes: int) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    for key, value in layout.items():
        f.attrs[key] = value
    f.attrs["vae"] = json.dumps(identity, sort_keys=True)
    f.attrs["rollouts"] = json.dumps(rollouts_id, sort_keys=True)
    f.attrs["num_episodes"] = num_episodes


def _rollouts_identity(rollouts: RolloutDataset) -> dict[str, Any]:
    return {"num_episodes": len(rollouts), "config": rollouts.config}


def _rollouts_differ(stored: dict[str, Any], current: dict[str, Any],
                     episodes: int | None = None) -> list[str]:
    """Collection settings that changed the data between ``stored`` and ``current``; with
    ``episodes``, in the first ``episodes`` episodes only (random episodes later extended by
    an agent's, the paper's iterative training, are still the same first episodes)."""
    a, b = stored.get("config") or {}, current.get("config") or {}
    return [f"{k}={a.get(k)!r}" for k in _same_data(a, b, episodes)]


def _write_part(path: Path, k: int, ep: dict[str, Any], layout: dict[str, Any],
                identity: dict[str, Any], rollouts_id: dict[str, Any]) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_root_attrs(f, layout, identity, rollouts_id, 1)
        g = f.create_group(f"episodes/{episode_name(k)}")
        for name in (*(CODE_FIELDS if layout["kind"] == "codes" else GAUSSIAN_FIELDS),
                     *COPIED_FIELDS):
            g.create_dataset(name, data=ep[name])
        g.attrs["seed"] = int(ep["seed"])
        g.attrs["length"] = len(ep["actions"])


def _valid_part(path: Path, k: int, identity: dict[str, Any], rollouts: RolloutDataset) -> bool:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                return False
            if json.loads(f.attrs["vae"]).get("sha256") != identity["sha256"]:
                return False
            if _rollouts_differ(json.loads(f.attrs["rollouts"]), _rollouts_identity(rollouts),
                                k + 1):
                return False
            g = f[f"episodes/{episode_name(k)}"]
            return (int(g.attrs["length"]) == int(rollouts.lengths[k])
                    and int(g.attrs["seed"]) == int(rollouts.seeds[k])
                    and all(name in g for name in COPIED_FIELDS))
    except (OSError, KeyError, ValueError, TypeError):
        return False


def _consolidate(run_dir: Path, model: str, layout: dict[str, Any], identity: dict[str, Any],
                 rollouts: RolloutDataset, existing: Path | None) -> Path:
    """Copy the episodes of ``existing`` (if any) and the parts into a new final file,
    atomically; then remove the parts (:func:`~worldmodels.data.store.merge_parts`)."""
    E = len(rollouts)
    old = open_latents(existing) if existing is not None else None
    try:
        return merge_parts(
            latents_path(run_dir, model), _parts_dir(run_dir, model), E, old,
            lambda f: _write_root_attrs(f, layout, identity, _rollouts_identity(rollouts), E),
            {"terminated": (bool, lambda g: bool(g["terminated"][-1]))})
    finally:
        if old is not None:
            old.close()



# --------------------------------------------------------------------------- reading


class LatentDataset:
    """Read-only view of a latents file: whole episodes as numpy arrays.

    :param path: the file, or a run directory (its ``latents_vae.h5``).
    :raises DataError: a missing, corrupt, foreign or inconsistent file.

    Attributes read at construction: ``kind`` (``"gaussian"`` or ``"codes"``),
    ``latent_dim`` (D, or h*w cells), ``latent_shape`` ((D,) or (h, w)), ``codebook_size``
    (0 for Gaussian latents), ``vae`` (V's identity dict), ``rollouts`` (the rollouts'
    identity dict), ``lengths`` / ``seeds`` (E,) int64, ``terminated`` (E,) bool (episode
    ended by termination), ``num_steps``. The HDF5 handle is opened lazily per process and
    never pickled, as :class:`~worldmodels.data.datasets.RolloutDataset`'s.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        self.path = latents_path(path) if path.is_dir() else path
        self._handle: h5py.File | None = None
        self._handle_pid: int | None = None
        f = open_latents(self.path)
        try:
            self.kind: str = str(f.attrs["kind"])
            self.latent_dim = int(f.attrs["latent_dim"])
            self.latent_shape: tuple[int, ...] = tuple(json.loads(f.attrs["latent_shape"]))
            self.codebook_size = int(f.attrs["codebook_size"])
            self.vae: dict[str, Any] = json.loads(f.attrs["vae"])
            self.rollouts: dict[str, Any] = json.loads(f.attrs["rollouts"])
            self.seeds = np.asarray(f["index/seed"][()], dtype=np.int64)
            self.lengths = np.asarray(f["index/length"][()], dtype=np.int64)
            self.terminated = np.asarray(f["index/terminated"][()], dtype=bool)
            if self.kind not in ("gaussian", "codes") or np.any(self.lengths < 1):
                raise ValueError
        except (KeyError, ValueError, TypeError):
            f.close()
            raise DataError(f"{self.path} is inconsistent (bad attributes or index); encode "
                            "again with --overwrite") from None
        self.num_steps = int(self.lengths.sum())
        self._handle, self._handle_pid = f, os.getpid()

    @property
    def latent_fields(self) -> tuple[str, ...]:
        return CODE_FIELDS if self.kind == "codes" else GAUSSIAN_FIELDS

    @property
    def file(self) -> h5py.File:
        """This process's open handle (opened on first use, reopened after fork)."""
        if self._handle is None or self._handle_pid != os.getpid():
            self._handle = None  # a forked child must not use the parent's handle
            self._handle = open_latents(self.path)
            self._handle_pid = os.getpid()
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._handle_pid == os.getpid():
            with contextlib.suppress(Exception):
                self._handle.close()
        self._handle = self._handle_pid = None

    def __enter__(self) -> LatentDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_handle_pid": None}

    def __len__(self) -> int:
        return len(self.lengths)

    def __repr__(self) -> str:
        return (f"LatentDataset({str(self.path)!r}, kind={self.kind}, "
                f"latent_shape={self.latent_shape}, episodes={len(self)})")

    def read(self, k: int, field: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Steps ``start:stop`` of one field of episode ``k``: ``mu``/``logvar`` (T, D)
        float32 or ``codes`` (T, h, w) int16, ``actions`` (T, 3), ``rewards``,
        ``terminated``, ``truncated`` (T,)."""
        k = operator.index(k)
        if not 0 <= k < len(self):
            raise IndexError(f"episode {k} out of range: {self.path} has {len(self)} episodes")
        T = int(self.lengths[k])
        stop = T if stop is None else stop
        try:
            ds = self.file[f"episodes/{episode_name(k)}/{field}"]
            if ds.shape[0] != T:
                raise DataError(f"{self.path} is inconsistent: episodes/{episode_name(k)}/"
                                f"{field} has {ds.shape[0]} steps, the index {T}")
            return ds[start:stop]
        except KeyError:
            raise DataError(f"{self.path} is incomplete: episodes/{episode_name(k)}/{field} "
                            "is missing; encode again with --overwrite") from None
        except (OSError, RuntimeError) as e:
            raise DataError(f"cannot read episodes/{episode_name(k)}/{field} of {self.path} "
                            f"(corrupt or truncated: {e}); encode again with --overwrite") from None

    def episode(self, k: int) -> dict[str, Any]:
        """Episode ``k``: its latent fields, ``actions``, ``rewards``, ``terminated``,
        ``truncated`` (numpy) and the int ``seed``."""
        ep: dict[str, Any] = {f: self.read(k, f) for f in (*self.latent_fields, *COPIED_FIELDS)}
        ep["seed"] = int(self.seeds[k])
        return ep



