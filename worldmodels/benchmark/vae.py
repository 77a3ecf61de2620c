"""Benchmark of V's training step: ours against a plain PyTorch step, images/s, and on CUDA
achieved TFLOP/s vs the bf16 peak.

V is the convolutional VAE of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122),
a β-VAE (Higgins et al. 2017) or a VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937).
Our step is exactly what :func:`worldmodels.stages.train_vae.train_vae` does per batch: uint8
frames already on the device -> float, forward (channels_last; bf16 autocast on CUDA and on
CPUs with native bf16, :func:`~worldmodels.stages.train_vae.use_bf16`; the first deconvolution as
the matrix product it is, :meth:`~worldmodels.generative.ConvVAE.decode`), losses in fp32,
backward, fused Adam step.

**The reference** (``model="vae"``) is the same network, loss and optimiser as a newcomer
writes them (:class:`ReferenceVAE`, :func:`reference_loss`, as in ctallec/world-models):
the same ``nn.Sequential`` layers run straight through in the default layout, fp32, the summed squared error plus
the analytic KL floored at the free nats (``kl_tolerance * D``, per sample), ``z`` by
``randn_like``, ``torch.optim.Adam`` with its defaults. Same initial weights, same batch.
The two alternate, ``ROUNDS`` rounds of ``steps / ROUNDS`` steps each, so that a change
in the machine's load hits both; the rate of each is its median round. ``vs_reference``
is our images/s over the reference's.

Warm-up steps (and ``torch.compile``'s compilation) are excluded from the timing, and CUDA
is synchronised before reading the clock. FLOPs are counted with
:class:`torch.utils.flop_counter.FlopCounterMode` on one eager training step (matmuls and
convolutions, forward and backward; the optimiser's elementwise work is not counted), so
TFLOP/s is the useful arithmetic rate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from worldmodels.config import load_config
from worldmodels.generative import ConvVAE
from worldmodels.generative.objective import Objective, to_float, training_losses
from worldmodels.generative.registry import MODELS
from worldmodels.stages.train_vae import model_from_config, prepare_model
from worldmodels.utils.torch import fused_adam, resolve_device, seed_everything, use_bf16

# Dense (no 2:4 sparsity) bf16 tensor-core peak of the NVIDIA H200 SXM, from NVIDIA's
# datasheet (1,979 TFLOP/s "with sparsity"; the dense rate is half).
H200_BF16_PEAK_TFLOPS = 989.0
# Dense bf16 peaks by device-name substring (first match wins); unknown chips get no %.
BF16_PEAK_TFLOPS = {
    "H200": H200_BF16_PEAK_TFLOPS,
    "H100 PCIe": 756.0,  # H100 PCIe datasheet, dense
    "H100": 989.0,  # H100 SXM datasheet, dense
    "A100": 312.0,  # A100 datasheet, dense
}
WARMUP_STEPS = 3
ROUNDS = 5  # alternating rounds of ours and the reference


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a CUDA device, or None when unknown (or not CUDA)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


# ------------------------------------------------------------------- the plain reference


class ReferenceVAE(ConvVAE):
    """The *World Models* ConvVAE run as a newcomer runs it: the same ``nn.Sequential``
    layers (and parameter names) as :class:`~worldmodels.generative.ConvVAE`, but the
    forward pass straight through them (the first deconvolution as a transposed
    convolution of a 1x1 map), default memory layout, fp32, ``z`` by ``randn_like``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) in [0, 1] -> ``(x_hat, mu, logvar)``, one ``z`` drawn."""
        h = self.encoder(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decoder(self.fc_decode(z).view(-1, 1024, 1, 1)), mu, logvar


def reference_loss(x: torch.Tensor, x_hat: torch.Tensor, mu: torch.Tensor,
                   logvar: torch.Tensor, kl_tolerance: float = 0.5) -> torch.Tensor:
    """``mean_i [sum_pixels (x_hat - x)^2 + max(KL_i, kl_tolerance * D)]`` with
    ``KL_i = -0.5 sum_j (1 + logvar - mu^2 - exp(logvar))``."""
    recon = (x_hat - x).pow(2).sum(dim=(1, 2, 3))
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)
    kl = torch.clamp(kl, min=kl_tolerance * mu.shape[1])
    return (recon + kl).mean()


# ---------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(steps: dict[str, Callable[[], None]], total: int, device: torch.device,
              warmup: int = WARMUP_STEPS, rounds: int = ROUNDS) -> dict[str, float]:
    """Seconds per call of each of ``steps``: each warmed up, then ``rounds`` rounds that
    run each ``max(1, total // rounds)`` times in turn; the median round of each."""
    per_round = max(1, total // rounds)
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - t0) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu, {threads} thread{'s' if threads > 1 else ''}"


def _our_step(model: str, batch_size: int, device: torch.device, compile: bool,
              precision: str) -> tuple[Callable[[], None], nn.Module, torch.Tensor]:
    """Our training step on a fixed batch: ``(step, the network, the uint8 frames)``."""
    v = load_config(overrides={"vae": {"model": model, "batch_size": batch_size}}).vae
    seed_everything(0)
    net = prepare_model(model_from_config(v), device).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=v.lr, fused=fused_adam(device))
    objective = Objective.from_config(v)
    train_model = torch.compile(net) if compile else net
    seed_everything(1)
    frames = torch.randint(0, 256, (batch_size, 3, 64, 64), dtype=torch.uint8, device=device)
    if device.type == "cuda":
        frames = frames.contiguous(memory_format=torch.channels_last)  # as load_frames gives
    done = 0

    def step() -> None:
        nonlocal done
        losses = training_losses(train_model, to_float(frames), objective, done, precision)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        done += 1

    return step, net, frames


