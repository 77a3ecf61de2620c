"""Image grids (PNG) of frames: what a dataset or a model's output looks like."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from worldmodels.utils.io import atomic_path


def make_grid(frames: np.ndarray, ncols: int = 8, pad: int = 2) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 -> one ``(rows*(H+pad)+pad, ncols*(W+pad)+pad, 3)`` image."""
    frames = np.asarray(frames)
    n, h, w, _ = frames.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = f
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike[str], scale: int = 1) -> Path:
    """Write ``image`` (H, W, 3) uint8 as PNG, atomically; ``scale`` repeats pixels."""
    import imageio.v3 as iio

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return path
