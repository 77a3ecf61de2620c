"""DCGAN training (Goodfellow et al. 2014; Radford et al. 2016): outputs, D learns, both
G losses, save -> load -> same samples, exact resume, NaN and CLI errors. Tiny nets on a
real 3-episode dataset, CPU, one thread."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import run_script
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import worldmodels.stages.train_gan as train_module
from worldmodels.config import load_config
from worldmodels.data.frames import load_frames
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.errors import ConfigError, DataError, WorldModelsError
from worldmodels.generative.gan import DCGAN, from_gan_range
from worldmodels.stages.collect import collect
from worldmodels.stages.train_gan import (
    gan_snapshots,
    gan_step,
    load_gan,
    load_generator_snapshot,
    real_batch,
    sample_gan,
    sample_generator,
    train_gan,
)
from worldmodels.utils.checkpoint import load_checkpoint
from worldmodels.utils.images import make_grid
from worldmodels.utils.logs import to_uint8_images

torch.set_num_threads(1)

# 3 episodes x 40 steps: 1 held out, 80 training frames, 5 batches of 16 per epoch.
TINY = {"latent_dim": 16, "generator_channels": 8, "discriminator_channels": 8,
        "batch_size": 16, "device": "cpu", "log_every": 5}


def gan_cfg(**kw):
    return load_config(overrides={"gan": {**TINY, **kw}})


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    run = tmp_path_factory.mktemp("data")
    cfg = load_config(overrides={"collect": {"episodes": 3, "max_steps": 40, "seed": 3,
                                             "workers": 1}})
    return collect(cfg, run, progress=False)


def new_run(tmp_path, rollouts, name="run"):
    run = tmp_path / name
    run.mkdir()
    shutil.copyfile(rollouts, run / DATASET_NAME)
    return run


@pytest.fixture(scope="module")
def trained(rollouts, tmp_path_factory):
    run = new_run(tmp_path_factory.mktemp("trained"), rollouts)
    return run, train_gan(gan_cfg(max_steps=20), run, progress=False)


def jsonl(run):
    return [json.loads(line) for line in (run / "gan" / "metrics.jsonl").read_text().splitlines()]


def test_short_run_writes_checkpoint_logs_and_grids(trained):
    run, summary = trained
    assert summary["steps"] == 20 and summary["epochs"] == 4
    assert summary["generator_params"] > 0 and summary["discriminator_params"] > 0
    assert summary["images_per_s"] > 0 and summary["in_memory"]
    assert all(np.isfinite(summary[k]) for k in ("loss_d", "loss_g", "d_real", "d_fake"))

    ckpt = load_checkpoint(run / "gan" / "last.pt", kind="gan")
    assert ckpt["step"] == 20 and ckpt["epoch"] == 4
    assert set(ckpt["optimizer"]) == {"generator", "discriminator"}
    assert ckpt["model_config"] == {"latent_dim": 16, "generator_channels": 8,
                                    "discriminator_channels": 8}
    assert summary["checkpoint"] == str(run / "gan" / "last.pt")

    records = jsonl(run)
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    for key in ("losses/discriminator", "losses/generator", "charts/D_real", "charts/D_fake",
                "charts/images_per_s"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert all(0 <= r["charts/D_real"] <= 1 and 0 <= r["charts/D_fake"] <= 1 for r in records)

    acc = EventAccumulator(str(run / "tb" / "gan"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert {"losses/discriminator", "losses/generator", "charts/D_real", "charts/D_fake",
            "charts/images_per_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Images("samples")] == [5, 10, 15, 20]

    pngs = sorted(p.name for p in (run / "gan" / "images").glob("*.png"))
    assert pngs == ["real_0000000.png"] + [f"samples_{s:07d}.png" for s in (5, 10, 15, 20)]
    grid = iio.imread(run / "gan" / "images" / "samples_0000020.png")
    assert grid.shape == (8 * 66 + 2, 8 * 66 + 2, 3)  # 64 samples, 8 x 8 with 2 px padding
    assert json.loads((run / "config.json").read_text())["gan"]["max_steps"] == 20
    assert summary["precision"] in ("bf16", "fp32")
    assert [(e, p.name) for e, p in gan_snapshots(run)] == [
        (e, f"generator_{e:03d}.pt") for e in (1, 2, 3, 4)]


def test_epoch_snapshots_hold_each_epochs_generator(trained):
    """The last epoch's snapshot is the final G (same samples as sample_gan, same noise);
    earlier ones are earlier G's; a checkpoint of another kind is refused."""
    run, _ = trained
    snaps = gan_snapshots(run)
    last, step = load_generator_snapshot(snaps[-1][1])
    assert step == 20 and not last.training
    assert np.array_equal(sample_generator(last, 6, seed=4), sample_gan(run, 6, seed=4))
    first, step = load_generator_snapshot(snaps[0][1])
    assert step == 5
    assert not np.array_equal(sample_generator(first, 6, seed=4), sample_gan(run, 6, seed=4))
    with pytest.raises(DataError, match="expected 'gan-generator'"):
        load_generator_snapshot(run / "gan" / "last.pt")


