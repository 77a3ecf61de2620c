"""``evaluate.py``: a run's controller scored on N real CarRacing-v3 tracks.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 3.4: the agent's score is
the mean (± std) of its returns over 100 random tracks, full episodes without early
termination. The episodes run in :mod:`worldmodels.control.evaluation`'s lockstep loop on
the workers of :mod:`worldmodels.parallel`, with the agent exactly as it was trained (V's
precision, z, the world model's action repeat).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.control.evaluation import ENV_NOTE, EpisodeSpec, worker_bundle
from worldmodels.errors import ConfigError, WorldModelsError
from worldmodels.parallel import make_backend
from worldmodels.run import load_controller, load_world_model, world_action_repeat

__all__ = ["evaluate"]


def evaluate(
    run_dir: str | Path,
    episodes: int = 100,
    seed: int = 0,
    *,
    workers: int = 0,
    backend: str = "local",
    address: str = "",
    device: str = "cpu",
    max_steps: int = 1000,
    envs_per_worker: int = 0,
    worker_timeout: float = 600.0,
    checkpoint: str = "best",
    progress: bool | None = None,
) -> dict[str, Any]:
    """Score a run's controller on tracks ``seed .. seed + episodes - 1`` (the paper's
    protocol: 100 tracks, mean ± std of the full-episode returns), without early termination.

    :param run_dir: holds V, M and ``controller/best.pt`` (else ``last.pt``).
    :param checkpoint: ``best`` (the held-out best, else the last) or ``last``.
    :param max_steps: 1000 is CarRacing-v3's episode; fewer gives returns that are not
        CarRacing-v3 scores.
    :return: ``mean``, ``std`` (population std of the returns), ``min``, ``max``,
        ``returns`` (in seed order), ``seeds``, ``steps``, ``env_steps_per_s``, ``seconds``,
        ``checkpoint``, ``generation``, ``env``; and where the points went, per episode in
        seed order: ``frames``, ``tiles`` (visited), ``track_tiles`` and ``laps`` (the lap
        completed: a return above 900 needs it), with ``laps_completed`` their count.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    if not 1 <= max_steps <= 1000:
        raise ConfigError(f"--max-steps must be in 1..1000, got {max_steps}")
    controller, ckpt = load_controller(run_dir, "cpu", checkpoint)
    vae_model = (ckpt.get("extra") or {}).get("vae_model", "auto")
    vae, mdnrnn, _ = load_world_model(run_dir, vae_model, "cpu")
    hp = controller.hparams
    if hp["latent_dim"] != vae.latent_dim or (hp["use_hidden_state"]
                                              and hp["hidden_dim"] != mdnrnn.hidden_dim):
        raise WorldModelsError(f"the controller in {run_dir} was trained for another V or M "
                               f"(z {hp['latent_dim']}, h {hp['hidden_dim']})")
    kwargs = {"hidden_layer": hp["hidden_layer"], "use_hidden_state": hp["use_hidden_state"]}
    # The agent as it was trained: V's precision, z = mu | sample, the world model's k.
    settings = (ckpt.get("extra") or {}).get("agent") or {}
    bundle = worker_bundle(vae, mdnrnn, controller_kwargs=kwargs, device=device,
                         action_repeat=world_action_repeat(run_dir),
                         precision=settings.get("precision", "fp32"),
                         z=settings.get("z", "mu"))
    params = controller.get_flat()[None]
    seeds = [seed + k for k in range(episodes)]
    specs = [EpisodeSpec(k, 0, s) for k, s in enumerate(seeds)]
    t0 = time.perf_counter()
    runner = make_backend(bundle, backend=backend, workers=workers,
                          envs_per_worker=envs_per_worker, address=address,
                          worker_timeout=worker_timeout)
    try:
        results = runner.run(params, specs, max_steps=max_steps, early_stop_steps=0,
                             progress=progress, desc="evaluate")
    finally:
        runner.close()
    seconds = time.perf_counter() - t0
    returns = np.array([r.episode_return for r in results], dtype=np.float64)
    steps = int(sum(r.steps for r in results))
    return {
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "min": float(returns.min()),
        "max": float(returns.max()),
        "returns": [float(r) for r in returns],
        "seeds": seeds,
        "episodes": episodes,
        "steps": steps,
        "env_steps_per_s": steps / max(seconds, 1e-9),
        "seconds": seconds,
        "max_steps": max_steps,
        "checkpoint": ckpt["path"],
        "generation": int(ckpt["step"]),
        "env": ENV_NOTE,
        "workers": runner.num_workers,
        "frames": [int(r.steps) for r in results],
        "tiles": [int(r.tiles) for r in results],
        "track_tiles": [int(r.track_tiles) for r in results],
        "laps": [bool(r.lap_completed) for r in results],
        "laps_completed": int(sum(r.lap_completed for r in results)),
    }


def lap_summary(r: dict[str, Any]) -> str:
    """One line on where an :func:`evaluate` result's points went: how many laps were
    completed and in how many frames, and how far the others got. A CarRacing-v3 return is
    ``1000 * visited / N - 0.1 * frames``, so an episode that runs out of its 1000 frames
    scores at most 900, and one that completes the lap ``1000 - 0.1 * frames``."""
    laps = np.array(r["laps"], dtype=bool)
    frames = np.array(r["frames"], dtype=np.float64)
    frac = np.array(r["tiles"], dtype=np.float64) / np.maximum(r["track_tiles"], 1)
    ret = np.array(r["returns"], dtype=np.float64)
    n = len(laps)
    parts = [f"laps completed {laps.sum()}/{n}"]
    if laps.any():
        parts[0] += (f" (mean {frames[laps].mean():.0f} frames, return "
                     f"{ret[laps].mean():.1f})")
    if (~laps).any():
        parts.append(f"the other {(~laps).sum()}: median {100 * np.median(frac[~laps]):.1f}% "
                     f"of the track's tiles in a median {np.median(frames[~laps]):.0f} frames, "
                     f"return {ret[~laps].mean():.1f}")
    return "; ".join(parts)
