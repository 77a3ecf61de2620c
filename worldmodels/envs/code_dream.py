"""The discrete dream: thousands of dream episodes of a VQ-VAE world model at once.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, sec. 4, use M as the environment;
here V is a VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017, arXiv:1711.00937) and M a
:class:`~worldmodels.memory.CodeRNN`: the latent is a grid of codes, each cell's next code is
sampled from M's categorical at temperature ``tau``, and the agent reads the codes' codebook
vectors ``z_q``. Everything else (keyed noise per episode, reward and done heads, start
states, truncation) is :class:`~worldmodels.envs.dream.BatchedDream`'s, see
:mod:`worldmodels.envs.dream`.
"""

from __future__ import annotations

import numpy as np
import torch

from worldmodels.envs.dream import _RESET_COUNTER, BatchedDream, check_world_model
from worldmodels.envs.keyed_noise import _slot_codes, keyed_uniform
from worldmodels.errors import DataError
from worldmodels.generative import VQVAE
from worldmodels.memory.mdnrnn import CodeRNN, codes_to_latent
from worldmodels.utils.torch import resolve_device

__all__ = ["BatchedCodeDream"]


class BatchedCodeDream(BatchedDream):
    """``B`` dream episodes of a discrete world model: a VQ-VAE's code grids stepped by a
    :class:`~worldmodels.memory.CodeRNN` (van den Oord et al. 2017, arXiv:1711.00937, for
    the codes; Ha & Schmidhuber 2018, sec. 4, for the dream).

    ::

        dream = BatchedCodeDream(code_rnn, start_codes, vae=vqvae, batch_size=1024)
        obs = dream.reset(seed=0)                  # (B, D+H): [z_q(codes_0), h_0]
        obs, reward, done = dream.step(actions)   # as BatchedDream

    The same episode bookkeeping, keyed noise, fused LSTM and reward/done heads as
    :class:`BatchedDream`; what differs is the latent. M's LSTM reads its embedding of the
    codes, its head gives logits (cells, K), and every cell's next code is drawn from its own
    tempered categorical, by inverse CDF of one keyed uniform per cell::

        c_{t+1, i} ~ softmax(logits_i / tau)        (tau = 0: argmax, deterministic)

    The observation is ``[z_q, h]``, ``z_q`` the codes' codebook vectors flattened
    (:func:`~worldmodels.memory.mdnrnn.codes_to_latent`: what the agent's C reads in the real
    environment), :attr:`codes` (B, cells) the codes themselves, and :meth:`decode` is the
    VQ-VAE's decoder of them. An episode starts from the code grid of a real first frame
    (chosen by the episode's key; no noise: a VQ-VAE's encoding is deterministic).

    :param mdnrnn: M, a :class:`~worldmodels.memory.CodeRNN`.
    :param start_codes: (N, cells) or (N, h, w) integer code grids of real first frames
        (``worldmodels.run.start_codes`` reads them from a run).
    :param vae: V, the :class:`~worldmodels.generative.VQVAE` whose codes M reads (its
        codebook gives ``z_q``, its decoder :meth:`decode`).
    :param batch_size, temperature, device, max_steps, done, precision, source: as
        :class:`BatchedDream`.
    """

    def __init__(self, mdnrnn: CodeRNN, start_codes: np.ndarray | torch.Tensor, *,
                 vae: VQVAE, batch_size: int = 1, temperature: float = 1.0,
                 device: str | torch.device = "auto", max_steps: int = 1000,
                 done: str = "threshold", precision: str = "auto",
                 source: str = "given") -> None:
        self._setup_codes(mdnrnn, vae, np.asarray(start_codes), source, batch_size,
                          temperature, resolve_device(device), max_steps, done, precision)

    @torch.no_grad()
    def _setup_codes(self, mdnrnn: CodeRNN, vae: VQVAE, codes: np.ndarray, source: str,
                     batch_size: int, temperature: float, device: torch.device,
                     max_steps: int, done: str, precision: str) -> None:
        if not isinstance(vae, VQVAE):
            raise DataError(f"the code dream needs the VQ-VAE whose codes M reads (its "
                            f"codebook gives z_q), got {type(vae).__name__}")
        check_world_model(vae, mdnrnn)
        self._check_settings(mdnrnn, batch_size, temperature, max_steps, done, precision)
        cells, K = mdnrnn.grid_cells, mdnrnn.codebook_size
        if codes.ndim < 2 or len(codes) == 0 or np.issubdtype(codes.dtype, np.floating):
            raise DataError(f"start codes must be (N, {cells}) integers, got {codes.shape} "
                            f"{codes.dtype}")
        codes = codes.reshape(len(codes), -1)
        if codes.shape[1] != cells or codes.min() < 0 or codes.max() >= K:
            raise DataError(f"start codes must be (N, {cells}) in [0, {K}), got shape "
                            f"{codes.shape} and values {codes.min()}..{codes.max()}")
        self.grid_cells, self.codebook_size = cells, K
        self.latent_dim = vae.latent_dim  # C x cells: z_q
        self._configure(mdnrnn, vae, source, batch_size, temperature, device, max_steps, done,
                        precision)
        self.start_codes = torch.as_tensor(codes, dtype=torch.int64, device=device)
        self._codebook = self.vae.quantizer.codebook.detach().float().clone()  # (K, C)
        self._embed = self.mdnrnn.embed.weight.detach().float().clone()  # (K, E)
        head = self.mdnrnn.head  # (cells K, H): the logits of cell i are rows i K .. i K + K-1
        self._fuse(head.weight, head.bias, input_dim=cells * self._embed.shape[1])
        self._slots = _slot_codes(cells + 1, device)  # one uniform per cell, done (1)
        self._done_slot = cells
        self._reset_state(0)

    def _reset_state(self, B: int) -> None:
        super()._reset_state(B)
        self.codes = torch.zeros(B, self.grid_cells, dtype=torch.int64, device=self.device)

    def _start(self) -> None:
        u = keyed_uniform(self.keys, _RESET_COUNTER, self._slots[:1])  # (B, 1)
        N = len(self.start_codes)
        index = (u[:, 0] * N).long().clamp_(max=N - 1)
        self._set_latent(self.start_codes[index])

    def _latent(self) -> torch.Tensor:
        return self.codes

    def _set_latent(self, latent: torch.Tensor) -> None:
        self.codes = latent
        self.z = codes_to_latent(self._codebook, latent)

    def _write_latent(self, x: torch.Tensor) -> None:
        x[:] = self._embed[self.codes].flatten(1)  # M's embedding, cell by cell (raster order)

    def _sample(self, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """codes_{t+1} (B, cells) from the logits (B, cells K) and uniforms (B, >= cells):
        ``softmax(logits_i / tau)`` by inverse CDF, or the argmax at ``tau = 0``."""
        B, cells, K = logits.shape[0], self.grid_cells, self.codebook_size
        logits = logits.view(B, cells, K)
        if self.temperature == 0:
            return logits.argmax(dim=-1)
        scaled = logits / self.temperature
        weights = scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()
        cdf = weights.cumsum_(dim=-1)  # unnormalised: compare with u * total
        threshold = u[:, :cells, None] * cdf[..., K - 1:]
        return (cdf < threshold).sum(dim=-1).clamp_(max=K - 1)
