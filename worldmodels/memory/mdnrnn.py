"""M: the mixture-density recurrent network of *World Models*, its loss and its sampling.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 2.2 and appendix A.2: an
LSTM (one layer, 256 units) reads ``[z_t, a_t]`` and its hidden state ``h_t`` parameterises
``P(z_{t+1} | a_t, z_t, h_t)`` as a mixture density network (Bishop, *Mixture Density
Networks*, 1994; with an RNN as in Graves, *Generating Sequences With Recurrent Neural
Networks*, 2013, arXiv:1308.0850). As in the paper (and the sketch-rnn code it builds on)
every latent dimension ``j`` has its **own** K-component 1-D Gaussian mixture::

    p(z_{t+1,j}) = sum_k pi_{t,j,k} N(z_{t+1,j}; mu_{t,j,k}, sigma_{t,j,k}^2),   K = 5

so the head outputs ``3 * D * K`` numbers per step (mixture logits, means, log-sigmas). Two
scalar heads predict the reward (regression) and the end of the episode (a logit). The
mixture term of M's loss is :func:`gmm_nll` (from normalised weights) or, straight from the
head's raw output, :func:`mixture_nll`; the training objective that adds the reward and done
terms is :func:`worldmodels.stages.train_mdnrnn.sequence_losses`. In the dream, :func:`sample_next` draws ``z_{t+1}`` with the paper's
temperature ``tau``: mixture logits divided by ``tau``, ``sigma`` scaled by ``sqrt(tau)``.

:class:`CodeRNN` is the same memory for a VQ-VAE's discrete latent (van den Oord et al.
2017, arXiv:1711.00937): the next code of each grid cell is a categorical over the codebook.

Shapes: ``B`` batch, ``T`` time, ``D = latent_dim``, ``A = action_dim``, ``H = hidden_dim``,
``K`` mixture components (continuous) or codebook size (discrete). Recurrent state: ``(h, c)``,
each (B, H) (not ``nn.LSTM``'s (1, B, H)); ``h`` is what the controller reads. The output heads,
the losses and the sampling run in fp32 with autocast disabled (fp64 stays fp64): bf16 keeps
about 3 significant digits, too few for the means and log-sigmas of a sharp mixture.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.errors import DataError
from worldmodels.utils.torch import draw_noise

__all__ = [
    "MDNOutput",
    "MDNRNN",
    "gmm_nll",
    "mixture_nll",
    "sample_next",
    "CodeRNNOutput",
    "CodeRNN",
    "sample_next_codes",
    "codes_to_latent",
    "build_mdnrnn",
    "mdnrnn_model_config",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

State = tuple[torch.Tensor, torch.Tensor]


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least fp32 (bool/int/bf16/fp16 are promoted, fp64 is kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of ``Categorical(logits=logits)`` over the last dim (Gumbel-max),
    for any leading shape: (..., K) -> (..., 1) int64."""
    u = draw_noise("uniform", logits.shape, generator, logits.device, logits.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
    return (logits + gumbel).argmax(dim=-1, keepdim=True)


def _check_temperature(temperature: float) -> None:
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")


# --------------------------------------------------------------------------------------------
# Continuous M: Gaussian mixture per latent dimension
# --------------------------------------------------------------------------------------------


def gmm_nll(
    x: torch.Tensor, logpi: torch.Tensor, mu: torch.Tensor, logsigma: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of each element of ``x`` under its own 1-D Gaussian mixture.

    With ``sigma = exp(logsigma)``, for every position ``(..., j)``::

        nll_j = -logsumexp_k [ logpi_jk - logsigma_jk - 0.5 log(2 pi)
                               - 0.5 ((x_j - mu_jk) / sigma_jk)^2 ]

    The log-sum-exp keeps it finite (and its gradient, a softmax over components, bounded)
    when every component is far from ``x`` or very narrow; ``exp(-logsigma)`` is finite in fp32
    for ``|logsigma| < 88``. Computed in fp32 with autocast disabled (fp64 inputs stay fp64).

    :param x: (..., D) values (e.g. ``z_{t+1}``).
    :param logpi: (..., D, K) normalised log mixture weights (``logsumexp_k logpi = 0``).
    :param mu: (..., D, K) component means.
    :param logsigma: (..., D, K) component log standard deviations.
    :return: (..., D) NLL in nats, fp32 (fp64 if the inputs are).
    """
    if not (logpi.shape == mu.shape == logsigma.shape):
        raise ValueError(
            "logpi, mu and logsigma must have the same shape (..., D, K), got "
            f"{tuple(logpi.shape)}, {tuple(mu.shape)} and {tuple(logsigma.shape)}"
        )
    if x.shape != mu.shape[:-1]:
        raise ValueError(
            f"x must have shape {tuple(mu.shape[:-1])} (mixture shape without K), "
            f"got {tuple(x.shape)}"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, logpi, mu, logsigma = _fp32(x), _fp32(logpi), _fp32(mu), _fp32(logsigma)
        scaled = (x.unsqueeze(-1) - mu) * torch.exp(-logsigma)
        log_components = logpi - logsigma - _LOG_SQRT_2PI - 0.5 * scaled.square()
        return -torch.logsumexp(log_components, dim=-1)


def mixture_nll(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """:func:`gmm_nll` straight from the mixture head's raw output, without ``logpi``.

    ``params`` (..., 3, D, K) holds ``(logits, mu, logsigma)`` along dim -3 (what
    :meth:`MDNRNN.raw` returns). With ``s_k = (x - mu_k) exp(-logsigma_k)``::

        nll = logsumexp_k logits_k - logsumexp_k [logits_k - logsigma_k - 0.5 s_k^2]
              + 0.5 log(2 pi)

    which equals ``gmm_nll(x, log_softmax(logits), mu, logsigma)`` (the normaliser of the
    weights leaves the inner log-sum-exp as a constant), with one pass less over the
    (..., D, K) tensors and no ``logpi`` to keep for the backward. Pure elementwise ops and
    two K-reductions: what ``torch.compile`` fuses into a loop or two, forward and backward.
    fp32 with autocast disabled (fp64 stays fp64).

    :param params: (..., 3, D, K) logits, means and log standard deviations.
    :param x: (..., D) values.
    :return: (..., D) NLL in nats.
    """
    if params.dim() < 3 or params.shape[-3] != 3 or x.shape != params.shape[:-3] + params.shape[-2:-1]:
        raise ValueError(
            f"params must have shape (..., 3, D, K) and x (..., D), got {tuple(params.shape)} "
            f"and {tuple(x.shape)}"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        logits, mu, logsigma = _fp32(params).unbind(dim=-3)
        scaled = (_fp32(x).unsqueeze(-1) - mu) * torch.exp(-logsigma)
        log_components = logits - logsigma - 0.5 * scaled.square()
        return (torch.logsumexp(logits, dim=-1) - torch.logsumexp(log_components, dim=-1)
                + _LOG_SQRT_2PI)


class MDNOutput(NamedTuple):
    """What :class:`MDNRNN` returns; ``S`` is ``(B, T)`` from ``forward``, ``(B,)`` from ``step``.

    :ivar logpi: (*S, D, K) normalised log mixture weights (log-softmax over K), fp32.
    :ivar mu: (*S, D, K) component means, fp32.
    :ivar logsigma: (*S, D, K) component log standard deviations, fp32.
    :ivar reward: (*S,) predicted reward ``r_{t+1}``, fp32; ``None`` without a reward head.
    :ivar done_logit: (*S,) logit of ``P(done_{t+1})``, fp32; ``None`` without a done head.
    :ivar state: ``(h, c)`` each (B, H): the LSTM state after the last step.
    """

    logpi: torch.Tensor
    mu: torch.Tensor
    logsigma: torch.Tensor
    reward: torch.Tensor | None
    done_logit: torch.Tensor | None
    state: State


class _RecurrentMemory(nn.Module):
    """LSTM core and reward/done heads shared by :class:`MDNRNN` and :class:`CodeRNN`."""

    def __init__(
        self, input_dim: int, action_dim: int, hidden_dim: int, reward_head: bool, done_head: bool
    ) -> None:
        super().__init__()
        if action_dim < 1 or hidden_dim < 1:
            raise ValueError(
                f"action_dim and hidden_dim must be >= 1, got {action_dim} and {hidden_dim}"
            )
        self.action_dim, self.hidden_dim = action_dim, hidden_dim
        self.lstm = nn.LSTM(input_dim + action_dim, hidden_dim, num_layers=1, batch_first=True)
        self.reward_head = nn.Linear(hidden_dim, 1) if reward_head else None
        self.done_head = nn.Linear(hidden_dim, 1) if done_head else None

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state ``(h, c)``, each (batch_size, H), in the LSTM's dtype (what ``state=None``
        means); on the module's device unless ``device`` is given."""
        w = self.lstm.weight_hh_l0
        zeros = torch.zeros(batch_size, self.hidden_dim, device=device or w.device, dtype=w.dtype)
        return zeros, zeros.clone()

    def _check_actions(self, a: torch.Tensor, lead: tuple[int, ...]) -> None:
        if tuple(a.shape) != (*lead, self.action_dim):
            raise ValueError(
                f"actions must have shape {(*lead, self.action_dim)}, got {tuple(a.shape)}"
            )

    def _recur(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """(B, T, I) -> hidden sequence (B, T, H) and the final ``(h, c)`` each (B, H)."""
        # Inputs often arrive as fp64 (numpy actions): follow the LSTM's parameter dtype.
        dtype = self.lstm.weight_ih_l0.dtype
        x = x.to(dtype)
        # A state returned under autocast is bf16/fp16: cast it back so it also works outside.
        hx = None
        if state is not None:
            hx = tuple(s.to(dtype).unsqueeze(0).contiguous() for s in state)
        hs, (h, c) = self.lstm(x, hx)
        return hs, (h[0], c[0])

    def _heads(
        self, main: nn.Linear, hs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``main(hs)`` and the reward and done heads, in fp32, as **one** matrix product of
        ``hs`` (converted to fp32 once) with the heads' stacked weights: the same numbers as
        three ``nn.Linear`` calls, with one pass over the (B, T, H) hidden states instead of
        three, forward and backward."""
        layers = [main, *(h for h in (self.reward_head, self.done_head) if h is not None)]
        with torch.autocast(device_type=hs.device.type, enabled=False):
            weight = torch.cat([_fp32(layer.weight) for layer in layers])
            bias = torch.cat([_fp32(layer.bias) for layer in layers])
            out = F.linear(_fp32(hs), weight, bias)
        n = main.out_features
        rest = iter(out[..., n:].unbind(-1))
        reward = None if self.reward_head is None else next(rest)
        done = None if self.done_head is None else next(rest)
        return out[..., :n], reward, done


class MDNRNN(_RecurrentMemory):
    """The *World Models* M: LSTM over ``[z_t, a_t]`` + one Gaussian mixture per latent dim.

    ``h_{t+1}, c_{t+1} = LSTM([z_t, a_t], (h_t, c_t))``; from ``h_{t+1}``, one linear layer gives
    ``(logits, mu, logsigma)`` each (D, K) (``logpi = log_softmax_K(logits)``) for
    ``P(z_{t+1})``, and two more the reward ``r_{t+1}`` and the done logit.

    Parameter count, with ``I = D + A``::

        4 H (I + H) + 8 H          (LSTM: W_ih, W_hh, b_ih, b_hh)
        + (H + 1) * 3 D K          (mixture head)
        + (H + 1) * (reward_head + done_head)

    = 300,032 + 123,360 + 514 = **423,906** at the defaults (D=32, A=3, H=256, K=5).

    :param latent_dim: D (32 in the paper).
    :param action_dim: A (3 for CarRacing).
    :param hidden_dim: H, LSTM units (256 in the paper).
    :param num_gaussians: K, mixture components per latent dimension (5 in the paper).
    :param reward_head: predict the reward of the transition.
    :param done_head: predict the end of the episode.
    """

    def __init__(
        self,
        latent_dim: int = 32,
        action_dim: int = 3,
        hidden_dim: int = 256,
        num_gaussians: int = 5,
        reward_head: bool = True,
        done_head: bool = True,
    ) -> None:
        if latent_dim < 1 or num_gaussians < 1:
            raise ValueError(
                f"latent_dim and num_gaussians must be >= 1, got {latent_dim} and {num_gaussians}"
            )
        super().__init__(latent_dim, action_dim, hidden_dim, reward_head, done_head)
        self.latent_dim, self.num_gaussians = latent_dim, num_gaussians
        #: constructor arguments (plain types), enough to rebuild the module from a checkpoint
        self.hparams: dict[str, Any] = {
            "latent_dim": latent_dim, "action_dim": action_dim, "hidden_dim": hidden_dim,
            "num_gaussians": num_gaussians, "reward_head": reward_head, "done_head": done_head,
        }  # fmt: skip
        self.mdn = nn.Linear(hidden_dim, 3 * latent_dim * num_gaussians)

    def raw(
        self, z: torch.Tensor, a: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, State]:
        """:meth:`forward` before the mixture logits are normalised (what training's fused
        :func:`mixture_nll` reads): z (B, T, D), a (B, T, A) -> ``(params, reward,
        done_logit, state)``, ``params`` (B, T, 3, D, K) fp32 = ``(logits, mu, logsigma)``
        along dim 2, ``reward`` and ``done_logit`` (B, T) fp32 or None."""
        if z.dim() != 3 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, T, {self.latent_dim}), got {tuple(z.shape)}")
        self._check_actions(a, tuple(z.shape[:2]))
        hs, state = self._recur(torch.cat([z, a.to(z.dtype)], dim=-1), state)
        params, reward, done_logit = self._heads(self.mdn, hs)
        params = params.unflatten(-1, (3, self.latent_dim, self.num_gaussians))
        return params, reward, done_logit, state

    def forward(self, z: torch.Tensor, a: torch.Tensor, state: State | None = None) -> MDNOutput:
        """Run the sequence: z (B, T, D), a (B, T, A) -> :class:`MDNOutput` with (B, T, ...).

        Output ``t`` is the prediction for ``z_{t+1}`` after reading ``z_0..z_t, a_0..a_t``.

        :param state: ``(h, c)`` each (B, H) to continue from; ``None`` = zeros.
        """
        params, reward, done_logit, state = self.raw(z, a, state)
        logits, mu, logsigma = params.unbind(dim=-3)
        return MDNOutput(F.log_softmax(logits, dim=-1), mu, logsigma, reward, done_logit, state)

    def predict(self, h: torch.Tensor) -> MDNOutput:
        """M's heads on hidden states ``h`` (..., H): the prediction for ``z_{t+1}`` (and the
        reward and done logit) that :meth:`forward` makes after its LSTM, from M's own fused
        heads; ``state`` is None. The dream and ``watch.py`` read M's prediction this way."""
        params, reward, done_logit = self._heads(self.mdn, h)
        logits, mu, logsigma = params.unflatten(
            -1, (3, self.latent_dim, self.num_gaussians)).unbind(dim=-3)
        return MDNOutput(F.log_softmax(logits, dim=-1), mu, logsigma, reward, done_logit, None)

    def step(
        self, z: torch.Tensor, a: torch.Tensor, state: State | None = None
    ) -> tuple[MDNOutput, State]:
        """One step for inference: z (B, D), a (B, A) -> (output with (B, ...) shapes, new state).

        The same ``nn.LSTM`` run on a length-1 sequence: same weights and kernels as
        :meth:`forward`, so stepping T times equals one call on the T-step sequence.
        """
        if z.dim() != 2:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        self._check_actions(a, (z.shape[0],))
        out = self.forward(z.unsqueeze(1), a.unsqueeze(1), state)
        out = MDNOutput(*(None if t is None else t[:, 0] for t in out[:5]), out.state)
        return out, out.state


def sample_next(
    out_step: MDNOutput, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``z_{t+1}`` from the predicted mixtures at temperature ``tau`` (the paper's dream).

    Per latent dimension (as in the original ``sample_sequence``): component
    ``k ~ softmax(logpi / tau)``, then ``z = mu_k + sigma_k sqrt(tau) eps``, ``eps ~ N(0, 1)``.
    ``tau = 1`` samples the model's mixture; ``tau < 1`` sharpens it; ``tau = 0`` returns the
    mean of the most likely component (the ``tau -> 0`` limit), deterministically.

    :param out_step: output of :meth:`MDNRNN.step` (mixtures (B, D, K)); any leading shape
        works, e.g. a (B, T, D, K) ``forward`` output.
    :param temperature: ``tau >= 0``.
    :param generator: optional ``torch.Generator`` for the randomness (on any device).
    :return: z (B, D) (the mixtures' shape without K), fp32.
    """
    _check_temperature(temperature)
    logpi, mu, logsigma = out_step.logpi, out_step.mu, out_step.logsigma
    if temperature == 0:
        k = logpi.argmax(dim=-1, keepdim=True)
        return mu.gather(-1, k).squeeze(-1)
    # Gumbel-max on logpi / tau samples the renormalised tempered weights exactly.
    k = _gumbel_argmax(logpi / temperature, generator)
    mean = mu.gather(-1, k).squeeze(-1)
    std = logsigma.gather(-1, k).squeeze(-1).exp() * math.sqrt(temperature)
    return mean + std * draw_noise("normal", mean.shape, generator, mean.device, mean.dtype)


# --------------------------------------------------------------------------------------------
# Discrete M: a categorical over the codebook per grid cell (VQ-VAE latent)
# --------------------------------------------------------------------------------------------


class CodeRNNOutput(NamedTuple):
    """What :class:`CodeRNN` returns; ``S`` is ``(B, T)`` or ``(B,)`` (``step``).

    :ivar logits: (*S, cells, K) unnormalised log-probabilities of each cell's next code, fp32.
    :ivar reward: (*S,) predicted reward, fp32, or ``None``.
    :ivar done_logit: (*S,) done logit, fp32, or ``None``.
    :ivar state: ``(h, c)`` each (B, H).
    """

    logits: torch.Tensor
    reward: torch.Tensor | None
    done_logit: torch.Tensor | None
    state: State


class CodeRNN(_RecurrentMemory):
    """M for a VQ-VAE latent: next-code prediction, one categorical per grid cell.

    Codes ``c_t`` (cells,) in ``[0, K)`` are embedded (``E = code_embed_dim`` per cell) and
    concatenated cell by cell (raster order, so the position is kept) with ``a_t``; an LSTM as in
    :class:`MDNRNN` gives ``h_{t+1}``, from which one linear layer gives the logits (cells, K)
    of ``P(c_{t+1, i}) = softmax(logits_i)``. Cells are independent given ``h`` (the discrete
    counterpart of one mixture per latent dimension). Same reward and done heads.

    Parameter count, with ``I = cells E + A``::

        K E + 4 H (I + H) + 8 H + (H + 1) cells K + (H + 1) (reward_head + done_head)

    = 1,024 + 791,552 + 2,105,344 + 514 = 2,898,434 for K=128, an 8x8 grid, E=8, H=256.

    :param codebook_size: K, the VQ-VAE's number of codes.
    :param grid_cells: number of code positions per frame (``h * w``; 64 for an 8x8 grid).
    :param action_dim: A.
    :param hidden_dim: H.
    :param code_embed_dim: E, embedding size of one code.
    :param reward_head: predict the reward of the transition.
    :param done_head: predict the end of the episode.
    """

    def __init__(
        self,
        codebook_size: int,
        grid_cells: int,
        action_dim: int = 3,
        hidden_dim: int = 256,
        code_embed_dim: int = 8,
        reward_head: bool = True,
        done_head: bool = True,
    ) -> None:
        if codebook_size < 2 or grid_cells < 1 or code_embed_dim < 1:
            raise ValueError(
                "need codebook_size >= 2, grid_cells >= 1 and code_embed_dim >= 1, got "
                f"{codebook_size}, {grid_cells} and {code_embed_dim}"
            )
        super().__init__(
            grid_cells * code_embed_dim, action_dim, hidden_dim, reward_head, done_head
        )
        self.codebook_size, self.grid_cells = codebook_size, grid_cells
        #: constructor arguments (plain types), enough to rebuild the module from a checkpoint
        self.hparams: dict[str, Any] = {
            "codebook_size": codebook_size, "grid_cells": grid_cells, "action_dim": action_dim,
            "hidden_dim": hidden_dim, "code_embed_dim": code_embed_dim,
            "reward_head": reward_head, "done_head": done_head,
        }  # fmt: skip
        self.embed = nn.Embedding(codebook_size, code_embed_dim)
        self.head = nn.Linear(hidden_dim, grid_cells * codebook_size)

    def _flat_codes(self, codes: torch.Tensor, lead: int) -> torch.Tensor:
        """(*lead, cells) or (*lead, h, w) -> (*lead, cells) int64 (raster order)."""
        if codes.dim() == lead + 2:
            codes = codes.flatten(lead)
        if codes.dim() != lead + 1 or codes.shape[-1] != self.grid_cells:
            want = "(B, T" if lead == 2 else "(B"
            raise ValueError(
                f"codes must have shape {want}, {self.grid_cells}) or {want}, h, w) with "
                f"h * w = {self.grid_cells}, got {tuple(codes.shape)}"
            )
        if codes.is_floating_point():
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        return codes.long()

    def forward(
        self, codes: torch.Tensor, a: torch.Tensor, state: State | None = None
    ) -> CodeRNNOutput:
        """codes (B, T, cells) or (B, T, h, w) int, a (B, T, A) -> logits (B, T, cells, K), ...

        Output ``t`` predicts the codes of frame ``t + 1``.
        """
        codes = self._flat_codes(codes, lead=2)
        self._check_actions(a, tuple(codes.shape[:2]))
        x = self.embed(codes).flatten(2)  # (B, T, cells * E)
        hs, state = self._recur(torch.cat([x, a.to(x.dtype)], dim=-1), state)
        logits, reward, done_logit = self._heads(self.head, hs)
        logits = logits.unflatten(-1, (self.grid_cells, self.codebook_size))
        return CodeRNNOutput(logits, reward, done_logit, state)

    def predict(self, h: torch.Tensor) -> CodeRNNOutput:
        """M's heads on hidden states ``h`` (..., H): the logits (..., cells, K) of the next
        codes (and the reward and done logit) that :meth:`forward` gives after its LSTM;
        ``state`` is None. ``watch.py`` reads M's prediction this way."""
        logits, reward, done_logit = self._heads(self.head, h)
        logits = logits.unflatten(-1, (self.grid_cells, self.codebook_size))
        return CodeRNNOutput(logits, reward, done_logit, None)

    def step(
        self, codes: torch.Tensor, a: torch.Tensor, state: State | None = None
    ) -> tuple[CodeRNNOutput, State]:
        """One step: codes (B, cells) or (B, h, w), a (B, A) -> (output (B, ...), new state)."""
        codes = self._flat_codes(codes, lead=1)
        self._check_actions(a, (codes.shape[0],))
        out = self.forward(codes.unsqueeze(1), a.unsqueeze(1), state)
        out = CodeRNNOutput(*(None if t is None else t[:, 0] for t in out[:3]), out.state)
        return out, out.state


def sample_next_codes(
    out_step: CodeRNNOutput, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw the next codes: ``c_i ~ softmax(logits_i / tau)`` per cell; ``tau = 0`` -> argmax.

    :param out_step: output of :meth:`CodeRNN.step` (logits (B, cells, K)); any leading
        shape works.
    :return: codes (B, cells) int64 (the logits' shape without K).
    """
    _check_temperature(temperature)
    if temperature == 0:
        return out_step.logits.argmax(dim=-1)
    return _gumbel_argmax(_fp32(out_step.logits) / temperature, generator).squeeze(-1)


def codes_to_latent(codebook: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The quantised latent ``z_q`` of code grids, flat: what C reads with a discrete M.

    ``z_q[b, d, i] = codebook[codes[b, i], d]`` laid out channel-major, (B, C, cells) flattened
    to (B, C * cells): the layout of ``VQVAE.quantizer.embed(codes).flatten(1)`` (its decoder's
    input (B, C, h, w), flattened), so ``VQVAE.decode(z_q.view(B, C, h, w))`` draws it. A
    lookup: the same bytes whatever the batch.

    :param codebook: (K, C) code vectors (``VQVAE.quantizer.codebook``).
    :param codes: (B, cells) or (B, h, w) integer codes in ``[0, K)``.
    :return: (B, C * cells) in the codebook's dtype.
    """
    flat = codes.reshape(codes.shape[0], -1).long()
    return codebook[flat].transpose(1, 2).reshape(flat.shape[0], -1)


# ----------------------------------------------------------------------------- registry


def mdnrnn_model_config(model: nn.Module) -> dict[str, Any]:
    """What a checkpoint stores to rebuild M: ``{"model": name, **model.hparams}``."""
    name = "discrete_mdnrnn" if isinstance(model, CodeRNN) else "mdnrnn"
    return {"model": name, **model.hparams}


def build_mdnrnn(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild M from a checkpoint's ``model_config``: ``{"model": name, **kwargs}``."""
    kwargs = dict(model_config)
    name = kwargs.pop("model", None)
    if name == "mdnrnn":
        return MDNRNN(**kwargs)
    if name == "discrete_mdnrnn":
        return CodeRNN(**kwargs)
    raise DataError(f"unknown M model {name!r} in a checkpoint's model_config")
