"""Exploration policies that generate the random rollouts V and M are trained on.

Ha & Schmidhuber (2018, arXiv:1803.10122, sec. 3.2; authors' ``extract.py``) collect
10,000 CarRacing rollouts with a *random-weights controller*: the full agent with
untrained parameters drawn per episode (standard Cauchy times ``stdev = U(0, 0.01)``). ctallec/world-models uses a *Brownian* policy instead,
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
    """The original's random-weights controller (authors' ``extract.py`` and ``model.py``).

    Per episode the authors draw ``stdev = np.random.rand() * 0.01`` and set every parameter
    of C (and of the untrained V and M) to ``np.random.standard_cauchy(n) * stdev`` ("spice
    things up": a few heavy-tailed weights dominate, so actions range from nearly constant to
    bang-bang). C reads ``[z, h]`` (32 + 256 inputs, 867 parameters; ``params[:3]`` is the
    bias, ``params[3:]`` the (input, 3) weight) and acts ``a = map(tanh(W^T [z, h] + b))``
    (:func:`controller_action`). This is exactly that controller. The features stand in for
    the untrained V and M, whose exact networks a torch-free worker does not run: ``z =
    tanh(P (x / 255 - 1/2))`` (x the flattened 64x64x3 frame, P ~ N(0, 1/d) fixed per episode)
    and ``h`` the state of an LSTM with the same Cauchy * stdev weights, fed ``[z, a]``.
    """

    def __init__(self, rng: np.random.Generator, latent_dim: int = 32, hidden_dim: int = 256,
                 stdev_max: float = 0.01):
        d = FRAME_SIZE * FRAME_SIZE * 3
        self.proj = (rng.standard_normal((latent_dim, d)) / math.sqrt(d)).astype(np.float32)
        self.stdev = rng.random() * stdev_max
        inputs = latent_dim + hidden_dim
        params = rng.standard_cauchy(inputs * 3 + 3) * self.stdev
        self.bias, self.weight = params[:3], params[3:].reshape(inputs, 3)
        lstm_in = latent_dim + 3 + hidden_dim
        self.lstm = rng.standard_cauchy((4 * hidden_dim, lstm_in + 1)) * self.stdev
        self.h = np.zeros(hidden_dim)
        self.c = np.zeros(hidden_dim)

    def act(self, frame: np.ndarray) -> np.ndarray:
        x = frame.reshape(-1).astype(np.float32) / 255.0 - 0.5
        z = np.tanh(self.proj @ x).astype(np.float64)
        action = controller_action(np.concatenate([z, self.h]) @ self.weight + self.bias)
        # M's step after acting, as the authors' get_action: h <- LSTM([z, a], h)
        gates = self.lstm @ np.concatenate([z, action, self.h, [1.0]])
        i, f, g, o = np.split(gates, 4)
        self.c = _sigmoid(f) * self.c + _sigmoid(i) * np.tanh(g)
        self.h = _sigmoid(o) * np.tanh(self.c)
        return action


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free for the Cauchy tails


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
