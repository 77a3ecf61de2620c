"""``benchmark.py agent``: the cost of the agent in the loop, and of one CMA-ES generation.

Ha & Schmidhuber (2018, arXiv:1803.10122) evaluate 64 candidates x 16 episodes per generation
in the real environment, so a generation is ~10^6 environment steps with V, M and C in the
loop. Measured side by side in one run, on the same tracks:

* the bare ``worldmodels/FastCarRacing-v3`` (a fixed action, no networks);
* the agent in the loop, one episode at a time (V, M, C on batches of one);
* the agent in the loop, ``B`` episodes in lockstep in one process (V and M batched);
  these rows run in one worker process, as in training (one torch and BLAS thread);
* one generation of ``population x trials`` episodes on the local backend with ``workers``
  processes (after a warm-up generation that starts the workers and loads V and M).

V and M are the run's (``--run``) or, by default, random networks of the paper's sizes
(z 32, h 256): the speed does not depend on the weights.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["run"]


def bare_env_steps_per_s(seeds: list[int], steps: int, env_id: str | None = None,
                         physics_only: bool = False) -> float:
    """Steps/s of an environment alone, a fixed half-gas action, one process: the fast
    training environment, or ``env_id`` (e.g. stock ``CarRacing-v3``); ``physics_only``:
    the fast environment drawing no frame at all (physics and rewards alone)."""
    import gymnasium as gym

    from worldmodels.control.evaluation import make_env

    env = make_env() if env_id is None else gym.make(env_id)
    total, seconds = 0, 0.0
    action = np.array([0.0, 0.5, 0.0], dtype=np.float32)
    for seed in seeds:
        env.unwrapped.skip_observation = physics_only  # reset's first frame too
        env.reset(seed=seed)
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(action)
            total += 1
            if terminated or truncated:
                break
        seconds += time.perf_counter() - t0
    env.close()
    return total / seconds


def run(population: int = 8, trials: int = 2, steps: int = 200, workers: int = 0,
        lockstep: tuple[int, ...] = (8, 32), run_dir: str | None = None,
        device: str = "cpu") -> list[dict[str, Any]]:
    """Rows ``{"setting", "episodes", "env-steps/s", "vs bare env", "wall s"}``.

    :param population: candidates of the timed generation.
    :param trials: episodes per candidate.
    :param steps: steps per episode (CarRacing's full episode is 1000).
    :param workers: processes of the generation (0: one per core).
    :param lockstep: batch sizes of the lockstep rows (one worker process).
    :param run_dir: a run with trained V and M (default: random ones).
    """
    from worldmodels.control.evaluation import EpisodeSpec, worker_bundle
    from worldmodels.parallel.backends import LocalBackend
    from worldmodels.run import load_world_model, save_random_world_model

    with tempfile.TemporaryDirectory() as tmp:
        run_path = Path(run_dir) if run_dir else save_random_world_model(Path(tmp), seed=0)
        vae, mdnrnn, _ = load_world_model(run_path, device=device)
    bundle = worker_bundle(vae, mdnrnn, device=device)
    num_params = 3 * (vae.latent_dim + mdnrnn.hidden_dim + 1)
    widest = max(lockstep + (4,))
    params = np.random.default_rng(0).normal(0.0, 0.1, (widest, num_params))
    seeds = list(range(1000, 1000 + widest))
    bare = bare_env_steps_per_s(seeds[:4], steps)
    rows: list[dict[str, Any]] = [{"setting": "bare FastCarRacing-v3 (1 process)", "episodes": 4,
                                   "env-steps/s": bare, "vs bare env": 1.0, "wall s": ""}]
    # The agent rows run in one worker process, as in training (one BLAS and torch thread).
    with LocalBackend(bundle, workers=1) as one:
        one.run(params, [EpisodeSpec(0, 0, seeds[0])], max_steps=5)  # start it, load V + M
        for b in (1, *lockstep):
            specs = [EpisodeSpec(k, k, seeds[k]) for k in range(b if b > 1 else 4)]
            one.envs_per_worker = b
            t0 = time.perf_counter()
            results = one.run(params, specs, max_steps=steps)
            wall = time.perf_counter() - t0
            sps = sum(r.steps for r in results) / wall
            name = ("agent in the loop, 1 episode at a time" if b == 1
                    else f"agent in the loop, {b} in lockstep (1 process)")
            rows.append({"setting": name, "episodes": len(specs), "env-steps/s": sps,
                         "vs bare env": sps / bare, "wall s": wall})

    generation = np.random.default_rng(1).normal(0.0, 0.1, (population, num_params))
    specs = [EpisodeSpec(c * trials + j, c, 2000 + j) for c in range(population)
             for j in range(trials)]
    with LocalBackend(bundle, workers=workers) as backend:
        backend.run(generation, specs, max_steps=steps)  # warm-up: start workers, load V+M
        t0 = time.perf_counter()
        results = backend.run(generation, specs, max_steps=steps)
        wall = time.perf_counter() - t0
        n = backend.num_workers
    sps = sum(r.steps for r in results) / wall
    rows.append({"setting": f"one generation {population} x {trials}, {n} worker(s)",
                 "episodes": len(specs), "env-steps/s": sps, "vs bare env": sps / bare,
                 "wall s": wall})
    return rows
