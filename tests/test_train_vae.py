"""Training V (worldmodels.stages.train_vae, scripts/train_vae.py) on a real tiny dataset.

V of Ha & Schmidhuber (2018, arXiv:1803.10122) as a VAE, a β-VAE (Higgins et al. 2017)
and a VQ-VAE (van den Oord et al. 2017): each lowers its loss and writes checkpoints,
logs and grids; ``load_vae`` rebuilds the trained model from the checkpoint alone; a
stopped and resumed run equals an uninterrupted one; NaN losses, missing data and config
mismatches are one-line errors. 3 episodes x 40 steps: 80 training frames (10 batches of
8 per epoch) and 40 validation frames.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import run_script

from worldmodels.config import load_config
from worldmodels.data.frames import FrameSource
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.errors import ConfigError, WorldModelsError
from worldmodels.generative.objective import Objective
from worldmodels.run import load_code_prior, load_vae
from worldmodels.stages import train_vae as train_module
from worldmodels.stages.collect import collect
from worldmodels.stages.train_vae import evaluate, train_vae
from worldmodels.utils.checkpoint import load_checkpoint, weights_sha256

STEPS_PER_EPOCH = 10




@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("rollouts")
    cfg = load_config(overrides={"collect": {"episodes": 3, "max_steps": 40, "workers": 1}})
    collect(cfg, run, progress=False)
    return run / DATASET_NAME


def new_run(tmp_path: Path, rollouts: Path, name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / DATASET_NAME).symlink_to(rollouts)
    return run


def config(model: str, **vae):
    settings = {"model": model, "batch_size": 8, "lr": 1e-3, "log_every": 2, "max_steps": 20,
                "prior_epochs": 2, "device": "cpu", **vae}
    return load_config(overrides={"vae": settings})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("model", ["vae", "betavae", "vqvae"])
def test_training_lowers_loss_and_writes_everything(tmp_path, rollouts, model):
    run = new_run(tmp_path, rollouts)
    s = train_vae(config(model), run, progress=False)
    assert (s["model"], s["steps"], s["epochs"]) == (model, 20, 2.0)
    assert s["images_per_s"] > 0 and s["wall_seconds"] > 0
    stage = run / model
    written = {p.name for p in stage.iterdir()}
    assert {"last.pt", "best.pt", "metrics.jsonl", "hparams.json"} <= written
    assert list((run / "tb" / model).glob("events.out.tfevents.*"))
    assert json.loads((run / "config.json").read_text())["vae"]["model"] == model

    records = read_jsonl(stage / "metrics.jsonl")
    train = [r for r in records if "losses/loss" in r]
    assert [r["step"] for r in train] == list(range(2, 21, 2))
    assert train[-1]["losses/loss"] < 0.9 * train[0]["losses/loss"]
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [10, 20]  # once per epoch
    if model == "vqvae":
        assert 1 <= s["val/perplexity"] <= 128 and 0 < s["val/codes_used"] <= 1
        assert s["prior/val_loss"] > 0 and (stage / "prior.pt").exists()
    else:
        bits = -s["val/elbo"] / (3 * 64 * 64 * torch.log(torch.tensor(2.0)).item())
        assert s["val/bits_per_dim"] == pytest.approx(bits)
        assert s["val/kl"] > 0
    pngs = {p.name for p in (stage / "images").glob("*.png")}
    assert {"images_reconstructions_0000010.png", "images_reconstructions_0000020.png"} <= pngs
    assert any(p.startswith("images_samples_") for p in pngs)

    # load_vae rebuilds best.pt's model alone: it reproduces the validation loss stored
    # with it, and gives identical outputs on repeated calls (eval mode)
    best = load_checkpoint(stage / "best.pt")
    net = load_vae(run, model)
    assert not net.training
    cfg = config(model)
    from worldmodels.data.datasets import RolloutDataset, split_episodes

    with RolloutDataset(rollouts) as data:
        _, val_eps = split_episodes(len(data), cfg.vae.val_episodes, cfg.vae.seed)
        source = FrameSource(data, val_eps, torch.device("cpu"), in_memory=True)
        objective = Objective.from_config(cfg.vae, best["extra"]["data_variance"])
        generator = torch.Generator().manual_seed(train_module.derive_seed(0, "vae-val"))
        again = evaluate(net, source.all_batches(8), objective, best["step"], generator)
        x = source.take([0, 5]).float() / 255
    assert again["val/loss"] == pytest.approx(best["metrics"]["val/loss"], rel=1e-5)
    with torch.no_grad():
        assert torch.equal(net(x)[0], load_vae(run, model)(x)[0])
    if model == "vqvae":
        codes = load_code_prior(run).sample(2, generator=torch.Generator().manual_seed(0))
        assert codes.shape == (2, 8, 8)

    # a finished run returns its summary without training or logging again
    lines = (stage / "metrics.jsonl").read_text()
    again = train_vae(cfg, run, progress=False)
    assert again["steps"] == 20 and again["checkpoint"] == s["checkpoint"]
    assert (stage / "metrics.jsonl").read_text() == lines


@pytest.mark.parametrize("model, settings", [
    ("vae", {"in_memory": "no"}),  # streamed from HDF5: the skip of seen batches
    ("betavae", {"capacity_max": 5.0, "capacity_steps": 10}),  # a step-dependent loss
    ("vqvae", {"dead_code_steps": 3, "prior_epochs": 1}),  # EMA + restarts (global RNG)
])
@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_resume_equals_uninterrupted(tmp_path, rollouts, model, settings):
    # 7 steps, then resumed to 14 (across the epoch end at 10), vs 14 at once
    stopped = new_run(tmp_path, rollouts, "stopped")
    train_vae(config(model, max_steps=7, **settings), stopped, progress=False)
    resumed = train_vae(config(model, max_steps=14, **settings), stopped, progress=False)
    straight_run = new_run(tmp_path, rollouts, "straight")
    straight = train_vae(config(model, max_steps=14, **settings), straight_run, progress=False)

    a = load_checkpoint(stopped / model / "last.pt")
    b = load_checkpoint(straight_run / model / "last.pt")
    assert a["step"] == b["step"] == 14
    for key, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    for key in ("val/loss", "val/recon"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5)
    # nothing duplicated: every step is logged at most once per kind of record
    records = read_jsonl(stopped / model / "metrics.jsonl")
    train_steps = [r["step"] for r in records if "losses/loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 14
    assert [r["step"] for r in records if "val/loss" in r] == [7, 10, 14]
    if model == "vqvae":  # the prior of the 7-step V was replaced by one of the 14-step V
        assert load_checkpoint(stopped / model / "prior.pt")["extra"]["vae_step"] in (10, 14)


def test_nan_loss_stops_with_one_line_error_and_keeps_checkpoint(tmp_path, rollouts):
    run = new_run(tmp_path, rollouts)
    train_vae(config("vae", max_steps=4), run, progress=False)
    result = run_script("train_vae.py", "--run", run, "--max-steps", "12", "--lr", "1e30",
                        "--batch-size", "8", "--log-every", "2", "--device", "cpu")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "NaN/inf at step" in lines[0], result.stderr
    checkpoint = load_checkpoint(run / "vae" / "last.pt")
    assert checkpoint["step"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    load_vae(run, "vae")


def test_ctrl_c_checkpoints_the_current_step_and_resumes(tmp_path, rollouts, monkeypatch):
    run = new_run(tmp_path, rollouts)
    real = train_module.training_losses

    def interrupt_at_step_3(model, x, objective, step, *args):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only sets a flag
        return real(model, x, objective, step, *args)

    monkeypatch.setattr(train_module, "training_losses", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_vae(config("vae", max_steps=8), run, progress=False)
    assert load_checkpoint(run / "vae" / "last.pt")["step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(train_module, "training_losses", real)
    assert train_vae(config("vae", max_steps=8), run, progress=False)["steps"] == 8


def test_other_latent_dim_in_same_dir_is_config_error(tmp_path, rollouts):
    run = new_run(tmp_path, rollouts)
    train_vae(config("vae", max_steps=1), run, progress=False)
    with pytest.raises(ConfigError, match="latent_dim=32.*latent_dim=16.*another --run.*delete"):
        train_vae(config("vae", max_steps=2, latent_dim=16), run, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        train_vae(config("vae", max_steps=2, batch_size=4), run, progress=False)


def test_init_fine_tunes_from_a_trained_v(tmp_path, rollouts):
    # a V trained 10 steps; a fine-tuning run from it at a learning rate too small to move it
    # validates at the source's loss (the weights were loaded), far below a fresh V's
    source = new_run(tmp_path, rollouts, "source")
    train_vae(config("vae", max_steps=10), source, progress=False)
    best = load_checkpoint(source / "vae" / "best.pt")
    tuned = new_run(tmp_path, rollouts, "tuned")
    result = train_vae(config("vae", max_steps=1, lr=1e-12, init=str(source)), tuned,
                       progress=False)
    fresh = train_vae(config("vae", max_steps=1, lr=1e-12), new_run(tmp_path, rollouts, "fresh"),
                      progress=False)
    assert result["steps"] == 1  # the fine-tuning run counts its own steps
    assert result["val/loss"] == pytest.approx(best["metrics"]["val/loss"], rel=1e-4)
    assert result["val/loss"] < 0.9 * fresh["val/loss"]
    origin = load_checkpoint(tuned / "vae" / "last.pt")["extra"]["init"]
    assert origin["checkpoint"] == str(source / "vae" / "best.pt")
    assert origin["sha256"] == weights_sha256(best["state_dict"])
    # resuming the fine-tuned run keeps its own weights; another init is not re-applied
    assert train_vae(config("vae", max_steps=2, init=str(tmp_path / "nope")), tuned,
                     progress=False)["steps"] == 2
    with pytest.raises(ConfigError, match="vae.init: .*latent_dim=32.*latent_dim=16"):
        train_vae(config("vae", max_steps=1, latent_dim=16, init=str(source)),
                  new_run(tmp_path, rollouts, "other"), progress=False)


def test_too_few_frames_for_a_batch(tmp_path, rollouts):
    with pytest.raises(WorldModelsError, match="fewer than one batch"):
        train_vae(config("vae", batch_size=500), new_run(tmp_path, rollouts), progress=False)


def test_script_help_and_missing_dataset(tmp_path):
    result = run_script("train_vae.py", "--help")
    assert result.returncode == 0 and "--latent-dim" in result.stdout
    result = run_script("train_vae.py", "--run", tmp_path / "empty", "--device", "cpu")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "collect_rollouts.py" in lines[0], result.stderr
    assert not (tmp_path / "empty" / "vae").exists()


@pytest.mark.parametrize("model", ["vae", "vqvae"])
def test_benchmark_rows(model):
    from worldmodels.benchmark.vae import run

    rows = run(model, batch_size=2, steps=1, device="cpu")
    impls = [r["impl"] for r in rows]
    assert impls[0] == "ours" and ("reference" in impls) == (model == "vae")
    for row in rows:
        assert row["model"] == model and row["batch"] == 2 and row["images/s"] > 0
        assert row["TFLOP/s"] > 0 and row["% of bf16 peak"] == "n/a"  # no peak for a CPU
    if model == "vae":
        ours, ref = rows[0], rows[-1]
        assert ours["vs_reference"] == pytest.approx(ours["images/s"] / ref["images/s"])


def _same_batch_losses(precision: str):
    """Our training loss and the benchmark's plain reference loss on the same weights,
    frames and noise."""
    from worldmodels.benchmark.vae import ReferenceVAE, reference_loss
    from worldmodels.generative.objective import to_float, training_losses
    from worldmodels.stages.train_vae import model_from_config, prepare_model

    v = load_config().vae
    torch.manual_seed(0)
    ours = prepare_model(model_from_config(v), torch.device("cpu")).train()
    ref = ReferenceVAE().train()
    ref.load_state_dict({k: t.contiguous() for k, t in ours.state_dict().items()})
    frames = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # the same eps for both
    a = training_losses(ours, to_float(frames), Objective.from_config(v), 0, precision)["loss"]
    torch.manual_seed(2)
    x = frames.float() / 255
    b = reference_loss(x, *ref(x), kl_tolerance=v.kl_tolerance)
    return a, b


def test_training_loss_equals_the_plain_reference_loss():
    ours, ref = _same_batch_losses("fp32")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-3)  # ~1e3 nats: float rounding
    # under bf16 autocast (the default where the CPU has native bf16) the loss stays fp32,
    # within bf16 rounding of the network's activations
    ours, ref = _same_batch_losses("bf16")
    assert ours.dtype == torch.float32 and ((ours - ref).abs() / ref).item() < 1e-3
