"""``collect_rollouts.py``: CarRacing rollouts of the exploration policies, in parallel.

Ha & Schmidhuber (2018, arXiv:1803.10122, sec. 3.2 and the authors' ``extract.py``) train V
and M on 10,000 random-policy CarRacing episodes. Episode ``k`` is played on track
``seed + k`` by the policy seeded by the same (:mod:`worldmodels.data.policies`), so the data
do not depend on the number of workers; each finished episode is a part file of the store
(:mod:`worldmodels.data.rollouts`), merged into ``<run>/rollouts.h5`` when all exist, so a
killed collection resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.config import CollectConfig, Config
from worldmodels.data.rollouts import (
    DATASET_NAME,
    PARTS_DIR,
    _same_data,
    _valid_part,
    consolidate,
    episode_name,
    open_rollouts,
    stored_config,
    write_part,
)
from worldmodels.data.store import missing_parts
from worldmodels.errors import ConfigError, DataError, WorldModelsError
from worldmodels.utils.io import ensure_dir, exclusive_lock, remove_stale_tmp
from worldmodels.utils.parallel import (
    usable_cores,
)

__all__ = ["collect", "main", "run_episode", "make_env", "frame_grid"]


def make_env(cfg: CollectConfig):
    """The gymnasium environment a collection config asks for (with the 1000-step limit)."""
    import gymnasium as gym

    import worldmodels.envs as envs

    env_id = envs.FAST_ENV_ID if cfg.env == "fast" else envs.STOCK_ENV_ID
    # Action repeat returns None for skipped frames: gymnasium's passive checker would
    # inspect one on the env's first step.
    return gym.make(env_id, domain_randomize=cfg.domain_randomize,
                    disable_env_checker=cfg.action_repeat > 1)


class AgentPolicy:
    """A run's agent (V, M and C) driving, with C's parameters perturbed for the episode:
    ``theta + agent_noise * N(0, I)``, drawn from the episode's seed. The paper's iterative
    training (Ha & Schmidhuber 2018, sec. 5) collects new rollouts with the current C plus
    exploration noise, so that M learns the states a good driver reaches. Parameter noise
    keeps each episode's actions those of one controller (M sees what C does)."""

    def __init__(self, agent: Any, seed: int, noise: float) -> None:
        c = agent.controller
        flat = c.get_flat()
        rng = np.random.default_rng([seed, 0xA6E27])
        self.controller = agent.make_controller(
            flat + noise * rng.standard_normal(flat.shape),
            hidden_layer=c.hparams["hidden_layer"],
            use_hidden_state=c.hparams["use_hidden_state"])
        self.agent = agent
        agent.reset(1, seeds=[seed])

    def act(self, frame: np.ndarray) -> np.ndarray:
        return self.agent.act(frame[None], controllers=[self.controller])[0]


def _worker_agent(run: str) -> Any:
    """The agent of ``run``, loaded once per worker process (one torch thread)."""
    if _WORKER.get("agent_run") != run:
        import torch

        from worldmodels.run import load_agent

        torch.set_num_threads(1)
        _WORKER["agent"] = load_agent(run, device="cpu")
        _WORKER["agent_run"] = run
    return _WORKER["agent"]


def check_agent(c: CollectConfig) -> None:
    """The agent a collection config names can drive it: a run with V, M and C whose world
    model decides at the collection's action repeat."""
    if not c.agent:
        return
    if c.agent_from < 0 or not c.agent_noise >= 0:
        raise ConfigError(f"collect.agent_from and agent_noise must be >= 0, got "
                          f"{c.agent_from} and {c.agent_noise}")
    from worldmodels.run import load_agent, world_action_repeat

    if not Path(c.agent).is_dir():
        raise DataError(f"collect.agent: no run directory {c.agent} (a run with V, M and C)")
    load_agent(c.agent, device="cpu")  # a missing or broken stage fails here, in one line
    k = world_action_repeat(c.agent)
    if k != c.action_repeat:
        raise ConfigError(f"collect.agent: the world model of {c.agent} decides every {k} "
                          f"frames, the collection every {c.action_repeat}: pass "
                          f"--action-repeat {k}")


