"""Checkpoints: exact round trip, atomic writes, one-line errors, RNG restore, manager."""

import dataclasses
import errno
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import worldmodels.utils.checkpoint as ckpt_module
from worldmodels.errors import ConfigError, DataError, WorldModelsError
from worldmodels.utils.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointManager,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Conv + BatchNorm (buffers) + Linear: enough state to catch a lossy round trip."""

    def __init__(self, channels: int = 4, out_dim: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels * 3 * 3, out_dim)

    def forward(self, x):  # (B, 3, 8, 8) -> (B, out_dim)
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def _trained(steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    config = {"channels": 4, "out_dim": 3}
    model = TinyNet(**config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(steps):
        loss = model(torch.randn(5, 3, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, config, opt, sched


def _save(path, model, config, step=3, **kw):
    return save_checkpoint(path, kind="vae", model=model, model_config=config, step=step, **kw)


def test_round_trip_identical_outputs_and_resume(tmp_path):
    model, config, opt, sched = _trained()
    path = _save(tmp_path / "a.pt", model, config, optimizer=opt, scheduler=sched,
                 epoch=1, metrics={"val/loss": 0.5})

    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert raw["kind"] == "vae" and raw["step"] == 3 and raw["epoch"] == 1
    assert raw["metrics"] == {"val/loss": 0.5}
    assert isinstance(raw["torch_version"], str) and raw["worldmodels_version"]

    ck = load_checkpoint(path, kind="vae")
    clone = TinyNet(**ck["model_config"])  # the checkpoint alone rebuilds the model
    clone.load_state_dict(ck["state_dict"])
    clone_opt = torch.optim.Adam(clone.parameters(), lr=1.0)
    clone_opt.load_state_dict(ck["optimizer"])
    clone_sched = torch.optim.lr_scheduler.StepLR(clone_opt, step_size=2, gamma=0.5)
    clone_sched.load_state_dict(ck["scheduler"])

    x = torch.randn(4, 3, 8, 8)
    model.eval()
    clone.eval()
    assert torch.equal(model(x), clone(x))
    assert clone_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for a, b in zip(opt.state.values(), clone_opt.state.values()):
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key

    # One more training step on each: resuming is exact, not approximately right.
    model.train()
    clone.train()
    for m, o, s in ((model, opt, sched), (clone, clone_opt, clone_sched)):
        loss = m(x).square().mean()
        o.zero_grad()
        loss.backward()
        o.step()
        s.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)


class FakeCompiled(nn.Module):
    """What ``torch.compile`` returns: the real module under ``_orig_mod``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner


class HasModuleChild(nn.Module):
    """An ordinary module whose child happens to be called ``module``: not a wrapper."""

    def __init__(self) -> None:
        super().__init__()
        self.module = nn.Linear(2, 2)


@pytest.mark.parametrize("wrap", ["compiled", "dataparallel", "both"])
def test_wrappers_are_stripped(tmp_path, wrap):
    model, config, _, _ = _trained(steps=1)
    wrapped = {
        "compiled": lambda m: FakeCompiled(m),
        "dataparallel": lambda m: nn.DataParallel(m),
        "both": lambda m: FakeCompiled(nn.DataParallel(m)),
    }[wrap](model)
    assert any(k.startswith(("_orig_mod.", "module.")) for k in wrapped.state_dict())
    ck = load_checkpoint(_save(tmp_path / "w.pt", wrapped, config))
    assert list(ck["state_dict"]) == list(model.state_dict())
    TinyNet(**ck["model_config"]).load_state_dict(ck["state_dict"])  # strict: no prefix


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own imports
def test_real_torch_compile_wrapper_is_stripped(tmp_path):
    model = nn.Linear(2, 2)
    compiled = torch.compile(model)  # lazy: nothing is compiled until the first call
    assert list(compiled.state_dict()) == ["_orig_mod.weight", "_orig_mod.bias"]
    ck = load_checkpoint(_save(tmp_path / "c.pt", compiled, {}))
    assert list(ck["state_dict"]) == ["weight", "bias"]


