"""The sequences M trains on, cut from the latent store.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.2 and appendix A.2: M
is trained on sequences of ``z`` drawn afresh from V's stored posteriors at every batch (the
authors' ``rnn_train.py``: ``z = mu + exp(logvar / 2) * randn``), which acts as data
augmentation and lets M see V's uncertainty.

**Sequences for M** (:class:`LatentSequences`): item = ``seq_len + 1`` consecutive steps of
one episode; inputs ``z_t, a_t`` for ``t < L``, targets ``z_{t+1}``, ``reward_t`` (the
reward of action ``a_t``) and ``done_t`` (the episode terminated by that action). The last
transition of a *terminated* episode has no next frame: it is kept (it is the only
positive example of the done head) with ``next_valid = False``, which removes its
``z_{t+1}`` term from the loss. An episode with fewer than ``L`` transitions (one that left
the playfield early: its -100 reward and its done are what M's reward and done heads must
learn) gives one sequence padded to ``L``, its padding masked (``mask = False``).
Batches are cut from one tensor per field held on the device (the fast path: 10,000 x 1,000
x 2 x 32 floats are 2.5 GB) or read from the file window by window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from worldmodels.data.datasets import ACTION_DIM, available_memory
from worldmodels.data.latents import LatentDataset
from worldmodels.errors import DataError
from worldmodels.generative.vae import reparameterize

__all__ = ["LatentTensors", "load_latents", "fits_in_memory", "LatentSequences"]
@dataclasses.dataclass
class LatentTensors:
    """The steps of some episodes, concatenated in episode order, one tensor per field.

    ``mu``/``logvar`` (N, D) float32 (Gaussian) or ``codes`` (N, cells) int16 (codes);
    ``actions`` (N, 3) float32; ``rewards`` (N,) float32; ``terminated`` (N,) bool;
    ``offsets`` (E+1,) int64 numpy: episode ``j`` holds steps ``offsets[j]:offsets[j+1]``.
    """

    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    offsets: np.ndarray
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    codes: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in
                   (self.actions, self.rewards, self.terminated, self.mu, self.logvar, self.codes)
                   if t is not None)


def _bytes_per_step(data: LatentDataset) -> int:
    latent = data.latent_dim * (2 if data.kind == "codes" else 8)  # int16 | 2 x float32
    return latent + 4 * ACTION_DIM + 4 + 1


def load_latents(data: LatentDataset, episodes: Sequence[int] | None = None,
                 device: str | torch.device = "cpu") -> LatentTensors:
    """Every step of the chosen episodes as one :class:`LatentTensors` on ``device``
    (each episode read once, written into preallocated tensors: no concatenation)."""
    chosen = np.arange(len(data)) if episodes is None else np.asarray(episodes, dtype=np.int64)
    lengths = data.lengths[chosen]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    N = int(offsets[-1])
    device = torch.device(device)
    host: dict[str, np.ndarray] = {
        "actions": np.empty((N, ACTION_DIM), np.float32), "rewards": np.empty(N, np.float32),
        "terminated": np.empty(N, bool)}
    if data.kind == "codes":
        host["codes"] = np.empty((N, data.latent_dim), np.int16)
    else:
        host["mu"] = np.empty((N, data.latent_dim), np.float32)
        host["logvar"] = np.empty((N, data.latent_dim), np.float32)
    for j, k in enumerate(chosen):
        a, b = int(offsets[j]), int(offsets[j + 1])
        for field, out in host.items():
            out[a:b] = data.read(int(k), field).reshape(b - a, *out.shape[1:])
    tensors = {field: torch.from_numpy(arr).to(device) for field, arr in host.items()}
    return LatentTensors(offsets=offsets, **tensors)


def fits_in_memory(data: LatentDataset, episodes: Sequence[int],
                   device: str | torch.device = "cpu", fraction: float = 0.5) -> bool:
    """Whether the chosen episodes' latents take at most ``fraction`` of ``device``'s
    free memory (False when unknown)."""
    free = available_memory(device)
    need = int(data.lengths[np.asarray(episodes, dtype=np.int64)].sum()) * _bytes_per_step(data)
    return free is not None and need <= fraction * free


class LatentSequences:
    """Windows of ``seq_len`` transitions inside one episode, cut into batches for M.

    A window starting at step ``s`` covers the ``L + 1`` steps ``s..s+L``: inputs ``z_t``,
    ``a_t`` and targets ``z_{t+1}``, ``reward_t``, ``done_t`` for ``t = s..s+L-1``. An
    episode of ``T`` steps has ``U = T - 1`` transitions, plus one when it terminated (its
    last transition, whose ``z_{t+1}`` is missing: ``next_valid`` is False there); it gives
    ``n = (U - L) // L + 1`` windows ``L`` apart, starting at an offset in ``[0, U - L -
    (n - 1) L]`` drawn per epoch (so every transition is seen across epochs; 0 for
    validation). An episode with ``0 < U < L`` gives one window at 0 whose steps past the
    episode repeat its last step and are masked (``mask`` False); episodes with no
    transition (one step, not terminated) are skipped.

    :param data: the latents.
    :param seq_len: L.
    :param episodes: episode indices (a split); default all.
    :param device: where batches are delivered.
    :param in_memory: hold every step on ``device`` (:func:`load_latents`) and cut batches
        there; otherwise read each window from the file.
    :raises DataError: no chosen episode has a transition.
    """

    def __init__(self, data: LatentDataset, seq_len: int, episodes: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", in_memory: bool = True) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.data, self.seq_len, self.device = data, seq_len, torch.device(device)
        chosen = np.arange(len(data)) if episodes is None else np.asarray(episodes, np.int64)
        transitions = data.lengths[chosen] - 1 + data.terminated[chosen]
        usable = transitions >= 1
        if len(chosen) and not usable.any():
            raise DataError(
                f"no episode of {data.path} has a transition: the {len(chosen)} chosen "
                "episodes have one step each; collect longer episodes (collect.max_steps)")
        #: file indices of the usable episodes, their lengths and transition counts
        self.episodes = chosen[usable]
        self.skipped = int((~usable).sum())
        self.lengths = data.lengths[self.episodes]
        self.transitions = transitions[usable]
        self.counts = np.maximum((self.transitions - seq_len) // seq_len + 1, 1)
        self.slack = np.maximum(self.transitions - seq_len - (self.counts - 1) * seq_len, 0)
        #: episodes shorter than one sequence (each one padded window)
        self.padded = int((self.transitions < seq_len).sum())
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.tensors = load_latents(data, self.episodes, self.device) if in_memory else None

    def __len__(self) -> int:
        """Windows per epoch (the same every epoch)."""
        return int(self.counts.sum())

    @property
    def num_transitions(self) -> int:
        return int(self.transitions.sum())

    def windows(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """(len, 2) int64 rows ``(j, start)``: position ``j`` in :attr:`episodes` and the
        first step; offsets drawn from ``rng`` (per episode), or 0 without one."""
        if len(self.episodes) == 0:
            return np.zeros((0, 2), np.int64)
        offsets = (np.zeros(len(self.episodes), np.int64) if rng is None
                   else rng.integers(0, self.slack + 1))
        j = np.repeat(np.arange(len(self.episodes)), self.counts)
        first = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        within = np.arange(len(j)) - np.repeat(first, self.counts)
        return np.stack([j, offsets[j] + within * self.seq_len], axis=1).astype(np.int64)

    def epoch(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[np.ndarray]:
        """The ``len // batch_size`` batches of window rows (B, 2) of one shuffled epoch
        (the last partial batch is dropped: one shape for ``torch.compile`` and cuDNN),
        after the first ``skip``. Depends only on ``seed``."""
        rng = np.random.default_rng(seed)
        windows = self.windows(rng)
        perm = rng.permutation(len(windows))
        for i in range(skip, len(windows) // batch_size):
            yield windows[perm[i * batch_size:(i + 1) * batch_size]]

    def in_order(self, batch_size: int) -> Iterator[np.ndarray]:
        """Every window at offset 0, in order, ``batch_size`` at a time (last smaller)."""
        windows = self.windows()
        for i in range(0, len(windows), batch_size):
            yield windows[i:i + batch_size]

    def batch(self, rows: np.ndarray, generator: torch.Generator | None = None,
              sample: bool = True) -> dict[str, torch.Tensor]:
        """The tensors of windows ``rows`` (B, 2), on the device.

        :param generator: draws ``z = mu + sigma * eps`` (a fresh ``z`` per call: the
            paper's resampling); on any device.
        :param sample: False gives ``z = mu``.
        :return: ``z`` (B, L+1, D) float32 or ``codes`` (B, L+1, cells) int64 (steps
            ``s..s+L``; steps past the episode's end repeat its last step); ``actions``
            (B, L, 3); ``rewards`` (B, L) float32; ``dones`` (B, L) float32; ``mask``
            (B, L) bool, whether transition ``t`` is real (False on the padding of a short
            episode); ``next_valid`` (B, L) bool, whether ``z_{t+1}`` exists (False on the
            padding and on a terminated episode's last transition).
        """
        L = self.seq_len
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)
        first = self.offsets[rows[:, 0]] + rows[:, 1]  # (B,) index of step s
        last = self.offsets[rows[:, 0] + 1] - 1  # (B,) index of the episode's last step
        # (B,) index of the step of the last transition: the last step when terminated
        last_real = self.offsets[rows[:, 0]] + self.transitions[rows[:, 0]] - 1
        if self.tensors is not None:
            t = self.tensors
            first_t = torch.from_numpy(first).to(self.device)
            last_t = torch.from_numpy(last).to(self.device)
            idx = first_t[:, None] + torch.arange(L + 1, device=self.device)
            mask = idx[:, :L] <= torch.from_numpy(last_real).to(self.device)[:, None]
            next_valid = (idx[:, 1:] <= last_t[:, None]) & mask
            idx = torch.minimum(idx, last_t[:, None])
            out = {"actions": t.actions[idx[:, :L]], "rewards": t.rewards[idx[:, :L]],
                   "dones": t.terminated[idx[:, :L]].float(), "mask": mask,
                   "next_valid": next_valid}
            fields = {name: getattr(t, name)[idx] for name in self.data.latent_fields}
        else:
            out, fields = self._read(rows)
        if self.data.kind == "codes":
            out["codes"] = fields["codes"].long()
        elif sample:
            out["z"] = reparameterize(fields["mu"], fields["logvar"], generator)
        else:
            out["z"] = fields["mu"]
        return out

    def _read(self, rows: np.ndarray) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Streaming path of :meth:`batch`: each window read from the file."""
        L = self.seq_len
        per_field: dict[str, list[np.ndarray]] = {}
        valid = np.ones((len(rows), L), dtype=bool)
        mask = np.ones((len(rows), L), dtype=bool)
        for i, (j, s) in enumerate(rows):
            k, T = int(self.episodes[j]), int(self.lengths[j])
            stop = min(int(s) + L + 1, T)
            if stop - s < L + 1:  # past the episode's end: repeat the last step, mask it
                valid[i, stop - s - 1:] = False
                mask[i, int(self.transitions[j]) - int(s):] = False
            for field in (*self.data.latent_fields, "actions", "rewards", "terminated"):
                x = self.data.read(k, field, int(s), stop)
                if field in self.data.latent_fields:
                    x = x.reshape(len(x), -1)
                if len(x) < L + 1:
                    x = np.concatenate([x, np.repeat(x[-1:], L + 1 - len(x), axis=0)])
                per_field.setdefault(field, []).append(x)
        arr = {f: np.stack(v) for f, v in per_field.items()}
        dev = self.device
        out = {
            "actions": torch.from_numpy(arr["actions"][:, :L].astype(np.float32)).to(dev),
            "rewards": torch.from_numpy(arr["rewards"][:, :L].astype(np.float32)).to(dev),
            "dones": torch.from_numpy(arr["terminated"][:, :L].astype(np.float32)).to(dev),
            "mask": torch.from_numpy(mask).to(dev),
            "next_valid": torch.from_numpy(valid).to(dev),
        }
        return out, {f: torch.from_numpy(arr[f]).to(dev) for f in self.data.latent_fields}

    def episode_tensors(self, j: int) -> dict[str, torch.Tensor]:
        """Every step of usable episode ``j`` (position in :attr:`episodes`) on the device:
        the latent fields flattened to (T, D) / (T, cells), ``actions``, ``rewards``
        (float32), ``terminated`` (bool)."""
        if self.tensors is not None:
            a, b = int(self.offsets[j]), int(self.offsets[j + 1])
            t = self.tensors
            out = {"actions": t.actions[a:b], "rewards": t.rewards[a:b],
                   "terminated": t.terminated[a:b]}
            out.update({f: getattr(t, f)[a:b] for f in self.data.latent_fields})
            return out
        k = int(self.episodes[j])
        out = {f: torch.from_numpy(self.data.read(k, f).reshape(int(self.lengths[j]), -1))
               for f in self.data.latent_fields}
        out["actions"] = torch.from_numpy(self.data.read(k, "actions").astype(np.float32))
        out["rewards"] = torch.from_numpy(self.data.read(k, "rewards").astype(np.float32))
        out["terminated"] = torch.from_numpy(self.data.read(k, "terminated"))
        return {name: value.to(self.device) for name, value in out.items()}
