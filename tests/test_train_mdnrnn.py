"""Training M (worldmodels.stages.train_mdnrnn, scripts/train_mdnrnn.py) on real tiny latents.

M is the MDN-RNN of Ha & Schmidhuber (2018, arXiv:1803.10122; Bishop 1994, Graves 2013):
a short run lowers the training loss and writes checkpoints, TensorBoard events, metrics
with baselines and the prediction strip; ``load_mdnrnn`` rebuilds it from the checkpoint
alone; a stopped and resumed run equals an uninterrupted one; NaN losses, latents of
another dimension, missing latents and too-short episodes are one-line errors; the
discrete variant trains on VQ-VAE codes; episodes shorter than a sequence train padded and
the weighted done head fires where episodes end (synthetic latents); gradient clipping by
norm and by value; the compiled mixture loss equals the eager one. 4 episodes x 40 steps: 3 training episodes (4
sequences of 8 each), 1 validation episode.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_script
from test_encode import write_latents

from worldmodels.config import load_config
from worldmodels.data.latents import LatentDataset, latents_path
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.data.sequences import LatentSequences
from worldmodels.errors import ConfigError, DataError
from worldmodels.memory import MDNRNN, CodeRNN
from worldmodels.run import load_mdnrnn, mdnrnn_info
from worldmodels.stages import train_mdnrnn as train_module
from worldmodels.stages.collect import collect
from worldmodels.stages.encode import encode
from worldmodels.stages.mdnrnn_eval import Baselines, evaluate
from worldmodels.stages.train_mdnrnn import train_mdnrnn
from worldmodels.stages.train_vae import train_vae
from worldmodels.utils.checkpoint import load_checkpoint


def _v(run: Path, **vae) -> None:
    train_vae(load_config(overrides={"vae": {"batch_size": 8, "max_steps": 5, "lr": 1e-3,
                                             "device": "cpu", "prior_epochs": 0, **vae}}),
              run, progress=False)
    encode(load_config(overrides={"encode": {"model": vae.get("model", "vae"), "device": "cpu",
                                             "workers": 0}}), run, progress=False)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A run with 4 real episodes of 40 steps, a VAE trained for 5 steps and its latents."""
    run = tmp_path_factory.mktemp("source")
    collect(load_config(overrides={"collect": {"episodes": 4, "max_steps": 40, "workers": 1}}),
            run, progress=False)
    _v(run)
    return run


