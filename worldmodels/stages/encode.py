"""``encode.py``: every frame of the rollouts through V, once, into the latent store.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.2 and appendix A.2:
each frame of the random-policy rollouts is encoded by the trained V and its posterior
``q(z|x) = N(mu, sigma^2 I)`` stored as ``(mu, log sigma^2)`` (a VQ-VAE V stores its code
grid); M then trains on ``z`` drawn afresh from them. The format, V's identity check and the
crash-safe part files are :mod:`worldmodels.data.latents`'.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.config import Config, save_stage_config
from worldmodels.data.datasets import RolloutDataset
from worldmodels.data.latents import (
    _MAX_INT16_CODES,
    LatentDataset,
    _consolidate,
    _parts_dir,
    _rollouts_differ,
    _rollouts_identity,
    _valid_part,
    _write_part,
    latents_path,
    open_latents,
)
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.data.store import episode_name, missing_parts
from worldmodels.errors import DataError
from worldmodels.run import load_encoder
from worldmodels.utils.io import ensure_dir, exclusive_lock, remove_stale_tmp
from worldmodels.utils.torch import resolve_device

__all__ = ["encode", "encode_frames", "main"]


def _describe_v(v: dict[str, Any]) -> str:
    return f"{v.get('model')} step {v.get('step')} ({v.get('checkpoint')}, sha256 {str(v.get('sha256'))[:12]})"


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
        differ = _rollouts_differ(stored_r, rollouts_id, n_old)
        if (differ or n_old > len(rollouts)
                or not np.array_equal(old_seeds, rollouts.seeds[:n_old])
                or not np.array_equal(old_lengths, rollouts.lengths[:n_old])):
            what = f" ({', '.join(differ)})" if differ else ""
            raise DataError(f"{final} was encoded from other rollouts{what}: pass "
                            "--overwrite to re-encode it")
        if n_old == len(rollouts):
            return final
        existing = final
    # another V's or a foreign part is encoded again
    todo = missing_parts(parts, range(n_old, len(rollouts)),
                         lambda path, k: _valid_part(path, k, identity, rollouts), overwrite)

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
