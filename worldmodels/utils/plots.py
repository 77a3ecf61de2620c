"""Line plots as PNG files, drawn with pygame (no matplotlib, no display needed).

::

    line_plot({"train": (steps, losses), "validation": (val_steps, val_losses)},
              "curves/vae.png", title="V", xlabel="step", ylabel="loss")

Axes with 1-2-5 ticks, a light grid, one colour per series (a point is missing where a
value is ``None``, NaN or infinite: the line is broken there), a legend, and the title and
axis labels in pygame's default font, the legend in the emptiest corner.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.utils.images import save_png

__all__ = ["COLORS", "line_plot", "nice_ticks"]

#: the series' colours, in order (matplotlib's "tab10")
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
BACKGROUND = (255, 255, 255)
_AXES = (0, 0, 0)
_GRID = (225, 225, 225)
_TEXT = (30, 30, 30)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks]


def _label(value: float) -> str:
    return f"{value:.4g}"


def _points(xs: Sequence[Any], ys: Sequence[Any]) -> np.ndarray:
    """(N, 2) float64 with NaN for a missing value (None, NaN, inf)."""
    x = np.array([np.nan if v is None else float(v) for v in xs], np.float64)
    y = np.array([np.nan if v is None else float(v) for v in ys], np.float64)
    if x.shape != y.shape:
        raise ValueError(f"a series needs as many x as y values, got {len(x)} and {len(y)}")
    pts = np.stack([x, y], axis=1) if len(x) else np.zeros((0, 2))
    pts[~np.isfinite(pts).all(axis=1)] = np.nan
    return pts


def _span(values: np.ndarray, pad: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    if hi == lo:
        half = 0.5 * abs(lo) or 0.5
        return lo - half, hi + half
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


def _drawn(surface: Any, rect: Any) -> int:
    """How many pixels of ``rect`` hold a line (neither background nor grid)."""
    import pygame

    pixels = pygame.surfarray.array3d(surface.subsurface(rect.clip(surface.get_rect())))
    return int(((pixels != BACKGROUND).any(-1) & (pixels != _GRID).any(-1)).sum())


def line_plot(series: Mapping[str, tuple[Sequence[Any], Sequence[Any]]],
              path: str | os.PathLike[str], title: str = "", xlabel: str = "",
              ylabel: str = "", width: int = 800, height: int = 450) -> Path:
    """Draw ``series`` (``{name: (xs, ys)}``) as lines and save a ``width`` x ``height`` PNG
    at ``path``, atomically. An empty or all-missing series is listed in the legend only.

    :return: ``path``.
    """
    if width < 200 or height < 150:
        raise ValueError(f"a plot needs at least 200 x 150 pixels, got {width} x {height}")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    from worldmodels.utils.video import _font

    data = {name: _points(xs, ys) for name, (xs, ys) in series.items()}
    every = np.concatenate([p for p in data.values()] or [np.zeros((0, 2))])
    x0, x1 = _span(every[:, 0], 0.0)
    y0, y1 = _span(every[:, 1], 0.05)
    small, large = _font(16), _font(22)

    def text(s: str, font: Any) -> Any:
        return None if font is None or not s else font.render(s, True, _TEXT)

    surface = pygame.Surface((width, height))
    surface.fill(BACKGROUND)
    yticks, xticks = nice_ticks(y0, y1), nice_ticks(x0, x1)
    tick_w = max((t.get_width() for t in (text(_label(v), small) for v in yticks) if t),
                 default=0)
    left, right, top, bottom = tick_w + 36, width - 16, 36, height - 46
    area = pygame.Rect(left, top, right - left, bottom - top)

    def to_px(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (left + (x - x0) / (x1 - x0) * area.width,
                bottom - (y - y0) / (y1 - y0) * area.height)

    for v in yticks:
        py = round(float(to_px(np.array(x0), np.array(v))[1]))
        pygame.draw.line(surface, _GRID, (left, py), (right, py))
        if (label := text(_label(v), small)) is not None:
            surface.blit(label, (left - 6 - label.get_width(), py - label.get_height() // 2))
    for v in xticks:
        px = round(float(to_px(np.array(v), np.array(y0))[0]))
        pygame.draw.line(surface, _GRID, (px, top), (px, bottom))
        if (label := text(_label(v), small)) is not None:
            surface.blit(label, (px - label.get_width() // 2, bottom + 6))
    pygame.draw.rect(surface, _AXES, area, 1)

    surface.set_clip(area)
    for k, pts in enumerate(data.values()):
        color = COLORS[k % len(COLORS)]
        px, py = to_px(pts[:, 0], pts[:, 1])
        ok = np.isfinite(px)
        # runs of consecutive present points: a missing value breaks the line
        starts = np.flatnonzero(ok & ~np.concatenate([[False], ok[:-1]]))
        for s in starts:
            e = s
            while e + 1 < len(ok) and ok[e + 1]:
                e += 1
            run = [(float(a), float(b)) for a, b in zip(px[s:e + 1], py[s:e + 1])]
            if len(run) == 1:
                pygame.draw.circle(surface, color, (round(run[0][0]), round(run[0][1])), 3)
            else:
                pygame.draw.lines(surface, color, False, run, 2)
    surface.set_clip(None)

    if (label := text(title, large)) is not None:
        surface.blit(label, ((width - label.get_width()) // 2, (top - label.get_height()) // 2))
    if (label := text(xlabel, small)) is not None:
        surface.blit(label, (left + (area.width - label.get_width()) // 2,
                             height - label.get_height() - 4))
    if (label := text(ylabel, small)) is not None:
        label = pygame.transform.rotate(label, 90)
        surface.blit(label, (4, top + (area.height - label.get_height()) // 2))

    entries = [(COLORS[k % len(COLORS)], text(name, small)) for k, name in enumerate(data)]
    entries = [(c, t) for c, t in entries if t is not None]
    if entries:
        box_w = max(t.get_width() for _, t in entries) + 36
        line_h = max(t.get_height() for _, t in entries) + 4
        size = (box_w, line_h * len(entries) + 6)
        box = min(  # the corner that hides the fewest drawn pixels (top-right on ties)
            (pygame.Rect((x, y), size) for y in (top + 8, bottom - 8 - size[1])
             for x in (right - 8 - size[0], left + 8)),
            key=lambda r: _drawn(surface, r))
        surface.fill(BACKGROUND, box)
        pygame.draw.rect(surface, _GRID, box, 1)
        for i, (color, label) in enumerate(entries):
            y = box.top + 4 + i * line_h
            pygame.draw.line(surface, color, (box.left + 6, y + line_h // 2 - 1),
                             (box.left + 26, y + line_h // 2 - 1), 3)
            surface.blit(label, (box.left + 30, y + 1))

    image = pygame.surfarray.array3d(surface).swapaxes(0, 1)  # (H, W, 3)
    return save_png(np.ascontiguousarray(image, dtype=np.uint8), path)