def new_run(tmp_path: Path, source: Path, name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    for entry in (DATASET_NAME, "vae", "latents_vae.h5"):
        (run / entry).symlink_to(source / entry)
    return run


def config(**mdnrnn):
    settings = {"seq_len": 8, "batch_size": 2, "hidden_dim": 32, "num_gaussians": 3,
                "steps": 12, "log_every": 2, "eval_every": 6, "device": "cpu", **mdnrnn}
    return load_config(overrides={"mdnrnn": settings})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_lowers_loss_and_writes_everything(tmp_path, source):
    run = new_run(tmp_path, source)
    s = train_mdnrnn(config(steps=30, eval_every=15, lr=3e-3), run, progress=False)
    assert (s["model"], s["vae_model"], s["steps"]) == ("mdnrnn", "vae", 30)
    assert (s["train_sequences"], s["val_sequences"], s["skipped_episodes"]) == (12, 4, 0)
    assert s["epochs"] == 5.0 and s["seq_steps_per_s"] > 0 and s["wall_seconds"] > 0
    stage = run / "mdnrnn"
    assert {"last.pt", "best.pt", "metrics.jsonl", "hparams.json"} <= {
        p.name for p in stage.iterdir()}
    assert list((run / "tb" / "mdnrnn").glob("events.out.tfevents.*"))
    assert json.loads((run / "config.json").read_text())["mdnrnn"]["hidden_dim"] == 32

    records = read_jsonl(stage / "metrics.jsonl")
    train = [r for r in records if "losses/loss" in r]
    assert [r["step"] for r in train] == sorted({*range(2, 31, 2), 15})  # + each validation
    assert {"losses/nll", "losses/reward", "losses/done", "charts/grad_norm"} <= train[0].keys()
    assert np.mean([r["losses/loss"] for r in train[-3:]]) < 0.9 * train[0]["losses/loss"]
    val = [r for r in records if "val/nll" in r]
    assert [r["step"] for r in val] == [15, 30]
    for key in ("val/nll", "val/reward_mse", "val/done_bce", "val/done_accuracy", "val/loss",
                "baseline/nll", "baseline/reward_mse", "baseline/done_bce",
                "baseline/done_accuracy"):
        assert np.isfinite(s[key]), key
    # the figure: real frames, reconstructions, one-step and open-loop predictions
    assert s["figure"] == str(stage / "images" / "images_predictions_0000030.png")
    import imageio.v3 as iio

    assert iio.imread(s["figure"]).shape == (4 * 66 + 2, 16 * 66 + 2, 3)

    # load_mdnrnn rebuilds best.pt's M alone; it reproduces the stored validation
    best = load_checkpoint(stage / "best.pt")
    net = load_mdnrnn(run)
    assert isinstance(net, MDNRNN) and not net.training
    assert mdnrnn_info(run)["vae_model"] == "vae"
    with LatentDataset(latents_path(run)) as data:
        from worldmodels.data.datasets import split_episodes

        train_eps, val_eps = split_episodes(len(data), 0.05, 0)
        baselines = Baselines.fit(LatentSequences(data, 8, train_eps))
        generator = torch.Generator().manual_seed(train_module.derive_seed(0, "mdnrnn-val"))
        again = evaluate(net, LatentSequences(data, 8, val_eps), 2, baselines, generator)
    assert again["val/loss"] == pytest.approx(best["metrics"]["val/loss"], rel=1e-5)
    assert again["baseline/nll"] == pytest.approx(s["baseline/nll"], rel=1e-6)

    # a finished run returns its summary without training or logging again
    lines = (stage / "metrics.jsonl").read_text()
    assert train_mdnrnn(config(steps=30, eval_every=15, lr=3e-3), run, progress=False)[
        "checkpoint"] == s["checkpoint"]
    assert (stage / "metrics.jsonl").read_text() == lines


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_resume_equals_uninterrupted(tmp_path, source, in_memory):
    # 7 steps (across the epoch end at 6), then resumed to 14, vs 14 at once
    stopped = new_run(tmp_path, source, "stopped")
    train_mdnrnn(config(steps=7, in_memory=in_memory), stopped, progress=False)
    resumed = train_mdnrnn(config(steps=14, in_memory=in_memory), stopped, progress=False)
    straight_run = new_run(tmp_path, source, "straight")
    straight = train_mdnrnn(config(steps=14, in_memory=in_memory), straight_run, progress=False)
    a = load_checkpoint(stopped / "mdnrnn" / "last.pt")
    b = load_checkpoint(straight_run / "mdnrnn" / "last.pt")
    assert a["step"] == b["step"] == 14
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert resumed["val/loss"] == pytest.approx(straight["val/loss"], rel=1e-6)
    records = read_jsonl(stopped / "mdnrnn" / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "losses/loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 14
    assert [r["step"] for r in records if "val/loss" in r] == [6, 7, 12, 14]


def test_nan_loss_stops_with_one_line_error_and_keeps_checkpoint(tmp_path, source):
    run = new_run(tmp_path, source)
    train_mdnrnn(config(steps=6), run, progress=False)
    result = run_script("train_mdnrnn.py", "--run", run, "--steps", "12", "--lr", "1e30",
                        "--seq-len", "8", "--batch-size", "2", "--hidden-dim", "32",
                        "--num-gaussians", "3", "--log-every", "2", "--eval-every", "6",
                        "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NaN/inf at step" in lines[0], result.stderr
    checkpoint = load_checkpoint(run / "mdnrnn" / "last.pt")
    assert checkpoint["step"] == 6
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_ctrl_c_checkpoints_the_current_step_and_resumes(tmp_path, source, monkeypatch):
    run = new_run(tmp_path, source)
    real = train_module.sequence_losses
    calls = []

    def interrupt_at_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "sequence_losses", interrupt_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        train_mdnrnn(config(steps=8), run, progress=False)
    assert load_checkpoint(run / "mdnrnn" / "last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(train_module, "sequence_losses", real)
    assert train_mdnrnn(config(steps=8), run, progress=False)["steps"] == 8


def test_latent_dim_mismatch_is_one_line_config_error(tmp_path, source):
    run = new_run(tmp_path, source)
    train_mdnrnn(config(steps=2), run, progress=False)
    # the run's V and latents replaced by a V with 16 latent dimensions
    for entry in ("vae", "latents_vae.h5"):
        (run / entry).unlink()
    _v(run, latent_dim=16)
    with pytest.raises(ConfigError, match="latent_dim=32.*latent_dim=16.*delete"):
        train_mdnrnn(config(steps=4), run, progress=False)
    result = run_script("train_mdnrnn.py", "--run", run, "--steps", "4", "--seq-len", "8",
                        "--batch-size", "2", "--hidden-dim", "32", "--num-gaussians", "3",
                        "--device", "cpu")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "latent_dim=16" in lines[0], result.stderr


def test_init_fine_tunes_from_a_trained_m(tmp_path, source):
    # an M trained 12 steps; a fine-tuning run from it at a learning rate too small to move
    # it validates at the source's loss (weights and heads loaded), below a fresh M's
    origin_run = new_run(tmp_path, source, "origin")
    train_mdnrnn(config(), origin_run, progress=False)
    best = load_checkpoint(origin_run / "mdnrnn" / "best.pt")
    tuned = new_run(tmp_path, source, "tuned")
    result = train_mdnrnn(config(steps=1, eval_every=1, lr=1e-12, init=str(origin_run)), tuned,
                          progress=False)
    fresh = train_mdnrnn(config(steps=1, eval_every=1, lr=1e-12),
                         new_run(tmp_path, source, "fresh"), progress=False)
    assert result["steps"] == 1
    assert result["val/loss"] == pytest.approx(best["metrics"]["val/loss"], rel=1e-4)
    assert result["val/loss"] < fresh["val/loss"] - 0.05
    init = load_checkpoint(tuned / "mdnrnn" / "last.pt")["extra"]["init"]
    assert init["checkpoint"] == str(origin_run / "mdnrnn" / "best.pt")
    with pytest.raises(ConfigError, match="mdnrnn.init: .*hidden_dim=32.*hidden_dim=16"):
        train_mdnrnn(config(steps=1, hidden_dim=16, init=str(origin_run)),
                     new_run(tmp_path, source, "other"), progress=False)


def test_episodes_shorter_than_seq_len_train_padded(tmp_path, source):
    # every 40-step episode is shorter than seq_len=50: each one padded sequence, not dropped
    s = train_mdnrnn(config(seq_len=50, steps=2, eval_every=2),
                     new_run(tmp_path, source, "long"), progress=False)
    assert (s["train_sequences"], s["val_sequences"], s["skipped_episodes"]) == (3, 1, 0)
    assert np.isfinite(s["val/loss"])
    with pytest.raises(DataError, match="fewer than one batch"):
        train_mdnrnn(config(batch_size=13), new_run(tmp_path, source, "batch"), progress=False)
    assert not (tmp_path / "batch" / "mdnrnn").exists()


def _terminating_latents(path: Path, episodes: int = 24, seed: int = 0) -> Path:
    """Episodes of 8..20 steps that all end by termination, their last frame showing it
    (z_0 = 4, as a frame off the playfield; else N(0, 1)): shorter than M's sequences."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 21, episodes).tolist()
    mu = []
    for T in lengths:
        m = rng.standard_normal((T, 3))
        m[-1, 0] = 4.0
        mu.append(m)
    return write_latents(path, lengths, set(range(episodes)), mu)


def _done_probs(run: Path) -> tuple[float, float, float]:
    """Mean P(done) of the run's M at the terminal and at the other real steps, and the share
    of the other real steps where it fires (P > 0.5, the dream's threshold)."""
    net = load_mdnrnn(run)
    with LatentDataset(latents_path(run)) as data:
        seqs = LatentSequences(data, 24)
        batch = seqs.batch(seqs.windows(), sample=False)
    with torch.no_grad():
        p = torch.sigmoid(net(batch["z"][:, :-1], batch["actions"]).done_logit)
    real, done = batch["mask"], batch["dones"].bool()
    other = p[real & ~done]
    return float(p[real & done].mean()), float(other.mean()), float((other > 0.5).float().mean())


@pytest.mark.parametrize("done_pos_weight", [1.0, 10.0])
def test_done_head_fires_at_terminations(tmp_path, done_pos_weight):
    # Before padding these episodes (all shorter than seq_len) were dropped and the done head
    # never saw a done. Weighted, its probability crosses the dream's 0.5 at the ends.
    run = tmp_path / "run"
    run.mkdir()
    _terminating_latents(run / "latents_vae.h5")
    cfg = config(seq_len=24, batch_size=6, hidden_dim=16, num_gaussians=2, steps=400,
                 eval_every=400, log_every=100, lr=1e-2, done_pos_weight=done_pos_weight, val_episodes=0.0)
    s = train_mdnrnn(cfg, run, progress=False)
    assert s["train_sequences"] == 24 and s["skipped_episodes"] == 0
    terminal, other, false_fires = _done_probs(run)
    if done_pos_weight == 1.0:
        assert 2 * other < terminal < 0.5  # it learns where episodes end, but never fires
    else:
        # The weight inflates every P(done) (the optimum is 10q / (1 + 9q)), so the mean at the
        # other steps sits near 0.1 and moves with the CPU; what the dream needs is that it fires
        # at the ends and almost nowhere else.
        assert terminal > 0.5 > 0.2 > other, (terminal, other)
        assert false_fires < 0.05, false_fires


def test_clip_gradients_by_norm_and_by_value():
    w = torch.nn.Parameter(torch.zeros(3))
    v = torch.nn.Parameter(torch.zeros(1))
    for mode in ("norm", "value"):
        w.grad, v.grad = torch.tensor([3.0, -4.0, 0.0]), torch.tensor([12.0])
        norm = train_module.clip_gradients([w, v], 1.0, mode)
        assert float(norm) == pytest.approx(13.0)  # before clipping
        if mode == "norm":  # the whole gradient rescaled to norm 1, direction kept
            torch.testing.assert_close(w.grad, torch.tensor([3.0, -4.0, 0.0]) / 13)
            torch.testing.assert_close(v.grad, torch.tensor([12.0]) / 13)
        else:  # each element clamped to [-1, 1] (tf.clip_by_value)
            torch.testing.assert_close(w.grad, torch.tensor([1.0, -1.0, 0.0]))
            torch.testing.assert_close(v.grad, torch.tensor([1.0]))
    assert train_module.clip_gradients([w, v], 0.0, "value") is None
    with pytest.raises(ConfigError, match="grad_clip_mode"):
        train_module.clip_gradients([w, v], 1.0, "max")


def test_mixture_loss_falls_back_to_eager_when_compiling_fails(monkeypatch):
    from worldmodels.memory import mixture_nll

    m = config(compile_loss="no").mdnrnn
    assert train_module.mixture_loss_fn(m) is mixture_nll
    assert train_module.mixture_loss_fn(config(compile_loss="auto").mdnrnn) is mixture_nll  # small

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    fn = train_module.mixture_loss_fn(config(compile_loss="yes").mdnrnn)
    params, x = torch.randn(2, 3, 3, 4, 5), torch.randn(2, 3, 4)
    with pytest.warns(UserWarning, match="eagerly"):
        torch.testing.assert_close(fn(params, x), mixture_nll(params, x))
    torch.testing.assert_close(fn(params, x), mixture_nll(params, x))  # eager from now on


@pytest.mark.slow
def test_compiled_mixture_loss_equals_eager():
    from worldmodels.memory import mixture_nll

    fn = train_module.mixture_loss_fn(config(compile_loss="yes").mdnrnn)
    params = torch.randn(4, 8, 3, 6, 5, requires_grad=True)
    x = torch.randn(4, 8, 6)
    compiled = fn(params, x)
    (grad,) = torch.autograd.grad(compiled.sum(), params)
    eager = mixture_nll(params, x)
    (ref,) = torch.autograd.grad(eager.sum(), params)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(grad, ref)


def test_discrete_m_on_vqvae_codes(tmp_path, source):
    run = new_run(tmp_path, source)
    _v(run, model="vqvae")
    cfg = config(steps=4, eval_every=4)
    cfg.encode.model = "vqvae"
    s = train_mdnrnn(cfg, run, progress=False)
    assert (s["model"], s["vae_model"]) == ("discrete_mdnrnn", "vqvae")
    assert 0 < s["baseline/nll"] < np.log(128) + 1e-6 and np.isfinite(s["val/nll"])
    assert isinstance(load_mdnrnn(run), CodeRNN) and Path(s["figure"]).exists()


def test_script_help_and_missing_latents(tmp_path, source):
    result = run_script("train_mdnrnn.py", "--help")
    assert result.returncode == 0
    assert "--seq-len" in result.stdout and "--model" in result.stdout
    run = tmp_path / "run"
    run.mkdir()
    (run / DATASET_NAME).symlink_to(source / DATASET_NAME)
    result = run_script("train_mdnrnn.py", "--run", run, "--device", "cpu")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "encode.py" in lines[0], result.stderr
    assert not (run / "mdnrnn").exists()


def test_benchmark_rows():
    from worldmodels.benchmark.mdnrnn import run

    ours, ref = run(batch_size=2, seq_len=5, steps=1, device="cpu", hidden_dim=16)
    assert (ours["impl"], ref["impl"]) == ("ours", "reference")
    assert (ours["model"], ours["batch"], ours["seq_len"], ref["precision"]) == (
        "mdnrnn", 2, 5, "fp32")
    assert ours["params"] == ref["params"] and ours["seq-steps/s"] > 0 and ref["ms/step"] > 0
    assert ours["vs_reference"] == pytest.approx(ours["seq-steps/s"] / ref["seq-steps/s"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_loss_equals_the_plain_reference_loss(precision):
    from worldmodels.benchmark.mdnrnn import (
        ReferenceMDNRNN,
        _batch,
        reference_loss,
        reference_weights,
    )
    from worldmodels.generative.vae import reparameterize

    torch.manual_seed(0)
    model = MDNRNN(32, 3, 24, 5)
    ref = ReferenceMDNRNN(32, 3, 24, 5)
    ref.load_state_dict(reference_weights(model))
    mu, logvar, batch, g = _batch(3, 12, torch.device("cpu"))
    batch["z"] = reparameterize(mu, logvar, g)
    batch["dones"][:, -1] = 1.0
    ours = train_module.sequence_losses(model, batch, done_pos_weight=10.0,
                                        precision=precision)["loss"]
    plain = reference_loss(ref, batch, done_pos_weight=10.0)
    assert ours.dtype == torch.float32
    if precision == "fp32":
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    else:  # bf16 LSTM (the default on CPUs with native bf16): fp32 loss, bf16-close
        assert (ours - plain).abs().item() < 1e-3 * plain.abs().item()
