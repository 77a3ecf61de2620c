"""Frame preprocessing: CarRacing's 96x96x3 observation -> the 64x64x3 uint8 frame V sees.

One function, used by collection, evaluation and watching alike.

* **Crop** rows 0..83: the bottom 12 rows of the observation are the dashboard (score,
  speed, ABS, steering and gyro bars). Ha & Schmidhuber (2018, arXiv:1803.10122) crop it
  in their code (``frame[0:84, :, :]``) so that V spends its 32 dimensions on the road;
  the controller gets speed from M's hidden state instead.
* **Resize** 84x96 -> 64x64 by *area averaging* (each output pixel is the mean of the
  input area it covers, fractional pixels weighted by their overlap): the right
  anti-aliasing filter for a downscale, so thin features (the red-white kerbs, the road
  edge) are averaged, not aliased.
* The resize runs in exact integer fixed-point arithmetic (weights scaled to sum to 256
  along each axis, one rounding at the end), carried out by float32 BLAS in a range where
  float32 is exact, so the result is the same on every machine, BLAS and batch size.
"""

from __future__ import annotations

import numpy as np

FRAME_SIZE = 64
CROP_ROWS = 84
_OBS = 96
_SCALE = 256  # fixed-point weight scale per axis


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) int64 weights, each row summing to exactly ``_SCALE``.

    Row ``i`` holds the overlap of input pixel ``j`` ([j, j+1)) with output pixel i's
    footprint [i*r, (i+1)*r), r = n_in / n_out, normalised and rounded so the row sum is
    preserved (largest-remainder rounding).
    """
    r = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * r, (i + 1) * r
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            w[i, j] = max(0.0, min(hi, j + 1) - max(lo, j))
    w = w / w.sum(axis=1, keepdims=True) * _SCALE
    wi = np.floor(w).astype(np.int64)
    short = _SCALE - wi.sum(axis=1)
    frac = w - wi
    for i in range(n_out):
        for j in np.argsort(-frac[i], kind="stable")[: short[i]]:
            wi[i, j] += 1
    return wi


_WY = _area_weights(CROP_ROWS, FRAME_SIZE)  # (64, 84)
_WX = _area_weights(_OBS, FRAME_SIZE)  # (64, 96)
_ROUND = _SCALE * _SCALE // 2
_WY_F = _WY.astype(np.float32)
_WXT_F = np.ascontiguousarray(_WX.T.astype(np.float32))


def preprocess_frames(obs: np.ndarray) -> np.ndarray:
    """Batch of observations ``(B, 96, 96, 3)`` uint8 -> ``(B, 64, 64, 3)`` uint8."""
    obs = np.asarray(obs)
    if obs.ndim != 4 or obs.shape[1:] != (_OBS, _OBS, 3):
        raise ValueError(f"expected observations of shape (B, 96, 96, 3), got {obs.shape}")
    B = len(obs)
    # out[b, i, j, c] = sum_{y, x} WY[i, y] * WX[j, x] * in[b, y, x, c]. Every product and
    # partial sum is a non-negative integer <= 255 * 256 * 256 < 2**24, so float32 BLAS
    # computes it exactly whatever the summation order; so does the final scaling by
    # 2**-16 (a power of two).
    x = obs[:, :CROP_ROWS].reshape(B, CROP_ROWS, _OBS * 3).astype(np.float32)
    rows = np.matmul(_WY_F, x)  # (B, 64, 96*3)
    rows = rows.reshape(B, FRAME_SIZE, _OBS, 3).transpose(0, 1, 3, 2).reshape(-1, _OBS)
    out = (rows @ _WXT_F).reshape(B, FRAME_SIZE, 3, FRAME_SIZE).transpose(0, 1, 3, 2)
    out += _ROUND
    out *= 1.0 / (_SCALE * _SCALE)
    return np.floor(out).astype(np.uint8)


def preprocess_frame(obs: np.ndarray) -> np.ndarray:
    """One observation ``(96, 96, 3)`` uint8 -> ``(64, 64, 3)`` uint8 (crop + area resize)."""
    obs = np.asarray(obs)
    if obs.shape != (_OBS, _OBS, 3):
        raise ValueError(f"expected an observation of shape (96, 96, 3), got {obs.shape}")
    return preprocess_frames(obs[None])[0]
