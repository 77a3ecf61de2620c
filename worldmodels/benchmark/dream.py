"""``benchmark.py dream``: env-steps/s of the batched dream against the real environment.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 4: once M has learned the
environment, C can be trained inside M's "dream", where a step is two matrix products instead
of Box2D physics and rendering. Measured side by side in one process, at the paper's sizes
(z 32, LSTM 256, 5 Gaussians; random weights, the cost does not depend on them):

* ``real``: one gymnasium ``CarRacing-v3`` environment stepped with random actions (the
  simulator alone), and the same for ``worldmodels/FastCarRacing-v3`` (bit-identical to it,
  ~3x faster);
* ``real + agent``: the same driven by the World Models agent (V encodes the frame, C acts,
  M reads ``(z, a)``), 8 episodes in lockstep as one evaluation worker runs them: what a
  CMA-ES fitness costs per env-step and core in the real environment;
* ``dream``: :class:`~worldmodels.envs.dream.BatchedDream` stepping ``batch_size`` episodes at
  once (a CMA-ES generation is 64 candidates x 16 trials = 1024), fp32 and bf16 matrix products;
* ``dream + C``: :func:`~worldmodels.envs.dream.dream_rollout_returns` for a population of
  ``batch_size / 16`` candidates x 16 trials, the controllers included.

An env-step is one step of one episode. The dream's done head is biased off so that every
episode runs the whole timed window (on a trained M, finished rows are still computed in
lockstep, so the rate is the same). Warm-up steps are excluded; CUDA is synchronised before
the clock is read. ``x CarRacing-v3``, ``x fast`` and ``x agent`` are a row's rate over the
three real rows' (the dream runs on all the threads torch was given, each real row in one
process on one core).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch

from worldmodels.utils.torch import resolve_device

WARMUP_STEPS = 3
LATENT_DIM, HIDDEN_DIM, NUM_GAUSSIANS = 32, 256, 5  # the paper's M
TRIALS = 16  # the paper's episodes per CMA-ES candidate
AGENT_ENVS = 8  # episodes in lockstep for the real + agent row


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu, {n} thread{'s' if n > 1 else ''}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _real_steps_per_s(steps: int, seed: int, env_id: str) -> float:
    """One real environment alone: random actions, reset excluded."""
    import gymnasium as gym

    import worldmodels.envs  # noqa: F401  (registers worldmodels/FastCarRacing-v3)

    rng = np.random.default_rng(seed)
    env = gym.make(env_id)
    env.reset(seed=seed)
    n, t0 = 0, time.perf_counter()
    for _ in range(steps):
        a = rng.uniform([-1, 0, 0], [1, 1, 0.2]).astype(np.float32)
        _, _, term, trunc, _ = env.step(a)
        n += 1
        if term or trunc:
            env.reset(seed=seed + n)
    seconds = time.perf_counter() - t0
    env.close()
    return n / seconds


def _agent_steps_per_s(steps: int, seed: int, envs: int = AGENT_ENVS) -> float:
    """FastCarRacing-v3 driven by V + M + C (random weights, paper sizes) on the CPU, ``envs``
    episodes in lockstep as one evaluation worker runs them
    (:func:`~worldmodels.control.evaluation.run_episodes`); resets excluded."""
    from worldmodels.control.agent import WorldModelAgent
    from worldmodels.control.evaluation import EpisodeSpec, run_episodes
    from worldmodels.run import load_world_model, save_random_world_model

    with tempfile.TemporaryDirectory() as tmp:
        run = save_random_world_model(tmp, latent_dim=LATENT_DIM, hidden_dim=HIDDEN_DIM, seed=seed)
        vae, mdnrnn, _ = load_world_model(run, "vae", "cpu")
    agent = WorldModelAgent(vae, mdnrnn)
    clock: list[float] = []
    length = max(2, steps // envs + 1)
    run_episodes(agent, [EpisodeSpec(k, -1, seed + k) for k in range(envs)], max_steps=length,
                 on_step=lambda t: clock.append(time.perf_counter()))
    return envs * (len(clock) - 1) / (clock[-1] - clock[0])


def _random_m(seed: int) -> Any:
    from worldmodels.memory.mdnrnn import MDNRNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = MDNRNN(LATENT_DIM, 3, HIDDEN_DIM, NUM_GAUSSIANS)
    with torch.no_grad():
        m.done_head.bias.fill_(-30.0)  # no episode ends inside the timed window
    return m


def _dream_steps_per_s(m: Any, batch_size: int, steps: int, device: torch.device,
                       precision: str, seed: int) -> float:
    from worldmodels.envs.dream import BatchedDream

    starts = np.random.default_rng(seed).normal(size=(16, LATENT_DIM)).astype(np.float32)
    dream = BatchedDream(m, starts, np.full_like(starts, -2.0),
                                     batch_size=batch_size, device=device, precision=precision,
                                     max_steps=steps + WARMUP_STEPS + 1)
    dream.reset(seed=seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    actions = torch.rand(batch_size, 3, generator=g).to(device)
    for _ in range(WARMUP_STEPS):
        dream.step(actions)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        dream.step(actions)
    _sync(device)
    return batch_size * steps / (time.perf_counter() - t0)


def _population_steps_per_s(m: Any, batch_size: int, steps: int, device: torch.device,
                            precision: str, seed: int) -> tuple[float, int]:
    from worldmodels.control.controller import Controller
    from worldmodels.control.dream_fitness import dream_rollout_returns
    from worldmodels.envs.dream import BatchedDream

    P = max(1, batch_size // TRIALS)
    n = Controller(LATENT_DIM, HIDDEN_DIM).num_parameters
    params = np.random.default_rng(seed).normal(0.0, 0.1, (P, n))
    starts = np.random.default_rng(seed).normal(size=(16, LATENT_DIM)).astype(np.float32)
    dream = BatchedDream(m, starts, np.full_like(starts, -2.0), device=device,
                                     precision=precision)
    dream_rollout_returns(params, TRIALS, seed, WARMUP_STEPS, dream=dream)
    _sync(device)
    t0 = time.perf_counter()
    dream_rollout_returns(params, TRIALS, seed, steps, dream=dream)
    _sync(device)
    return P * TRIALS * steps / (time.perf_counter() - t0), P


def run(batch_size: int = 1024, steps: int = 50, device: str = "auto", real_steps: int = 300,
        agent: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Dream env-steps/s (batched) next to the real environment's.

    :param batch_size: dream episodes stepped at once (1024 = 64 candidates x 16 trials).
    :param steps: timed dream steps (after the warm-up).
    :param device: where the dream runs: ``auto``, ``cpu``, ``cuda``.
    :param real_steps: timed steps of the real environment.
    :param agent: also time the real environment with V + M + C in the loop.
    :return: rows ``{"what", "device", "batch", "env-steps/s", "x CarRacing-v3", "x fast"}``
        (and ``"x agent"`` when ``agent``).
    """
    import worldmodels.envs as envs

    if min(batch_size, steps, real_steps) < 1:
        raise ValueError("batch_size, steps and real_steps must be >= 1")
    dev = resolve_device(device)
    stock = _real_steps_per_s(real_steps, seed, envs.STOCK_ENV_ID)
    fast = _real_steps_per_s(real_steps, seed, envs.FAST_ENV_ID)
    real_agent = _agent_steps_per_s(real_steps, seed) if agent else None

    def row(what: str, where: str, batch: int | str, rate: float) -> dict[str, Any]:
        r = {"what": what, "device": where, "batch": batch, "env-steps/s": rate,
             "x CarRacing-v3": rate / stock, "x fast": rate / fast}
        if real_agent is not None:
            r["x agent"] = rate / real_agent
        return r

    rows = [row("real: CarRacing-v3", "cpu, 1 process", 1, stock),
            row("real: FastCarRacing-v3", "cpu, 1 process", 1, fast)]
    if real_agent is not None:
        rows.append(row("real + agent (V, M, C) on FastCarRacing", "cpu, 1 process",
                        AGENT_ENVS, real_agent))
    m = _random_m(seed)
    precisions = ("bf16", "fp32") if dev.type == "cuda" else ("fp32", "bf16")
    with torch.no_grad():
        for precision in precisions:
            rate = _dream_steps_per_s(m, batch_size, steps, dev, precision, seed)
            rows.append(row(f"dream ({precision} products)", _device_name(dev), batch_size,
                            rate))
        for precision in precisions:
            rate, P = _population_steps_per_s(m, batch_size, steps, dev, precision, seed)
            rows.append(row(f"dream + C: dream_rollout_returns ({precision})",
                            _device_name(dev), f"{P} x {TRIALS}", rate))
    return rows
