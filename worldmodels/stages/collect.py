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
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
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
    THREAD_ENV_VARS,
    single_threaded_children,
    single_threaded_process,
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


def run_episode(cfg: CollectConfig, k: int, env=None) -> dict[str, Any]:
    """Collect episode ``k``: track seed ``cfg.seed + k``, policy seeded by the same.

    Returns numpy arrays ``frames`` (T, 64, 64, 3) uint8, ``actions`` (T, 3) float32,
    ``rewards``, ``terminated``, ``truncated`` (T,) and the int ``seed``. With
    ``action_repeat = k > 1`` a step is a *decision*: the frame seen, the action then held for
    k frames (only the last one drawn), and the sum of their rewards; ``max_steps`` still
    counts frames, so T = ceil(frames / k).
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


def _pin_worker(core_queue) -> None:
    """Pool initializer: pin to one core and use one BLAS/torch thread (2-core machines
    slow down with unpinned workers fighting the main process for the same cores)."""
    # Ctrl-C goes to the whole process group: only the main process handles it (and
    # stops the workers), so no worker dies mid-task leaving the pool hung.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    single_threaded_process()
    with contextlib.suppress(Exception):
        core = core_queue.get_nowait()
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {core})
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _collect_part(cfg_dict: dict[str, Any], k: int, parts: str) -> tuple[int, int]:
    cfg = CollectConfig(**cfg_dict)
    key = (cfg.env, cfg.domain_randomize)
    if _WORKER.get("key") != key:
        _WORKER["env"] = make_env(cfg)
        _WORKER["key"] = key
    ep = run_episode(cfg, k, _WORKER["env"])
    write_part(Path(parts) / f"ep-{episode_name(k)}.h5", k, ep, cfg)
    return k, len(ep["frames"])


def _run_local(cfg: CollectConfig, todo: list[int], parts: Path, workers: int,
               on_done: Callable[[int, int], None]) -> None:
    if workers <= 1:
        env = make_env(cfg)
        try:
            for k in todo:
                ep = run_episode(cfg, k, env)
                write_part(parts / f"ep-{episode_name(k)}.h5", k, ep, cfg)
                on_done(k, len(ep["frames"]))
        finally:
            env.close()
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    cores = ctx.Queue()
    for i in range(workers):
        cores.put(usable_cores()[i % len(usable_cores())])
    cfg_dict = dataclasses.asdict(cfg)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin_worker,
                               initargs=(cores,))
    pending: set = set()
    # The pool spawns its workers on the first submits: they must import NumPy with one
    # BLAS thread (see single_threaded_children); setting it in _pin_worker is too late.
    with single_threaded_children():
        _drive_pool(pool, cfg_dict, todo, parts, workers, on_done, pending)
    pool.shutdown(wait=True)


def _drive_pool(pool: ProcessPoolExecutor, cfg_dict: dict[str, Any], todo: list[int],
                parts: Path, workers: int, on_done: Callable[[int, int], None],
                pending: set) -> None:
    try:
        it = iter(todo)
        # Keep about two tasks per worker queued: enough to never idle, few enough that
        # an interruption wastes little.
        for k in it:
            pending.add(pool.submit(_collect_part, cfg_dict, k, str(parts)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                k, T = fut.result()
                on_done(k, T)
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(_collect_part, cfg_dict, nxt, str(parts)))
    except BrokenProcessPool:
        _stop_pool(pool)
        raise WorldModelsError(
            "a collection worker died or could not start (killed, out of memory, or a "
            "script without an `if __name__ == '__main__':` guard); finished episodes are "
            "kept: re-run the same command to resume"
        ) from None
    except BaseException:
        # Ctrl-C, an error in one episode, ...: the episodes in flight are dropped (their
        # part files are written atomically, so none is half there) and the workers are
        # stopped at once instead of finishing their queue.
        _stop_pool(pool)
        raise


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _run_ray(cfg: CollectConfig, todo: list[int], parts: Path, workers: int,
             on_done: Callable[[int, int], None]) -> None:
    try:
        import ray
    except ImportError:
        raise WorldModelsError(
            "--backend ray needs Ray: pip install 'worldmodels[dist]'"
        ) from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.address or None, include_dashboard=False,
                 log_to_driver=False, **({} if cfg.address else {"num_cpus": workers}))
    try:
        # one BLAS thread per task's process, as the local pool (single_threaded_children)
        one_thread = {"env_vars": {var: "1" for var in THREAD_ENV_VARS}}
        remote_episode = ray.remote(num_cpus=1, runtime_env=one_thread)(run_episode)
        cfg_ref = ray.put(cfg)
        pending: dict[Any, int] = {}
        it = iter(todo)
        limit = 2 * max(1, int(ray.available_resources().get("CPU", workers)))
        for k in it:
            pending[remote_episode.remote(cfg_ref, k)] = k
            if len(pending) >= limit:
                break
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            ep = ray.get(ready[0])
            # The driver writes: cluster nodes need not share the run directory's disk.
            write_part(parts / f"ep-{episode_name(k)}.h5", k, ep, cfg)
            on_done(k, len(ep["frames"]))
            nxt = next(it, None)
            if nxt is not None:
                pending[remote_episode.remote(cfg_ref, nxt)] = nxt
    finally:
        if started:
            ray.shutdown()


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
            runner: Callable[..., None] = _run_ray if c.backend == "ray" else _run_local
            runner(c, todo, parts, workers, on_done)
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
