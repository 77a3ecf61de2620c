"""Episodes of the *World Models* agent in the real environment, many in lockstep.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 4: C's fitness is the
mean return of full CarRacing episodes (16 per candidate while training, 100 for the reported
score). This module runs such episodes:

* :func:`run_episodes` steps up to ``batch_size`` environments in lockstep in one process:
  their observations are stacked so that V and M run batched
  (:class:`~worldmodels.control.agent.WorldModelAgent`); an environment that finishes stops
  contributing rows. Each episode's return is the one it would have alone (the agent is
  batch-invariant; ``tests/test_agent.py`` checks it bit for bit).
* :class:`WorkerState` is what one evaluation worker holds: V and M loaded once from a
  serialised bundle (:func:`worker_bundle`), and its environments, reused across tasks
  (``reset(seed)`` rebuilds the track: a reused environment gives the same episode).
* :func:`evaluate` is ``scripts/evaluate.py``: a run's controller on tracks ``S .. S+N-1``.

The environment is ``worldmodels/FastCarRacing-v3``, bit-identical to gymnasium's
``CarRacing-v3`` (observations, rewards, termination) and faster, with CarRacing-v3's
1,000-step limit: its returns *are* CarRacing-v3 returns.

**Action repeat** (``action_repeat = k``, a property of the world model: collection, M and C
all use the same k). The agent decides every k frames and its action is held for k frames;
only the frame it sees is drawn (:func:`~worldmodels.envs.car_racing.step_repeated`: rewards
and drawn frames bit-identical to stock CarRacing-v3 with repeated actions). Every count
here (``max_steps``, ``EpisodeResult.steps``, the early-termination limits) is in *frames*,
CarRacing's 50 Hz physics steps, whatever k.

**Early termination** (``early_stop_steps = N > 0``, training only), by one of two rules:
``tiles`` (an episode whose car reached no new track tile during the last N frames) or
``negative`` (N consecutive frames of negative reward after the 50-frame zoom-in, the rule of
the attention agent (Tang, Nguyen & Ha 2020) and of Risi & Stanley's GA (2019), who used
N = 20). A stopped episode is scored as if the car never reached another tile: its return so
far minus CarRacing's 0.1 per remaining frame up to ``max_steps``. That is its true return
when the car stays lost (the common case: off the track, spinning, or stopped) and does not
leave the playfield (-100). The estimate is biased low for a car that would have found the
track again, and biased high for one that would have left the playfield; a candidate that
stops moving scores what standing still really scores, so the option gives no incentive to
stop early (scoring the return so far would: a lost car would then save its remaining time
penalty, up to 100 points). The held-out score and ``evaluate.py`` never stop early.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass
from typing import Any

import numpy as np
import torch

from worldmodels.control.agent import WorldModelAgent
from worldmodels.control.controller import Controller
from worldmodels.errors import ConfigError

__all__ = [
    "TIME_PENALTY",
    "EpisodeSpec",
    "EpisodeResult",
    "EnvCache",
    "run_episodes",
    "worker_bundle",
    "WorkerState",
]

#: CarRacing's reward per frame without a new tile
TIME_PENALTY = -0.1
#: the environment episodes run in (bit-identical to gymnasium's CarRacing-v3)
ENV_NOTE = "worldmodels/FastCarRacing-v3 (bit-identical to CarRacing-v3, faster renderer)"


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to run.

    :ivar key: the caller's index of the episode (where its result goes).
    :ivar candidate: row of the parameter table whose controller drives (-1: the agent's own).
    :ivar seed: track seed (``env.reset(seed=seed)``).
    """

    key: int
    candidate: int
    seed: int


@dataclass(frozen=True)
class EpisodeResult:
    """What one episode gave.

    :ivar key: the :attr:`EpisodeSpec.key`.
    :ivar episode_return: sum of the rewards (plus the early-termination estimate, if stopped).
    :ivar steps: CarRacing frames taken (50 Hz physics steps, whatever the action repeat).
    :ivar tiles: track tiles visited.
    :ivar stopped_early: ended by early termination.
    :ivar track_tiles: tiles on the track (0: not recorded).
    :ivar lap_completed: the episode ended because the lap was complete (every tile, or the
        start line crossed with ``lap_complete_percent`` of them), not by running out of
        frames, leaving the playfield or early termination. A CarRacing-v3 return is at most
        900 without it (``1000 * tiles / N - 0.1 * 1000``), and ``1000 - 0.1 * frames`` with
        every tile.
    """

    key: int
    episode_return: float
    steps: int
    tiles: int
    stopped_early: bool
    track_tiles: int = 0
    lap_completed: bool = False