def test_ema_update_is_the_warmed_up_average():
    """G_ema <- d G_ema + (1 - d) G with d = min(decay, (1 + t) / (10 + t)); buffers copied."""
    torch.manual_seed(0)
    average, model = DCGAN(16, 8, 8).generator, DCGAN(16, 8, 8).generator
    model(torch.randn(4, 16))  # moves BatchNorm's running statistics away from the average's
    before = {k: v.clone() for k, v in average.state_dict().items()}
    params = dict(model.named_parameters())
    for step, d in ((0, 0.1), (1000, 0.99)):  # warm-up, then the decay itself
        expected = {k: d * v + (1 - d) * params[k].detach() if k in params else v
                    for k, v in average.state_dict().items()}
        train_module.ema_update(average, model, 0.99, step)
        for name, value in average.named_parameters():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    for name, value in average.named_buffers():
        assert torch.equal(value, model.state_dict()[name]), name
    assert not torch.equal(average.state_dict()["net.0.weight"], before["net.0.weight"])


def test_ema_generator_is_what_is_sampled(trained, rollouts, tmp_path):
    """With ema > 0 (the default) the snapshots, grids and load_gan hold the average, not the
    raw G; with ema = 0 they hold G itself."""
    run, _ = trained
    ckpt = load_checkpoint(run / "gan" / "last.pt")
    average = ckpt["extra"]["ema_generator"]
    raw = {k[len("generator."):]: v for k, v in ckpt["state_dict"].items()
           if k.startswith("generator.")}
    snapshot = load_checkpoint(gan_snapshots(run)[-1][1])
    assert snapshot["extra"]["ema"] == 0.999
    assert all(torch.equal(snapshot["state_dict"][k], v) for k, v in average.items())
    assert not all(torch.equal(average[k], v) for k, v in raw.items())
    loaded = load_gan(run).generator.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in average.items())

    plain = new_run(tmp_path, rollouts, "plain")
    train_gan(gan_cfg(max_steps=5, ema=0.0), plain, progress=False)
    ckpt = load_checkpoint(plain / "gan" / "last.pt")
    assert ckpt["extra"]["ema_generator"] is None
    snapshot = load_checkpoint(gan_snapshots(plain)[-1][1])
    assert snapshot["extra"]["ema"] == 0.0
    assert all(torch.equal(v, ckpt["state_dict"]["generator." + k])
               for k, v in snapshot["state_dict"].items())
    with pytest.raises(ConfigError, match="gan.ema"):
        gan_cfg(ema=1.0)


