"""Encoding the rollouts with V, the HDF5 latent store, and the sequences M trains on.

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

**Sequences for M** (:class:`LatentSequences`): item = ``seq_len + 1`` consecutive steps of
one episode; inputs ``z_t, a_t`` for ``t < L``, targets ``z_{t+1}``, ``reward_t`` (the
reward of action ``a_t``) and ``done_t`` (the episode terminated by that action). The last
transition of a *terminated* episode has no next frame: it is kept (it is the only
positive example of the done head) with ``next_valid = False``, which removes its
``z_{t+1}`` term from the loss. An episode with fewer than ``L`` transitions (one that left
the playfield early: its -100 reward and its done are what M's reward and done heads must
learn) gives one sequence padded to ``L``, its padding masked (``mask = False``).
Batches are cut from one tensor per field held on the device (the fast path: 10,000 x 1,000
x 2 x 32 floats are 2.5 GB) or read from the file window by window.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import operator
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from worldmodels.config import Config, save_stage_config
from worldmodels.data.datasets import ACTION_DIM, RolloutDataset, available_memory
from worldmodels.data.rollouts import DATA_KEYS, DATASET_NAME, episode_name
from worldmodels.errors import DataError
from worldmodels.generative.vae import reparameterize
from worldmodels.utils.io import atomic_path, ensure_dir, exclusive_lock, remove_stale_tmp
from worldmodels.utils.torch import channels_last, resolve_device

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "latents_path",
    "load_encoder",
    "weights_sha256",
    "encode",
    "main",
    "open_latents",
    "LatentDataset",
    "LatentTensors",
    "load_latents",
    "LatentSequences",
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


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every key, dtype, shape and raw byte, in key order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_encoder(run_dir: str | os.PathLike[str], model: str = "vae",
                 device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """V of a run (``<run>/<model>/best.pt``, else ``last.pt``, as
    :func:`~worldmodels.train.vae.load_vae` picks) and its identity.

    :return: ``(net, identity)``: the network in eval mode on ``device``, and the plain dict
        ``{"model", "kind", "step", "checkpoint", "sha256", "model_config"}`` stored in (and
        checked against) latents files.
    :raises DataError: no trained V (names the ``train_vae.py`` command to run).
    """
    from worldmodels.train.vae import KINDS, build_model
    from worldmodels.utils.checkpoint import CheckpointManager, load_checkpoint

    if model not in V_MODELS:
        raise DataError(f"V model must be one of {', '.join(V_MODELS)}, got {model!r}")
    stage = Path(run_dir) / model
    path = next((stage / n for n in (CheckpointManager.BEST, CheckpointManager.LAST)
                 if (stage / n).exists()), None)
    if path is None:
        raise DataError(f"no trained {model} in {stage}: run scripts/train_vae.py --run "
                        f"{run_dir} --model {model} first")
    checkpoint = load_checkpoint(path, kind=KINDS[model], map_location="cpu")
    identity = {
        "model": model, "kind": KINDS[model], "step": int(checkpoint["step"]),
        "checkpoint": path.name, "sha256": weights_sha256(checkpoint["state_dict"]),
        "model_config": checkpoint["model_config"],
    }
    net = build_model(checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    device = resolve_device(device)
    return channels_last(net, device).to(device).eval(), identity


def _describe_v(v: dict[str, Any]) -> str:
    return f"{v.get('model')} step {v.get('step')} ({v.get('checkpoint')}, sha256 {str(v.get('sha256'))[:12]})"


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


def _latent_layout(net: nn.Module, identity: dict[str, Any]) -> dict[str, Any]:
    """Root attributes describing the latent of ``net``."""
    if identity["kind"] == "vqvae":
        h, w = net.grid_size
        if net.codebook_size > _MAX_INT16_CODES:
            raise DataError(f"a codebook of {net.codebook_size} codes does not fit the int16 "
                            f"code store (at most {_MAX_INT16_CODES})")
        return {"kind": "codes", "latent_dim": h * w, "latent_shape": json.dumps([h, w]),
                "codebook_size": int(net.codebook_size)}
    return {"kind": "gaussian", "latent_dim": int(net.latent_dim),
            "latent_shape": json.dumps([int(net.latent_dim)]), "codebook_size": 0}


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


def _rollouts_differ(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Collection settings that changed the data between ``stored`` and ``current``."""
    a, b = stored.get("config") or {}, current.get("config") or {}
    return [f"{k}={a.get(k)!r}" for k in DATA_KEYS if a.get(k) != b.get(k)]


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
            if _rollouts_differ(json.loads(f.attrs["rollouts"]), _rollouts_identity(rollouts)):
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
    atomically; then remove the parts."""
    parts = _parts_dir(run_dir, model)
    final = latents_path(run_dir, model)
    E = len(rollouts)
    seeds = np.empty(E, dtype=np.int64)
    lengths = np.empty(E, dtype=np.int64)
    terminated = np.zeros(E, dtype=bool)
    old = open_latents(existing) if existing is not None else None
    try:
        n_old = int(old.attrs["num_episodes"]) if old is not None else 0
        with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
            _write_root_attrs(f, layout, identity, _rollouts_identity(rollouts), E)
            eps = f.create_group("episodes")
            for k in range(E):
                name = episode_name(k)
                src_file = None if k < n_old else h5py.File(parts / f"ep-{name}.h5", "r")
                try:
                    src = (old if src_file is None else src_file)[f"episodes/{name}"]
                    src.file.copy(src, eps, name=name)  # H5Ocopy: raw bytes, no re-encoding
                    seeds[k] = src.attrs["seed"]
                    lengths[k] = src.attrs["length"]
                    terminated[k] = bool(src["terminated"][-1])
                finally:
                    if src_file is not None:
                        src_file.close()
            f.create_dataset("index/seed", data=seeds)
            f.create_dataset("index/length", data=lengths)
            f.create_dataset("index/terminated", data=terminated)
    finally:
        if old is not None:
            old.close()
    shutil.rmtree(parts, ignore_errors=True)
    return final


def _lock(run_dir: Path, model: str) -> contextlib.AbstractContextManager[None]:
    return exclusive_lock(run_dir / f".encode_{model}.lock",
                          f"another encode.py is writing {latents_path(run_dir, model)}; "
                          "wait for it or use another --run")


class _EpisodeReader(torch.utils.data.Dataset):
    """Episode ``todo[i]`` of the rollouts, for a DataLoader whose workers decompress
    frames while the main process runs V."""

    def __init__(self, rollouts: RolloutDataset, todo: Sequence[int]) -> None:
        self.rollouts, self.todo = rollouts, list(todo)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any]]:
        k = self.todo[i]
        return k, self.rollouts.episode(k)


def _no_collate(item: Any) -> Any:
    return item  # numpy arrays stay numpy (no tensor conversion in the workers)


@torch.no_grad()
def encode_frames(net: nn.Module, frames: np.ndarray | torch.Tensor, batch_size: int,
                  device: torch.device) -> dict[str, np.ndarray]:
    """V's latents of ``frames`` (T, 64, 64, 3) uint8, ``batch_size`` frames per pass.

    :return: ``mu``, ``logvar`` (T, D) float32 for a VAE, ``codes`` (T, h, w) int16 for a
        VQ-VAE. Run in fp32 (no autocast): encoding is cheap next to decompressing the
        frames, and bf16's ~3 significant digits would blur ``log sigma^2``.
    """
    frames = torch.as_tensor(frames)
    vq = hasattr(net, "encode_codes")
    out: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(frames), batch_size):
        # (B, 64, 64, 3) -> the (B, 3, 64, 64) view: channels_last, what the GPU prefers
        x = frames[i:i + batch_size].to(device, non_blocking=True).movedim(-1, -3).float() / 255.0
        if vq:
            parts = {"codes": net.encode_codes(x).to(torch.int16)}
        else:
            mu, logvar = net.encode(x)
            parts = {"mu": mu.float(), "logvar": logvar.float()}
        for key, value in parts.items():
            out.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values).numpy() for key, values in out.items()}


def encode(cfg: Config, run_dir: str | os.PathLike[str], overwrite: bool = False,
           progress: bool | None = None,
           on_episode: Callable[[int, int], None] | None = None) -> Path:
    """Encode every frame of ``<run>/rollouts.h5`` with V ``cfg.encode.model`` into
    ``<run>/latents_<model>.h5`` (format in the module docstring).

    Resumes from finished part files; extends a file of the same V when the rollouts grew;
    returns at once when it is complete.

    :param overwrite: replace a file made by another V or from other rollouts (and discard
        any part files).
    :param on_episode: called as ``on_episode(k, T)`` after each encoded episode.
    :return: the latents path.
    :raises DataError: no rollouts or no trained V (naming the command to run), or an
        existing file of another V / other rollouts without ``overwrite``.
    """
    e = cfg.encode
    run_dir = Path(run_dir)
    if not (run_dir / DATASET_NAME).exists():
        raise DataError(f"no rollouts at {run_dir / DATASET_NAME}: run "
                        f"scripts/collect_rollouts.py --run {run_dir} first")
    device = resolve_device(e.device)
    net, identity = load_encoder(run_dir, e.model, device)
    layout = _latent_layout(net, identity)
    ensure_dir(run_dir)
    with _lock(run_dir, e.model), RolloutDataset(run_dir / DATASET_NAME) as rollouts:
        return _encode_locked(e.model, e.batch_size, e.workers, device, run_dir, net, identity,
                              layout, rollouts, overwrite, progress, on_episode)


def _encode_locked(model: str, batch_size: int, workers: int, device: torch.device,
                   run_dir: Path, net: nn.Module, identity: dict[str, Any],
                   layout: dict[str, Any], rollouts: RolloutDataset, overwrite: bool,
                   progress: bool | None,
                   on_episode: Callable[[int, int], None] | None) -> Path:
    final = latents_path(run_dir, model)
    parts = _parts_dir(run_dir, model)
    rollouts_id = _rollouts_identity(rollouts)
    remove_stale_tmp(run_dir)
    existing, n_old = None, 0
    if final.exists() and not overwrite:
        with open_latents(final) as f:
            stored_v = json.loads(f.attrs["vae"])
            stored_r = json.loads(f.attrs["rollouts"])
            n_old = int(f.attrs["num_episodes"])
            old_seeds, old_lengths = f["index/seed"][()], f["index/length"][()]
        if stored_v.get("sha256") != identity["sha256"] or stored_v.get("model") != model:
            raise DataError(f"{final} was encoded by another V ({_describe_v(stored_v)}; now "
                            f"{_describe_v(identity)}): pass --overwrite to re-encode it")
        differ = _rollouts_differ(stored_r, rollouts_id)
        if (differ or n_old > len(rollouts)
                or not np.array_equal(old_seeds, rollouts.seeds[:n_old])
                or not np.array_equal(old_lengths, rollouts.lengths[:n_old])):
            what = f" ({', '.join(differ)})" if differ else ""
            raise DataError(f"{final} was encoded from other rollouts{what}: pass "
                            "--overwrite to re-encode it")
        if n_old == len(rollouts):
            return final
        existing = final
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    ensure_dir(parts)
    remove_stale_tmp(parts)

    todo = []
    for k in range(n_old, len(rollouts)):
        p = parts / f"ep-{episode_name(k)}.h5"
        if p.exists() and _valid_part(p, k, identity, rollouts):
            continue
        with contextlib.suppress(OSError):
            p.unlink()  # another V's or a foreign part: encode it again
        todo.append(k)

    from worldmodels.utils.progress import progress_bar

    total = len(rollouts) - n_old
    loader = torch.utils.data.DataLoader(
        _EpisodeReader(rollouts, todo), batch_size=None, collate_fn=_no_collate,
        num_workers=min(workers, len(todo)))
    frames_done, t0 = 0, time.perf_counter()
    with progress_bar(progress, total=total, initial=total - len(todo), desc=f"encode {model}",
                      unit="ep") as bar:
        for k, ep in loader:
            latents = encode_frames(net, ep["frames"], batch_size, device)
            _write_part(parts / f"ep-{episode_name(k)}.h5", k, {**ep, **latents}, layout,
                        identity, rollouts_id)
            T = len(ep["frames"])
            frames_done += T
            bar.update(1)
            bar.set_postfix_str(f"{frames_done / max(time.perf_counter() - t0, 1e-9):.0f} frames/s")
            if on_episode is not None:
                on_episode(k, T)
    return _consolidate(run_dir, model, layout, identity, rollouts, existing)


def main(cfg: Config, run_dir: str | os.PathLike[str], overwrite: bool = False,
         progress: bool | None = None) -> dict[str, Any]:
    """``encode.py``: encode (or resume, or find complete), save the resolved config,
    return a summary: ``latents`` (path), ``model``, ``kind``, ``latent_dim``,
    ``episodes``, ``frames``, ``encoded_frames`` (by this call), ``frames_per_s`` (of this
    call, 0 when nothing was left), ``bytes``, ``seconds``, ``vae_step``, ``vae_sha256``."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    encoded = 0

    def count(k: int, T: int) -> None:
        nonlocal encoded
        encoded += T

    path = encode(cfg, run_dir, overwrite=overwrite, progress=progress, on_episode=count)
    seconds = time.perf_counter() - t0
    save_stage_config(cfg, run_dir, "encode")
    with LatentDataset(path) as data:
        return {
            "latents": str(path), "model": data.vae["model"], "kind": data.kind,
            "latent_dim": data.latent_dim, "episodes": len(data), "frames": data.num_steps,
            "encoded_frames": encoded, "frames_per_s": round(encoded / seconds, 1) if encoded else 0.0,
            "bytes": path.stat().st_size, "seconds": round(seconds, 2),
            "vae_step": data.vae["step"], "vae_sha256": data.vae["sha256"],
        }


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


