"""Checkpoints: one ``torch.save`` dict of plain types, written atomically.

A checkpoint loads with ``torch.load(path, weights_only=True)`` (no arbitrary pickles)
and carries everything needed to rebuild and resume its model without other files::

    {
      "format": "worldmodels/checkpoint", "format_version": 1,
      "kind": "vae" | "vqvae" | "gan" | "mdnrnn" | "controller" | ...,
      "model_config": {...},      # constructor kwargs, as nanoGPT's "model_args"
      "state_dict": {...},        # of the un-compiled, un-wrapped module
      "optimizer": {...} | None, "scheduler": {...} | None,
      "step": int, "epoch": int | None, "metrics": {...}, "extra": {...},
      "rng": {"torch": ByteTensor, "cuda": ByteTensor | None,
              "numpy": [...], "python": [...]} | None,   # None: an export, not a resume point
      "torch_version": str, "worldmodels_version": str, "created": unix time,
    }

Writes go to a temp file that is fsync-ed and renamed (:func:`~worldmodels.utils.io.atomic_path`):
a kill leaves the previous checkpoint intact, a full disk gives a one-line error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import errno
import hashlib
import math
import os
import pickle
import random
import shutil
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import worldmodels
from worldmodels.errors import ConfigError, DataError
from worldmodels.utils.io import TMP_MARK, atomic_path, ensure_dir
from worldmodels.utils.torch import unwrap_model

FORMAT = "worldmodels/checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("kind", "model_config", "state_dict", "step")


# --------------------------------------------------------------------------- RNG state


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and lists (``weights_only``-loadable).

    CUDA: only the current device's generator (the one a single-GPU or per-rank process
    draws from), and only when CUDA is already initialised: querying every device would
    create a context on each GPU. Local ``np.random.Generator`` objects are not global;
    store ``gen.bit_generator.state`` in ``extra`` yourself.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(cached)],
        "python": [int(py_version), list(py_internal), py_gauss],
    }


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back the RNG states of :func:`get_rng_state` (or of a loaded checkpoint).

    After ``restore_rng(ckpt)`` the next random draws of torch, NumPy and ``random`` are
    those the saving process would have made. A CUDA state is skipped on a machine
    without CUDA.
    """
    if "rng" in state and "torch" not in state:
        state = state["rng"]
    if state is None:
        return
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu().to(torch.uint8))
    if state.get("numpy") is not None:
        name, keys, pos, has_gauss, cached = state["numpy"]
        keys = np.asarray(keys.cpu().numpy() if isinstance(keys, torch.Tensor) else keys)
        np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))