def test_module_named_child_is_not_unwrapped(tmp_path):
    model = HasModuleChild()
    ck = load_checkpoint(_save(tmp_path / "m.pt", model, {}))
    assert list(ck["state_dict"]) == ["module.weight", "module.bias"]


def _half_then(exc):
    """A ``torch.save`` that writes half of the real bytes, then fails with ``exc``."""
    real_save = torch.save

    def fake_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        raise exc

    return fake_save


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")])
def test_interrupted_write_keeps_previous(tmp_path, monkeypatch, exc):
    model, config, _, _ = _trained(steps=1)
    path = _save(tmp_path / "last.pt", model, config, step=1)
    before = path.read_bytes()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", _half_then(exc))
    with pytest.raises(type(exc)):
        _save(path, model, config, step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1


def test_disk_full_is_one_line_error(tmp_path, monkeypatch):
    model, config, _, _ = _trained(steps=1)
    path = _save(tmp_path / "last.pt", model, config, step=1)
    monkeypatch.setattr(torch, "save", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WorldModelsError) as info:
        _save(path, model, config, step=2)
    message = str(info.value)
    assert "disk full" in message and str(path) in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


class _FullDisk(io.RawIOBase):
    """A file that accepts ``limit`` bytes and then fails like a full disk."""

    def __init__(self, path, limit):
        self.inner = open(path, "wb")  # noqa: SIM115
        self.limit = limit
        self.written = 0

    def writable(self):
        return True

    def write(self, data):
        n = len(memoryview(data))
        if self.written + n > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += n
        return self.inner.write(data)

    def close(self):
        self.inner.close()
        super().close()


@pytest.mark.parametrize("limit", [0, 100, 3000])
def test_disk_full_inside_real_torch_save(tmp_path, monkeypatch, limit):
    """torch's C++ zip writer may turn the OSError into 'unexpected pos'; we keep the cause."""
    model, config, _, _ = _trained(steps=1)
    monkeypatch.setattr(ckpt_module, "open", lambda p, mode: _FullDisk(p, limit), raising=False)
    with pytest.raises(WorldModelsError, match="disk full"):
        _save(tmp_path / "x.pt", model, config)
    assert list(tmp_path.iterdir()) == []


def test_sigkill_mid_write_leaves_previous_checkpoint(tmp_path):
    """A real kill -9 while writing: the old file stays valid; the manager removes the temp."""
    model, config, _, _ = _trained(steps=1)
    path = _save(tmp_path / "last.pt", model, config, step=1)
    child = textwrap.dedent(f"""
        import io, sys, time, torch
        from torch import nn
        from worldmodels.utils.checkpoint import save_checkpoint
        real_save = torch.save
        def stuck_save(obj, f):
            buf = io.BytesIO(); real_save(obj, buf); data = buf.getvalue()
            f.write(data[: len(data) // 2]); f.flush()
            print("half", flush=True); time.sleep(60)
        torch.save = stuck_save
        save_checkpoint({str(path)!r}, kind="vae", model=nn.Linear(2, 2), model_config={{}}, step=2)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "half"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith("last.pt.tmp-")
    assert load_checkpoint(path)["step"] == 1
    CheckpointManager(tmp_path, "vae")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def _bad_file(kind: str, tmp_path: Path) -> Path:
    model, config, _, _ = _trained(steps=1)
    good = _save(tmp_path / "good.pt", model, config).read_bytes()
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("step,loss\n1,0.5\n")
    elif kind == "foreign_dict":
        torch.save({"model": model.state_dict(), "iter_num": 3}, path)
    elif kind == "pickled_module":
        torch.save(model, path)
    return path


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("empty", "truncated, corrupt"),
        ("truncated", "truncated, corrupt"),
        ("garbage", "truncated, corrupt"),
        ("text", "truncated, corrupt"),
        ("foreign_dict", "not a worldmodels checkpoint"),
        ("pickled_module", "not a worldmodels checkpoint"),
    ],
)
def test_bad_files_are_data_errors(tmp_path, kind, expected):
    path = _bad_file(kind, tmp_path)
    with pytest.raises(DataError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_missing_wrong_kind_and_newer_version(tmp_path):
    with pytest.raises(DataError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    model, config, _, _ = _trained(steps=1)
    gan = save_checkpoint(tmp_path / "g.pt", kind="gan", model=model, model_config=config, step=0)
    with pytest.raises(DataError) as info:
        load_checkpoint(gan, kind="vae")
    assert str(info.value) == f"{gan} is a 'gan' checkpoint, expected 'vae'"
    assert load_checkpoint(gan, kind="gan")["kind"] == "gan"

    future = torch.load(gan, weights_only=True)
    future["format_version"] = FORMAT_VERSION + 1
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(DataError, match="newer .* upgrade worldmodels"):
        load_checkpoint(tmp_path / "future.pt")


def _draws():
    return (torch.rand(4), np.random.rand(4), np.random.standard_normal(3),
            [random.random() for _ in range(4)], random.gauss(0, 1))


def test_restore_rng_reproduces_draws(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.standard_normal(1)  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and one in Python's
    path = _save(tmp_path / "r.pt", nn.Linear(2, 2), {})
    expected = _draws()
    _draws()  # move every generator on
    restore_rng(load_checkpoint(path))
    got = _draws()
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[2], expected[2])
    assert got[3] == expected[3] and got[4] == expected[4]


@dataclasses.dataclass
class _Cfg:
    latent_dim: int = 32
    out: Path = Path("/tmp/x")


def test_plain_types_and_rejects_objects(tmp_path):
    model = nn.Linear(2, 2)
    path = save_checkpoint(
        tmp_path / "p.pt", kind="vae", model=model, model_config=_Cfg(), step=np.int64(5),
        metrics={"loss": np.float32(0.25), "hist": np.arange(3)},
        extra={"sizes": (1, 2), "gen": np.random.default_rng(0).bit_generator.state},
    )
    ck = torch.load(path, weights_only=True)
    assert ck["model_config"] == {"latent_dim": 32, "out": "/tmp/x"}
    assert ck["step"] == 5 and ck["metrics"]["loss"] == 0.25
    assert torch.equal(ck["metrics"]["hist"], torch.arange(3))
    assert ck["extra"]["sizes"] == (1, 2)
    with pytest.raises(TypeError, match=r"extra\.fn"):
        save_checkpoint(tmp_path / "q.pt", kind="vae", model=model, model_config={}, step=0,
                        extra={"fn": object()})
    assert not (tmp_path / "q.pt").exists()


def _linear(value: float) -> nn.Module:
    m = nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.fill_(value)
    return m


def test_manager_best_and_last(tmp_path):
    manager = CheckpointManager(tmp_path / "vae", "vae", metric="val/loss", mode="min")
    assert manager.latest() is None and manager.best() is None
    losses = [3.0, 2.0, 2.5, float("nan"), 1.0, 1.5]
    improved = [
        manager.save(model=_linear(i), model_config={}, step=i, metrics={"val/loss": v})
        for i, v in enumerate(losses)
    ]
    assert improved == [True, True, False, False, True, False]
    assert manager.latest()["step"] == 5
    best = manager.best()
    assert best["step"] == 4 and best["state_dict"]["weight"].item() == 4.0
    assert (manager.best_value, manager.best_step) == (1.0, 4)

    # A new manager (a resumed run) knows the best so far from disk.
    resumed = CheckpointManager(tmp_path / "vae", "vae", metric="val/loss", mode="min")
    assert resumed.best_value == 1.0
    assert not resumed.save(model=_linear(6), model_config={}, step=6, metrics={"val/loss": 1.2})
    assert resumed.save(model=_linear(7), model_config={}, step=7, metrics={"val/loss": 0.9})
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["best.pt", "last.pt"]


def test_manager_max_mode_no_metric_and_bad_mode(tmp_path):
    manager = CheckpointManager(tmp_path / "c", "controller", metric="return", mode="max")
    flags = [manager.save(model=_linear(0), model_config={}, step=i, metrics={"return": r})
             for i, r in enumerate([10, 50, 20])]
    assert flags == [True, True, False] and manager.best()["step"] == 1

    plain = CheckpointManager(tmp_path / "m", "mdnrnn")
    assert not plain.save(model=_linear(0), model_config={}, step=0, metrics={"loss": 1.0})
    assert not plain.best_path.exists() and plain.latest()["kind"] == "mdnrnn"

    with pytest.raises(ConfigError, match="'min' or 'max'"):
        CheckpointManager(tmp_path / "x", "vae", metric="loss", mode="lowest")
    with pytest.raises(DataError, match="is a 'controller' checkpoint, expected 'vae'"):
        CheckpointManager(tmp_path / "c", "vae").latest()


def test_manager_repairs_best_killed_between_last_and_best(tmp_path):
    manager = CheckpointManager(tmp_path, "vae", metric="loss")
    manager.save(model=_linear(0), model_config={}, step=0, metrics={"loss": 2.0})
    # The kill: last.pt holds an improvement that never reached best.pt.
    save_checkpoint(tmp_path / "last.pt", kind="vae", model=_linear(1), model_config={},
                    step=1, metrics={"loss": 1.0})
    resumed = CheckpointManager(tmp_path, "vae", metric="loss")
    assert resumed.latest()["step"] == 1
    assert resumed.best()["step"] == 1 and resumed.best_value == 1.0


def test_init_weights_load_an_fp16_export_into_an_fp32_model(tmp_path):
    # fine-tuning from an export: fp16 weights, cast into the fresh fp32 model, exactly
    trained, config, _, _ = _trained()
    half = TinyNet(**config)
    half.load_state_dict(trained.state_dict())
    _save(tmp_path / "run" / "vae" / "best.pt", half.half(), config)
    fresh = TinyNet(**config)
    info = ckpt_module.load_init_weights(fresh, tmp_path / "run", kind="vae", stage="vae",
                                         model_config=config, key="vae.init")
    assert info["checkpoint"].endswith("best.pt") and info["step"] == 3
    for key, value in fresh.state_dict().items():
        assert value.dtype == trained.state_dict()[key].dtype
        torch.testing.assert_close(value, trained.state_dict()[key].half().to(value.dtype),
                                   rtol=0, atol=0, msg=key)
    assert info["sha256"] == ckpt_module.weights_sha256(half.state_dict())


def test_init_weights_refuse_other_shapes_kinds_and_missing_files(tmp_path):
    trained, config, _, _ = _trained()
    path = _save(tmp_path / "v.pt", trained, config)
    other = {"channels": 8, "out_dim": 3}
    with pytest.raises(ConfigError, match=r"vae.init: .*channels=4.*channels=8"):
        ckpt_module.load_init_weights(TinyNet(**other), path, kind="vae", stage="vae",
                                      model_config=other, key="vae.init")
    with pytest.raises(DataError, match="'vae' checkpoint, expected 'mdnrnn'"):
        ckpt_module.load_init_weights(TinyNet(**config), path, kind="mdnrnn", stage="mdnrnn",
                                      model_config=config, key="mdnrnn.init")
    with pytest.raises(DataError, match="mdnrnn.init: .* has no mdnrnn/best.pt"):
        ckpt_module.load_init_weights(TinyNet(**config), tmp_path, kind="mdnrnn",
                                      stage="mdnrnn", model_config=config, key="mdnrnn.init")
    with pytest.raises(DataError, match="vae.init: no run directory or checkpoint"):
        ckpt_module.load_init_weights(TinyNet(**config), tmp_path / "nope", kind="vae",
                                      stage="vae", model_config=config, key="vae.init")
