"""Training logs: TensorBoard events plus a JSON-lines copy that needs no TensorBoard.

One :class:`RunLogger` per stage writes

- ``<run>/tb/<stage>/events.out.tfevents.*``: scalars, image grids, the config as a table;
- ``<run>/<stage>/metrics.jsonl``: one object per :meth:`RunLogger.log` call,
  ``{"step": 100, "wall_time": 1.7e9, "losses/recon": 0.12, ...}`` (NaN/inf as null);
- ``<run>/<stage>/images/<tag>_<step:07d>.png``: the same grids as TensorBoard's;
- ``<run>/<stage>/hparams.json``: the configuration.

Resuming at step ``s`` (``resume_step=s``) continues the same files without duplicates:
jsonl lines and PNGs of steps after ``s`` are dropped, and TensorBoard hides events
after ``s`` (``SummaryWriter(purge_step=s + 1)``). Tags are grouped as in cleanrl:
``losses/…`` and ``charts/…``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodels.utils.images import make_grid, save_png
from worldmodels.utils.io import atomic_write_text, ensure_dir

_PNG_STEP = re.compile(r"_(\d+)\.png$")


def scalar_tag(name: str) -> str:
    """cleanrl's grouping: names with ``/`` stay; ``*loss*`` -> ``losses/``; else ``charts/``."""
    if "/" in name:
        return name
    return f"losses/{name}" if "loss" in name.lower() else f"charts/{name}"


def _to_number(value: Any, name: str) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"log value {name!r} must be a scalar, got shape {tuple(value.shape)}")
        value = value.detach().item()
    elif isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"log value {name!r} must be a scalar, got shape {value.shape}")
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    raise TypeError(f"log value {name!r} must be a number, got {type(value).__name__}")


def to_uint8_images(batch: Any) -> np.ndarray:
    """``(N, C, H, W)`` (or ``(C, H, W)``) float in [0, 1] or uint8 -> ``(N, H, W, 3)`` uint8.

    One channel is repeated to three; floats are clipped to [0, 1] and rounded.
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu()
        if batch.is_floating_point():
            batch = batch.float()  # bf16/fp16 have no NumPy dtype
        batch = batch.numpy()
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 3, H, W) or (N, 1, H, W), got shape {batch.shape}")
    if batch.dtype != np.uint8:
        batch = np.rint(np.clip(batch.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if batch.shape[1] == 1:
        batch = np.repeat(batch, 3, axis=1)
    return np.ascontiguousarray(batch.transpose(0, 2, 3, 1))


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` in file order (``{"step": 100, "wall_time": ...,
    "losses/recon": 0.12, ...}``, null for NaN/inf); lines a kill cut short, and lines
    without an integer step, are skipped as :class:`RunLogger` does on resume."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            record["step"] = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        records.append(record)
    return records


def _clean_jsonl(path: Path, resume_step: int | None) -> None:
    """Drop lines a kill cut short and, on resume, lines of steps after ``resume_step``."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a partial line from a kill mid-write, or garbage
        if resume_step is None or step <= resume_step:
            kept.append(line)
    new_text = "".join(f"{line}\n" for line in kept)
    if new_text != text:
        atomic_write_text(path, new_text)


