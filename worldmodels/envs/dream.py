"""The dream: CarRacing as M imagines it, one episode (:class:`DreamEnv`) or thousands at once
(:class:`BatchedDream`); the CMA-ES fitness in it is
:func:`worldmodels.control.dream_fitness.dream_rollout_returns`.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 4 ("Learning Inside of a
Dream", and the car-racing dreams of section 3): M is used *as* the environment. The agent sees
``[z_t, h_t]``, acts, and M's LSTM reads ``(z_t, a_t)``; the next latent is *sampled* from
M's mixture at temperature ``tau`` instead of being encoded from a real frame, and the reward
and the end of the episode come from M's own heads::

    (h_{t+1}, c_{t+1}) = LSTM_M([z_t, a_t], (h_t, c_t))          h_0 = c_0 = 0
    z_{t+1} ~ P_tau(z | h_{t+1}):  per latent dimension j,
        k ~ softmax(logpi_j / tau),   z_j = mu_jk + sigma_jk sqrt(tau) eps,   eps ~ N(0, 1)
    r_{t+1} = reward_head(h_{t+1})
    done_{t+1} = sigmoid(done_head(h_{t+1})) > 0.5               (``done="threshold"``)
              or  u < sigmoid(done_head(h_{t+1})), u ~ U(0, 1)    (``done="sample"``)

``tau = 1`` samples M's mixture as trained; ``tau > 1`` makes the dream more uncertain, which
the paper found harder to exploit (a controller trained at ``tau = 1.15`` in the Doom dream
transferred best); ``tau -> 0`` is the deterministic mean of the most likely component. An
episode is also *truncated* after ``max_steps`` steps (1000, CarRacing-v3's limit).

**Start states.** ``z_0 ~ N(mu, sigma^2)`` of the real first frame of a randomly chosen
episode: read from the run's latents file ``latents_<V>.h5`` (frame 0 of up to
``start_episodes`` episodes, evenly spaced) when it exists and was made by the V that M was
trained on; otherwise V is applied to the first frames of real ``CarRacing-v3`` tracks
``0 .. start_tracks-1`` (computed once, when the dream is built). ``h_0 = c_0 = 0``.

**Randomness, keyed per episode.** Every random number of an episode is a counter-based hash
of ``(episode seed, step, slot)`` (Wellons' ``lowbias32``, computed with integer tensor ops on
the dream's device) rather than a draw from one shared generator (:mod:`worldmodels.envs.keyed_noise`). So an episode depends only
on its seed, whatever else shares its batch: :class:`DreamEnv` ``reset(seed=s)`` and row
``i`` of :class:`BatchedDream` ``reset(seeds=[..., s, ...])`` draw the same numbers, on CPU
or CUDA. What can still differ between batch sizes is the last bit of the matrix products
(BLAS picks kernels by shape): trajectories agree to float rounding, and exactly as long as
no rounding difference flips a mixture component; ``tests/test_dream.py`` checks both. The
same keys give the dream fitness (:mod:`worldmodels.control.dream_fitness`) *common random
numbers*: trial ``j`` of every
candidate starts from the same ``z_0`` and draws the same noise.

**Cost.** One dream step of ``B`` episodes is two matrix products (the LSTM gates,
``(B, D+A+H) x (D+A+H, 4H)``, and M's heads, ``(B, H) x (H, 3DK+2)``) and a few element-wise
passes; no rendering, no physics. ``precision="bf16"`` runs both products with bfloat16
inputs and fp32 accumulation (as M's training does under CUDA autocast; on CPUs with
AVX512-BF16 or AMX the products run 2-3x faster than fp32); the cell state, the biases, the
element-wise passes and the sampling always stay in fp32. ``tanh`` is computed as
``2 sigmoid(2x) - 1`` (equal to 1e-7; PyTorch's CPU ``tanh`` is several times slower).

**A discrete dream** (:class:`BatchedCodeDream`): with V a VQ-VAE (van den Oord et al. 2017,
arXiv:1711.00937) and M a :class:`~worldmodels.memory.CodeRNN`, the latent is a code grid;
each cell's next code is drawn from M's categorical at temperature ``tau``
(``softmax(logits / tau)``, the argmax at ``tau = 0``), the observation is ``[z_q, h]`` with
``z_q`` the codes' codebook vectors (what the agent's C reads in the real environment), and
``render()`` decodes the codes with the VQ-VAE. Episodes start from the codes of real first
frames. Everything else (keys, bookkeeping, reward and done) is the continuous dream's.

Shapes: ``B`` episodes, ``D`` latent size (32), ``H`` LSTM units (256), ``A = 3`` actions,
``K`` mixture components (5), ``P`` candidates, ``T`` trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from worldmodels.envs.keyed_noise import _seed_key, _slot_codes, keyed_uniform
from worldmodels.errors import ConfigError, DataError
from worldmodels.generative import VQVAE, ConvVAE
from worldmodels.memory.mdnrnn import MDNRNN, CodeRNN
from worldmodels.utils.torch import resolve_device

__all__ = [  # DreamEnv is in dream_env.py, BatchedCodeDream in code_dream.py
    "BatchedDream",
    "decode_frames",
    "check_world_model",
    "keyed_uniform",
    "DONE_MODES",
    "PRECISIONS",
]

#: how M's done head ends an episode
DONE_MODES = ("threshold", "sample")
#: arithmetic of the two matrix products, LSTM gates and heads (``auto``: bf16 on CUDA, fp32 elsewhere)
PRECISIONS = ("auto", "fp32", "bf16")
#: the action box of CarRacing-v3: steer [-1, 1], gas [0, 1], brake [0, 1]
ACTION_DIM = 3
ACTION_LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)
ACTION_HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)

_RESET_COUNTER = 0  # counter of the start state; step t (1-based) uses counter t


# ------------------------------------------------------------------------ M's pieces


def check_world_model(vae: torch.nn.Module, mdnrnn: torch.nn.Module) -> None:
    """V and M that the agent can drive with: a :class:`ConvVAE` and an :class:`MDNRNN`
    reading its z, or a :class:`VQVAE` and a :class:`CodeRNN` reading its code grids.

    :raises DataError: another pair (the message says what to retrain)."""
    if isinstance(vae, VQVAE):
        if not isinstance(mdnrnn, CodeRNN):
            raise DataError(f"V is a VQ-VAE but M is {type(mdnrnn).__name__}: train M on the "
                            "VQ-VAE's codes (encode.py --model vqvae, then train_mdnrnn.py)")
        cells = vae.grid_size[0] * vae.grid_size[1]
        if (mdnrnn.codebook_size, mdnrnn.grid_cells) != (vae.codebook_size, cells) \
                or mdnrnn.action_dim != ACTION_DIM:
            raise DataError(f"M reads {mdnrnn.grid_cells} codes of {mdnrnn.codebook_size} and "
                            f"actions of size {mdnrnn.action_dim}, but V gives {cells} codes of "
                            f"{vae.codebook_size} and CarRacing's action {ACTION_DIM}: M was "
                            "trained on another V")
        return
    if not isinstance(vae, ConvVAE):
        raise DataError(f"the agent needs a VAE (ConvVAE) or a VQ-VAE as V, got "
                        f"{type(vae).__name__}")
    if not isinstance(mdnrnn, MDNRNN):
        raise DataError(f"the agent needs the continuous MDN-RNN, got "
                        f"{type(mdnrnn).__name__}")
    if mdnrnn.latent_dim != vae.latent_dim or mdnrnn.action_dim != ACTION_DIM:
        raise DataError(f"M reads z of size {mdnrnn.latent_dim} and actions of size "
                        f"{mdnrnn.action_dim}, but V's z has size {vae.latent_dim} and "
                        f"CarRacing's action {ACTION_DIM}: M was trained on another V")




@torch.no_grad()
def decode_frames(vae: nn.Module, z: torch.Tensor) -> np.ndarray:
    """V's decoder as images: z (B, D) -> (B, 64, 64, 3) uint8 (``round(255 x)``); for a
    :class:`~worldmodels.generative.VQVAE`, z is the flat quantised latent (B, C h w) (what
    :func:`~worldmodels.memory.mdnrnn.codes_to_latent` gives), decoded as (B, C, h, w)."""
    if isinstance(vae, VQVAE):
        p = vae.decoder[0].weight
        z = z.reshape(len(z), vae.code_dim, *vae.grid_size)
    else:
        p = vae.fc_decode.weight
    x = vae.decode(z.to(p.device, p.dtype)).float()
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


# ------------------------------------------------------------------------ the batched dream


def _tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x) = 2 sigmoid(2x) - 1``: equal to ~1e-7, and on CPU several times faster than
    ``torch.tanh`` (whose vectorised kernel dominated a dream step)."""
    return torch.sigmoid(x * 2).mul_(2).sub_(1)


