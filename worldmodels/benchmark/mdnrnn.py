"""Benchmark of M's training step: sequence-steps per second.

M is the MDN-RNN of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122): an LSTM with
a Gaussian-mixture head per latent dimension (Bishop 1994; Graves 2013, arXiv:1308.0850),
at the paper's sizes (z 32, 256 units, 5 Gaussians) and the authors' batch of 100
sequences of 999 transitions. One step is exactly what
:func:`worldmodels.train.mdnrnn.train_mdnrnn` does per batch: latents already on the device,
``z`` resampled from ``N(mu, sigma^2)``, teacher-forced forward (cuDNN LSTM under bf16
autocast on CUDA; heads and losses in fp32), backward, gradient clipping, Adam step.
Warm-up steps (and ``torch.compile``'s compilation) are excluded; CUDA is synchronised
before reading the clock. A sequence-step is one transition of one sequence: batch x
seq_len per optimiser step.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from worldmodels.generative.vae import reparameterize
from worldmodels.memory import MDNRNN
from worldmodels.train.mdnrnn import sequence_losses
from worldmodels.utils.torch import count_parameters, resolve_device, seed_everything

WARMUP_STEPS = 2
LATENT_DIM = 32  # the paper's z
ACTION_DIM = 3


def _measure(batch_size: int, seq_len: int, steps: int, device: torch.device,
             compile: bool, hidden_dim: int) -> dict[str, Any]:
    seed_everything(0)
    model = MDNRNN(LATENT_DIM, ACTION_DIM, hidden_dim=hidden_dim).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    train_model = torch.compile(model) if compile else model
    g = torch.Generator(device=device).manual_seed(0)
    shape = (batch_size, seq_len + 1, LATENT_DIM)
    mu = torch.randn(shape, device=device, generator=g)
    logvar = torch.randn(shape, device=device, generator=g) - 2.0
    batch = {
        "actions": torch.rand(batch_size, seq_len, ACTION_DIM, device=device, generator=g),
        "rewards": torch.randn(batch_size, seq_len, device=device, generator=g),
        "dones": torch.zeros(batch_size, seq_len, device=device),
        "next_valid": torch.ones(batch_size, seq_len, dtype=torch.bool, device=device),
    }

    def step() -> None:
        batch["z"] = reparameterize(mu, logvar, g)  # fresh z every batch, as in training
        losses = sequence_losses(train_model, batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(WARMUP_STEPS):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - t0
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {threads} thread{'s' if threads > 1 else ''}")
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return {
        "model": "mdnrnn", "device": name, "params": count_parameters(model),
        "batch": batch_size, "seq_len": seq_len, "compile": compile,
        "precision": "bf16 LSTM, fp32 heads" if bf16 else "fp32",
        "seq-steps/s": batch_size * seq_len * steps / seconds,
        "ms/step": 1000 * seconds / steps,
    }


def run(batch_size: int = 100, seq_len: int = 999, steps: int = 5, device: str = "auto",
        hidden_dim: int = 256) -> list[dict[str, Any]]:
    """Training throughput of M at the paper's sizes, eager (and on CUDA also compiled).

    :param batch_size: sequences per step (the authors' 100).
    :param seq_len: transitions per sequence (the authors' 999).
    :param steps: timed steps after the warm-up.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :param hidden_dim: LSTM units (the paper's 256).
    :return: rows ``{"model", "device", "params", "batch", "seq_len", "compile",
        "precision", "seq-steps/s", "ms/step"}``.
    """
    if min(batch_size, seq_len, steps, hidden_dim) < 1:
        raise ValueError("batch_size, seq_len, steps and hidden_dim must be >= 1")
    dev = resolve_device(device)
    rows = [_measure(batch_size, seq_len, steps, dev, False, hidden_dim)]
    if dev.type == "cuda":  # compiling on a CPU takes minutes and rarely pays there
        rows.append(_measure(batch_size, seq_len, steps, dev, True, hidden_dim))
    return rows
