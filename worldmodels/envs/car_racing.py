"""FastCarRacing: gymnasium's CarRacing-v3 with a faster, bit-identical renderer.

The world model of Ha & Schmidhuber (2018, arXiv:1803.10122) is trained on millions of
CarRacing frames, and the stock environment spends most of its time drawing them: every
frame, ``_render_road`` rotates the ~800 vertices of the background, the 400 grass patches
and ~300 road tiles one ``pygame.math.Vector2`` at a time in Python and tests each polygon
for visibility, though only ~60 are on screen; ``_render`` also loads the default font from
disk every frame.

This subclass changes *how* the frame is computed, never *what* is drawn:

* the vertices of all polygons are rotated, scaled and translated in one numpy expression
  that performs the same IEEE-754 double operations, in the same order, as
  ``Vector2.rotate_rad`` followed by ``c * zoom + translation`` (the rotation's cos/sin are
  taken from ``Vector2(1, 0).rotate_rad(angle)`` itself, so pygame's special-casing of
  multiples of 90 degrees is inherited, not re-implemented);
* visibility culling is the same bounding-box test, vectorised;
* the visible polygons are drawn with the same ``gfxdraw`` calls, in the same order,
  with the same float coordinates and colours;
* when the background rectangle covers the whole window with a margin, its polygon fill
  is replaced by ``Surface.fill`` (same pixels: no edge of it is on screen), and its
  antialiased outline, entirely off screen, is skipped;
* the score font is loaded once and rendered texts are cached;
* past the renderer: the car's dynamics perform gymnasium's arithmetic with less Python
  overhead (:mod:`worldmodels.envs.car_physics`), and a track is generated once per random
  state and replayed after (:mod:`worldmodels.envs.track_cache`).

Observations, rewards, terminated, truncated and info are therefore equal, bit for bit,
to ``gymnasium.make("CarRacing-v3")`` for every seed and action sequence; the test suite
checks it and ``scripts/benchmark.py env`` measures the speed-up side by side.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pygame
from gymnasium.envs.box2d import car_racing as _cr
from gymnasium.envs.box2d.car_dynamics import SIZE, WHEEL_R, WHEEL_W, WHEEL_WHITE
from gymnasium.envs.box2d.car_racing import CarRacing
from pygame import gfxdraw

__all__ = ["ApproxFrameRenderer", "FastCarRacing", "step_repeated"]

_W, _H = _cr.WINDOW_W, _cr.WINDOW_H
_M = _cr.MAX_SHAPE_DIM
_LO_X, _HI_X = -_M, _W + _M
_LO_Y, _HI_Y = -_M, _H + _M
_PAD = 4.0  # pixels: > antialiasing width (1) + float->int truncation (1)
_CROP_H = 700  # window rows (after the flip) kept by the 84-row crop: 84 / 96 * 800


def _grass_vertices() -> np.ndarray:
    """The 400 grass squares of ``CarRacing._render_road``, built with the same float ops."""
    g = _cr.GRASS_DIM
    grass = []
    for x in range(-20, 20, 2):
        for y in range(-20, 20, 2):
            grass.append(
                [
                    (g * x + g, g * y + 0),
                    (g * x + 0, g * y + 0),
                    (g * x + 0, g * y + g),
                    (g * x + g, g * y + g),
                ]
            )
    return np.asarray(grass, dtype=np.float64)


_GRASS = _grass_vertices()  # (400, 4, 2)
_B = _cr.PLAYFIELD
_FIELD = np.asarray([[(_B, _B), (_B, -_B), (-_B, -_B), (-_B, _B)]], dtype=np.float64)


class FastCarRacing(CarRacing):
    """``CarRacing`` with the same observations, computed 2.5-3x faster.

    Takes exactly the keyword arguments of :class:`gymnasium.envs.box2d.CarRacing`
    (``render_mode``, ``verbose``, ``lap_complete_percent``, ``domain_randomize``,
    ``continuous``); registered as ``worldmodels/FastCarRacing-v3``.
    """

    _font: pygame.font.Font | None = None
    _text_cache: dict[str, pygame.Surface] = {}
    #: when True, the next ``step`` advances physics and reward but draws no observation
    #: (it returns ``None``); see :func:`step_repeated`
    skip_observation: bool = False
    #: the car's dynamics with less Python overhead, the same arithmetic
    #: (:mod:`worldmodels.envs.car_physics`); False: gymnasium's own ``Car.step``
    fast_physics: bool = True

    def reset(self, *args: Any, **kwargs: Any):
        obs = super().reset(*args, **kwargs)
        if self.fast_physics:  # the first frame (reset's own step) ran on the stock code
            from worldmodels.envs.car_physics import install

            install(self.car)
        return obs

    def _create_track(self) -> bool:
        # generated once per random state and replayed (worldmodels.envs.track_cache)
        from worldmodels.envs.track_cache import create_track

        return create_track(self, super()._create_track)

    # ------------------------------------------------------------------ geometry cache
    def _geometry(self) -> np.ndarray:
        """(400 + N, 4, 2) float64 vertices: the grass squares, then ``self.road_poly``
        (tiles and kerbs in drawing order); rebuilt when the track changes."""
        return self._geometry_bounds()[0]

    def _geometry_bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_geometry`, each polygon's vertex mean (N, 2) and the largest distance
        from it to a vertex (N,): every point of the polygon lies within it."""
        polys = self.road_poly
        cached = self.__dict__.get("_geometry_cache")
        if cached is None or cached[0] is not polys or cached[1] != len(polys):
            road = np.asarray([p for p, _ in polys], dtype=np.float64).reshape(len(polys), 4, 2)
            geometry = np.concatenate([_GRASS, road])
            centre = geometry.mean(axis=1)
            radius = np.sqrt(((geometry - centre[:, None]) ** 2).sum(-1)).max(axis=1)
            cached = (polys, len(polys), (geometry, centre, radius))
            self._geometry_cache = cached
        return cached[2]

    def _near(self, zoom: float, translation, angle: float, width: float, height: float,
              margin: float) -> np.ndarray:
        """Indices (ascending) of the polygons that may touch the ``width`` x ``height``
        screen grown by ``margin`` pixels on every side; the others paint no pixel of it.

        A world-space test, before any vertex is transformed: the grown screen lies in a
        disc (its centre and half-diagonal mapped back to the world), and a polygon that
        meets it has its vertex mean within that radius plus its own
        (:meth:`_geometry_bounds`). It only skips work: the screen-space tests and the
        draw calls that follow see the same polygons in the same order, less ones that
        could not paint (the margins exceed antialiasing and float-to-int rounding)."""
        _, centre, radius = self._geometry_bounds()
        c, s = math.cos(angle), math.sin(angle)
        # screen q = zoom R(angle) p + t  =>  p = R(-angle) (q - t) / zoom
        qx, qy = width / 2 - translation[0], height / 2 - translation[1]
        mid_x, mid_y = (c * qx + s * qy) / zoom, (-s * qx + c * qy) / zoom
        reach = math.hypot(width / 2 + margin, height / 2 + margin) / zoom
        d2 = (centre[:, 0] - mid_x) ** 2 + (centre[:, 1] - mid_y) ** 2
        return np.flatnonzero(d2 <= (reach * (1 + 1e-9) + radius) ** 2)

    @staticmethod
    def _screen_coords(verts: np.ndarray, zoom: float, translation, angle: float) -> np.ndarray:
        """Rotate by ``angle``, scale by ``zoom``, translate: bit-equal to the stock loop."""
        c, s = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        x = verts[..., 0]
        y = verts[..., 1]
        out = np.empty_like(verts)
        # Vector2.rotate_rad: (c*x - s*y, s*x + c*y); then coord * zoom + translation.
        out[..., 0] = (c * x - s * y) * zoom + translation[0]
        out[..., 1] = (s * x + c * y) * zoom + translation[1]
        return out

    @staticmethod
    def _visible(pts: np.ndarray) -> np.ndarray:
        """(N, 4, 2) screen vertices -> (N,) polygons the stock code draws *and* that touch
        a pixel of the window.

        The stock test keeps a polygon when any vertex lies within ``MAX_SHAPE_DIM`` of
        the window; of those, a polygon whose 4 vertices all lie more than a few pixels
        beyond one side of the window paints nothing (its fill and its antialiased outline
        stay inside its bounding box, one pixel wider), so skipping its two draw calls
        leaves the image equal. (Per-vertex ops on the 4 columns: cheaper than reductions.)
        """
        x = pts[..., 0]
        y = pts[..., 1]
        near = (x >= _LO_X) & (x <= _HI_X) & (y >= _LO_Y) & (y <= _HI_Y)  # (N, 4)
        kept = near[:, 0] | near[:, 1] | near[:, 2] | near[:, 3]
        # Cohen-Sutherland outcodes: a polygon is off screen when all its vertices share
        # an outside side, i.e. the AND of their codes is non-zero.
        code = ((x < -_PAD) * np.uint8(1) | (x > _W + _PAD) * np.uint8(2)
                | (y < -_PAD) * np.uint8(4) | (y > _H + _PAD) * np.uint8(8))
        off = code[:, 0] & code[:, 1] & code[:, 2] & code[:, 3]
        return kept & (off == 0)

    # ------------------------------------------------------------------ rendering
    def _render_road(self, zoom, translation, angle):
        surf = self.surf
        aapolygon = gfxdraw.aapolygon
        filled_polygon = gfxdraw.filled_polygon

        # Background: drawn unclipped by the stock code. When the screen lies strictly
        # inside it (by a margin far larger than any rounding), the fill covers every
        # pixel and the antialiased outline is entirely off screen: Surface.fill is the
        # same image.
        field = self._screen_coords(_FIELD, zoom, translation, angle)[0]
        if _covers_screen(field, margin=8.0):
            surf.fill(_gfx_rgb(self.bg_color))
        else:
            pts = field.tolist()
            aapolygon(surf, pts, self.bg_color)
            filled_polygon(surf, pts, self.bg_color)

        # Grass, then road, in the stock order (the index says which); only those near
        # the window are transformed and tested (the rest could not paint a pixel).
        near = self._near(zoom, translation, angle, _W, _H, _PAD + 2.0)
        screen = self._screen_coords(self._geometry()[near], zoom, translation, angle)
        n_grass = len(_GRASS)
        grass_color = self.grass_color
        road_poly = self.road_poly
        for j in np.flatnonzero(self._visible(screen)).tolist():
            i = int(near[j])
            pts = screen[j].tolist()
            if i < n_grass:
                color = grass_color
            else:  # tile colours change when the car touches a tile: read them each frame
                color = [int(c) for c in road_poly[i - n_grass][1]]
            aapolygon(surf, pts, color)
            filled_polygon(surf, pts, color)

    def _score_text(self) -> pygame.Surface:
        label = f"{self.reward:04.0f}"
        cache = FastCarRacing._text_cache
        text = cache.get(label)
        if text is None:
            try:
                if FastCarRacing._font is None:
                    raise pygame.error("no font yet")
                text = FastCarRacing._font.render(label, True, (255, 255, 255), (0, 0, 0))
            except pygame.error:  # first use, or pygame.quit() invalidated the cached font
                FastCarRacing._font = pygame.font.Font(pygame.font.get_default_font(), 42)
                text = FastCarRacing._font.render(label, True, (255, 255, 255), (0, 0, 0))
            if len(cache) > 4096:
                cache.clear()
            cache[label] = text
        return text

    def _render(self, mode: str):
        # Same sequence of drawing operations as CarRacing._render (gymnasium 1.x); only
        # the road and the score text are computed differently.
        assert mode in self.metadata["render_modes"]

        pygame.font.init()
        if self.screen is None and mode == "human":
            pygame.display.init()
            self.screen = pygame.display.set_mode((_W, _H))
        if self.clock is None:
            self.clock = pygame.time.Clock()

        if "t" not in self.__dict__:
            return  # reset() not called yet
        if mode == "state_pixels" and self.skip_observation:
            # Drawing has no effect on the simulation (car.draw and _render_indicators only
            # read the car's state): skipping it leaves physics and rewards unchanged.
            return None

        self.surf = pygame.Surface((_W, _H))

        assert self.car is not None
        angle = -self.car.hull.angle
        # Animating first second zoom.
        zoom = 0.1 * _cr.SCALE * max(1 - self.t, 0) + _cr.ZOOM * _cr.SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (_W / 2 + trans[0], _H / 4 + trans[1])

        self._render_road(zoom, trans, angle)
        self.car.draw(
            self.surf, zoom, trans, angle, mode not in ["state_pixels_list", "state_pixels"]
        )

        self.surf = pygame.transform.flip(self.surf, False, True)

        self._render_indicators(_W, _H)

        text = self._score_text()
        text_rect = text.get_rect()
        text_rect.center = (60, _H - _H * 2.5 / 40.0)
        self.surf.blit(text, text_rect)

        if mode == "human":
            pygame.event.pump()
            self.clock.tick(self.metadata["render_fps"])
            assert self.screen is not None
            self.screen.fill(0)
            self.screen.blit(self.surf, (0, 0))
            pygame.display.flip()
        elif mode == "rgb_array":
            return self._create_image_array(self.surf, (_cr.VIDEO_W, _cr.VIDEO_H))
        elif mode == "state_pixels":
            return self._create_image_array(self.surf, (_cr.STATE_W, _cr.STATE_H))
        else:
            return self.isopen