def _reference_step(net: nn.Module, frames: torch.Tensor) -> Callable[[], None]:
    """The plain step, from the same initial weights as ``net`` (ours) and the same batch."""
    v = load_config().vae
    ref = ReferenceVAE(v.latent_dim).to(frames.device).train()
    ref.load_state_dict({k: t.contiguous() for k, t in net.state_dict().items()})
    optimizer = torch.optim.Adam(ref.parameters(), lr=v.lr)
    frames = frames.contiguous()

    def step() -> None:
        x = frames.float() / 255.0
        loss = reference_loss(x, *ref(x), kl_tolerance=v.kl_tolerance)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def run(model: str = "vae", batch_size: int = 100, steps: int = 20,
        device: str = "auto") -> list[dict[str, Any]]:
    """Training throughput of V against the plain reference step (``model="vae"``), eager
    (and on CUDA also ``torch.compile``-d).

    :param model: ``vae``, ``betavae`` or ``vqvae`` (paper-default sizes); the reference
        exists for ``vae`` (the paper's V).
    :param batch_size: frames per step (the paper's 100).
    :param steps: timed steps of each (after the warm-up), in ``ROUNDS`` alternating rounds.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :return: rows ``{"impl", "model", "device", "batch", "compile", "precision",
        "images/s", "ms/step", "TFLOP/s", "% of bf16 peak"}``; our eager row also carries
        ``vs_reference`` (its images/s over the reference's).
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    if min(batch_size, steps) < 1:
        raise ValueError("batch_size and steps must be >= 1")
    dev = resolve_device(device)
    precision = load_config().vae.precision
    bf16 = use_bf16(dev, precision)
    rows = []
    for compile in (False, True) if dev.type == "cuda" else (False,):
        # compiling on a CPU takes minutes and the convolutions it cannot speed up dominate
        ours, net, frames = _our_step(model, batch_size, dev, compile, precision)
        with FlopCounterMode(display=False) as counter:
            _our_step(model, batch_size, dev, False, "fp32")[0]()
        flops = counter.get_total_flops()
        impls: dict[str, tuple[Callable[[], None], str]] = {
            "ours": (ours, "bf16 autocast" if bf16 else "fp32")}
        if model == "vae" and not compile:
            if bf16:  # what bf16 adds, in the same alternation
                impls["ours, fp32"] = (_our_step(model, batch_size, dev, False, "fp32")[0],
                                       "fp32")
            impls["reference"] = (_reference_step(net, frames), "fp32")
        seconds = alternate({k: fn for k, (fn, _) in impls.items()}, steps, dev)
        peak = bf16_peak_tflops(dev)
        for impl, s in seconds.items():
            tflops = flops / s / 1e12
            rows.append({
                "impl": impl, "model": model, "device": device_name(dev), "batch": batch_size,
                "compile": compile, "precision": impls[impl][1],
                "images/s": batch_size / s, "ms/step": 1000 * s, "TFLOP/s": tflops,
                "% of bf16 peak": 100 * tflops / peak if peak else "n/a",
            })
            if "reference" in seconds:
                rows[-1]["vs_reference"] = seconds["reference"] / s
    return rows
