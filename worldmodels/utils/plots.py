"""Line plots as PNG files, drawn with matplotlib's Agg renderer (no display needed).

::

    line_plot({"train": (steps, losses), "validation": (val_steps, val_losses)},
              "curves/vae.png", title="V", xlabel="step", ylabel="loss")

One colour per series (matplotlib's "tab10"; a point is missing where a value is ``None``,
NaN or infinite: the line is broken there, an isolated point is a dot), a light grid, the
legend where it hides the least. The figure is a ``matplotlib.figure.Figure`` on its own
Agg canvas: no ``pyplot``, so no global state, no backend switch and no window, whatever
else the process has imported (pygame, a notebook backend).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.utils.io import atomic_path

__all__ = ["BACKGROUND", "COLORS", "line_plot"]

#: the series' colours, in order (matplotlib's "tab10"), as RGB
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
BACKGROUND = (255, 255, 255)
_GRID = (225, 225, 225)
_TEXT = (30, 30, 30)
_DPI = 100


def _rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(c / 255 for c in color)  # type: ignore[return-value]


def _points(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """x, y float64 (N,) with NaN in both where either value is missing (None, NaN, inf)."""
    x = np.array([np.nan if v is None else float(v) for v in xs], np.float64)
    y = np.array([np.nan if v is None else float(v) for v in ys], np.float64)
    if x.shape != y.shape:
        raise ValueError(f"a series needs as many x as y values, got {len(x)} and {len(y)}")
    missing = ~(np.isfinite(x) & np.isfinite(y))
    x[missing] = y[missing] = np.nan
    return x, y


def line_plot(series: Mapping[str, tuple[Sequence[Any], Sequence[Any]]],
              path: str | os.PathLike[str], title: str = "", xlabel: str = "",
              ylabel: str = "", width: int = 800, height: int = 450) -> Path:
    """Draw ``series`` (``{name: (xs, ys)}``) as lines and save a ``width`` x ``height`` PNG
    at ``path``, atomically. An empty or all-missing series is listed in the legend only.

    :return: ``path``.
    """
    if width < 200 or height < 150:
        raise ValueError(f"a plot needs at least 200 x 150 pixels, got {width} x {height}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {name: _points(xs, ys) for name, (xs, ys) in series.items()}
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor=_rgb(BACKGROUND))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    text = _rgb(_TEXT)
    for k, (name, (x, y)) in enumerate(data.items()):
        color = _rgb(COLORS[k % len(COLORS)])
        ax.plot(x, y, color=color, linewidth=1.5, label=name)
        present = np.isfinite(y)
        alone = present & ~np.r_[False, present[:-1]] & ~np.r_[present[1:], False]
        if alone.any():  # a point between two missing values: no line to draw, so a dot
            ax.plot(x[alone], y[alone], "o", color=color, markersize=3)
    if not any(np.isfinite(y).any() for _, y in data.values()):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    ax.margins(x=0)  # the x axis spans the data (steps, generations) exactly
    ax.grid(True, color=_rgb(_GRID), linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(colors=text, labelsize=9)
    for spine in ax.spines.values():
        spine.set_color("black")
    ax.set_title(title, color=text, fontsize=12)
    ax.set_xlabel(xlabel, color=text, fontsize=10)
    ax.set_ylabel(ylabel, color=text, fontsize=10)
    if data:
        ax.legend(loc="best", fontsize=9, frameon=True, labelcolor=text)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, facecolor=fig.get_facecolor())
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path
