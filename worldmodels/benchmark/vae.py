"""Benchmark of V's training step: images/s, and on CUDA achieved TFLOP/s vs the bf16 peak.

V is the convolutional VAE of Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122),
a β-VAE (Higgins et al. 2017) or a VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937).
One step is exactly what :func:`worldmodels.train.vae.train_vae` does per batch: uint8
frames already on the device -> float, forward (bf16 autocast and channels_last on CUDA),
losses in fp32, backward, Adam step. Warm-up steps (and ``torch.compile``'s compilation)
are excluded from the timing, and CUDA is synchronised before reading the clock.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode` on one eager
training step (matmuls and convolutions, forward and backward; the optimiser's elementwise
work is not counted), so TFLOP/s is the useful arithmetic rate.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from worldmodels.config import load_config
from worldmodels.train.vae import MODELS, Objective, model_from_config, to_float, training_losses
from worldmodels.utils.torch import channels_last, resolve_device, seed_everything

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


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a CUDA device, or None when unknown (or not CUDA)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def _measure(model: str, batch_size: int, steps: int, device: torch.device,
             compile: bool) -> dict[str, Any]:
    v = load_config(overrides={"vae": {"model": model, "batch_size": batch_size}}).vae
    seed_everything(0)
    net = channels_last(model_from_config(v), device).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=v.lr, fused=device.type == "cuda")
    objective = Objective.from_config(v)
    train_model = torch.compile(net) if compile else net
    frames = torch.randint(0, 256, (batch_size, 3, 64, 64), dtype=torch.uint8, device=device)
    if device.type == "cuda":
        frames = frames.contiguous(memory_format=torch.channels_last)  # as load_frames gives

    def step(module: torch.nn.Module, i: int) -> None:
        losses = training_losses(module, to_float(frames), objective, i)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with FlopCounterMode(display=False) as counter:
        step(net, 0)
    flops = counter.get_total_flops()
    for i in range(WARMUP_STEPS):
        step(train_model, i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(train_model, i)
    sync()
    seconds = time.perf_counter() - t0
    tflops = flops * steps / seconds / 1e12
    peak = bf16_peak_tflops(device)
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {threads} thread{'s' if threads > 1 else ''}")
    return {
        "model": model, "device": name, "batch": batch_size, "compile": compile,
        "images/s": batch_size * steps / seconds,
        "TFLOP/s": tflops,
        "% of bf16 peak": 100 * tflops / peak if peak else "n/a",
    }


def run(model: str = "vae", batch_size: int = 100, steps: int = 20,
        device: str = "auto") -> list[dict[str, Any]]:
    """Training throughput of V, eager (and on CUDA also ``torch.compile``-d).

    :param model: ``vae``, ``betavae`` or ``vqvae`` (paper-default sizes).
    :param batch_size: frames per step (the paper's 100).
    :param steps: timed steps after the warm-up.
    :param device: ``auto``, ``cpu``, ``cuda``...
    :return: rows ``{"model", "device", "batch", "compile", "images/s", "TFLOP/s",
        "% of bf16 peak"}``.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    dev = resolve_device(device)
    rows = [_measure(model, batch_size, steps, dev, compile=False)]
    if dev.type == "cuda":  # compiling on a CPU takes minutes and rarely pays there
        rows.append(_measure(model, batch_size, steps, dev, compile=True))
    return rows