class ApproxFrameRenderer:
    """A training-only renderer: V's 64x64 frame drawn straight into a small surface.

    The exact observation is the 1000x800 window drawn with antialiased polygons, flipped,
    box-filtered to 96x96 (``smoothscale``), cropped to its top 84 rows and area-resized to
    64x64 (:func:`~worldmodels.envs.preprocess.preprocess_frame`): each of V's pixels is the
    mean colour of a 15.6 x 10.9-pixel box of the window. This renderer draws the same
    scene (background, grass, road tiles in their current colours, the car) with the same
    rotation and zoom, scaled by ``scale`` into a ``1000 scale x 700 scale`` surface (the
    part of the window the crop keeps; no dashboard), without antialiasing, and box-filters
    that to 64x64. The result is an approximation (edges differ by a fraction of a pixel of
    V's frame): its mean squared error against the exact frame is bounded in
    ``tests/test_fitness.py`` and reported beside V's reconstruction error in
    docs/benchmarks.md. Evaluation never uses it.
    """

    #: the shortcuts: transform and test only the polygons near the view
    #: (:meth:`FastCarRacing._near`), and fill the surface when the field covers it; False:
    #: every polygon transformed and tested, the field drawn as a polygon (the same frames,
    #: tested; slower)
    cull: bool = True

    def __init__(self, scale: float = 0.384) -> None:
        self.scale = float(scale)
        self.size = (int(round(_W * scale)), int(round(_CROP_H * scale)))
        self.surf = pygame.Surface(self.size)

    def frame(self, env: FastCarRacing) -> np.ndarray:
        """``env``'s current view as V's (64, 64, 3) uint8 frame."""
        from worldmodels.envs.preprocess import FRAME_SIZE

        s = self.scale
        w, h = self.size
        surf = self.surf
        car = env.car
        angle = -car.hull.angle
        zoom = 0.1 * _cr.SCALE * max(1 - env.t, 0) + _cr.ZOOM * _cr.SCALE * min(env.t, 1)
        scroll_x = -(car.hull.position[0]) * zoom
        scroll_y = -(car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        # window pixels (unflipped, y up the screen after the flip) -> small surface: the
        # crop keeps window rows 100..799 before the flip
        small_zoom = zoom * s
        small_trans = ((_W / 2 + trans[0]) * s, (_H / 4 + trans[1] - (_H - _CROP_H)) * s)
        field = FastCarRacing._screen_coords(_FIELD, small_zoom, small_trans, angle)[0]
        if self.cull and _covers_screen(field, 8.0, w, h):  # it fills every pixel: same image
            surf.fill(_gfx_rgb(env.bg_color))
        else:  # the window is black outside the field (seen while zooming in)
            surf.fill((0, 0, 0))
            pygame.draw.polygon(surf, _gfx_rgb(env.bg_color), field.tolist())
        near = env._near(small_zoom, small_trans, angle, w, h, 3.0) if self.cull else \
            np.arange(len(env._geometry()))
        screen = FastCarRacing._screen_coords(env._geometry()[near], small_zoom, small_trans,
                                              angle)
        x, y = screen[..., 0], screen[..., 1]
        inside = ~(((x < 0).all(1)) | ((x > w).all(1)) | ((y < 0).all(1)) | ((y > h).all(1)))
        n_grass = len(_GRASS)
        road_poly = env.road_poly
        grass_color = _gfx_rgb(env.grass_color)
        polygon = pygame.draw.polygon
        for j in np.flatnonzero(inside).tolist():
            i = int(near[j])
            color = grass_color if i < n_grass else tuple(map(int, road_poly[i - n_grass][1]))
            polygon(surf, color, screen[j].tolist())
        _draw_car(surf, car, small_zoom, small_trans, angle)  # no skid marks, as stock
        # Box-filtered to 64 x 64, then flipped: the same pixels as flipping first (each
        # output row's box covers the same source rows either way, and smoothscale's
        # fixed-point row step, 2^16 h / 64, is an integer, so the boxes' weights are mirror
        # images; tested), and the flip is of 64 rows instead of ~270.
        small = pygame.transform.flip(pygame.transform.smoothscale(surf, (FRAME_SIZE,
                                                                         FRAME_SIZE)), False, True)
        rgb = bytearray(pygame.image.tobytes(small, "RGB"))  # (64, 64, 3) row-major: no transpose
        return np.frombuffer(rgb, dtype=np.uint8).reshape(FRAME_SIZE, FRAME_SIZE, 3)


def _car_parts(car) -> list[tuple[Any, Any, list[list[tuple[float, float]]], tuple]]:
    """``(obj, body, fixture vertex lists, colour)`` of each part of ``car``'s drawlist (the
    4 wheels and the hull), cached on the car: the shapes never change."""
    parts = getattr(car, "_worldmodels_parts", None)
    if parts is None:
        parts = [(obj, obj, [[tuple(v) for v in f.shape.vertices] for f in obj.fixtures],
                  tuple(int(c * 255) for c in obj.color)) for obj in car.drawlist]
        car._worldmodels_parts = parts
    return parts


def _draw_car(surface, car, zoom: float, translation, angle: float) -> None:
    """``car.draw(surface, zoom, translation, angle, draw_particles=False)`` of gymnasium's
    ``car_dynamics`` (the same polygons, colours and wheel stripes, in the same order), with
    each part's two rotations and the zoom folded into one 2x2 map per body instead of a
    ``Vector2`` per vertex: ~4x cheaper, equal to float rounding (a vertex may land a last
    bit apart, so an edge pixel can differ; the approximate renderers only)."""
    import pygame.draw

    ca, sa = math.cos(angle), math.sin(angle)
    tx, ty = translation[0], translation[1]
    polygon = pygame.draw.polygon
    for obj, body, fixtures, color in _car_parts(car):
        px, py = body.position
        th = body.angle
        # screen = zoom R(angle) (p + R(th) v) + t = o + M v
        ox = (px * ca - py * sa) * zoom + tx
        oy = (px * sa + py * ca) * zoom + ty
        a, b = math.cos(angle + th) * zoom, math.sin(angle + th) * zoom
        for verts in fixtures:
            polygon(surface, color, [(ox + a * x - b * y, oy + b * x + a * y) for x, y in verts])
            if "phase" not in obj.__dict__:
                continue
            a1 = obj.phase
            a2 = a1 + 1.2
            s1, s2, c1, c2 = math.sin(a1), math.sin(a2), math.cos(a1), math.cos(a2)
            if s1 > 0 and s2 > 0:
                continue
            if s1 > 0:
                c1 = float(np.sign(c1))
            if s2 > 0:
                c2 = float(np.sign(c2))
            w, r = WHEEL_W * SIZE, WHEEL_R * SIZE
            white = ((-w, r * c1), (w, r * c1), (w, r * c2), (-w, r * c2))
            polygon(surface, WHEEL_WHITE, [(ox + a * x - b * y, oy + b * x + a * y)
                                           for x, y in white])


def _gfx_rgb(color) -> tuple[int, int, int]:
    """The RGB that ``gfxdraw`` paints for ``color`` (ints, or the floats of
    ``domain_randomize``): pygame converts each component with C truncation."""
    return tuple(int(c) for c in color[:3])


def _covers_screen(quad: np.ndarray, margin: float, width: float = _W,
                   height: float = _H) -> bool:
    """True when the convex quadrilateral ``quad`` (4, 2) contains the ``width`` x
    ``height`` screen (the window by default) expanded by ``margin`` pixels on every side,
    so that no edge of it touches the screen."""
    corners = ((-margin, -margin), (width + margin, -margin), (width + margin, height + margin),
               (-margin, height + margin))
    sign = 0.0
    for i in range(4):
        (x0, y0), (x1, y1) = quad[i], quad[(i + 1) % 4]
        for cx, cy in corners:
            cross = (x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0)
            if cross == 0 or (sign and math.copysign(1.0, cross) != sign):
                return False
            sign = math.copysign(1.0, cross)
    return True


def step_repeated(env, action, repeat: int = 1, draw_last: bool = True
                  ) -> tuple[Any, float, int, bool, bool, dict]:
    """Apply ``action`` for ``repeat`` frames of ``env`` (a FastCarRacing, possibly wrapped),
    drawing only the last frame's observation: action repeat ("frame skip") without paying
    for the frames nobody looks at.

    Each frame goes through ``env.step`` (so wrappers such as ``TimeLimit`` count every
    frame) with the stock physics and reward code; only the drawing of the first
    ``repeat - 1`` observations is skipped, so every reward and every observation returned is
    bit-identical to stock ``CarRacing-v3`` stepped with the same action ``repeat`` times.
    Stops early when the episode ends (then the observation is that of the last frame when it
    was drawn, else ``None``: nothing needs the frame after an episode's end). The wrapped
    env must not run gymnasium's passive env checker (``disable_env_checker=True``), which
    would inspect a skipped ``None`` observation on an env's very first step.

    :param draw_last: False draws no frame at all (the caller draws its own view, e.g.
        :class:`ApproxFrameRenderer`); the observation returned is then ``None``.
    :return: ``(obs, reward, frames, terminated, truncated, info)``: ``reward`` is the sum
        of the per-frame rewards (in frame order), ``frames`` how many frames ran, ``info``
        the last frame's, with ``info["frame_rewards"]`` the per-frame rewards.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    base = env.unwrapped
    rewards: list[float] = []
    obs = None
    terminated = truncated = False
    info: dict = {}
    try:
        for i in range(repeat):
            base.skip_observation = i < repeat - 1 or not draw_last
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(float(reward))
            if terminated or truncated:
                break
    finally:
        base.skip_observation = False
    info = dict(info)
    info["frame_rewards"] = rewards
    total = 0.0
    for r in rewards:
        total += r
    return obs, total, len(rewards), terminated, truncated, info
