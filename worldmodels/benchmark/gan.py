"""Benchmark of DCGAN training: images/s of one D step plus one G step.

The step is :func:`worldmodels.stages.train_gan.gan_step`, the training loop's own (GAN of
Goodfellow et al. 2014, arXiv:1406.2661; DCGAN architecture and Adam settings of Radford
et al. 2016, arXiv:1511.06434), on synthetic frames already on the device, so the numbers
are the model's speed, not the data pipeline's (``scripts/benchmark.py data`` measures
that). Warm-up steps are excluded and CUDA is synchronised around the timed steps.

On a CPU with native bf16 (AVX512-BF16 / AMX) the step is timed in fp32 and in bf16
autocast (``gan.precision``), alternating in rounds in one run, and the ratio is reported:
what ``precision = "auto"`` chooses there is measured, not assumed.

On CUDA (bf16 autocast, channels_last, as in training) the FLOPs of one step are counted
with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, forward and
backward) and reported as achieved TFLOP/s and as a share of the chip's dense bf16 peak.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from worldmodels.generative.gan import DCGAN
from worldmodels.stages.train_gan import gan_step
from worldmodels.utils.torch import (
    channels_last,
    cpu_has_native_bf16,
    resolve_device,
    seed_everything,
)

WARMUP_STEPS = 3

# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendor's datasheets.
H200_BF16_PEAK_TFLOPS = 989.0
H100_SXM_BF16_PEAK_TFLOPS = 989.0
A100_BF16_PEAK_TFLOPS = 312.0
BF16_PEAK_TFLOPS = {  # matched as substrings of torch.cuda.get_device_name()
    "H200": H200_BF16_PEAK_TFLOPS,
    "H100": H100_SXM_BF16_PEAK_TFLOPS,
    "A100": A100_BF16_PEAK_TFLOPS,
}


def bf16_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a known CUDA chip, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for chip, peak in BF16_PEAK_TFLOPS.items() if chip in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(batch_size: int = 128, steps: int = 20, device: str = "auto",
        precisions: tuple[str, ...] | None = None, rounds: int = 3) -> list[dict[str, Any]]:
    """Rows ``{"what", "value", "unit"}``: training images/s and ms per step (and on CUDA
    TFLOP/s and the share of the bf16 peak) of the paper-size DCGAN (Z=100, 64 channels).

    :param batch_size: images per batch (real and fake each).
    :param steps: timed D+G steps per precision, after :data:`WARMUP_STEPS` untimed ones,
        split over ``rounds`` alternating rounds.
    :param device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    :param precisions: ``gan.precision`` values to time; default: on CUDA ``("auto",)``
        (bf16), on a CPU with native bf16 ``("fp32", "bf16")`` side by side (plus their
        ratio), else ``("fp32",)``.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training: one batch shape
    if precisions is None:
        precisions = (("auto",) if dev.type == "cuda"
                      else ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",))
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    setups = {}
    for precision in precisions:  # one model per precision, the same initial weights
        seed_everything(0)
        model = channels_last(DCGAN().to(dev), dev).train()
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        setups[precision] = (model, opt_g, opt_d)
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(batch_size, 3, 64, 64, generator=gen) * 2 - 1).to(dev).contiguous(
        memory_format=fmt)
    z = torch.randn(batch_size, model.latent_dim, generator=gen).to(dev)

    def step(precision: str) -> None:
        model, opt_g, opt_d = setups[precision]
        gan_step(model.generator, model.discriminator, opt_g, opt_d, real, z,
                 precision=precision)

    for precision in precisions:
        for _ in range(WARMUP_STEPS):
            step(precision)
    _sync(dev)
    rounds = max(1, min(rounds, steps))
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    elapsed = dict.fromkeys(precisions, 0.0)
    for n in per_round:
        for precision in precisions:
            t0 = time.perf_counter()
            for _ in range(n):
                step(precision)
            _sync(dev)
            elapsed[precision] += time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    for precision in precisions:
        seconds = max(elapsed[precision], 1e-9) / steps
        where = f"B={batch_size}, {dev.type}, {precision}"
        rows += [
            {"what": f"gan: train images/s (1 D + 1 G step, {where})",
             "value": batch_size / seconds, "unit": "images/s"},
            {"what": f"gan: time per D+G step ({where})", "value": seconds * 1e3, "unit": "ms"},
        ]
    if len(precisions) == 2:
        a, b = precisions
        rows.append({"what": f"gan: {b} / {a} images/s (side by side, {rounds} rounds)",
                     "value": elapsed[a] / max(elapsed[b], 1e-9), "unit": "x"})
    if dev.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        seconds = max(elapsed[precisions[0]], 1e-9) / steps
        where = f"B={batch_size}, {dev.type}"
        with FlopCounterMode(display=False) as counter:
            step(precisions[0])
        tflops = counter.get_total_flops() / seconds / 1e12
        rows.append({"what": f"gan: achieved TFLOP/s (bf16 autocast, {where})",
                     "value": tflops, "unit": "TFLOP/s"})
        peak = bf16_peak_tflops(dev)
        if peak is not None:
            rows.append({"what": f"gan: share of {torch.cuda.get_device_name(dev)} bf16 "
                                 f"dense peak ({peak:g} TFLOP/s)",
                         "value": 100 * tflops / peak, "unit": "%"})
    return rows
