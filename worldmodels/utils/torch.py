"""Device, precision, seeding and thread helpers shared by every training stage.

Conventions (``DESIGN.md``): ``--device auto`` picks CUDA when present; on CUDA the
forward passes run under bf16 autocast with channels_last convolutions, while losses,
KL terms and quantisation stay in fp32 (the callers leave the autocast block for those).
On CPU every helper here is a no-op, so the same loop runs everywhere.

Seeds: one seed per run; every episode, worker or population member gets
:func:`derive_seed` ``(run_seed, *keys)``, so results do not depend on how the work is
split across processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.errors import ConfigError, WorldModelsError
from worldmodels.utils.parallel import THREAD_ENV_VARS


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``--device`` into a :class:`torch.device`.

    :param spec: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or ``"mps"``.
    :raises ConfigError: an unknown name, or a GPU that this machine does not have.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = str(spec).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r} requested but CUDA is not available on this machine: "
                "use --device cpu or --device auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"device {spec!r} requested but this machine has {count} CUDA device(s): "
                f"use cuda:0..cuda:{count - 1}"
            )
        return device
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device {spec!r} requested but MPS is not available: use --device cpu")
        return device
    raise ConfigError(f"unsupported device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU).

    :param seed: a non-negative int below 2**32 (NumPy's legacy generator limit).
    :raises ConfigError: a negative, too large or non-integer seed.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if CUDA is not up yet)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _key_to_int(key: int | str) -> int:
    """A SeedSequence spawn key must be a non-negative int; strings hash to 64 bits."""
    if isinstance(key, bool):
        raise ConfigError(f"derive_seed keys must be ints or strings, got {key!r}")
    if isinstance(key, (int, np.integer)):
        if key < 0:
            raise ConfigError(f"derive_seed keys must be non-negative, got {key}")
        return int(key)
    if isinstance(key, str):
        # sha256, not hash(): Python's str hash changes per process (PYTHONHASHSEED).
        return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    raise ConfigError(f"derive_seed keys must be ints or strings, got {type(key).__name__}")


def derive_seed(seed: int, *keys: int | str, bits: int = 32) -> int:
    """A seed for one piece of work, the same in every process and on every machine.

    ``derive_seed(s, k)`` is the entropy of ``np.random.SeedSequence(s).spawn(...)[k]``:
    child streams are statistically independent of each other and of the parent, unlike
    ``s + k``. Keys may be ints (episode or worker index) or strings (``"cmaes"``).

    :param seed: the run seed (non-negative int).
    :param keys: the path of the piece of work, e.g. ``("episode", 17)``.
    :param bits: size of the result; 32 keeps it valid for ``np.random.seed`` and gymnasium.
    :return: an int in ``[0, 2**bits)``.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not 1 <= bits <= 128:
        raise ConfigError(f"bits must be in [1, 128], got {bits}")
    seq = np.random.SeedSequence(int(seed), spawn_key=tuple(_key_to_int(k) for k in keys))
    words = seq.generate_state(math.ceil(bits / 32), dtype=np.uint32)
    value = 0
    for i, w in enumerate(words):
        value |= int(w) << (32 * i)
    return value & ((1 << bits) - 1)


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16, read from
    ``/proc/cpuinfo``). Without them, bf16 kernels emulate it and run slower than fp32."""
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_amx_bf16() -> bool:
    """True when this CPU has AMX's bf16 tile multiply (``amx_bf16`` in ``/proc/cpuinfo``),
    the one CPU kind where bf16 measured faster than fp32 here."""
    return "amx_bf16" in _cpu_flags()


def auto_precision(device: str | torch.device) -> str:
    """``"bf16"`` where it measured faster than fp32: CUDA with bf16 support, and a CPU with
    AMX-BF16; else ``"fp32"``: what ``precision = "auto"`` means.

    Measured side by side (``scripts/benchmark.py vae|gan``, 2 cores): on an Intel Xeon with
    AMX, V's training step 1.48x and the DCGAN's 1.56x in bf16; on an Intel Xeon with
    AVX512-BF16 but no AMX, 0.75x and 1.01x (V's encoder alone for C about 1x), so bf16 is
    native there and still no faster. A CPU kind not measured gets fp32: bf16 is never
    assumed to be faster.
    """
    device = _as_device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_amx_bf16() else "fp32"
    return "fp32"


def autocast(
    device: str | torch.device, enabled: bool = True
) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on CUDA; a no-op elsewhere (CPU autocast is slower than fp32 here).

    bf16 keeps fp32's exponent range, so no GradScaler is needed. GPUs without bf16
    (pre-Ampere) run in fp32 rather than fp16, which would need loss scaling.
    Compute losses, KL and quantisation outside this block (or cast to fp32).
    """
    device = _as_device(device)
    if enabled and device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Use the NHWC memory format on CUDA (faster cuDNN convolutions); unchanged elsewhere.

    Inputs need not be converted: cuDNN picks channels_last kernels from the weights.
    """
    if _as_device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def set_threads(n: int) -> None:
    """Limit this process (and the processes it starts) to ``n`` CPU threads.

    Worker processes call this first: ``k`` workers with ``ncores`` threads each would
    oversubscribe the machine. The environment variables reach BLAS/OpenMP runtimes that
    start later and child processes.
    """
    n = int(n)
    if n < 1:
        raise ConfigError(f"thread count must be at least 1, got {n}")
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    # Only settable before the first inter-op parallel work; later calls raise.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)


def check_finite(loss: torch.Tensor | float, step: int, what: str = "loss") -> None:
    """Stop training with a one-line error when ``loss`` (any shape) has a NaN or inf.

    Call it before ``backward`` / ``optimizer.step`` so the bad values never reach the
    weights or a checkpoint. On CUDA this synchronises; call it at the logging interval
    if that matters.

    :raises WorldModelsError: naming ``what`` and ``step``.
    """
    if isinstance(loss, torch.Tensor):
        finite = bool(torch.isfinite(loss.detach()).all())
    else:
        finite = bool(np.all(np.isfinite(np.asarray(loss, dtype=np.float64))))
    if not finite:
        raise WorldModelsError(
            f"{what} became NaN/inf at step {step}: lower the learning rate or check the "
            "data; the last checkpoint is intact"
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile`` / DDP / DataParallel wrappers.

    Saving the wrapper would prefix every key with ``_orig_mod.`` or ``module.`` and tie
    the checkpoint to how it was trained.
    """
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        # Only real data-parallel wrappers: an ordinary module may own a child named "module".
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
            continue
        return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (shared tensors counted once)."""
    params = unwrap_model(model).parameters()
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def draw_noise(kind: str, shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``N(0, 1)`` (``kind="normal"``) or ``U[0, 1)`` (``"uniform"``) noise of ``shape`` on
    ``device``. A generator only draws on its own device, so the noise is drawn there and
    moved: a CPU generator gives the same numbers whether the model is on CPU or CUDA."""
    where = generator.device if generator is not None else device
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=generator, device=where, dtype=dtype).to(device)