@dataclasses.dataclass
class LatentTensors:
    """The steps of some episodes, concatenated in episode order, one tensor per field.

    ``mu``/``logvar`` (N, D) float32 (Gaussian) or ``codes`` (N, cells) int16 (codes);
    ``actions`` (N, 3) float32; ``rewards`` (N,) float32; ``terminated`` (N,) bool;
    ``offsets`` (E+1,) int64 numpy: episode ``j`` holds steps ``offsets[j]:offsets[j+1]``.
    """

    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    offsets: np.ndarray
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    codes: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.actions, self.rewards, self.terminated, self.mu, self.logvar, self.codes)
                   if t is not None)


def _bytes_per_step(data: LatentDataset) -> int:
    latent = data.latent_dim * (2 if data.kind == "codes" else 8)  # int16 | 2 x float32
    return latent + 4 * ACTION_DIM + 4 + 1


def load_latents(data: LatentDataset, episodes: Sequence[int] | None = None,
                 device: str | torch.device = "cpu") -> LatentTensors:
    """Every step of the chosen episodes as one :class:`LatentTensors` on ``device``
    (each episode read once, written into preallocated tensors: no concatenation)."""
    chosen = np.arange(len(data)) if episodes is None else np.asarray(episodes, dtype=np.int64)
    lengths = data.lengths[chosen]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    device = torch.device(device)
    host: dict[str, np.ndarray] = {
        "actions": np.empty((N, ACTION_DIM), np.float32), "rewards": np.empty(N, np.float32),
        "terminated": np.empty(N, bool)}
    if data.kind == "codes":
        host["codes"] = np.empty((N, data.latent_dim), np.int16)
    else:
        host["mu"] = np.empty((N, data.latent_dim), np.float32)
        host["logvar"] = np.empty((N, data.latent_dim), np.float32)
    for j, k in enumerate(chosen):
        a, b = int(offsets[j]), int(offsets[j + 1])
        for field, out in host.items():
            out[a:b] = data.read(int(k), field).reshape(b - a, *out.shape[1:])
    tensors = {field: torch.from_numpy(arr).to(device) for field, arr in host.items()}
    return LatentTensors(offsets=offsets, **tensors)