class RunLogger:
    """TensorBoard + JSON-lines logger of one stage of a run.

    :param run_dir: the run directory (``runs/<name>``).
    :param stage: ``"vae"``, ``"mdnrnn"``, ``"controller"``, ...
    :param enabled: False makes every method a no-op (DDP ranks other than 0).
    :param resume_step: the step of the checkpoint being resumed; logs after it are
        dropped so the resumed run does not duplicate them. ``None``: a fresh start
        (existing lines are kept and appended to).
    :param flush_secs: how often TensorBoard flushes in the background.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        stage: str,
        enabled: bool = True,
        resume_step: int | None = None,
        flush_secs: int = 30,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.enabled = enabled
        self.tb_dir = self.run_dir / "tb" / stage
        self.stage_dir = self.run_dir / stage
        self.metrics_path = self.stage_dir / "metrics.jsonl"
        self.images_dir = self.stage_dir / "images"
        self.writer: Any = None
        self._file = None
        if not enabled:
            return
        # Imported here: tensorboard costs ~0.3 s and only loggers need it.
        from torch.utils.tensorboard import SummaryWriter

        ensure_dir(self.tb_dir)
        ensure_dir(self.stage_dir)
        _clean_jsonl(self.metrics_path, resume_step)
        if resume_step is not None:
            self._drop_images_after(resume_step)
        purge = None if resume_step is None else int(resume_step) + 1
        self.writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge, flush_secs=flush_secs)
        self._file = open(self.metrics_path, "a", encoding="utf-8")  # closed in close()

    def _drop_images_after(self, step: int) -> None:
        if not self.images_dir.is_dir():
            return
        for p in self.images_dir.glob("*.png"):
            match = _PNG_STEP.search(p.name)
            if match and int(match.group(1)) > step:
                p.unlink(missing_ok=True)

    def log(self, step: int, values: Mapping[str, Any] | None = None, /, **scalars: Any) -> None:
        """Log scalars at ``step``: ``log(100, recon_loss=0.1, lr=1e-3)``.

        Names go through :func:`scalar_tag` (``recon_loss`` -> ``losses/recon_loss``,
        ``lr`` -> ``charts/lr``); pass names with ``/`` in ``values`` to choose the group.
        Values may be Python, NumPy or one-element torch numbers (a CUDA tensor syncs).
        """
        if not self.enabled:
            return
        items = {**(values or {}), **scalars}
        # Convert everything first: a bad value must not leave half a record behind.
        numbers = {scalar_tag(name): _to_number(value, name) for name, value in items.items()}
        now = time.time()
        record: dict[str, Any] = {"step": int(step), "wall_time": now}
        for tag, number in numbers.items():
            self.writer.add_scalar(tag, float(number), int(step), walltime=now)
            # JSON has no NaN/inf (strict parsers reject Python's extension): null instead.
            finite = isinstance(number, int) or math.isfinite(number)
            record[tag] = number if finite else None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def images(self, tag: str, step: int, batch: Any, ncols: int = 8) -> Path | None:
        """Log a grid of ``batch`` (N, 3, H, W) to TensorBoard and as a PNG.

        :param batch: float in [0, 1] or uint8, tensor or array; (N, 1, H, W) is shown grey.
        :return: the PNG path ``<run>/<stage>/images/<tag>_<step:07d>.png`` (``/`` in
            ``tag`` becomes ``_``), or ``None`` when disabled.
        """
        if not self.enabled:
            return None
        grid = make_grid(to_uint8_images(batch), ncols=ncols)  # (H', W', 3) uint8
        self.writer.add_image(tag, grid, int(step), dataformats="HWC")
        ensure_dir(self.images_dir)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", tag)
        return save_png(grid, self.images_dir / f"{name}_{int(step):07d}.png")

    def hparams(self, config: Mapping[str, Any] | Any) -> None:
        """Record the configuration: a markdown table in TensorBoard and ``hparams.json``.

        :param config: a dict (nested sections are flattened to ``section.key`` in the
            table) or a config dataclass.
        """
        if not self.enabled:
            return
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            config = dataclasses.asdict(config)
        flat = _flatten(config)
        rows = "\n".join(
            f"|{key}|{str(value).replace('|', '&#124;')}|" for key, value in flat.items()
        )
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
        text = json.dumps(dict(config), indent=2, default=str)
        atomic_write_text(self.stage_dir / "hparams.json", text + "\n")

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()
            self._file.flush()

    def close(self) -> None:
        """Flush and close the files; later calls (and a second close) are ignored."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self.enabled = False

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
