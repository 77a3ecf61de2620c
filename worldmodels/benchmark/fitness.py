"""``benchmark.py fitness``: environment frames per second of a CMA-ES generation.

Ha & Schmidhuber (2018, arXiv:1803.10122) score each CMA-ES candidate on full CarRacing
episodes in the real environment; the original run took 64 x 16 episodes a generation for
1,800 generations. On two cores that search is starved unless a frame of the training
fitness is much cheaper than a frame of the stock environment. This benchmark measures, in
one run and on the same tracks and candidates:

* the reference: stock ``CarRacing-v3`` (gymnasium), one process, a fixed action: its
  steps/s (one step = one frame);
* one CMA-ES generation (``population x trials`` episodes, the candidates drawn around the
  shipped agent's C, so the cars really drive) on the local backend with every core, at
  settings that add one lever at a time: V's encoder in bf16 (where the CPU has native
  bf16), action repeat k (C decides every k frames; only the frames it sees are drawn), the
  approximate training renderer (V's frame drawn straight into a small surface), and early
  termination (training only: a lost car's episode ends).

A frame is one 50 Hz physics step of CarRacing, whatever k. ``ratio`` is the fitness
frames/s over the stock steps/s. Early termination does not make a frame cheaper: it makes
a generation need fewer frames (its row says how many, and the generation's wall time);
its cost in score is the A/B of the README, not this benchmark's business.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["run", "LEVERS"]

#: (label, precision, action_repeat, renderer, early_stop, early_stop_steps), one row each
LEVERS: tuple[tuple[str, str, int, str, str, int], ...] = (
    ("k=1, fp32 V, exact frames (before)", "fp32", 1, "exact", "tiles", 0),
    ("k=1, bf16 V", "bf16", 1, "exact", "tiles", 0),
    ("k=1, bf16 V, approx frames", "bf16", 1, "approx", "tiles", 0),
    ("k=1, bf16 V, approx, early stop negative 20 (the campaign's)", "bf16", 1, "approx",
     "negative", 20),
    ("k=1, bf16 V, coarse frames", "bf16", 1, "coarse", "tiles", 0),
    ("k=4, bf16 V", "bf16", 4, "exact", "tiles", 0),
    ("k=4, bf16 V, approx frames", "bf16", 4, "approx", "tiles", 0),
    ("k=4, bf16 V, approx, early stop negative 20", "bf16", 4, "approx", "negative", 20),
    ("k=4, bf16 V, coarse frames", "bf16", 4, "coarse", "tiles", 0),
    ("k=8, bf16 V, approx frames", "bf16", 8, "approx", "tiles", 0),
    ("k=8, bf16 V, coarse frames", "bf16", 8, "coarse", "tiles", 0),
)


def _stock_steps_per_s(seeds: list[int], steps: int) -> float:
    import worldmodels.envs as envs
    from worldmodels.benchmark.agent import bare_env_steps_per_s

    return bare_env_steps_per_s(seeds, steps, envs.STOCK_ENV_ID)


def run(population: int = 8, trials: int = 2, steps: int = 400, workers: int = 0,
        run_dir: str | None = None, levers: tuple = LEVERS, repeats: int = 1,
        seed: int = 2_000_000_000) -> list[dict[str, Any]]:
    """Rows ``{"setting", "frames/s", "vs stock", "frames/gen", "wall s", "mean return"}``,
    the stock reference first, the ceiling last (physics and rewards alone in one process,
    ``"ceiling": True``: what no renderer, action repeat or V can go below; see
    :func:`summary` for ``ratio``).

    :param population, trials: the generation (the paper: 64 x 16).
    :param steps: frames per episode at most (the zoom-in is the first 50).
    :param workers: processes (0: one per core).
    :param run_dir: V, M and C (default: the shipped ``pretrained/carracing``).
    :param levers: the rows (see :data:`LEVERS`).
    :param repeats: timed generations per row (best of), alternating with the stock row.
    :param seed: the tracks (training range: never an evaluation track).
    """
    from worldmodels.control.evaluation import EpisodeSpec, worker_bundle
    from worldmodels.parallel.backends import LocalBackend
    from worldmodels.pretrained import DEFAULT_RUN, resolve_run
    from worldmodels.run import load_controller, load_world_model
    from worldmodels.utils.torch import cpu_has_native_bf16

    path = resolve_run(run_dir or DEFAULT_RUN)
    controller, _ = load_controller(path)
    vae, mdnrnn, _ = load_world_model(path)
    hp = controller.hparams
    kwargs = {"hidden_layer": hp["hidden_layer"], "use_hidden_state": hp["use_hidden_state"]}
    rng = np.random.default_rng(0)
    mean = controller.get_flat().astype(np.float64)
    params = mean + 0.1 * rng.standard_normal((population, mean.size))
    tracks = [seed + j for j in range(trials)]
    specs = [EpisodeSpec(c * trials + j, c, tracks[j]) for c in range(population)
             for j in range(trials)]

    stock = []
    rows: list[dict[str, Any]] = []
    native = cpu_has_native_bf16()
    for label, precision, k, renderer, rule, limit in levers:
        bundle = worker_bundle(vae, mdnrnn, controller_kwargs=kwargs, action_repeat=k,
                             precision=precision)
        best = None
        with LocalBackend(bundle, workers=workers) as backend:
            backend.run(params[:1], specs[:1], max_steps=60)  # start the workers, load V + M
            for _ in range(repeats):
                stock.append(_stock_steps_per_s(tracks[:1], min(steps, 300)))
                t0 = time.perf_counter()
                results = backend.run(params, specs, max_steps=steps, early_stop_steps=limit,
                                      early_stop=rule, renderer=renderer)
                wall = time.perf_counter() - t0
                if best is None or wall < best[0]:
                    best = (wall, results)
            n = backend.num_workers
        wall, results = best
        frames = sum(r.steps for r in results)
        name = f"{label}{'' if native or precision != 'bf16' else ' (bf16 emulated)'}"
        rows.append({"setting": f"{name}, {population} x {trials}, {n} workers",
                     "frames/s": frames / wall, "frames/gen": frames, "wall s": wall,
                     "mean return": float(np.mean([r.episode_return for r in results]))})
    stock_sps = float(np.median(stock))
    out = [{"setting": "stock CarRacing-v3, 1 process (reference)", "frames/s": stock_sps,
            "vs stock": 1.0, "frames/gen": "", "wall s": "", "mean return": ""}]
    for r in rows:
        out.append({**r, "vs stock": r["frames/s"] / stock_sps})
    from worldmodels.benchmark.agent import bare_env_steps_per_s

    physics = bare_env_steps_per_s(tracks[:1], min(steps, 300), physics_only=True)
    out.append({"setting": "physics and rewards alone, no frame, no agent, 1 process (the "
                "ceiling of one worker at any k)", "frames/s": physics,
                "vs stock": physics / stock_sps, "frames/gen": "", "wall s": "",
                "mean return": "", "ceiling": True})
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` line: ``ratio`` (the fastest fitness row's frames/s over stock
    CarRacing-v3's steps/s, measured in the same run), ``stock_steps_per_s``, its
    ``setting``, and the rows."""
    best = max((r for r in rows[1:] if not r.get("ceiling")), key=lambda r: r["vs stock"])
    return {"ratio": best["vs stock"], "stock_steps_per_s": rows[0]["frames/s"],
            "setting": best["setting"], "rows": rows}