# --------------------------------------------------------------------------- plain types


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with only types that ``torch.load(weights_only=True)`` accepts.

    NumPy scalars and arrays become Python numbers and tensors, paths become strings,
    dataclasses become dicts; anything else is a bug in the caller (``TypeError``).
    """
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, enum.Enum):
        return _plain(obj.value, where)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj), where)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"checkpoint {where}: key {k!r} is not a str or int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"checkpoint {where}: cannot store a {type(obj).__name__}; use dicts, lists, "
        "strings, numbers or tensors so that it loads with weights_only=True"
    )


# --------------------------------------------------------------------------- save / load


class _RecordingWriter:
    """A file wrapper that remembers the ``OSError`` a write raised.

    ``torch.save``'s C++ zip writer sometimes replaces a failed write (disk full) by an
    opaque ``RuntimeError: unexpected pos``; the recorded error keeps the real cause.
    """

    def __init__(self, f: Any) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str,
    model: nn.Module,
    model_config: Mapping[str, Any] | Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
) -> Path:
    """Write a checkpoint of ``model`` (and its training state) to ``path``, atomically.

    :param kind: what the model is (``"vae"``, ``"vqvae"``, ``"gan"``, ``"mdnrnn"``,
        ``"controller"``, ...); :func:`load_checkpoint` checks it.
    :param model: the module, possibly wrapped by ``torch.compile`` or DDP (the wrapper
        is stripped so the keys have no ``_orig_mod.`` / ``module.`` prefix).
    :param model_config: the constructor's keyword arguments (a dict or a dataclass) so
        a loader can rebuild the model from the checkpoint alone.
    :param optimizer: saved as ``optimizer.state_dict()`` when given.
    :param scheduler: a learning-rate scheduler (or anything with ``state_dict()``).
    :param step: optimiser steps done so far (the resume point).
    :param metrics: scalars at this step (``{"val/loss": 0.12}``).
    :param extra: any other plain state (GradScaler, data sampler position, ...).
    :param rng: store the global RNG states (the resume point of a training run); False
        stores ``"rng": None`` (an exported model, not a resume point).
    :return: ``path`` as a :class:`Path`.
    :raises WorldModelsError: the file cannot be written (disk full, permissions).
    """
    path = Path(path)
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"checkpoint kind must be a non-empty string, got {kind!r}")
    module = unwrap_model(model)
    config = _plain(model_config, "model_config")
    if not isinstance(config, dict):
        raise TypeError(f"model_config must be a dict or a dataclass, got {type(model_config).__name__}")
    checkpoint = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_config": config,
        "state_dict": module.state_dict(),
        "optimizer": _plain(optimizer.state_dict(), "optimizer") if optimizer is not None else None,
        "scheduler": _plain(scheduler.state_dict(), "scheduler") if scheduler is not None else None,
        "step": int(step),
        "epoch": None if epoch is None else int(epoch),
        "metrics": _plain(dict(metrics or {}), "metrics"),
        "extra": _plain(dict(extra or {}), "extra"),
        "rng": get_rng_state() if rng else None,
        "torch_version": str(torch.__version__),
        "worldmodels_version": str(worldmodels.__version__),
        "created": time.time(),
    }
    ensure_dir(path.parent)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(checkpoint, writer)
        except RuntimeError:
            if writer.error is not None:  # surface "disk full", not "unexpected pos"
                raise writer.error from None
            raise
    return path


def _corrupt(path: Path) -> DataError:
    return DataError(
        f"{path} is not a readable torch checkpoint (truncated, corrupt or another format): "
        "restore it or delete it and retrain"
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    kind: str | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    :param kind: the expected kind; ``None`` accepts any.
    :param map_location: where tensors go (default CPU; the optimiser's
        ``load_state_dict`` moves its state to the parameters' device).
    :return: the checkpoint dict (see the module docstring).
    :raises DataError: a missing, unreadable, truncated, corrupt or foreign file, a
        checkpoint of another kind, or one from a newer worldmodels.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a checkpoint file")
    try:
        with warnings.catch_warnings():
            # Foreign pickles make torch warn about their protocol before failing.
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower() and zipfile.is_zipfile(path):
            raise DataError(
                f"{path} is not a worldmodels checkpoint: it holds arbitrary Python objects, "
                "which are not loaded for safety"
            ) from None
        raise _corrupt(path) from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM, errno.EIO):
            raise DataError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
        raise _corrupt(path) from None  # torch reports some truncations as EINVAL
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, UnicodeDecodeError,
            IndexError, KeyError, AttributeError, TypeError):
        raise _corrupt(path) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise DataError(
            f"{path} is not a worldmodels checkpoint (no {FORMAT!r} format tag): "
            "was it written by another program?"
        )
    version = checkpoint.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise DataError(f"{path} has an invalid checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{path} has checkpoint format version {version}, newer than this worldmodels "
            f"({worldmodels.__version__}) reads ({FORMAT_VERSION}): upgrade worldmodels"
        )
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise DataError(f"{path} is an incomplete checkpoint: missing {', '.join(missing)}")
    if kind is not None and checkpoint["kind"] != kind:
        raise DataError(f"{path} is a {checkpoint['kind']!r} checkpoint, expected {kind!r}")
    return checkpoint


# --------------------------------------------------------------------------- manager


class CheckpointManager:
    """``last.pt`` at every save, ``best.pt`` when a tracked metric improves.

    ``last.pt`` is the resume point (:meth:`latest`); ``best.pt`` is what later stages
    load. ``best.pt`` is a copy of ``last.pt`` made after it, so a kill between the two
    leaves ``best.pt`` one improvement behind; :meth:`latest` repairs that on resume.
    Under DDP only rank 0 saves (every rank may call :meth:`latest` to resume).

    :param directory: the stage's directory (``run/vae``), created if needed.
    :param kind: the checkpoint kind written and expected.
    :param metric: the key in ``metrics`` that decides ``best.pt``; ``None`` keeps no best.
    :param mode: ``"min"`` (losses) or ``"max"`` (returns).
    """

    LAST = "last.pt"
    BEST = "best.pt"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        kind: str,
        metric: str | None = None,
        mode: str = "min",
    ) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"checkpoint mode must be 'min' or 'max', got {mode!r}")
        self.directory = ensure_dir(directory)
        self.kind = kind
        self.metric = metric
        self.mode = mode
        self._remove_stale_tmp()
        self.best_value: float | None = None
        self.best_step: int | None = None
        if metric is not None and self.best_path.exists():
            best = load_checkpoint(self.best_path, kind=kind)
            self.best_value = self._metric_of(best)
            self.best_step = int(best["step"])

    @property
    def last_path(self) -> Path:
        return self.directory / self.LAST

    @property
    def best_path(self) -> Path:
        return self.directory / self.BEST

    def _remove_stale_tmp(self) -> None:
        """Delete temp files of a killed writer (never anything that looks complete)."""
        for name in (self.LAST, self.BEST):
            for p in self.directory.glob(f"{name}{TMP_MARK}*"):
                with contextlib.suppress(OSError):
                    p.unlink()

    def _metric_of(self, checkpoint: Mapping[str, Any]) -> float | None:
        value = (checkpoint.get("metrics") or {}).get(self.metric)
        if value is None:
            return None
        value = float(value.item() if isinstance(value, torch.Tensor) else value)
        return None if math.isnan(value) else value

    def is_better(self, value: float | None) -> bool:
        """Whether ``value`` beats the best so far (NaN and ``None`` never do)."""
        if value is None or math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def save(self, **kwargs: Any) -> bool:
        """Write ``last.pt`` (and ``best.pt`` on improvement); kwargs as :func:`save_checkpoint`.

        :return: True when ``best.pt`` was updated.
        """
        save_checkpoint(self.last_path, kind=self.kind, **kwargs)
        if self.metric is None:
            return False
        value = (kwargs.get("metrics") or {}).get(self.metric)
        if value is not None:
            value = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not self.is_better(value):
            return False
        self._copy_last_to_best()
        self.best_value, self.best_step = value, int(kwargs["step"])
        return True

    def _copy_last_to_best(self) -> None:
        # A byte copy: the same checkpoint, no second serialisation of the model.
        with atomic_path(self.best_path) as tmp:
            shutil.copyfile(self.last_path, tmp)

    def latest(self, map_location: str | torch.device | None = "cpu") -> dict[str, Any] | None:
        """The checkpoint to resume from (``last.pt``), or ``None`` for a fresh start."""
        if not self.last_path.exists():
            return None
        checkpoint = load_checkpoint(self.last_path, kind=self.kind, map_location=map_location)
        if self.metric is not None:
            value = self._metric_of(checkpoint)
            # The run was killed between writing last.pt and copying it to best.pt.
            if self.is_better(value):
                self._copy_last_to_best()
                self.best_value, self.best_step = value, int(checkpoint["step"])
        return checkpoint

    def best(self, map_location: str | torch.device | None = "cpu") -> dict[str, Any] | None:
        """The best checkpoint so far (``best.pt``), or ``None`` when there is none."""
        if not self.best_path.exists():
            return None
        return load_checkpoint(self.best_path, kind=self.kind, map_location=map_location)


def settings_diff(checkpoint: Mapping[str, Any], model_config: Mapping[str, Any],
                  settings: Any, keys: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """What differs between a checkpoint and the run asked for: ``(name, saved, asked)``
    for every model-config entry, and for each of ``keys`` recorded under
    ``extra["train"]`` (settings that fix the data order) against ``settings.<key>``."""
    saved = checkpoint["model_config"]
    diff = [(k, saved.get(k), model_config.get(k))
            for k in sorted(set(saved) | set(model_config)) if saved.get(k) != model_config.get(k)]
    trained = (checkpoint.get("extra") or {}).get("train") or {}
    diff += [(k, trained[k], getattr(settings, k)) for k in keys
             if k in trained and trained[k] != getattr(settings, k)]
    return diff


def describe_diff(diff: list[tuple[str, Any, Any]]) -> tuple[str, str]:
    """``("a=1, b='x'", "a=2, b='y'")``: the saved and the asked values of a diff."""
    return (", ".join(f"{k}={a!r}" for k, a, _ in diff),
            ", ".join(f"{k}={b!r}" for k, _, b in diff))


def load_init_weights(model: nn.Module, init: str | os.PathLike[str], *, kind: str, stage: str,
                      model_config: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Fine-tuning: copy into ``model`` the weights of a trained checkpoint of the same
    model (the paper's iterative training fine-tunes V and M on old + new data).

    :param init: a run directory (its ``<stage>/best.pt``, else ``last.pt``) or a
        checkpoint file; an fp16 export loads too (the weights are cast to ``model``'s).
    :param kind: the checkpoint kind expected; ``model_config``: this run's, which the
        checkpoint's must equal; ``key``: the setting's name, for the messages.
    :return: ``{"checkpoint": path, "step": its step, "sha256": its weights' hash}``.
    :raises DataError: nothing there, or an unreadable checkpoint or one of another kind.
    :raises ConfigError: a model of other settings.
    """
    path = Path(init)
    if path.is_dir():
        found = [path / stage / name for name in (CheckpointManager.BEST, CheckpointManager.LAST)
                 if (path / stage / name).is_file()]
        if not found:
            raise DataError(f"{key}: {path} has no {stage}/best.pt or {stage}/last.pt")
        path = found[0]
    elif not path.is_file():
        raise DataError(f"{key}: no run directory or checkpoint {path}")
    checkpoint = load_checkpoint(path, kind=kind, map_location="cpu")
    diff = settings_diff(checkpoint, model_config, None, ())
    if diff:
        was, now = describe_diff(diff)
        raise ConfigError(f"{key}: {path} holds a model with {was}, this run's has {now}")
    model.load_state_dict(checkpoint["state_dict"])  # copied into model's dtype and layout
    return {"checkpoint": str(path), "step": int(checkpoint["step"]),
            "sha256": weights_sha256(checkpoint["state_dict"])}


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every key, dtype, shape and raw byte, in key order (a
    model's identity: saved again unchanged it keeps it, trained further it does not)."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