class BatchedDream:
    """``B`` dream episodes stepped in lockstep by M, on CPU or CUDA (paper, sec. 4).

    ::

        dream = BatchedDream(mdnrnn, start_mu, start_logvar, batch_size=1024)
        # or, from a run directory: worldmodels.run.load_dream("runs/demo", batch_size=1024)
        obs = dream.reset(seed=0)                      # (B, D+H): [z_0, h_0], rows = seeds 0..B-1
        obs, reward, done = dream.step(actions)       # actions (B, 3) -> (B, D+H), (B,), (B,)

    Row ``i`` after ``reset(seed=S)`` is the episode of seed ``S + i``, the one
    ``DreamEnv.reset(seed=S + i)`` gives (to float rounding, see the module docstring);
    ``reset(seeds=[...])`` chooses every row's seed (and the batch size). A finished row
    (terminated by M's done head or truncated at ``max_steps``) is frozen: its observation
    stays the last one, its reward is 0 and ``done`` stays true until the next reset.

    :param mdnrnn: M (an :class:`~worldmodels.memory.MDNRNN`).
    :param start_mu, start_logvar: (N, D) posteriors of real first frames; each episode
        starts from one of them, ``z_0 ~ N(mu, sigma^2)`` (``worldmodels.run.start_states``
        reads them from a run).
    :param vae: V, only needed for :meth:`decode`.
    :param batch_size: ``B``, rows of :meth:`reset` ``(seed=...)``.
    :param temperature: ``tau >= 0``.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :param max_steps: steps before an episode is truncated.
    :param done: ``threshold`` (``sigmoid(logit) > 0.5``, deterministic given the state) or
        ``sample`` (a Bernoulli draw of M's done probability, keyed like all the noise).
    :param precision: the two matrix products (LSTM gates, heads) in ``fp32`` or ``bf16``;
        ``auto``: bf16 on CUDA (as M trains there), fp32 on CPU.
    :param source: a description of the start states (reports).

    M's weights are copied (fused) when the dream is built: later changes to ``mdnrnn`` do
    not reach it.
    """

    def __init__(self, mdnrnn: MDNRNN, start_mu: np.ndarray | torch.Tensor,
                 start_logvar: np.ndarray | torch.Tensor, *, vae: nn.Module | None = None,
                 batch_size: int = 1, temperature: float = 1.0,
                 device: str | torch.device = "auto", max_steps: int = 1000,
                 done: str = "threshold", precision: str = "auto",
                 source: str = "given") -> None:
        self._setup(mdnrnn, vae, np.asarray(start_mu), np.asarray(start_logvar), source,
                    batch_size, temperature, resolve_device(device), max_steps, done,
                    precision)

    @torch.no_grad()
    def _setup(self, mdnrnn: MDNRNN, vae: nn.Module | None, mu: np.ndarray,
               logvar: np.ndarray, source: str, batch_size: int, temperature: float,
               device: torch.device, max_steps: int, done: str, precision: str) -> None:
        if not isinstance(mdnrnn, MDNRNN):
            hint = (": a CodeRNN dreams in a BatchedCodeDream" if isinstance(mdnrnn, CodeRNN)
                    else "")
            raise DataError(f"the dream needs the continuous MDN-RNN, got "
                            f"{type(mdnrnn).__name__}{hint}")
        self._check_settings(mdnrnn, batch_size, temperature, max_steps, done, precision)
        D, H, K = mdnrnn.latent_dim, mdnrnn.hidden_dim, mdnrnn.num_gaussians
        if mu.ndim != 2 or mu.shape[1] != D or mu.shape != logvar.shape or len(mu) == 0:
            raise DataError(f"start states must be (N, {D}) mu and logvar, got "
                            f"{mu.shape} and {logvar.shape}")
        self.latent_dim, self.num_gaussians = D, K
        self._configure(mdnrnn, vae, source, batch_size, temperature, device, max_steps, done,
                        precision)
        self.start_mu = torch.as_tensor(mu, dtype=torch.float32, device=device)
        self.start_std = torch.as_tensor(logvar, dtype=torch.float32, device=device).mul(0.5).exp()
        # The mixture head's outputs reordered from (3, D, K) to (3, K, D): reductions over
        # the K components then run across contiguous (B, D) slices (a softmax over a
        # trailing dimension of 5 is several times slower on CPU).
        mdn = self.mdnrnn.mdn
        w_mix = mdn.weight.view(3, D, K, H).transpose(1, 2).reshape(3 * K * D, H)
        b_mix = mdn.bias.view(3, D, K).transpose(1, 2).reshape(3 * K * D)
        self._fuse(w_mix, b_mix, input_dim=D)
        self._slots = _slot_codes(2 * D + 1, device)  # component (D), normal (D), done (1)
        self._done_slot = 2 * D
        self._reset_state(0)

    @staticmethod
    def _check_settings(mdnrnn: nn.Module, batch_size: int, temperature: float,
                        max_steps: int, done: str, precision: str) -> None:
        if mdnrnn.action_dim != ACTION_DIM:
            raise DataError(f"M reads actions of size {mdnrnn.action_dim}, CarRacing's are "
                            f"{ACTION_DIM}")
        if done not in DONE_MODES:
            raise ConfigError(f"done must be one of {', '.join(DONE_MODES)}, got {done!r}")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                              f"{precision!r}")
        if not float(temperature) >= 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if int(max_steps) < 1 or int(batch_size) < 1:
            raise ConfigError(f"max_steps and batch_size must be >= 1, got {max_steps} and "
                              f"{batch_size}")

    def _configure(self, mdnrnn: nn.Module, vae: nn.Module | None, source: str,
                   batch_size: int, temperature: float, device: torch.device, max_steps: int,
                   done: str, precision: str) -> None:
        """The settings both dreams share (``latent_dim`` set before)."""
        self.device = device
        self.mdnrnn = mdnrnn.to(device).eval()
        self.vae = None if vae is None else vae.to(device).eval()
        self.hidden_dim = H = mdnrnn.hidden_dim
        self.obs_dim = self.latent_dim + H
        self.batch_size = self.default_batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.max_steps = int(max_steps)
        self.done_mode = done
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        self.precision = precision
        self.start_source = source
        self._sqrt_tau = math.sqrt(self.temperature)
        self._next_seed: int | None = None
        self.seeds: list[int] = []

    def _fuse(self, w_latent: torch.Tensor, b_latent: torch.Tensor, input_dim: int) -> None:
        """One product for the four LSTM gates, one for all the heads: the latent head
        (``w_latent`` (n, H), ``b_latent`` (n,)) first, then reward and done.

        :param input_dim: size of M's latent input, before the action in the LSTM's input."""
        precision = self.precision
        lstm = self.mdnrnn.lstm
        gate_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        w = torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], dim=1).float()  # (4H, D+A+H)
        self._w_gates = w.t().contiguous().to(gate_dtype)  # (D+A+H, 4H)
        self._b_gates = (lstm.bias_ih_l0 + lstm.bias_hh_l0).float()
        weights, biases = [w_latent], [b_latent]
        self._has_reward = self.mdnrnn.reward_head is not None
        self._has_done = self.mdnrnn.done_head is not None
        for head in (self.mdnrnn.reward_head, self.mdnrnn.done_head):
            if head is not None:
                weights.append(head.weight)
                biases.append(head.bias)
        self._w_heads = torch.cat(weights).float().t().contiguous().to(gate_dtype)  # (H, 3KD+2)
        self._b_heads = torch.cat(biases).float()
        self._input_dim = int(input_dim)
        self._latent_outputs = len(b_latent)

    # ------------------------------------------------------------------------ state

    def _reset_state(self, B: int) -> None:
        dev, D, H = self.device, self.latent_dim, self.hidden_dim
        self.z = torch.zeros(B, D, device=dev)
        self.h = torch.zeros(B, H, device=dev)
        self.c = torch.zeros(B, H, device=dev)
        self.keys = torch.zeros(B, dtype=torch.int64, device=dev)
        self.done = torch.ones(B, dtype=torch.bool, device=dev)
        self.terminated = torch.zeros(B, dtype=torch.bool, device=dev)
        self.truncated = torch.zeros(B, dtype=torch.bool, device=dev)
        self.returns = torch.zeros(B, dtype=torch.float64, device=dev)
        self.lengths = torch.zeros(B, dtype=torch.int64, device=dev)
        self.done_prob = torch.zeros(B, device=dev)
        self.t = 0
        self._any_done = True
        # the LSTM's input [z, a, h], in the gate product's dtype (filled in place, no copy)
        self._x = torch.zeros(B, self._input_dim + ACTION_DIM + H, device=dev,
                              dtype=self._w_gates.dtype)

    @property
    def observation(self) -> torch.Tensor:
        """The current ``[z, h]`` (B, D+H) float32 (a new tensor)."""
        return torch.cat([self.z, self.h], dim=1)

    @torch.no_grad()
    def reset(self, seed: int | None = None, seeds: Sequence[int] | None = None
              ) -> torch.Tensor:
        """Start new episodes: ``z_0 ~ N(mu, sigma^2)`` of a random real first frame,
        ``h_0 = c_0 = 0``.

        :param seed: rows are the episodes of seeds ``seed, seed+1, ..., seed+B-1`` with
            ``B`` the constructor's ``batch_size``; ``None`` continues after the last reset's
            seeds (fresh entropy the first time).
        :param seeds: one seed per row instead (its length is ``B`` until the next reset).
        :return: obs (B, D+H) float32 ``[z_0, h_0]`` on the dream's device.
        """
        if seeds is None:
            if seed is None:
                seed = (self._next_seed if self._next_seed is not None
                        else int(np.random.SeedSequence().entropy) % 2**63)
            seeds = [int(seed) + i for i in range(self.default_batch_size)]
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ConfigError("reset needs at least one seed")
        B = len(seeds)
        self.batch_size = B
        self.seeds = seeds
        self._next_seed = (seeds[-1] + 1) % 2**63
        self._reset_state(B)
        self.keys = torch.tensor([_seed_key(s) for s in seeds], dtype=torch.int64,
                                 device=self.device)
        self._start()
        self.done.zero_()
        self._any_done = False
        return self.observation

    def _start(self) -> None:
        """The start latents of the rows of :attr:`keys`: a real first frame's posterior,
        chosen and sampled by the keyed uniforms of counter 0."""
        D = self.latent_dim
        u = keyed_uniform(self.keys, _RESET_COUNTER, self._slots[:D + 1])  # (B, D+1)
        N = len(self.start_mu)
        index = (u[:, 0] * N).long().clamp_(max=N - 1)
        eps = torch.special.ndtri(u[:, 1:])
        self.z = self.start_mu[index] + self.start_std[index] * eps

    # The latent state M reads and the sampler draws: z here, the codes in BatchedCodeDream.
    def _latent(self) -> torch.Tensor:
        return self.z

    def _set_latent(self, latent: torch.Tensor) -> None:
        self.z = latent

    def _write_latent(self, x: torch.Tensor) -> None:
        """M's latent input into the LSTM's input buffer ``x`` (B, input_dim)."""
        x[:] = self.z

    def _sample(self, params: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z_{t+1} (B, D) from the mixture params (B, 3KD), laid out (3, K, D), and
        uniforms (B, >= 2D): component by inverse CDF (one uniform per dimension), then
        ``mu_k + sigma_k sqrt(tau) eps`` with ``eps`` the normal quantile of a uniform."""
        B, D, K = params.shape[0], self.latent_dim, self.num_gaussians
        logits, mu, logsigma = params.view(B, 3, K, D).unbind(dim=1)  # (B, K, D) each
        if self.temperature == 0:
            k = logits.argmax(dim=1, keepdim=True)
            return mu.gather(1, k).squeeze(1)
        # k ~ softmax(logits / tau): log_softmax only shifts the logits by a constant.
        scaled = logits / self.temperature
        weights = scaled.sub_(scaled.amax(dim=1, keepdim=True)).exp_()
        cdf = weights.cumsum_(dim=1)  # unnormalised: compare with u * total
        threshold = u[:, None, :D] * cdf[:, K - 1:]
        k = (cdf < threshold).sum(dim=1, keepdim=True).clamp_(max=K - 1)  # (B, 1, D)
        mean = mu.gather(1, k).squeeze(1)
        std = logsigma.gather(1, k).squeeze(1).exp_().mul_(self._sqrt_tau)
        return mean.addcmul_(std, torch.special.ndtri(u[:, D:2 * D]))

    @torch.no_grad()
    def step(self, actions: torch.Tensor | np.ndarray
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One dream step of every row: actions (B, 3) -> ``(obs, reward, done)``.

        :return: obs (B, D+H) float32 ``[z_{t+1}, h_{t+1}]``; reward (B,) float32 (M's reward
            head; 0 for rows already finished); done (B,) bool, terminated or truncated
            (cumulative: a finished row stays done). Also updated: :attr:`terminated`,
            :attr:`truncated`, :attr:`returns` (B,) float64, :attr:`lengths`,
            :attr:`done_prob` (M's ``P(done)``).
        """
        B, H = self.batch_size, self.hidden_dim
        if len(self.seeds) != B or self.z.shape[0] != B:
            raise RuntimeError("call reset() before step()")
        a = torch.as_tensor(actions, device=self.device).to(torch.float32)
        if tuple(a.shape) != (B, ACTION_DIM):
            raise ValueError(f"actions must have shape ({B}, {ACTION_DIM}), got "
                             f"{tuple(a.shape)}")
        self.t += 1
        finished = self.done.clone()
        x, n_in = self._x, self._input_dim
        self._write_latent(x[:, :n_in])
        x[:, n_in:n_in + ACTION_DIM] = a
        x[:, n_in + ACTION_DIM:] = self.h
        # -- LSTM cell (PyTorch's gate order i, f, g, o)
        with torch.autocast(device_type=self.device.type, enabled=False):
            if self._w_gates.dtype == torch.float32:
                gates = torch.addmm(self._b_gates, x, self._w_gates)
            else:
                gates = torch.mm(x, self._w_gates).float().add_(self._b_gates)
            i, f, g, o = gates.view(B, 4, H).unbind(dim=1)
            c = torch.sigmoid(f).mul_(self.c).addcmul_(torch.sigmoid(i), _tanh(g))
            h = torch.sigmoid(o).mul_(_tanh(c))
            # -- heads: mixture for z_{t+1}, reward, done logit
            if self._w_heads.dtype == torch.float32:
                heads = torch.addmm(self._b_heads, h, self._w_heads)
            else:
                heads = torch.mm(h.to(self._w_heads.dtype), self._w_heads).float()
                heads.add_(self._b_heads)
        n_latent = self._latent_outputs
        u = keyed_uniform(self.keys, self.t, self._slots)  # (B, 2D+1)
        latent = self._sample(heads[:, :n_latent], u)
        col = n_latent
        reward = torch.zeros(B, device=self.device)
        if self._has_reward:
            reward = heads[:, col].clone()
            col += 1
        terminated = torch.zeros(B, dtype=torch.bool, device=self.device)
        done_prob = torch.zeros(B, device=self.device)
        if self._has_done:
            logit = heads[:, col]
            done_prob = torch.sigmoid(logit)
            terminated = (logit > 0 if self.done_mode == "threshold"
                          else u[:, self._done_slot] < done_prob)
        # -- finished rows keep their state; the others advance
        if self._any_done:
            keep = finished[:, None]
            latent = torch.where(keep, self._latent(), latent)
            h = torch.where(keep, self.h, h)
            c = torch.where(keep, self.c, c)
            reward = reward.masked_fill_(finished, 0.0)
            done_prob = torch.where(finished, self.done_prob, done_prob)
        self._set_latent(latent)
        self.h, self.c, self.done_prob = h, c, done_prob
        self.terminated |= terminated & ~finished
        if self.t >= self.max_steps:
            self.truncated |= ~finished & ~self.terminated
        self.done = finished | self.terminated | self.truncated
        self._any_done = bool(self.done.any())  # one sync per step (the caller checks too)
        self.returns += reward
        self.lengths += (~finished).long()
        return self.observation, reward, self.done.clone()

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None = None) -> np.ndarray:
        """V's picture of ``z`` (default: the current latents): (B, 64, 64, 3) uint8."""
        if self.vae is None:
            raise DataError("this dream has no V to decode its latents with")
        return decode_frames(self.vae, self.z if z is None else z)
