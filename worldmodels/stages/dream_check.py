"""``dream_vs_real.py``: how faithful M's dream is, for one controller: the episode lengths and
returns it imagines beside those of the real environment.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 4: a controller trained in
the dream transfers only as far as the dream is faithful, and an M that never learnt when an
episode ends (or what leaving the track costs) lets the car drive off the road for 1000 steps
unpunished. The same C (the run's ``controller/best.pt``) drives ``N`` dream episodes at
temperature ``tau`` (M's reward and done heads decide) and ``N`` real CarRacing-v3 episodes;
lengths are counted in frames (a dream step is ``k`` frames at action repeat ``k``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.control.dream_fitness import dream_rollout_returns
from worldmodels.control.evaluation import EpisodeSpec, worker_bundle
from worldmodels.errors import ConfigError
from worldmodels.parallel import make_backend
from worldmodels.run import load_controller, load_dream, world_action_repeat
from worldmodels.seeds import training_track

__all__ = ["dream_vs_real", "format_table"]


def _stats(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [10, 50, 90])
    return {"mean": float(values.mean()), "std": float(values.std()), "p10": float(q[0]),
            "median": float(q[1]), "p90": float(q[2])}


def dream_vs_real(run_dir: str | Path, episodes: int = 32, seed: int | None = None,
                  temperature: float | None = None, workers: int = 0,
                  checkpoint: str = "best", max_steps: int = 1000) -> dict[str, Any]:
    """``N`` dream and ``N`` real episodes of the run's C.

    :param seed: the real tracks ``seed .. seed + N - 1`` and the dream episodes' seed
        (default: training tracks, never evaluation ones).
    :param temperature: the dream's ``tau`` (None: the one M's training recorded, else 1).
    :return: ``{"dream": {...}, "real": {...}, "action_repeat", "temperature"}``, each side
        with ``length`` and ``return`` statistics (mean, std, p10, median, p90), ``ended``
        (fraction of episodes that ended before ``max_steps`` frames) and the raw lists.
    :param max_steps: frames per episode at most (1000: CarRacing-v3's episode).
    """
    if episodes < 1 or not 1 <= max_steps <= 1000:
        raise ConfigError(f"episodes must be >= 1 and max_steps in 1..1000, got {episodes} "
                          f"and {max_steps}")
    seed = training_track(0x5EED) if seed is None else int(seed)
    controller, ckpt = load_controller(run_dir, "cpu", checkpoint)
    extra = ckpt.get("extra") or {}
    k = world_action_repeat(run_dir)
    hp = controller.hparams
    kwargs = {"hidden_layer": hp["hidden_layer"], "use_hidden_state": hp["use_hidden_state"]}
    params = controller.get_flat()[None]

    max_decisions = -(-max_steps // k)
    dream = load_dream(run_dir, episodes, temperature, "cpu", max_steps=max_decisions,
                       vae_model=extra.get("vae_model", "auto"))
    dream_returns = dream_rollout_returns(params, episodes, seed, max_decisions, dream=dream,
                                          controller_kwargs=kwargs)[0]
    dream_frames = np.minimum(dream.lengths.cpu().numpy().astype(np.int64) * k, max_steps)

    settings = extra.get("agent") or {}
    bundle = worker_bundle(dream.vae, dream.mdnrnn, controller_kwargs=kwargs, action_repeat=k,
                           precision=settings.get("precision", "fp32"),
                           z=settings.get("z", "mu"))
    specs = [EpisodeSpec(j, 0, seed + j) for j in range(episodes)]
    runner = make_backend(bundle, workers=workers)
    try:
        results = runner.run(params, specs, max_steps=max_steps, early_stop_steps=0,
                             desc="real episodes")
    finally:
        runner.close()
    real_returns = np.array([r.episode_return for r in results], dtype=np.float64)
    real_frames = np.array([r.steps for r in results], dtype=np.int64)

    def side(returns: np.ndarray, frames: np.ndarray) -> dict[str, Any]:
        return {"return": _stats(returns), "length": _stats(frames.astype(np.float64)),
                "ended": float((frames < max_steps).mean()), "returns": returns.tolist(),
                "lengths": frames.tolist()}

    return {"dream": side(np.asarray(dream_returns, dtype=np.float64), dream_frames),
            "real": side(real_returns, real_frames), "action_repeat": k,
            "temperature": dream.temperature, "episodes": episodes, "seed": seed,
            "checkpoint": ckpt["path"], "max_steps": max_steps}


def format_table(r: dict[str, Any]) -> str:
    """The result as a markdown table (one row per side)."""
    rows = ["| episodes of the same C | return mean ± std | return p10 / median / p90 | "
            "length (frames) mean | p10 / median / p90 | ended early |",
            "|---|---|---|---|---|---|"]
    for name, label in (("dream", f"dream (tau {r['temperature']:g})"), ("real", "real env")):
        s = r[name]
        ret, ln = s["return"], s["length"]
        rows.append(f"| {label} | {ret['mean']:.1f} ± {ret['std']:.1f} | {ret['p10']:.1f} / "
                    f"{ret['median']:.1f} / {ret['p90']:.1f} | {ln['mean']:.0f} | "
                    f"{ln['p10']:.0f} / {ln['median']:.0f} / {ln['p90']:.0f} | "
                    f"{100 * s['ended']:.0f}% |")
    return "\n".join(rows)
