"""Exploration policies that generate the random rollouts V and M are trained on.

Ha & Schmidhuber (2018, arXiv:1803.10122, sec. 3.2; authors' ``extract.py``) collect
10,000 CarRacing rollouts with a *random-weights controller*: the full agent with
untrained parameters drawn per episode (``stdev = U(0, 0.01)``), so the car mostly drives
straight at a constant throttle. ctallec/world-models uses a *Brownian* policy instead,
whose actions drift persistently (a_{t+1} = clip(a_t + sqrt(dt) * eps), eps ~ N(0, I)),
which explores turns and braking far more. Both are here, plus their per-episode mix and
i.i.d. uniform actions.

Every policy is a pure function of its numpy ``Generator``: the same seed gives the same
actions on any machine, in any worker.
"""

from __future__ import annotations

import math

import numpy as np

from worldmodels.envs.preprocess import FRAME_SIZE

LOW = np.array([-1.0, 0.0, 0.0])
HIGH = np.array([1.0, 1.0, 1.0])


def controller_action(raw: np.ndarray) -> np.ndarray:
    """The original's action mapping (authors' ``get_action``) from an unbounded 3-vector:
    t = tanh(raw); steer = t_0, gas = (t_1 + 1) / 2, brake = clip(t_2, 0, 1). The numpy twin
    of :func:`worldmodels.control.map_action` (collection workers do without torch)."""
    t = np.tanh(raw)
    return np.array([t[0], (t[1] + 1.0) / 2.0, min(max(t[2], 0.0), 1.0)], dtype=np.float32)


class Policy:
    """``act(frame64) -> action (3,) float32``; one instance per episode."""

    def act(self, frame: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class BrownianPolicy(Policy):
    """a_0 ~ U(low, high); a_{t+1} = clip(a_t + sqrt(dt) * N(0, I), low, high)."""

    def __init__(self, rng: np.random.Generator, dt: float = 1 / 50):
        self.rng = rng
        self.scale = math.sqrt(dt)
        self.action = rng.uniform(LOW, HIGH)

    def act(self, frame: np.ndarray) -> np.ndarray:
        out = self.action.astype(np.float32)
        self.action = np.clip(self.action + self.scale * self.rng.standard_normal(3), LOW, HIGH)
        return out


class UniformPolicy(Policy):
    """i.i.d. uniform actions in the action box."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def act(self, frame: np.ndarray) -> np.ndarray:
        return self.rng.uniform(LOW, HIGH).astype(np.float32)


class RandomWeightsPolicy(Policy):
    """A random linear controller on random features of the frame, as the original.

    Without a trained V, an untrained encoder is stood in for by a fixed random projection
    ``z = tanh(P (x / 255 - 1/2))`` (x the flattened 64x64x3 frame, P ~ N(0, 1/d)); the
    controller is ``a = map(W z + b)`` with W, b ~ N(0, stdev^2), stdev ~ U(0, stdev_max),
    mapped to the action box by :func:`controller_action`.
    """

    def __init__(self, rng: np.random.Generator, latent_dim: int = 32, stdev_max: float = 0.01):
        d = FRAME_SIZE * FRAME_SIZE * 3
        self.proj = (rng.standard_normal((latent_dim, d)) / math.sqrt(d)).astype(np.float32)
        stdev = rng.uniform(0.0, stdev_max)
        self.weight = rng.standard_normal((3, latent_dim)) * stdev
        self.bias = rng.standard_normal(3) * stdev

    def act(self, frame: np.ndarray) -> np.ndarray:
        x = frame.reshape(-1).astype(np.float32) / 255.0 - 0.5
        z = np.tanh(self.proj @ x).astype(np.float64)
        return controller_action(self.weight @ z + self.bias)


POLICIES = ("brownian", "random_weights", "mixed", "uniform")


def make_policy(name: str, seed: int, episode: int, brownian_dt: float = 1 / 50) -> Policy:
    """The policy for one episode; its randomness depends on ``seed`` only.

    ``mixed`` alternates: Brownian on even episodes, random weights on odd ones.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    if name == "mixed":
        name = "brownian" if episode % 2 == 0 else "random_weights"
    if name == "brownian":
        return BrownianPolicy(rng, brownian_dt)
    if name == "random_weights":
        return RandomWeightsPolicy(rng)
    if name == "uniform":
        return UniformPolicy(rng)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
