"""``benchmark.py env``: stock ``CarRacing-v3`` vs ``worldmodels/FastCarRacing-v3``.

Episodes alternate stock, fast, stock, fast, ... in one process on the same track seeds
and the same action sequences (a seeded Brownian policy), so that both see the same
machine load; the step loop is timed (``reset`` is reported apart), medians over
episodes are compared, and every fast observation, reward and flag is checked equal to
the stock one.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np


def _actions(seed: int, n: int) -> np.ndarray:
    from worldmodels.data.policies import BrownianPolicy

    pol = BrownianPolicy(np.random.default_rng(seed))
    return np.stack([pol.act(None) for _ in range(n)])


def _episode(env_id: str, seed: int, actions: np.ndarray) -> tuple[float, float, list]:
    import gymnasium as gym

    env = gym.make(env_id)
    t0 = time.perf_counter()
    obs, _ = env.reset(seed=seed)
    t1 = time.perf_counter()
    trace = [obs]
    n = 0
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        trace.append((obs, r, term, trunc, info))
        n += 1
        if term or trunc:
            break
    t2 = time.perf_counter()
    env.close()
    return n / (t2 - t1), t1 - t0, trace


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


def run(episodes: int = 5, steps: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    import worldmodels.envs as envs

    stock_sps, fast_sps, stock_reset, fast_reset, ratios = [], [], [], [], []
    identical = True
    for k in range(episodes):
        acts = _actions(seed + k, steps)
        s_sps, s_reset, s_trace = _episode(envs.STOCK_ENV_ID, seed + k, acts)
        f_sps, f_reset, f_trace = _episode(envs.FAST_ENV_ID, seed + k, acts)
        identical &= len(s_trace) == len(f_trace) and all(
            _equal(a, b) for a, b in zip(s_trace, f_trace)
        )
        stock_sps.append(s_sps)
        fast_sps.append(f_sps)
        stock_reset.append(s_reset)
        fast_reset.append(f_reset)
        ratios.append(f_sps / s_sps)
    med_s, med_f = statistics.median(stock_sps), statistics.median(fast_sps)
    return [
        {"env": "CarRacing-v3 (stock)", "steps/s": med_s,
         "reset ms": 1e3 * statistics.median(stock_reset), "speed-up": 1.0, "identical": "-"},
        {"env": "worldmodels/FastCarRacing-v3", "steps/s": med_f,
         "reset ms": 1e3 * statistics.median(fast_reset),
         "speed-up": med_f / med_s, "identical": "yes" if identical else "NO"},
        {"env": "per-episode speed-up (min / median / max)",
         "steps/s": f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}",
         "reset ms": "", "speed-up": "", "identical": ""},
    ]