class GracefulStop:
    """First Ctrl-C or SIGTERM: finish the current step, checkpoint, then stop (as
    KeyboardInterrupt). A second Ctrl-C interrupts at once (the last checkpoint stays)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class FirstNonFinite:
    """The first step whose loss was NaN/inf, tracked on the device: checking every step
    would synchronise the GPU every step. :meth:`check` (at each log) raises."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def check(self) -> None:
        step = int(self.first)
        if step >= 0:
            check_finite(float("nan"), step)


#: settings of ``precision`` for V's and M's training
TRAINING_PRECISIONS = ("auto", "bf16", "fp32")


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether V's or M's network trains under bf16 autocast (``precision`` of
    :class:`~worldmodels.config.VAEConfig` / :class:`~worldmodels.config.MDNRNNConfig`).

    ``auto`` (:func:`auto_precision`): on CUDA with bf16 (as
    :func:`worldmodels.utils.torch.autocast`), and on a CPU with AMX-BF16, where
    ``scripts/benchmark.py vae|mdnrnn`` measured it faster than fp32 (a 2-core AMX Xeon:
    V's step 1.5x, M's LSTM about 1.5x; but when other processes oversubscribe the cores,
    oneDNN's bf16 kernels slow down more than fp32's); elsewhere fp32 (with AVX512-BF16
    alone V's step measured 0.75x, without native bf16 it is emulated). ``bf16`` / ``fp32``
    force it (``bf16`` on a GPU without bf16 runs fp32).
    """
    if precision not in TRAINING_PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return False
    if precision == "bf16" and device.type == "cpu":
        return True
    return auto_precision(device) == "bf16"


def training_autocast(device: torch.device,
                      precision: str = "auto") -> contextlib.AbstractContextManager[None]:
    """bf16 autocast where :func:`use_bf16` says so, else a no-op. Losses, KL and mixture
    heads leave it and compute in fp32 themselves."""
    if use_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fused_adam(device: torch.device) -> bool:
    """Adam's fused kernel (one pass per parameter) on CUDA and CPU, where torch has it."""
    return device.type in ("cuda", "cpu")