def run_episode(cfg: CollectConfig, k: int, env=None,
                on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Collect episode ``k``: track seed ``cfg.seed + k``, policy seeded by the same.

    Returns numpy arrays ``frames`` (T, 64, 64, 3) uint8, ``actions`` (T, 3) float32,
    ``rewards``, ``terminated``, ``truncated`` (T,) and the int ``seed``. With
    ``action_repeat = k > 1`` a step is a *decision*: the frame seen, the action then held for
    k frames (only the last one drawn), and the sum of their rewards; ``max_steps`` still
    counts frames, so T = ceil(frames / k). ``on_step(t)`` after every decision ``t`` (the
    worker pool's heartbeat).
    """
    from worldmodels.data.policies import make_policy
    from worldmodels.envs.car_racing import step_repeated
    from worldmodels.envs.preprocess import preprocess_frame

    own = env is None
    env = env if env is not None else make_env(cfg)
    seed = cfg.seed + k
    try:
        obs, _ = env.reset(seed=seed)
        policy = (AgentPolicy(_worker_agent(cfg.agent), seed, cfg.agent_noise)
                  if cfg.agent and k >= cfg.agent_from
                  else make_policy(cfg.policy, seed, k, cfg.brownian_dt))
        frames, actions, rewards, terms, truncs = [], [], [], [], []
        played = 0
        while played < cfg.max_steps:
            frame = preprocess_frame(obs)
            action = policy.act(frame)
            obs, reward, ran, terminated, truncated, _ = step_repeated(
                env, action, min(cfg.action_repeat, cfg.max_steps - played))
            played += ran
            truncated = truncated or played >= cfg.max_steps
            frames.append(frame)
            actions.append(action)
            rewards.append(reward)
            terms.append(terminated)
            truncs.append(truncated and not terminated)
            if on_step is not None:
                on_step(len(frames))
            if terminated or truncated:
                break
    finally:
        if own:
            env.close()
    return {
        "frames": np.stack(frames),
        "actions": np.asarray(actions, dtype=np.float32),
        "rewards": np.asarray(rewards, dtype=np.float64),  # exactly the env's rewards
        "terminated": np.asarray(terms, dtype=bool),
        "truncated": np.asarray(truncs, dtype=bool),
        "seed": seed,
    }


_WORKER: dict[str, Any] = {}


class CollectWorker:
    """What one collection worker of the stage's pool (:mod:`worldmodels.parallel`) holds:
    the collection's settings and one environment, kept across episodes. A task is an episode
    number ``k``; the result is ``(k, T)`` once its part file is written, or, for a pool whose
    workers do not share the run directory's disk (Ray), ``(k, episode)`` for the driver to
    write. A heartbeat goes out at every decision, so a slow machine is never taken as hung."""

    uses_torch = False  # torch only when an agent drives (loaded then, one thread)

    def __init__(self, bundle: bytes) -> None:
        data = json.loads(bundle)
        self.cfg = CollectConfig(**data["cfg"])
        self.parts = Path(data["parts"]) if data.get("parts") else None
        self.env = make_env(self.cfg)

    @staticmethod
    def bundle(cfg: CollectConfig, parts: Path | None) -> bytes:
        """The bytes a worker starts from; ``parts=None``: the driver writes the part files."""
        return json.dumps({"cfg": dataclasses.asdict(cfg),
                           "parts": str(parts) if parts is not None else None}).encode()

    def run(self, k: int, on_step: Callable[[int], None] | None = None) -> tuple[int, Any]:
        ep = run_episode(self.cfg, k, self.env, on_step=on_step)
        if self.parts is None:
            return k, ep
        write_part(self.parts / f"ep-{episode_name(k)}.h5", k, ep, self.cfg)
        return k, len(ep["frames"])

    def close(self) -> None:
        self.env.close()


def _run_pool(cfg: CollectConfig, todo: list[int], parts: Path, workers: int,
              on_done: Callable[[int, int], None]) -> None:
    """Every episode of ``todo`` on the stage's worker pool: this process, local processes
    or Ray actors; a worker that dies or stops stepping is replaced and its episode re-run."""
    from worldmodels.parallel import make_backend

    ray = cfg.backend == "ray"
    # Ray nodes need not share the run directory's disk: there the driver writes the parts.
    bundle = CollectWorker.bundle(cfg, None if ray else parts)

    def finished(task_id: int, result: tuple[int, Any]) -> None:
        k, ep = result
        if isinstance(ep, dict):
            write_part(parts / f"ep-{episode_name(k)}.h5", k, ep, cfg)
            ep = len(ep["frames"])
        on_done(k, ep)

    with make_backend(bundle, backend=cfg.backend, workers=workers, address=cfg.address,
                      worker=CollectWorker, name="a collection worker",
                      worker_timeout=cfg.worker_timeout) as pool:
        pool.execute(todo, finished)


def _run_lock(run_dir: Path) -> contextlib.AbstractContextManager[None]:
    return exclusive_lock(run_dir / ".collect.lock", f"another collect_rollouts.py is writing "
                          f"to {run_dir}; wait for it or use another --run")


def collect(cfg: Config, run_dir: str | os.PathLike[str], overwrite: bool = False,
            progress: bool | None = None,
            on_episode: Callable[[int, int], None] | None = None) -> Path:
    """Collect ``cfg.collect.episodes`` episodes into ``<run_dir>/rollouts.h5``.

    Resumes from finished part files; extends an existing dataset collected with the same
    settings; refuses (unless ``overwrite``) a dataset collected with other settings.
    Returns the dataset path.
    """
    c = cfg.collect
    check_agent(c)
    run_dir = ensure_dir(run_dir)
    with _run_lock(run_dir):
        return _collect_locked(c, run_dir, overwrite, progress, on_episode)


def _collect_locked(c: CollectConfig, run_dir: Path, overwrite: bool, progress: bool | None,
                    on_episode: Callable[[int, int], None] | None) -> Path:
    final = run_dir / DATASET_NAME
    parts = run_dir / PARTS_DIR
    remove_stale_tmp(run_dir)
    existing: Path | None = None
    n_old = 0
    if final.exists() and not overwrite:
        with open_rollouts(final) as f:
            stored = stored_config(f)
            n_old = int(f.attrs["num_episodes"])
        diff = _same_data(stored, dataclasses.asdict(c), n_old)
        if diff:
            raise WorldModelsError(
                f"{final} was collected with other settings ({', '.join(f'{k}={stored.get(k)!r}' for k in diff)}); "
                "pass --overwrite to replace it or use another --run"
            )
        if n_old >= c.episodes:
            return final
        existing = final
    todo = missing_parts(parts, range(n_old, c.episodes), lambda path, k: _valid_part(path, k, c),
                         overwrite)

    workers = c.workers or len(usable_cores())
    workers = max(1, min(workers, len(todo))) if todo else 1
    total = c.episodes - n_old
    from worldmodels.utils.progress import progress_bar

    bar = progress_bar(total=total, initial=total - len(todo), desc="collect", unit="ep",
                       enable=progress)
    steps = 0
    t0 = time.perf_counter()

    def on_done(k: int, T: int) -> None:
        nonlocal steps
        steps += T
        bar.update(1)
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix_str(f"{steps / dt:.0f} env-steps/s")
        if on_episode is not None:
            on_episode(k, T)

    try:
        if todo:
            _run_pool(c, todo, parts, workers, on_done)
    finally:
        bar.close()
    return consolidate(run_dir, c, c.episodes, existing)


def frame_grid(path: str | os.PathLike[str], out: str | os.PathLike[str],
               episodes: int = 8, frames_per_episode: int = 8) -> Path:
    """A PNG grid: one row per episode (the first ``episodes``), frames evenly spaced."""
    from worldmodels.utils.images import make_grid, save_png

    rows = []
    with open_rollouts(path) as f:
        n = int(f.attrs["num_episodes"])
        for k in range(min(episodes, n)):
            ds = f[f"episodes/{episode_name(k)}/frames"]
            idx = np.linspace(0, len(ds) - 1, frames_per_episode).round().astype(int)
            try:
                rows.append(ds[np.unique(idx)] if len(np.unique(idx)) == len(idx) else ds[:][idx])
            except (OSError, RuntimeError) as e:  # a chunk that does not decompress
                raise DataError(f"cannot read episodes/{episode_name(k)}/frames of {path} "
                                f"(corrupt or truncated: {e}); delete it and collect again") from None
    frames = np.concatenate(rows)
    return save_png(make_grid(frames, ncols=frames_per_episode), out, scale=2)


def main(cfg: Config, run_dir: str | os.PathLike[str], overwrite: bool = False,
         grid: bool = True, progress: bool | None = None) -> dict[str, Any]:
    """``collect_rollouts.py``: collect, save the resolved config, draw a frame grid,
    return a summary."""
    from worldmodels.config import save_stage_config

    run_dir = ensure_dir(run_dir)
    t0 = time.perf_counter()
    path = collect(cfg, run_dir, overwrite=overwrite, progress=progress)
    save_stage_config(cfg, run_dir, "collect")
    with open_rollouts(path) as f:
        lengths = f["index/length"][:]
    summary = {
        "dataset": str(path),
        "episodes": int(len(lengths)),
        "frames": int(lengths.sum()),
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if grid:
        summary["grid"] = str(frame_grid(path, run_dir / "rollouts_grid.png"))
    return summary
