"""compare_generative end to end on a tiny real dataset: every model trained, measured,
drawn; a second run loads the finished models and reproduces the report."""

import json
import math

import pytest

from worldmodels.config import load_config
from worldmodels.stages.collect import collect
from worldmodels.stages.compare import compare_generative

pytestmark = pytest.mark.slow

TINY = {
    "collect": {"episodes": 4, "max_steps": 40, "seed": 3},
    "vae": {"batch_size": 16, "max_steps": 6, "epochs": 1, "val_episodes": 0.25, "log_every": 2,
            "prior_epochs": 1, "codebook_size": 16, "dead_code_steps": 2},
    "gan": {"batch_size": 16, "max_steps": 0, "epochs": 2, "generator_channels": 8,
            "discriminator_channels": 8, "val_episodes": 0.25, "log_every": 2},
    "compare": {"num_samples": 32, "feature_epochs": 1},
}


def test_compare_generative_report(tmp_path):
    cfg = load_config(overrides=TINY)
    collect(cfg, tmp_path, progress=False)
    report = compare_generative(cfg, tmp_path, progress=False)
    out = tmp_path / "compare"
    assert json.loads((out / "report.json").read_text())["models"].keys() == {
        "vae", "betavae", "vqvae", "gan"}
    assert report["num_samples"] == 32
    for name, r in report["models"].items():
        for space in ("trained-CNN", "random-CNN"):
            q = r["quality"][space]
            assert q["fd"] >= 0 and 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1
        if name != "gan":
            assert 0 < r["recon_mse"] < 1 and math.isfinite(r["psnr"])
    assert report["models"]["vae"]["elbo"] < 0 < report["models"]["vae"]["bits_per_dim"]
    assert 1 <= report["models"]["vqvae"]["perplexity"] <= 16
    assert 0 < report["models"]["vqvae"]["codes_used"] <= 1
    # the GAN scored at each epoch's snapshot; the last snapshot is the final GAN, whose
    # samples (the same noise) must score exactly as the final row
    gan = report["models"]["gan"]
    assert [row["epoch"] for row in gan["by_epoch"]] == [1, 2]
    assert gan["by_epoch"][-1]["quality"] == gan["quality"]
    assert gan["by_epoch"][0]["quality"] != gan["quality"]
    assert all(0 <= row["d_real"] <= 1 and 0 <= row["d_fake"] <= 1 for row in gan["by_epoch"])
    for fig in ("samples", "reconstructions", "interpolations", "traversal_betavae", "evolution",
                "gan_training"):
        assert (out / f"{fig}.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert all(name in md for name in ("vae", "betavae", "vqvae", "gan", "real (training frames)",
                                       "The DCGAN epoch by epoch"))

    again = compare_generative(cfg, tmp_path, progress=False)  # loads, does not retrain
    assert again["models"]["vae"]["quality"] == report["models"]["vae"]["quality"]
    assert again["models"]["gan"]["quality"] == report["models"]["gan"]["quality"]


def test_evolution_orders_grids_by_step_and_counts_images(tmp_path):
    """The lab's picture reads each model's fixed-noise grids in step order (not name
    order: ``samples_900`` comes before ``samples_1000``) and labels them with step x the
    run's batch size; with one model's grids there is nothing to set beside it."""
    import numpy as np

    from worldmodels.stages.compare import _evolution, _sample_grids
    from worldmodels.utils.images import save_png

    rng = np.random.default_rng(0)
    for name, batch, steps in (("vae", 100, (1000, 900)), ("gan", 128, (5,))):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "hparams.json").write_text(json.dumps({"batch_size": batch}))
        for s in steps:
            save_png(rng.integers(0, 256, (100, 530, 3), dtype=np.uint8),
                     tmp_path / name / "images" / f"images_samples_{s}.png")
    grids = _sample_grids(tmp_path, "vae")
    assert [(step, seen) for step, seen, _ in grids] == [(900, 90_000), (1000, 100_000)]
    assert grids[0][2].shape == (68, 530, 3)
    assert _evolution(tmp_path, ["vae"], tmp_path / "one.png") is None
    out = _evolution(tmp_path, ["vae", "gan"], tmp_path / "evo.png")
    assert out is not None and out.stat().st_size > 0