def test_precision_bf16_close_to_fp32_but_not_equal(rollouts):
    """gan_step honours precision: the same step in bf16 autocast and in fp32 from the
    same weights agree to bf16 rounding, and are not the same computation."""
    frames = load_frames(str(rollouts), [0], torch.device("cpu"))[:16]
    real = real_batch(frames, torch.device("cpu"))
    z = torch.randn(16, 16, generator=torch.Generator().manual_seed(0))
    stats = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = DCGAN(16, 8, 8).train()
        opt_g = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
        stats[precision] = gan_step(model.generator, model.discriminator, opt_g, opt_d, real, z,
                                    precision=precision)
        assert stats[precision].dtype == torch.float32
    assert torch.allclose(stats["bf16"], stats["fp32"], rtol=0.05, atol=0.02)
    assert not torch.equal(stats["bf16"], stats["fp32"])


def test_finished_run_returns_its_summary_at_once(trained):
    run, summary = trained
    before = (run / "gan" / "metrics.jsonl").read_text()
    assert train_gan(gan_cfg(max_steps=20), run, progress=False) == summary
    assert (run / "gan" / "metrics.jsonl").read_text() == before


def test_discriminator_loss_falls_with_generator_frozen(rollouts):
    """D-only learning: with G's lr at 0, D's loss on a fixed real and fake batch falls."""
    torch.manual_seed(0)
    model = DCGAN(16, 8, 8).train()
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=0.0)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    real = real_batch(load_frames(rollouts, [0])[:16], torch.device("cpu"))
    assert real.min() >= -1 and real.max() <= 1 and real.min() < 0 < real.max()
    z = torch.randn(16, 16)
    stats = [gan_step(model.generator, model.discriminator, opt_g, opt_d, real, z)
             for _ in range(8)]
    loss_d, d_real, d_fake = (np.array([s[i].item() for s in stats]) for i in (0, 2, 3))
    assert loss_d[-1] < 0.7 * loss_d[0]
    assert d_real[-1] > d_real[0] and d_fake[-1] < d_fake[0]


@pytest.mark.parametrize("mode", ["non_saturating", "minimax"])
def test_both_generator_losses_train(rollouts, tmp_path, mode):
    run = new_run(tmp_path, rollouts)
    s = train_gan(gan_cfg(generator_loss=mode, max_steps=5), run, progress=False)
    assert s["steps"] == 5 and np.isfinite(s["loss_g"])
    # -log D(G(z)) >= 0;  log(1 - D(G(z))) <= 0
    assert s["loss_g"] >= 0 if mode == "non_saturating" else s["loss_g"] <= 0
    assert s["loss_g"] == pytest.approx(
        -np.log(s["d_fake"]) if mode == "non_saturating" else np.log(1 - s["d_fake"]), abs=0.3)