def make_env() -> Any:
    """``gymnasium.make("worldmodels/FastCarRacing-v3")``: CarRacing-v3 with its 1,000-frame
    time limit (without the passive env checker, which would inspect the ``None``
    observation of a frame skipped by action repeat)."""
    import gymnasium as gym

    import worldmodels.envs as envs

    return gym.make(envs.FAST_ENV_ID, disable_env_checker=True)


class EnvCache:
    """Environments reused across episodes (creating one costs more than a reset)."""

    def __init__(self) -> None:
        self.envs: list[Any] = []

    def take(self, n: int) -> list[Any]:
        while len(self.envs) < n:
            self.envs.append(make_env())
        return self.envs[:n]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


#: how training episodes draw what V sees (evaluation: always ``exact``)
RENDERERS = ("exact", "approx", "coarse")
#: surface scale of each approximate renderer (of the 1000 x 700 part of the window V sees)
RENDER_SCALES = {"approx": 0.384, "coarse": 0.192}
#: early-termination rules (training only; see the module docstring)
EARLY_STOP_RULES = ("tiles", "negative")
#: frames of CarRacing's zoom-in animation (1 s at 50 FPS), never counted by the
#: ``negative`` rule
ZOOM_FRAMES = 50


def run_episodes(
    agent: WorldModelAgent,
    specs: Sequence[EpisodeSpec],
    params: np.ndarray | None = None,
    *,
    controller_kwargs: dict[str, Any] | None = None,
    max_steps: int = 1000,
    early_stop_steps: int = 0,
    early_stop: str = "tiles",
    action_repeat: int = 1,
    renderer: str = "exact",
    latent_shift: Sequence[float] | None = None,
    batch_size: int = 0,
    envs: EnvCache | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[EpisodeResult]:
    """Run ``specs`` in lockstep groups of ``batch_size`` (0: all at once) in this process.

    :param agent: V + M (+ the default C for ``candidate = -1``).
    :param specs: the episodes.
    :param params: (K, N) flat controller parameters; spec ``candidate = k`` uses row k.
    :param controller_kwargs: ``hidden_layer`` / ``use_hidden_state`` of those controllers.
    :param max_steps: frames per episode at most (CarRacing-v3 also truncates at 1000).
    :param early_stop_steps: N > 0 stops an episode early by rule ``early_stop`` (see the
        module docstring); 0: off.
    :param early_stop: ``tiles`` (no new track tile for N frames) or ``negative`` (N
        consecutive frames of negative reward after the zoom).
    :param action_repeat: k: the agent decides every k frames and the action is held in
        between (only the frames it sees are drawn, :func:`~worldmodels.envs.car_racing.
        step_repeated`); 1 is the paper.
    :param renderer: ``exact`` (the CarRacing-v3 observation, preprocessed) or ``approx``
        (V's frame drawn straight into a small surface,
        :class:`~worldmodels.envs.car_racing.ApproxFrameRenderer`: ~3x cheaper, an
        approximation; training only) or ``coarse`` (the same drawn at half that scale,
        192 x 134: a coarser approximation; training only).
    :param latent_shift: with an approximate renderer, (D,) added to V's ``mu`` of its
        frames (:func:`~worldmodels.control.calibration.fit_latent_shift`: the mean
        difference to the exact frames' z); ignored with ``exact``.
    :param envs: environments to reuse (default: made and closed here).
    :param on_step: called after each lockstep decision with the number of decisions of the
        group so far (the workers' heartbeat).
    :return: one result per spec, in the order of ``specs``; ``steps`` counts frames.
    """
    if early_stop not in EARLY_STOP_RULES:
        raise ConfigError(f"early_stop must be one of {', '.join(EARLY_STOP_RULES)}, got "
                          f"{early_stop!r}")
    if action_repeat < 1:
        raise ConfigError(f"action_repeat must be >= 1, got {action_repeat}")
    if renderer not in RENDERERS:
        raise ConfigError(f"renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
    shift = None
    if latent_shift is not None and renderer in RENDER_SCALES:
        shift = torch.as_tensor(as_shift(latent_shift, agent.latent_dim), device=agent.device)
    own = envs is None
    pool = envs if envs is not None else EnvCache()
    cache: dict[int, Controller] = {}

    def controller(k: int) -> Controller:
        if k < 0:
            return agent.controller
        if params is None:
            raise ValueError(f"episode asks for candidate {k} but no parameter table was given")
        if k not in cache:
            cache[k] = agent.make_controller(params[k], **(controller_kwargs or {}))
        return cache[k]

    results: list[EpisodeResult] = []
    size = batch_size if batch_size > 0 else max(len(specs), 1)
    rule = _EarlyStop(early_stop, early_stop_steps)
    before, agent.latent_shift = agent.latent_shift, shift
    try:
        for start in range(0, len(specs), size):
            group = list(specs[start:start + size])
            results += _lockstep(agent, group, [controller(s.candidate) for s in group],
                                 pool.take(len(group)), max_steps, rule, action_repeat,
                                 renderer, on_step)
    finally:
        agent.latent_shift = before
        if own:
            pool.close()
    return results


class _EarlyStop:
    """An early-termination rule, fed frame by frame (see the module docstring).

    A frame's reward is positive exactly when the car reached a new tile in it (a tile is
    worth 1000/N > 0.1 points; every other frame costs 0.1, leaving the playfield -100), so
    both rules read the rewards alone: ``tiles`` counts frames since the last positive
    reward (from the episode's start), ``negative`` counts consecutive negative frames
    after the zoom-in."""

    def __init__(self, rule: str, limit: int) -> None:
        self.rule, self.limit = rule, limit
        self.count: list[int] = []

    def start(self, n: int) -> None:
        self.count = [0] * n

    def update(self, i: int, frame: int, reward: float) -> bool:
        """Frame ``frame`` (1-based) of episode ``i`` gave ``reward``: stop here?"""
        if self.rule == "tiles":
            self.count[i] = 0 if reward > 0 else self.count[i] + 1
        elif frame > ZOOM_FRAMES:
            self.count[i] = self.count[i] + 1 if reward < 0 else 0
        return self.limit > 0 and self.count[i] >= self.limit


def as_shift(value: Any, latent_dim: int) -> np.ndarray:
    """A stored shift (a list of floats) checked against V's latent size, as float32."""
    shift = np.asarray(value, dtype=np.float32)
    if shift.shape != (latent_dim,) or not np.isfinite(shift).all():
        raise ConfigError(f"a latent shift must be {latent_dim} finite numbers (V's z), got "
                          f"shape {shift.shape}")
    return shift


def _lockstep(agent: WorldModelAgent, specs: list[EpisodeSpec], controllers: list[Controller],
              envs: list[Any], max_steps: int, rule: _EarlyStop, action_repeat: int,
              renderer: str, on_step: Callable[[int], None] | None) -> list[EpisodeResult]:
    from worldmodels.envs.car_racing import ApproxFrameRenderer, step_repeated

    n = len(specs)
    agent.reset(n, seeds=[int(s.seed) for s in specs])  # z="sample": noise by track
    approx = ApproxFrameRenderer(RENDER_SCALES[renderer]) if renderer in RENDER_SCALES else None
    if approx is None:
        obs = [env.reset(seed=int(s.seed))[0] for env, s in zip(envs, specs)]
    else:  # V's frame drawn small; the env draws nothing, not even reset's first frame
        obs = []
        for env, s in zip(envs, specs):
            env.unwrapped.skip_observation = True
            try:
                env.reset(seed=int(s.seed))
            finally:
                env.unwrapped.skip_observation = False
            obs.append(approx.frame(env.unwrapped))
    returns = [0.0] * n
    frames = [0] * n
    rule.start(n)
    results: list[EpisodeResult | None] = [None] * n
    active = list(range(n))
    t = 0
    while active:
        actions = agent.act(np.stack([obs[i] for i in active]), rows=active,
                            controllers=[controllers[i] for i in active])
        still = []
        for j, i in enumerate(active):
            repeat = min(action_repeat, max_steps - frames[i])
            obs[i], _, ran, terminated, truncated, info = step_repeated(
                envs[i], actions[j], repeat, draw_last=approx is None)
            if approx is not None and not (terminated or truncated):
                obs[i] = approx.frame(envs[i].unwrapped)
            early = False
            for reward in info["frame_rewards"]:  # frame by frame, as without repeat
                returns[i] += reward
                frames[i] += 1
                early = rule.update(i, frames[i], reward) or early
            done = terminated or truncated or frames[i] >= max_steps
            early = early and not done
            if early:
                returns[i] += TIME_PENALTY * (max_steps - frames[i])
            if done or early:
                u = envs[i].unwrapped
                tiles, n_tiles = int(u.tile_visited_count), len(u.track)
                lap = bool(terminated and (tiles == n_tiles or u.new_lap))  # CarRacing's own test
                results[i] = EpisodeResult(specs[i].key, returns[i], frames[i], tiles, early,
                                           n_tiles, lap)
            else:
                still.append(i)
        active = still
        t += 1
        if on_step is not None:
            on_step(t)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------- workers


def worker_bundle(vae: torch.nn.Module, mdnrnn: torch.nn.Module, *,
                controller_kwargs: dict[str, Any] | None = None, device: str = "cpu",
                batch_invariant: bool = True, action_repeat: int = 1,
                precision: str = "fp32", z: str = "mu") -> bytes:
    """V and M (configs and weights) and the agent's settings, serialised once for the
    workers (``torch.save`` of plain types: a worker needs no access to the run directory,
    so Ray nodes need not share its disk).

    :param action_repeat: frames each decision is held for (the world model's k).
    :param precision: V's encoder in ``fp32``, ``bf16`` or ``auto`` (decided by each
        worker's machine), and ``z``: ``mu`` or ``sample`` (see
        :class:`~worldmodels.control.agent.WorldModelAgent`)."""
    from worldmodels.generative import VQVAE
    from worldmodels.memory.mdnrnn import mdnrnn_model_config

    bundle = {  # "model": which V and M (a VAE and its MDN-RNN, or a VQ-VAE and its CodeRNN)
        "vae": {"hparams": dict(vae.hparams), "state_dict": vae.state_dict(),
                "model": "vqvae" if isinstance(vae, VQVAE) else "vae"},
        "mdnrnn": {"hparams": dict(mdnrnn.hparams), "state_dict": mdnrnn.state_dict(),
                   "model": mdnrnn_model_config(mdnrnn)["model"]},
        "controller_kwargs": dict(controller_kwargs or {}),
        "device": str(device),
        "batch_invariant": bool(batch_invariant),
        "action_repeat": int(action_repeat),
        "precision": str(precision),
        "z": str(z),
    }
    buf = io.BytesIO()
    torch.save(bundle, buf)
    return buf.getvalue()


class WorkerState:
    """One evaluation worker: the agent built from a bundle, and its environments.

    :param bundle: bytes of :func:`worker_bundle`.
    :param device: overrides the bundle's device (e.g. a Ray node's own GPU).
    """

    def __init__(self, bundle: bytes, device: str | None = None) -> None:
        from worldmodels.generative.registry import build_model
        from worldmodels.memory.mdnrnn import build_mdnrnn
        from worldmodels.utils.torch import resolve_device

        data = torch.load(io.BytesIO(bundle), map_location="cpu", weights_only=True)
        vae = build_model({"model": data["vae"].get("model", "vae"), **data["vae"]["hparams"]})
        vae.load_state_dict(data["vae"]["state_dict"])
        mdnrnn = build_mdnrnn({"model": data["mdnrnn"].get("model", "mdnrnn"),
                               **data["mdnrnn"]["hparams"]})
        mdnrnn.load_state_dict(data["mdnrnn"]["state_dict"])
        self.controller_kwargs: dict[str, Any] = data["controller_kwargs"]
        self.action_repeat = int(data.get("action_repeat", 1))
        self.agent = WorldModelAgent(vae, mdnrnn, device=resolve_device(device or data["device"]),
                                     batch_invariant=data["batch_invariant"],
                                     precision=data.get("precision", "fp32"),
                                     z=data.get("z", "mu"))
        self.envs = EnvCache()

    def run(self, task: dict[str, Any], on_step: Callable[[int], None] | None = None
            ) -> list[tuple]:
        """Run one task: ``{"params": (k, N), "specs": [(key, candidate, seed)], "max_steps",
        "early_stop_steps", "early_stop", "renderer", "latent_shift"}`` in one lockstep group; results as plain tuples.
        ``on_step`` is called after every lockstep decision (the heartbeat)."""
        specs = [EpisodeSpec(*s) for s in task["specs"]]
        results = run_episodes(self.agent, specs, task["params"],
                               controller_kwargs=self.controller_kwargs,
                               max_steps=task["max_steps"],
                               early_stop_steps=task["early_stop_steps"],
                               early_stop=task.get("early_stop", "tiles"),
                               action_repeat=self.action_repeat,
                               renderer=task.get("renderer", "exact"),
                               latent_shift=task.get("latent_shift"), envs=self.envs,
                               on_step=on_step)
        return [astuple(r) for r in results]  # EpisodeResult(*t) rebuilds it

    def close(self) -> None:
        self.envs.close()