def fits_in_memory(data: LatentDataset, episodes: Sequence[int],
                   device: str | torch.device = "cpu", fraction: float = 0.5) -> bool:
    """Whether the chosen episodes' latents take at most ``fraction`` of ``device``'s
    free memory (False when unknown)."""
    free = available_memory(device)
    need = int(data.lengths[np.asarray(episodes, dtype=np.int64)].sum()) * _bytes_per_step(data)
    return free is not None and need <= fraction * free


class LatentSequences:
    """Windows of ``seq_len`` transitions inside one episode, cut into batches for M.

    A window starting at step ``s`` covers the ``L + 1`` steps ``s..s+L``: inputs ``z_t``,
    ``a_t`` and targets ``z_{t+1}``, ``reward_t``, ``done_t`` for ``t = s..s+L-1``. An
    episode of ``T`` steps has ``U = T - 1`` transitions, plus one when it terminated (its
    last transition, whose ``z_{t+1}`` is missing: ``next_valid`` is False there); it gives
    ``n = (U - L) // L + 1`` windows ``L`` apart, starting at an offset in ``[0, U - L -
    (n - 1) L]`` drawn per epoch (so every transition is seen across epochs; 0 for
    validation). An episode with ``0 < U < L`` gives one window at 0 whose steps past the
    episode repeat its last step and are masked (``mask`` False); episodes with no
    transition (one step, not terminated) are skipped.

    :param data: the latents.
    :param seq_len: L.
    :param episodes: episode indices (a split); default all.
    :param device: where batches are delivered.
    :param in_memory: hold every step on ``device`` (:func:`load_latents`) and cut batches
        there; otherwise read each window from the file.
    :raises DataError: no chosen episode has a transition.
    """

    def __init__(self, data: LatentDataset, seq_len: int, episodes: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", in_memory: bool = True) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.data, self.seq_len, self.device = data, seq_len, torch.device(device)
        chosen = np.arange(len(data)) if episodes is None else np.asarray(episodes, np.int64)
        transitions = data.lengths[chosen] - 1 + data.terminated[chosen]
        usable = transitions >= 1
        if len(chosen) and not usable.any():
            raise DataError(
                f"no episode of {data.path} has a transition: the {len(chosen)} chosen "
                "episodes have one step each; collect longer episodes (collect.max_steps)")
        #: file indices of the usable episodes, their lengths and transition counts
        self.episodes = chosen[usable]
        self.skipped = int((~usable).sum())
        self.lengths = data.lengths[self.episodes]
        self.transitions = transitions[usable]
        self.counts = np.maximum((self.transitions - seq_len) // seq_len + 1, 1)
        self.slack = np.maximum(self.transitions - seq_len - (self.counts - 1) * seq_len, 0)
        #: episodes shorter than one sequence (each one padded window)
        self.padded = int((self.transitions < seq_len).sum())
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.tensors = load_latents(data, self.episodes, self.device) if in_memory else None

    def __len__(self) -> int:
        """Windows per epoch (the same every epoch)."""
        return int(self.counts.sum())

    @property
    def num_transitions(self) -> int:
        return int(self.transitions.sum())

    def windows(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """(len, 2) int64 rows ``(j, start)``: position ``j`` in :attr:`episodes` and the
        first step; offsets drawn from ``rng`` (per episode), or 0 without one."""
        if len(self.episodes) == 0:
            return np.zeros((0, 2), np.int64)
        offsets = (np.zeros(len(self.episodes), np.int64) if rng is None
                   else rng.integers(0, self.slack + 1))
        j = np.repeat(np.arange(len(self.episodes)), self.counts)
        first = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        within = np.arange(len(j)) - np.repeat(first, self.counts)
        return np.stack([j, offsets[j] + within * self.seq_len], axis=1).astype(np.int64)

    def epoch(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[np.ndarray]:
        """The ``len // batch_size`` batches of window rows (B, 2) of one shuffled epoch
        (the last partial batch is dropped: one shape for ``torch.compile`` and cuDNN),
        after the first ``skip``. Depends only on ``seed``."""
        rng = np.random.default_rng(seed)
        windows = self.windows(rng)
        perm = rng.permutation(len(windows))
        for i in range(skip, len(windows) // batch_size):
            yield windows[perm[i * batch_size:(i + 1) * batch_size]]

    def in_order(self, batch_size: int) -> Iterator[np.ndarray]:
        """Every window at offset 0, in order, ``batch_size`` at a time (last smaller)."""
        windows = self.windows()
        for i in range(0, len(windows), batch_size):
            yield windows[i:i + batch_size]

    def batch(self, rows: np.ndarray, generator: torch.Generator | None = None,
              sample: bool = True) -> dict[str, torch.Tensor]:
        """The tensors of windows ``rows`` (B, 2), on the device.

        :param generator: draws ``z = mu + sigma * eps`` (a fresh ``z`` per call: the
            paper's resampling); on any device.
        :param sample: False gives ``z = mu``.
        :return: ``z`` (B, L+1, D) float32 or ``codes`` (B, L+1, cells) int64 (steps
            ``s..s+L``; steps past the episode's end repeat its last step); ``actions``
            (B, L, 3); ``rewards`` (B, L) float32; ``dones`` (B, L) float32; ``mask``
            (B, L) bool, whether transition ``t`` is real (False on the padding of a short
            episode); ``next_valid`` (B, L) bool, whether ``z_{t+1}`` exists (False on the
            padding and on a terminated episode's last transition).
        """
        L = self.seq_len
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        first = self.offsets[rows[:, 0]] + rows[:, 1]  # (B,) index of step s
        last = self.offsets[rows[:, 0] + 1] - 1  # (B,) index of the episode's last step
        # (B,) index of the step of the last transition: the last step when terminated
        last_real = self.offsets[rows[:, 0]] + self.transitions[rows[:, 0]] - 1
        if self.tensors is not None:
            t = self.tensors
            first_t = torch.from_numpy(first).to(self.device)
            last_t = torch.from_numpy(last).to(self.device)
            idx = first_t[:, None] + torch.arange(L + 1, device=self.device)
            mask = idx[:, :L] <= torch.from_numpy(last_real).to(self.device)[:, None]
            next_valid = (idx[:, 1:] <= last_t[:, None]) & mask
            idx = torch.minimum(idx, last_t[:, None])
            out = {"actions": t.actions[idx[:, :L]], "rewards": t.rewards[idx[:, :L]],
                   "dones": t.terminated[idx[:, :L]].float(), "mask": mask,
                   "next_valid": next_valid}
            fields = {name: getattr(t, name)[idx] for name in self.data.latent_fields}
        else:
            out, fields = self._read(rows)
        if self.data.kind == "codes":
            out["codes"] = fields["codes"].long()
        elif sample:
            out["z"] = reparameterize(fields["mu"], fields["logvar"], generator)
        else:
            out["z"] = fields["mu"]
        return out

    def _read(self, rows: np.ndarray) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Streaming path of :meth:`batch`: each window read from the file."""
        L = self.seq_len
        per_field: dict[str, list[np.ndarray]] = {}
        valid = np.ones((len(rows), L), dtype=bool)
        mask = np.ones((len(rows), L), dtype=bool)
        for i, (j, s) in enumerate(rows):
            k, T = int(self.episodes[j]), int(self.lengths[j])
            stop = min(int(s) + L + 1, T)
            if stop - s < L + 1:  # past the episode's end: repeat the last step, mask it
                valid[i, stop - s - 1:] = False
                mask[i, int(self.transitions[j]) - int(s):] = False
            for field in (*self.data.latent_fields, "actions", "rewards", "terminated"):
                x = self.data.read(k, field, int(s), stop)
                if field in self.data.latent_fields:
                    x = x.reshape(len(x), -1)
                if len(x) < L + 1:
                    x = np.concatenate([x, np.repeat(x[-1:], L + 1 - len(x), axis=0)])
                per_field.setdefault(field, []).append(x)
        arr = {f: np.stack(v) for f, v in per_field.items()}
        dev = self.device
        out = {
            "actions": torch.from_numpy(arr["actions"][:, :L].astype(np.float32)).to(dev),
            "rewards": torch.from_numpy(arr["rewards"][:, :L].astype(np.float32)).to(dev),
            "dones": torch.from_numpy(arr["terminated"][:, :L].astype(np.float32)).to(dev),
            "mask": torch.from_numpy(mask).to(dev),
            "next_valid": torch.from_numpy(valid).to(dev),
        }
        return out, {f: torch.from_numpy(arr[f]).to(dev) for f in self.data.latent_fields}

    def episode_tensors(self, j: int) -> dict[str, torch.Tensor]:
        """Every step of usable episode ``j`` (position in :attr:`episodes`) on the device:
        the latent fields flattened to (T, D) / (T, cells), ``actions``, ``rewards``
        (float32), ``terminated`` (bool)."""
        if self.tensors is not None:
            a, b = int(self.offsets[j]), int(self.offsets[j + 1])
            t = self.tensors
            out = {"actions": t.actions[a:b], "rewards": t.rewards[a:b],
                   "terminated": t.terminated[a:b]}
            out.update({f: getattr(t, f)[a:b] for f in self.data.latent_fields})
            return out
        k = int(self.episodes[j])
        out = {f: torch.from_numpy(self.data.read(k, f).reshape(int(self.lengths[j]), -1))
               for f in self.data.latent_fields}
        out["actions"] = torch.from_numpy(self.data.read(k, "actions").astype(np.float32))
        out["rewards"] = torch.from_numpy(self.data.read(k, "rewards").astype(np.float32))
        out["terminated"] = torch.from_numpy(self.data.read(k, "terminated"))
        return {name: value.to(self.device) for name, value in out.items()}
