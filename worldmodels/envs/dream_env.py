"""CarRacing inside M's dream as one gymnasium environment (Ha & Schmidhuber, *World Models*
(2018), arXiv:1803.10122, sec. 4): :class:`DreamEnv` wraps a batched dream
(:class:`~worldmodels.envs.dream.BatchedDream`, or the VQ-VAE world model's
:class:`~worldmodels.envs.code_dream.BatchedCodeDream`) of one episode at a time.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldmodels.envs.code_dream import BatchedCodeDream
from worldmodels.envs.dream import ACTION_DIM, ACTION_HIGH, ACTION_LOW, BatchedDream
from worldmodels.errors import ConfigError

__all__ = ["DreamEnv"]


class DreamEnv(gym.Env):
    """CarRacing inside M's dream as a :class:`gymnasium.Env` (paper, sec. 4).

    ``gymnasium.make("worldmodels.envs:worldmodels/Dream-v0", run=DIR, temperature=1.0,
    render_mode=...)`` builds one from a run's V and M (:func:`worldmodels.run.make_dream_env`;
    the ``worldmodels.envs:`` prefix makes gymnasium import the module that registers the id;
    after ``import worldmodels.envs`` the bare id works too); ``DreamEnv(dream)`` wraps a
    :class:`BatchedDream` built from modules. One episode at a time:

    * observation: ``[z_t, h_t]`` (D+H,) float32 (``observation="zh"``, the controller's
      input; ``h`` in [-1, 1]) or ``z_t`` (D,) (``observation="z"``);
    * action: CarRacing-v3's box ``[-1, 1] x [0, 1] x [0, 1]`` (steer, gas, brake);
    * reward: M's reward head; ``terminated``: M's done head (``done``); ``truncated``:
      after ``max_steps`` steps; ``info``: ``done_prob`` (M's ``P(done)``), ``step``;
    * ``reset(seed=s)`` fixes the whole episode (see :class:`BatchedDream`); ``reset()``
      draws the next episode seed from the env's ``np_random``;
    * with a :class:`BatchedCodeDream` (a VQ-VAE and its CodeRNN), ``z_t`` is the quantised
      latent ``z_q`` of the sampled code grid (C h w numbers) and ``info`` also has ``codes``;
    * ``render_mode="rgb_array"``: ``render()`` returns V's decoding of ``z_t``, (64, 64, 3)
      uint8, or (64 s, 64 s, 3) with ``render_scale=s``; ``"human"``: a pygame window
      (6x, with the step and the return).

    :param dream: the dream to step (its temperature, limit, done rule and precision); its
        V decodes the frames of ``render()``.
    :param observation: ``zh`` or ``z``.
    :param render_scale: integer upscaling of ``rgb_array`` frames.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 50}

    def __init__(self, dream: BatchedDream, render_mode: str | None = None, *,
                 observation: str = "zh", render_scale: int = 1) -> None:
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of "
                              f"{', '.join(self.metadata['render_modes'])} or None, got "
                              f"{render_mode!r}")
        if observation not in ("zh", "z"):
            raise ConfigError(f"observation must be 'zh' or 'z', got {observation!r}")
        if not isinstance(dream, BatchedDream):
            raise ConfigError(f"DreamEnv needs a BatchedDream, got {type(dream).__name__}: "
                              "build one from a run with worldmodels.run.make_dream_env(run)")
        self.dream = dream
        self.render_mode = render_mode
        self.render_scale = max(1, int(render_scale))
        self.observation_mode = observation
        D, H = self.dream.latent_dim, self.dream.hidden_dim
        low = np.full(D + H if observation == "zh" else D, -np.inf, dtype=np.float32)
        high = -low
        if observation == "zh":
            low[D:], high[D:] = -1.0, 1.0  # h = o * tanh(c)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32)
        self._window: Any = None

    @property
    def temperature(self) -> float:
        return self.dream.temperature

    def _obs(self) -> np.ndarray:
        obs = self.dream.observation[0]
        if self.observation_mode == "z":
            obs = obs[:self.dream.latent_dim]
        return obs.cpu().numpy().astype(np.float32, copy=True)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        episode_seed = seed if seed is not None else int(self.np_random.integers(0, 2**63 - 1))
        self.dream.reset(seeds=[episode_seed])
        if self.render_mode == "human":
            self.render()
        return self._obs(), {"seed": int(episode_seed)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.dream.seeds:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float32).reshape(1, ACTION_DIM)
        _, reward, _ = self.dream.step(a)
        if self.render_mode == "human":
            self.render()
        info = {"done_prob": float(self.dream.done_prob[0]), "step": self.dream.t}
        if isinstance(self.dream, BatchedCodeDream):
            info["codes"] = self.dream.codes[0].cpu().numpy().copy()
        return (self._obs(), float(reward[0]), bool(self.dream.terminated[0]),
                bool(self.dream.truncated[0]), info)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("DreamEnv.render() without a render_mode: pass "
                            "render_mode='rgb_array' or 'human'")
            return None
        frame = self.dream.decode()[0]  # (64, 64, 3)
        if self.render_mode == "rgb_array":
            s = self.render_scale
            return frame if s == 1 else frame.repeat(s, axis=0).repeat(s, axis=1)
        from worldmodels.utils.video import LiveWindow, annotate, upscale

        image = annotate(upscale(frame, 6), [f"dream  tau {self.temperature:g}",
                                             f"step {self.dream.t}",
                                             f"return {float(self.dream.returns[0]):.1f}"])
        if self._window is None:
            self._window = LiveWindow("World Models: dream", image.shape[1], image.shape[0],
                                      fps=self.metadata["render_fps"])
        self._window.show(image)
        return None

    def close(self) -> None:
        if self._window is not None:
            self._window.close()
            self._window = None
