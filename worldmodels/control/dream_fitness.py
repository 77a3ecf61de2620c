"""The CMA-ES fitness inside M's dream: ``P`` controllers x ``T`` dream episodes at once.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 4 ("Learning Inside of a
Dream"): C is evolved on returns M imagines instead of real ones. Every candidate's trial
``j`` starts from the same start state and draws the same noise (common random numbers, see
:mod:`worldmodels.envs.dream`), so candidates are ranked on equal terms; all ``P T`` episodes
step in one :class:`~worldmodels.envs.dream.BatchedDream` batch, and the ``P`` controllers
run as one batched product per layer (:class:`BatchedControllers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from worldmodels.control.controller import ACTION_DIM, Controller, map_action
from worldmodels.envs.dream import BatchedDream
from worldmodels.errors import ConfigError
from worldmodels.utils.torch import derive_seed

__all__ = ["BatchedControllers", "dream_trial_seeds", "dream_rollout_returns"]


class BatchedControllers:
    """``P`` controllers of one architecture evaluated together: flat vectors (P, n) in
    :meth:`Controller.get_flat`'s layout -> per-layer weights (P, out, in) and biases (P, out).

    ``forward(obs)`` with obs (P, T, D+H) gives actions (P, T, 3): the same function as
    ``Controller.forward`` for each candidate, as one batched product per layer.
    """

    def __init__(self, flat: np.ndarray | torch.Tensor, latent_dim: int, hidden_dim: int,
                 device: torch.device, **controller_kwargs: Any) -> None:
        template = Controller(latent_dim=latent_dim, hidden_dim=hidden_dim, **controller_kwargs)
        flat = torch.as_tensor(np.asarray(flat, dtype=np.float64) if not torch.is_tensor(flat)
                               else flat).to(device=device, dtype=torch.float32)
        if flat.dim() == 1:
            flat = flat[None]
        n = template.num_parameters
        if flat.dim() != 2 or flat.shape[1] != n:
            raise ValueError(f"expected controller parameters (P, {n}) for "
                             f"Controller({template._describe()}), got {tuple(flat.shape)}")
        if not torch.isfinite(flat).all():
            raise ValueError("a controller's parameter vector contains NaN or inf")
        self.num_candidates = flat.shape[0]
        self.latent_dim = latent_dim
        self.use_hidden_state = template.use_hidden_state
        tensors, offset = [], 0
        for p in template.parameters():
            tensors.append(flat[:, offset:offset + p.numel()].reshape(-1, *p.shape))
            offset += p.numel()
        # (weight, bias) per linear layer, weights transposed for x @ W^T: (P, in, out)
        self.layers = [(tensors[i].transpose(1, 2).contiguous(), tensors[i + 1][:, None, :])
                       for i in range(0, len(tensors), 2)]

    @classmethod
    def from_controllers(cls, controllers: Sequence[Controller],
                         device: torch.device) -> BatchedControllers:
        first = controllers[0]
        if any(c.hparams != first.hparams for c in controllers):
            raise ValueError("all controllers must have the same architecture (hparams)")
        flat = np.stack([c.get_flat() for c in controllers])
        kwargs = {k: v for k, v in first.hparams.items() if k not in ("latent_dim", "hidden_dim")}
        return cls(flat, first.latent_dim, first.hidden_dim, device, **kwargs)

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (P, T, D+H) ``[z, h]`` -> actions (P, T, 3) in the CarRacing box."""
        x = obs if self.use_hidden_state else obs[..., :self.latent_dim]
        for j, (w, b) in enumerate(self.layers):
            x = torch.baddbmm(b, x, w)
            if j < len(self.layers) - 1:
                x = torch.tanh(x)
        return map_action(x)


def dream_trial_seeds(seed: int, trials: int) -> list[int]:
    """The episode seeds of :func:`dream_rollout_returns`' trials ``0 .. trials-1``:
    ``derive_seed(seed, "dream", j)`` (``DreamEnv.reset(seed=...)`` replays one)."""
    return [derive_seed(seed, "dream", j) for j in range(trials)]


@torch.no_grad()
def dream_rollout_returns(controllers: np.ndarray | torch.Tensor | Sequence[Controller],
                          trials: int, seed: int, max_steps: int = 1000, *,
                          dream: BatchedDream,
                          controller_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """Returns of ``P`` candidates x ``trials`` dream episodes, all stepped in lockstep.

    The CMA-ES fitness of the paper's section 4 ("training inside the dream"): candidate
    ``c``'s trial ``j`` is row ``c T + j`` of one :class:`BatchedDream` batch of ``P T``
    episodes; every candidate's trial ``j`` is the episode of seed
    ``dream_trial_seeds(seed, trials)[j]`` (the same start and noise for all: common random
    numbers, so candidates are ranked on equal terms). The loop stops when every episode is
    done, at the latest after ``max_steps`` steps. Deterministic for a seed (on one device
    and thread count: BLAS may sum in another order elsewhere).

    :param controllers: flat parameter vectors (P, n) (``Controller.get_flat`` layout, with
        ``controller_kwargs`` such as ``hidden_layer``, ``use_hidden_state``) or a list of
        ``P`` :class:`Controller` (one architecture).
    :param trials: ``T`` episodes per candidate.
    :param seed: picks the trials' episodes.
    :param max_steps: steps per episode at most (overrides the dream's own limit).
    :param dream: a :class:`~worldmodels.envs.dream.BatchedDream` (reused: its batch is
        reset here; ``worldmodels.run.load_dream`` builds one from a run).
    :return: returns (P, T) float64 numpy (sum of M's predicted rewards).
    """
    if trials < 1 or max_steps < 1:
        raise ConfigError(f"trials and max_steps must be >= 1, got {trials} and {max_steps}")
    if not isinstance(dream, BatchedDream):
        raise ConfigError(f"dream must be a BatchedDream, got {type(dream).__name__} (build "
                          "one from a run with worldmodels.run.load_dream)")
    if isinstance(controllers, (list, tuple)):
        batch = BatchedControllers.from_controllers(controllers, dream.device)
    else:
        batch = BatchedControllers(controllers, dream.latent_dim, dream.hidden_dim, dream.device,
                                   **(controller_kwargs or {}))
    P, T = batch.num_candidates, int(trials)
    limit = dream.max_steps
    dream.max_steps = int(max_steps)
    try:
        obs = dream.reset(seeds=dream_trial_seeds(seed, T) * P)  # row c*T + j: trial j
        for _ in range(int(max_steps)):
            actions = batch(obs.view(P, T, -1)).reshape(P * T, ACTION_DIM)
            obs, _, done = dream.step(actions)
            if bool(done.all()):
                break
        return dream.returns.view(P, T).cpu().numpy().astype(np.float64)
    finally:
        dream.max_steps = limit
