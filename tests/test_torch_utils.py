"""Device, seeding, precision and small model helpers."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from worldmodels.errors import ConfigError, WorldModelsError
from worldmodels.utils.torch import (
    THREAD_ENV_VARS,
    autocast,
    channels_last,
    check_finite,
    count_parameters,
    derive_seed,
    eval_mode,
    resolve_device,
    seed_everything,
    set_threads,
    unwrap_model,
)

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_resolve_device_without_gpu(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError) as info:
            resolve_device(spec)
        assert "CUDA is not available" in str(info.value) and "\n" not in str(info.value)


def test_resolve_device_with_fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu0", "", "cuda:x", "tpu"])
def test_resolve_device_unknown(spec):
    with pytest.raises(ConfigError, match="device"):
        resolve_device(spec)


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()


def test_seed_everything_repeats_draws():
    seed_everything(123)
    first = _draws()
    seed_everything(123)
    assert _draws() == first
    seed_everything(124)
    assert _draws() != first
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ConfigError):
            seed_everything(bad)


def test_derive_seed_deterministic_and_distinct():
    assert derive_seed(0, "episode", 3) == derive_seed(0, "episode", 3)
    # The k-th SeedSequence child: independent streams, not seed + k.
    child = np.random.SeedSequence(42).spawn(8)[5]
    assert derive_seed(42, 5) == int(child.generate_state(1, np.uint32)[0])

    seeds = {derive_seed(7, "worker", k) for k in range(2000)}
    assert len(seeds) == 2000
    variants = [derive_seed(7), derive_seed(8), derive_seed(7, 1, 2), derive_seed(7, 2, 1),
                derive_seed(7, 12), derive_seed(7, "a"), derive_seed(7, "b"), derive_seed(7, "a", 0)]
    assert len(set(variants)) == len(variants)
    assert all(0 <= s < 2**32 for s in seeds)
    wide = derive_seed(7, "x", bits=63)
    assert 0 <= wide < 2**63 and wide != derive_seed(7, "x")
    with pytest.raises(ConfigError):
        derive_seed(7, -1)
    with pytest.raises(ConfigError):
        derive_seed(-7)
    with pytest.raises(ConfigError):
        derive_seed(7, 1.5)


def test_derive_seed_stable_across_processes():
    """String keys must not go through Python's per-process salted hash(): another process
    with another hash seed derives the same seed as this one."""
    code = ("import sys; assert hash('cmaes') != int(sys.argv[1]); "
            "from worldmodels.utils.torch import derive_seed; print(derive_seed(3, 'cmaes', 'pop', 9))")
    hashseed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": hashseed}
    proc = subprocess.run([sys.executable, "-c", code, str(hash("cmaes"))], capture_output=True,
                          text=True, env=env, timeout=60, check=True)
    assert int(proc.stdout) == derive_seed(3, "cmaes", "pop", 9)


def test_autocast_and_channels_last_are_noops_on_cpu():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    for device in ("cpu", torch.device("cpu")):
        with autocast(device):
            assert (a @ b).dtype == torch.float32
            assert not torch.is_autocast_enabled("cpu")
    conv = nn.Conv2d(3, 8, 3)
    assert channels_last(conv, "cpu") is conv
    assert conv.weight.is_contiguous()


def test_set_threads(monkeypatch):
    for var in THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
        assert all(os.environ[var] == "2" for var in THREAD_ENV_VARS)
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ConfigError):
        set_threads(0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), torch.tensor([1.0, float("nan")]),
                                 torch.tensor(-float("inf"))])
def test_check_finite_raises_with_step(bad):
    with pytest.raises(WorldModelsError) as info:
        check_finite(bad, step=17, what="kl")
    assert str(info.value) == (
        "kl became NaN/inf at step 17: lower the learning rate or check the data; "
        "the last checkpoint is intact"
    )


def test_check_finite_passes_finite():
    check_finite(torch.tensor(3.0, requires_grad=True) * 2, step=0)
    check_finite(1e30, step=0)
    check_finite(torch.zeros(5), step=0)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 2)  # 8 parameters
        self.b = self.a  # tied: counted once
        self.frozen = nn.Linear(2, 1)  # 3 parameters
        self.frozen.requires_grad_(False)


class FakeCompiled(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


def test_count_parameters_and_unwrap():
    model = Shared()
    assert count_parameters(model) == 11
    assert count_parameters(model, trainable_only=True) == 8
    wrapped = FakeCompiled(nn.DataParallel(model))
    assert unwrap_model(wrapped) is model
    assert count_parameters(wrapped) == 11


def test_eval_mode_restores_training_flag():
    model = nn.Sequential(nn.Dropout(0.5))
    with eval_mode(model):
        assert not model.training
    assert model.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


@pytest.mark.parametrize("flags, native, expected", [
    ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, True, "bf16"),  # AMX: measured faster
    ({"avx512f", "avx512_bf16"}, True, "fp32"),  # native, measured no faster (V 0.75x)
    ({"avx2", "fma"}, False, "fp32"),  # emulated
    (set(), False, "fp32"),  # /proc/cpuinfo unreadable
])
def test_auto_precision_is_bf16_on_the_cpu_only_with_amx(monkeypatch, flags, native, expected):
    import worldmodels.utils.torch as torch_utils

    monkeypatch.setattr(torch_utils, "_cpu_flags", lambda: set(flags))
    assert torch_utils.cpu_has_native_bf16() is native
    assert torch_utils.auto_precision("cpu") == expected
    assert torch_utils.use_bf16(torch.device("cpu"), "auto") is (expected == "bf16")
    assert torch_utils.use_bf16(torch.device("cpu"), "bf16") is True  # forced either way
