"""CarRacing's track generation, remembered per random state: a reused track costs its Box2D
bodies only.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), score every CMA-ES candidate on the
same T tracks of a generation (the population's episodes share their track seeds), so one
worker resets onto the same track many times. ``CarRacing._create_track`` spends ~20 ms of
Python trigonometry on each reset before it creates the road's ~300 Box2D tiles; this module
computes it once per starting random state and replays it afterwards.

What ``_create_track`` does, and the replay with it: it draws the checkpoints from
``env.np_random`` (its state afterwards is part of the result), sets ``start_alpha``, and on
success creates one static sensor body per tile, in order, from ``env.fd_tile`` with the
tile's vertices, giving each ``userData``, ``color = road_color + c``, ``road_visited``,
``road_friction`` and ``idx``, and appends the tiles' and kerbs' polygons to ``road_poly``, the
tiles' colour arrays shared (a touched tile's colour changes in place); a failed attempt
creates nothing. The replay performs those same Box2D calls with the same arguments in the
same order and restores the random state, so the world, the environment and every later
frame are those of the stock generation (``tests/test_envs.py``). The key is the random
state on entry and the road colour; a verbose environment (which prints its generation)
always generates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["create_track", "clear"]

_MAX_ENTRIES = 64  # tracks per process (a generation uses T = 8 to 16)
_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()


def clear() -> None:
    """Forget every remembered track."""
    _CACHE.clear()


def _key(env: Any) -> tuple:
    state = env.np_random.bit_generator.state
    return (repr(state), tuple(float(c) for c in env.road_color), env.lap_complete_percent)


def create_track(env: Any, generate: Any) -> bool:
    """``env._create_track()`` (``generate`` is the stock method bound to ``env``), replayed
    when ``env`` starts from a random state it has generated from before."""
    if env.verbose:
        return generate()
    key = _key(env)
    entry = _CACHE.get(key)
    if entry is None:
        start = len(env.road_poly)
        success = generate()
        entry = {"success": success, "start_alpha": env.start_alpha,
                 "rng": env.np_random.bit_generator.state}
        if success:
            entry["track"] = list(env.track)
            tile_of = {id(body.color): j for j, body in enumerate(env.road)}
            polys = env.road_poly[start:]
            # a tile's polygon is the vertex list its body was made from (Python floats:
            # Box2D's own copy is rounded to float32, and reordered into its convex hull)
            vertices = {tile_of[id(c)]: list(p) for p, c in polys if id(c) in tile_of}
            entry["tiles"] = [(vertices[j], body.idx) for j, body in enumerate(env.road)]
            # each polygon: its vertices and either the tile whose colour array it shares
            # or its own (kerb) colour
            entry["polys"] = [(list(p), tile_of.get(id(c)), c if id(c) not in tile_of else None)
                              for p, c in polys]
        _CACHE[key] = entry
        while len(_CACHE) > _MAX_ENTRIES:
            _CACHE.popitem(last=False)
        return success
    _CACHE.move_to_end(key)
    env.start_alpha = entry["start_alpha"]
    env.road = []
    env.np_random.bit_generator.state = entry["rng"]
    if not entry["success"]:
        return False
    fd_tile = env.fd_tile
    world = env.world
    road_color = env.road_color
    for vertices, idx in entry["tiles"]:
        fd_tile.shape.vertices = vertices
        t = world.CreateStaticBody(fixtures=fd_tile)
        t.userData = t
        c = 0.01 * (idx % 3) * 255
        t.color = road_color + c
        t.road_visited = False
        t.road_friction = 1.0
        t.idx = idx
        t.fixtures[0].sensor = True
        env.road.append(t)
    for vertices, tile, color in entry["polys"]:
        env.road_poly.append((list(vertices), env.road[tile].color if tile is not None else color))
    env.track = list(entry["track"])
    return True
