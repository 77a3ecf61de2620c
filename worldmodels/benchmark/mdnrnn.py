"""Benchmark of M's training step: ours against a plain PyTorch step, sequence-steps per second.

M is the MDN-RNN of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122): an LSTM with
a Gaussian-mixture head per latent dimension (Bishop 1994; Graves 2013, arXiv:1308.0850),
at the paper's sizes (z 32, 256 units, 5 Gaussians) and the authors' batch of 100
sequences of 999 transitions. Our step is exactly what
:func:`worldmodels.stages.train_mdnrnn.train_mdnrnn` does per batch: latents already on the
device, ``z`` resampled from ``N(mu, sigma^2)``, teacher-forced forward (the LSTM under bf16
autocast on CUDA and on CPUs with native bf16; heads and losses in fp32), the mixture NLL
straight from the head's raw output (compiled where ``compile_loss`` says so), backward,
gradient clipping, fused Adam step.

**The reference** is the same network, loss and optimiser as a newcomer writes them
(:class:`ReferenceMDNRNN`, :func:`reference_loss`, as in ctallec/world-models): ``nn.LSTM``
and one ``nn.Linear`` head in fp32, ``log_softmax`` mixture weights and a log-sum-exp
Gaussian-mixture NLL, reward MSE and done BCE, ``clip_grad_norm_`` (or ``clip_grad_value_``,
whichever the config clips by), ``torch.optim.Adam`` with its defaults. Same initial
weights, same batch; the two alternate (:func:`worldmodels.benchmark.vae.alternate`), and
``vs_reference`` is our sequence-steps/s over the reference's. A sequence-step is one
transition of one sequence: batch x seq_len per optimiser step. Warm-up steps (and
``torch.compile``'s compilation) are excluded; CUDA is synchronised before the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.benchmark.vae import alternate, device_name
from worldmodels.config import load_config
from worldmodels.generative.vae import reparameterize
from worldmodels.memory import MDNRNN, mixture_nll
from worldmodels.memory.losses import clip_gradients, sequence_losses
from worldmodels.stages.train_mdnrnn import mixture_loss_fn
from worldmodels.utils.torch import (
    count_parameters,
    fused_adam,
    resolve_device,
    seed_everything,
    use_bf16,
)

WARMUP_STEPS = 2
LATENT_DIM = 32  # the paper's z
ACTION_DIM = 3


class ReferenceMDNRNN(nn.Module):
    """M as a newcomer writes it: ``nn.LSTM`` over ``[z_t, a_t]``, one ``nn.Linear`` giving
    the mixture ``(logits, mu, logsigma)`` (each D x K), the reward and the done logit, all
    fp32. Same parameter names and shapes as :class:`~worldmodels.memory.MDNRNN` (its
    three heads are the rows of this one's ``heads``: see :func:`reference_weights`)."""

    def __init__(self, latent_dim: int = 32, action_dim: int = 3, hidden_dim: int = 256,
                 num_gaussians: int = 5) -> None:
        super().__init__()
        self.D, self.K = latent_dim, num_gaussians
        self.lstm = nn.LSTM(latent_dim + action_dim, hidden_dim, batch_first=True)
        self.heads = nn.Linear(hidden_dim, 3 * latent_dim * num_gaussians + 2)

    def forward(self, z: torch.Tensor, a: torch.Tensor):
        """z (B, T, D), a (B, T, A) -> logpi, mu, logsigma (B, T, D, K), reward, done (B, T)."""
        h, _ = self.lstm(torch.cat([z, a], dim=-1))
        out = self.heads(h)
        n = self.D * self.K
        logits = out[..., :n].view(*h.shape[:2], self.D, self.K)
        mu = out[..., n:2 * n].view(*h.shape[:2], self.D, self.K)
        logsigma = out[..., 2 * n:3 * n].view(*h.shape[:2], self.D, self.K)
        return F.log_softmax(logits, dim=-1), mu, logsigma, out[..., -2], out[..., -1]


def reference_weights(model: MDNRNN) -> dict[str, torch.Tensor]:
    """``model``'s weights as a :class:`ReferenceMDNRNN` state dict (heads stacked)."""
    sd = model.state_dict()
    out = {k: v for k, v in sd.items() if k.startswith("lstm.")}
    out["heads.weight"] = torch.cat([sd["mdn.weight"], sd["reward_head.weight"],
                                     sd["done_head.weight"]])
    out["heads.bias"] = torch.cat([sd["mdn.bias"], sd["reward_head.bias"],
                                   sd["done_head.bias"]])
    return out


def reference_loss(model: ReferenceMDNRNN, batch: dict[str, torch.Tensor],
                   done_pos_weight: float = 1.0) -> torch.Tensor:
    """``mean GMM NLL + mean (r_hat - r)^2 + mean BCE(done)`` over the real steps (every
    step of a benchmark batch), the NLL by log-sum-exp as in ctallec/world-models'
    ``gmm_loss``."""
    z = batch["z"]
    logpi, mu, logsigma, reward, done = model(z[:, :-1], batch["actions"])
    target = z[:, 1:].unsqueeze(-1)
    log_prob = (logpi - logsigma - 0.5 * math.log(2 * math.pi)
                - 0.5 * ((target - mu) / logsigma.exp()) ** 2)
    nll = -torch.logsumexp(log_prob, dim=-1).mean()
    mse = F.mse_loss(reward, batch["rewards"])
    bce = F.binary_cross_entropy_with_logits(done, batch["dones"],
                                             pos_weight=torch.tensor(done_pos_weight))
    return nll + mse + bce


def _batch(batch_size: int, seq_len: int, device: torch.device):
    """Latents and the fixed parts of a batch (every step real, no done)."""
    g = torch.Generator(device=device).manual_seed(0)
    shape = (batch_size, seq_len + 1, LATENT_DIM)
    mu = torch.randn(shape, device=device, generator=g)
    logvar = torch.randn(shape, device=device, generator=g) - 2.0
    batch = {
        "actions": torch.rand(batch_size, seq_len, ACTION_DIM, device=device, generator=g),
        "rewards": torch.randn(batch_size, seq_len, device=device, generator=g),
        "dones": torch.zeros(batch_size, seq_len, device=device),
        "next_valid": torch.ones(batch_size, seq_len, dtype=torch.bool, device=device),
        "mask": torch.ones(batch_size, seq_len, dtype=torch.bool, device=device),
    }
    return mu, logvar, batch, g


def run(batch_size: int = 100, seq_len: int = 999, steps: int = 5, device: str = "auto",
        hidden_dim: int = 256) -> list[dict[str, Any]]:
    """Training throughput of M at the paper's sizes against the plain reference step.

    :param batch_size: sequences per step (the authors' 100).
    :param seq_len: transitions per sequence (the authors' 999).
    :param steps: timed steps of each (after the warm-up), in alternating rounds.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :param hidden_dim: LSTM units (the paper's 256).
    :return: rows ``{"impl", "model", "device", "params", "batch", "seq_len", "precision",
        "loss", "seq-steps/s", "ms/step", "vs_reference"}``.
    """
    if min(batch_size, seq_len, steps, hidden_dim) < 1:
        raise ValueError("batch_size, seq_len, steps and hidden_dim must be >= 1")
    dev = resolve_device(device)
    m = load_config(overrides={"mdnrnn": {"batch_size": batch_size, "seq_len": seq_len,
                                          "hidden_dim": hidden_dim}}).mdnrnn
    mu, logvar, batch, g = _batch(batch_size, seq_len, dev)
    seed_everything(0)
    model = MDNRNN(LATENT_DIM, ACTION_DIM, hidden_dim=hidden_dim).to(dev).train()
    ref = ReferenceMDNRNN(LATENT_DIM, ACTION_DIM, hidden_dim).to(dev).train()
    ref.load_state_dict(reference_weights(model))
    optimizer = torch.optim.Adam(model.parameters(), lr=m.lr, fused=fused_adam(dev))
    ref_optimizer = torch.optim.Adam(ref.parameters(), lr=m.lr)
    nll_fn = mixture_loss_fn(m, latent_dim=LATENT_DIM)
    compiled = nll_fn is not mixture_nll

    def ours() -> None:
        batch["z"] = reparameterize(mu, logvar, g)  # fresh z every batch, as in training
        losses = sequence_losses(model, batch, m.reward_weight, m.done_weight,
                                 m.done_pos_weight, m.precision, nll_fn)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        clip_gradients(model.parameters(), m.grad_clip, m.grad_clip_mode)
        optimizer.step()

    def reference() -> None:
        batch["z"] = reparameterize(mu, logvar, g)
        loss = reference_loss(ref, batch, m.done_pos_weight)
        ref_optimizer.zero_grad()
        loss.backward()
        if m.grad_clip_mode == "value":
            torch.nn.utils.clip_grad_value_(ref.parameters(), m.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), m.grad_clip)
        ref_optimizer.step()

    impls: dict[str, Callable[[], None]] = {"ours": ours, "reference": reference}
    seconds = alternate(impls, steps, dev, warmup=WARMUP_STEPS)
    bf16 = use_bf16(dev, m.precision)
    precision = {"ours": ("bf16 LSTM" if bf16 else "fp32 LSTM") + ", fp32 heads"
                 + (", compiled NLL" if compiled else ""), "reference": "fp32"}
    rows = []
    for impl, s in seconds.items():
        rows.append({
            "impl": impl, "model": "mdnrnn", "device": device_name(dev),
            "params": count_parameters(model if impl == "ours" else ref),
            "batch": batch_size, "seq_len": seq_len, "precision": precision[impl],
            "seq-steps/s": batch_size * seq_len / s, "ms/step": 1000 * s,
            "vs_reference": seconds["reference"] / s,
        })
    return rows
