"""The *World Models* agent: V, M and C turning raw CarRacing frames into actions, batched.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, figure 8 and section 2.3: at each
step the frame is encoded by V into ``z_t`` (the posterior mean ``mu``, as the authors' code
does when it drives), C maps ``[z_t, h_t]`` to the action ``a_t``, and M reads ``(z_t, a_t)``
to advance its LSTM state to ``h_{t+1}``::

    z_t = mu_V(preprocess(obs_t))            (B, D)
    a_t = C(z_t, h_t)                         (B, 3)
    (h_{t+1}, c_{t+1}) = LSTM_M([z_t, a_t], (h_t, c_t))      h_0 = c_0 = 0

:class:`WorldModelAgent` does this for ``B`` environments at once (lockstep evaluation), each
row with its own recurrent state and, optionally, its own controller (the candidates of a
CMA-ES generation). Raw observations go through
:func:`~worldmodels.envs.preprocess_frame`, the one preprocessing function that collection
used to build V's training frames.

**Batch invariance.** An episode's return must not depend on which other episodes share its
batch: CarRacing is chaotic, and a last-bit difference in one action can change the return.
On CPU, oneDNN's convolutions and LSTM compute each row the same way whatever the batch size,
but BLAS matrix products do not (``F.linear`` on one row runs a matrix-vector kernel, on many a
blocked matrix-matrix kernel, with other summation orders). With ``batch_invariant=True`` (the
default) V's convolutional trunk and M's LSTM run batched, while the two small matrix products,
V's ``mu`` head (1024 -> D) and C, run one row at a time with the same shapes, so every row's
result is the one it would have alone; the test suite checks returns bit for bit. The per-row
part costs ~20 µs per row and step on CPU, well under 1% of an environment step. On CUDA,
cuDNN and cuBLAS choose algorithms by batch size, so returns are only equal to float rounding
there.

**A discrete world model** (V a VQ-VAE, van den Oord et al. 2017, arXiv:1711.00937; M a
:class:`~worldmodels.memory.CodeRNN`). V's encoder gives ``z_e`` (B, C, h, w), each cell is
quantised to its nearest code, M reads the code grid, and C reads the quantised latent
``z_q`` (the codes' codebook vectors, flat: C x h x w = 256 numbers for the default 8x8 grid of
4-dimensional codes, :func:`~worldmodels.memory.mdnrnn.codes_to_latent`) beside ``h``::

    codes_t = argmin_k ||z_e(x_t)_i - e_k||            (B, cells)
    z_t = z_q = e[codes_t]                              (B, C cells)
    a_t = C(z_t, h_t);   (h_{t+1}, c_{t+1}) = LSTM_M([embed_M(codes_t), a_t], (h_t, c_t))

C stays the paper's linear map (3 x (256 + 256) + 3 = 1,539 parameters). With
``batch_invariant`` V's encoder and the nearest-code search run one frame at a time: the
VQ-VAE's 3x3 and 1x1 convolutions do not give the same last bits for one frame (PyTorch's
native kernel) as for several (oneDNN), and a last-bit difference flips a near-tied code.
Measured on one CPU thread with the default VQ-VAE: 1.5 ms a frame instead of 1.15 ms
batched (16 frames).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from worldmodels.control.controller import ACTION_DIM, Controller
from worldmodels.envs.dream import check_world_model
from worldmodels.envs.preprocess import FRAME_SIZE, preprocess_frame
from worldmodels.errors import DataError
from worldmodels.generative import VQVAE, ConvVAE
from worldmodels.memory.mdnrnn import (
    MDNRNN,
    CodeRNN,
    codes_to_latent,
    sample_next,
    sample_next_codes,
)

__all__ = ["WorldModelAgent", "frames_to_tensor", "check_world_model"]

#: V's encoder arithmetic (see WorldModelAgent)
PRECISIONS = ("auto", "fp32", "bf16")
#: what C and M read of V's posterior
Z_MODES = ("mu", "sample")

_OBS_SHAPE = (96, 96, 3)
_FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 3)


def frames_to_tensor(frames: np.ndarray, device: torch.device,
                     channels_last: bool = False) -> torch.Tensor:
    """(B, 64, 64, 3) uint8 frames -> (B, 3, 64, 64) float32 in [0, 1] on ``device``
    (the same ``x / 255`` as V's training); ``channels_last``: in that memory format (the
    frames' own layout, so no transposing copy), the same values."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2)
    return (x if channels_last else x.contiguous()).float().div_(255.0)


class WorldModelAgent:
    """V + M + C over a batch of environments, with M's hidden state carried step to step.

    ::

        agent = WorldModelAgent(vae, mdnrnn, controller)
        agent.reset(batch_size=len(envs))
        actions = agent.act(observations)     # (B, 96, 96, 3) uint8 -> (B, 3) float32

    :param vae: V, a :class:`~worldmodels.generative.ConvVAE` (``z = mu``) or a
        :class:`~worldmodels.generative.VQVAE` (``z = z_q``, see the module docstring).
    :param mdnrnn: M, an :class:`~worldmodels.memory.MDNRNN` with ``latent_dim`` equal to V's
        and ``action_dim = 3``; with a VQ-VAE a :class:`~worldmodels.memory.CodeRNN` over its
        codebook and grid.
    :param controller: C; default a fresh ``Controller(D, H)`` (torch's initialisation).
    :param device: where V and M run (default: V's device); C runs there too.
    :param batch_invariant: compute V's ``mu`` head and C one row at a time, so a row's result
        does not depend on the batch (see the module docstring); False: fully batched.
    :param precision: V's convolutional encoder in ``fp32`` or ``bf16`` (weights and
        activations bfloat16, channels_last, the 1024 features back in fp32 for the heads);
        ``auto``: bf16 where it measured faster (CUDA, or a CPU with AMX-BF16: ~4x faster
        there), else fp32 (AVX512-BF16 alone: about the same speed; emulated bf16 is
        slower). bf16 changes
        z by bf16 rounding, so returns differ from fp32's (CarRacing is chaotic); rows stay
        batch-invariant on CPU.
    :param z: what C and M read of V: ``mu`` (the posterior mean) or ``sample`` (z = mu +
        sigma * eps, as the authors' ``encode_obs`` does and as M was trained); the noise of
        row i comes from its own generator seeded by :meth:`reset`, so it does not depend on
        the batch. A VQ-VAE's z is deterministic: ``mu`` only.
    """

    def __init__(
        self,
        vae: ConvVAE | VQVAE,
        mdnrnn: MDNRNN | CodeRNN,
        controller: Controller | None = None,
        *,
        device: str | torch.device | None = None,
        batch_invariant: bool = True,
        precision: str = "fp32",
        z: str = "mu",
    ) -> None:
        check_world_model(vae, mdnrnn)
        #: V is a VQ-VAE and M a CodeRNN (C reads z_q)
        self.discrete = isinstance(vae, VQVAE)
        self.device = (torch.device(device) if device is not None
                       else next(vae.encoder.parameters()).device)
        self.vae = vae.to(self.device).eval()
        self.mdnrnn = mdnrnn.to(self.device).eval()
        self.batch_invariant = batch_invariant
        if precision not in PRECISIONS:
            raise DataError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if z not in Z_MODES:
            raise DataError(f"z must be one of {', '.join(Z_MODES)}, got {z!r}")
        if self.discrete and z != "mu":
            raise DataError(f"z={z!r} samples a Gaussian posterior; a VQ-VAE's z_q is "
                            "deterministic: use z='mu'")
        if precision == "auto":
            from worldmodels.utils.torch import auto_precision

            precision = auto_precision(self.device)
        self.precision, self.z_mode = precision, z
        self._encoder = self.vae.encoder
        if precision == "bf16":  # a bf16 channels_last copy; V itself stays fp32
            self._encoder = copy.deepcopy(self.vae.encoder).to(torch.bfloat16).to(
                memory_format=torch.channels_last).eval()
        self._noise: list[torch.Generator] = []
        self.controller = self._check_controller(
            controller if controller is not None
            else Controller(latent_dim=vae.latent_dim, hidden_dim=mdnrnn.hidden_dim))
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        #: (D,) added to V's ``mu`` before C and M read it (a VAE's): the approximate
        #: renderer's correction (:mod:`~worldmodels.control.calibration`), set by
        #: :func:`~worldmodels.control.evaluation.run_episodes` while it draws approximate
        #: frames; None: z as V gives it
        self.latent_shift: torch.Tensor | None = None

    # ------------------------------------------------------------------------ properties

    @property
    def latent_dim(self) -> int:
        """D, the size of z (a VQ-VAE's: C x h x w of its quantised latent)."""
        return self.vae.latent_dim

    @property
    def hidden_dim(self) -> int:
        """H, the size of M's hidden state h."""
        return self.mdnrnn.hidden_dim

    @property
    def batch_size(self) -> int:
        """Rows of the recurrent state (0 before :meth:`reset`)."""
        return 0 if self.state is None else self.state[0].shape[0]

    def make_controller(self, flat: np.ndarray | None = None, **kwargs: Any) -> Controller:
        """A C that fits this V and M (``Controller(D, H, **kwargs)``) on the agent's
        device, with parameters ``flat`` (layout of :meth:`Controller.get_flat`) if given."""
        c = Controller(latent_dim=self.latent_dim, hidden_dim=self.hidden_dim, **kwargs)
        if flat is not None:
            c.set_flat(flat)
        return c.to(self.device).eval()

    def _check_controller(self, c: Controller) -> Controller:
        if c.latent_dim != self.latent_dim or (c.use_hidden_state
                                               and c.hidden_dim != self.hidden_dim):
            raise DataError(f"the controller reads z of size {c.latent_dim} and h of size "
                            f"{c.hidden_dim}, but V and M give {self.latent_dim} and "
                            f"{self.hidden_dim}")
        return c.to(self.device).eval()

    # ------------------------------------------------------------------------ state

    def reset(self, batch_size: int = 1, seeds: Sequence[int] | None = None) -> None:
        """Start ``batch_size`` episodes: M's state ``(h, c)`` is zero, each (B, H).

        :param seeds: with ``z="sample"``, one seed per row for its noise (default 0, 1, ...):
            the same seed gives the same z sequence whatever the batch."""
        self.state = self.mdnrnn.initial_state(batch_size, self.device)
        if self.z_mode == "sample":
            seeds = list(range(batch_size)) if seeds is None else list(seeds)
            if len(seeds) != batch_size:
                raise ValueError(f"got {len(seeds)} seeds for {batch_size} rows")
            self._noise = [torch.Generator(device=self.device).manual_seed(int(s) & (2**63 - 1))
                           for s in seeds]

    # ------------------------------------------------------------------------ steps

    @torch.no_grad()
    def encode(self, observations: np.ndarray, rows: Sequence[int] | None = None
               ) -> torch.Tensor:
        """Raw observations (B, 96, 96, 3) or preprocessed frames (B, 64, 64, 3), uint8
        -> z (B, D) float32 on the agent's device: ``mu``, or with ``z="sample"`` mu + sigma *
        eps with eps from the generators of ``rows`` (default 0..B-1); with a VQ-VAE the
        quantised latent ``z_q`` (B, C h w)."""
        return self._encode(observations, rows)[0]

    @torch.no_grad()
    def encode_codes(self, observations: np.ndarray) -> torch.Tensor:
        """A VQ-VAE agent's code grids of the observations: (B, cells) int64 (raster order),
        what M reads."""
        if not self.discrete:
            raise DataError("encode_codes needs a VQ-VAE as V; this agent's V is a VAE")
        return self._encode(observations, None)[1]

    def _encode(self, observations: np.ndarray, rows: Sequence[int] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, m_input)``: what C reads and what M reads (z itself, or the codes)."""
        obs = np.asarray(observations)
        if obs.ndim == 4 and obs.shape[1:] == _OBS_SHAPE:
            # Frame by frame, as collection does: the same bytes as preprocess_frames (exact
            # integer arithmetic), and several times faster than one stacked matmul.
            obs = np.stack([preprocess_frame(o) for o in obs])
        elif obs.ndim != 4 or obs.shape[1:] != _FRAME_SHAPE:
            raise ValueError(f"expected observations (B, 96, 96, 3) or frames (B, 64, 64, 3), "
                             f"got shape {obs.shape}")
        if obs.dtype != np.uint8:
            raise ValueError(f"expected uint8 observations, got {obs.dtype}")
        if self.precision == "bf16":  # the encoder's bf16 convolutions run channels_last
            x = frames_to_tensor(obs, self.device, channels_last=True).to(torch.bfloat16)
            x = x.contiguous(memory_format=torch.channels_last)  # already: a no-op
        else:
            x = frames_to_tensor(obs, self.device)
        if self.discrete:
            # z_e (B, C, h, w). Frame by frame when batch-invariant: PyTorch runs a 3x3 or 1x1
            # convolution of one small frame natively and of several with oneDNN, and the
            # last-bit difference flips near-tied codes.
            if self.batch_invariant:
                z_e = torch.cat([self._encoder(x[i:i + 1]) for i in range(len(x))])
            else:
                z_e = self._encoder(x)
            codes = self._quantize(z_e.float())
            return codes_to_latent(self.vae.quantizer.codebook.float(), codes), codes
        # (B, 1024): convolutions, row-invariant (oneDNN)
        features = self._encoder(x).float()
        sample = self.z_mode == "sample"
        shift = self.latent_shift
        if not self.batch_invariant:
            mu = self.vae.fc_mu(features)
            if shift is not None:
                mu = mu + shift
            if not sample:
                return mu, mu
            sigma = self.vae.fc_logvar(features).mul(0.5).exp()
        else:
            w, b = self.vae.fc_mu.weight, self.vae.fc_mu.bias
            mu = torch.stack([F.linear(f, w, b) for f in features])  # one (1024,) row at a time
            if shift is not None:
                mu = mu + shift
            if not sample:
                return mu, mu
            w, b = self.vae.fc_logvar.weight, self.vae.fc_logvar.bias
            sigma = torch.stack([F.linear(f, w, b) for f in features]).mul(0.5).exp()
        rows = range(len(mu)) if rows is None else rows
        eps = torch.stack([torch.randn(mu.shape[1], generator=self._noise[r], device=mu.device)
                           for r in rows])
        z = mu + sigma * eps
        return z, z

    def _quantize(self, z_e: torch.Tensor) -> torch.Tensor:
        """z_e (B, C, h, w) -> codes (B, cells) int64: each cell's nearest code (raster order,
        as ``VQVAE.encode_codes``), one frame's (cells, C) at a time with ``batch_invariant``."""
        nearest, C = self.vae.quantizer.nearest, self.vae.code_dim
        cells = z_e.movedim(1, -1).reshape(len(z_e), -1, C)  # (B, cells, C)
        if self.batch_invariant:
            return torch.stack([nearest(f) for f in cells])
        return nearest(cells.reshape(-1, C)).view(len(z_e), -1)

    def _controller_output(self, z: torch.Tensor, h: torch.Tensor,
                           controllers: Sequence[Controller] | None) -> torch.Tensor:
        """a (B, 3) from z (B, D), h (B, H) and one controller per row (or the agent's)."""
        per_row = list(controllers) if controllers is not None else None
        if per_row is not None and len(per_row) != len(z):
            raise ValueError(f"got {len(per_row)} controllers for {len(z)} rows")
        if self.batch_invariant:
            cs = per_row or [self.controller] * len(z)
            return torch.cat([c(z[i:i + 1], h[i:i + 1]) for i, c in enumerate(cs)])
        if per_row is None:
            return self.controller(z, h)
        out = torch.empty(len(z), ACTION_DIM, device=z.device)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(per_row):
            groups.setdefault(id(c), []).append(i)
        for idx in groups.values():
            rows = torch.as_tensor(idx, device=z.device)
            out[rows] = per_row[idx[0]](z[rows], h[rows])
        return out

    @torch.no_grad()
    def act(self, observations: np.ndarray, rows: Sequence[int] | None = None,
            controllers: Sequence[Controller] | None = None) -> np.ndarray:
        """One step of the rows ``rows`` (default: all): observations -> actions, and M's
        state of those rows advanced by ``(z_t, a_t)``.

        :param observations: (n, 96, 96, 3) raw or (n, 64, 64, 3) preprocessed uint8, one per
            row of ``rows``.
        :param rows: which rows of the state these observations belong to (finished
            environments simply leave the list); default ``range(batch_size)``.
        :param controllers: one C per observation; default the agent's controller.
        :return: actions (n, 3) float32 in ``[-1, 1] x [0, 1] x [0, 1]``.
        """
        if self.state is None:
            raise RuntimeError("call reset(batch_size) before act")
        z, m_input = self._encode(observations, rows)
        n = len(z)
        if rows is None:
            if n != self.batch_size:
                raise ValueError(f"got {n} observations for a batch of {self.batch_size}: "
                                 "pass rows=")
            index = None
            h, c = self.state
        else:
            if len(rows) != n:
                raise ValueError(f"got {n} observations for {len(rows)} rows")
            index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
            h, c = self.state[0][index], self.state[1][index]
        a = self._controller_output(z, h, controllers)
        _, (h_next, c_next) = self.mdnrnn.step(m_input, a, (h, c))
        if index is None:
            self.state = (h_next, c_next)
        else:
            self.state[0][index] = h_next
            self.state[1][index] = c_next
        return a.float().cpu().numpy()

    @torch.no_grad()
    def predicted_z(self, rows: Sequence[int] | None = None) -> torch.Tensor:
        """M's most likely next z from the current state of ``rows`` (default: all), in the
        layout C reads: the mean of the most likely mixture component per dimension
        (``sample_next`` at temperature 0), or each cell's most likely code as ``z_q``.
        After :meth:`act` this is M's guess of the frame the action leads to."""
        if self.state is None:
            raise RuntimeError("call reset(batch_size) before predicted_z")
        h = self.state[0] if rows is None else self.state[0][list(rows)]
        out = self.mdnrnn.predict(h)
        if self.discrete:
            return codes_to_latent(self.vae.quantizer.codebook.float(),
                                   sample_next_codes(out, 0.0))
        return sample_next(out, 0.0)