def test_load_gan_reproduces_the_training_samples(trained):
    run, _ = trained
    model = load_gan(run)
    assert not model.training and model.hparams["latent_dim"] == 16
    fixed_z = load_checkpoint(run / "gan" / "last.pt")["extra"]["fixed_noise"]
    with torch.no_grad():
        grid = make_grid(to_uint8_images(from_gan_range(model.generator(fixed_z))))
    assert np.array_equal(grid, iio.imread(run / "gan" / "images" / "samples_0000020.png"))

    a, b, c = sample_gan(run, 5, seed=1), sample_gan(run, 5, seed=1), sample_gan(run, 5, seed=2)
    assert a.shape == (5, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
@pytest.mark.parametrize("in_memory", ["yes", "no"])
def test_resume_equals_uninterrupted(rollouts, tmp_path, in_memory):
    """Stop at 7 steps (mid-epoch), resume to 14 == 14 steps at once, logs included."""
    kw = {"in_memory": in_memory, "log_every": 2}
    once = new_run(tmp_path, rollouts, "once")
    train_gan(gan_cfg(max_steps=14, **kw), once, progress=False)
    resumed = new_run(tmp_path, rollouts, "resumed")
    assert train_gan(gan_cfg(max_steps=7, **kw), resumed, progress=False)["in_memory"] == (
        in_memory == "yes")
    with open(resumed / "gan" / "metrics.jsonl", "a") as f:  # as if killed after logging step 8
        f.write(json.dumps({"step": 8, "wall_time": 0.0, "losses/discriminator": 9.0}) + "\n")
    train_gan(gan_cfg(max_steps=14, **kw), resumed, progress=False)

    a = load_checkpoint(once / "gan" / "last.pt")
    b = load_checkpoint(resumed / "gan" / "last.pt")
    assert a["step"] == b["step"] == 14
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["extra"]["ema_generator"].items():
        assert torch.equal(value, b["extra"]["ema_generator"][key]), key
    for net in ("generator", "discriminator"):
        for i, state in a["optimizer"][net]["state"].items():
            for name, t in state.items():
                assert torch.equal(t, b["optimizer"][net]["state"][i][name]), (net, i, name)

    def curves(run):
        return [{k: v for k, v in r.items() if k not in ("wall_time", "charts/images_per_s")}
                for r in jsonl(run)]

    assert curves(once) == curves(resumed)
    assert [r["step"] for r in jsonl(resumed)] == list(range(2, 15, 2))


def test_nan_loss_is_a_one_line_error_naming_the_step(rollouts, tmp_path, monkeypatch):
    run = new_run(tmp_path, rollouts)
    monkeypatch.setattr(train_module, "generator_loss",
                        lambda logits, mode: logits.float().mean() * float("nan"))
    with pytest.raises(WorldModelsError, match="generator loss became NaN/inf at step 1") as e:
        train_gan(gan_cfg(max_steps=5, log_every=50), run, progress=False)
    assert "\n" not in str(e.value)
    assert not (run / "gan" / "last.pt").exists()


def test_config_and_data_errors(trained, rollouts, tmp_path):
    run, _ = trained
    with pytest.raises(ConfigError, match="delete .*gan to start over"):
        train_gan(gan_cfg(max_steps=20, generator_channels=16), run, progress=False)
    with pytest.raises(DataError, match="fewer than one batch"):
        train_gan(gan_cfg(batch_size=1000), new_run(tmp_path, rollouts), progress=False)


def test_cli_help_and_missing_dataset(tmp_path):
    r = run_script("train_gan.py", "--help")
    assert r.returncode == 0 and "--generator-loss" in r.stdout
    r = run_script("train_gan.py", "--run", tmp_path / "empty")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no rollouts at ")
    assert f"collect_rollouts.py --run {tmp_path / 'empty'}" in lines[0]
    assert not (tmp_path / "empty" / "gan").exists()


def test_cli_trains(rollouts, tmp_path):
    run = new_run(tmp_path, rollouts)
    r = run_script("train_gan.py", "--run", run, "--max-steps", "2", "--no-progress",
                   *[f"--set=gan.{k}={v!r}".replace("'", '"') for k, v in TINY.items()])
    assert r.returncode == 0, r.stderr
    assert "2 steps" in r.stdout and str(run / "gan" / "last.pt") in r.stdout


def test_benchmark_rows():
    from worldmodels.benchmark.gan import run

    rows = run(batch_size=2, steps=1, device="cpu", precisions=("fp32",))
    assert [r["unit"] for r in rows] == ["images/s", "ms"]
    assert all(r["value"] > 0 for r in rows)
    rows = run(batch_size=2, steps=2, device="cpu", precisions=("fp32", "bf16"))
    assert [r["unit"] for r in rows] == ["images/s", "ms", "images/s", "ms", "x"]
    assert "fp32" in rows[0]["what"] and "bf16" in rows[2]["what"]
    # the ratio is the two rates' ratio
    assert rows[4]["value"] == pytest.approx(rows[2]["value"] / rows[0]["value"], rel=1e-9)
