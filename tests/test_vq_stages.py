"""The stages on a discrete world model: CMA-ES trains C on [z_q, h] of a VQ-VAE (van den Oord
et al. 2017, arXiv:1711.00937) and a CodeRNN, in the real environment and in the code dream
(Ha & Schmidhuber 2018, arXiv:1803.10122, sec. 4.4); evaluate.py, watch.py and the export work
on such a run; the whole pipeline runs with ``vae.model = "vqvae"`` (slow).

V and M have random weights (``save_random_vq_world_model``, a small VQ-VAE); the dream starts
from a synthetic latents file of code grids; populations, episodes and videos are tiny.
"""

from __future__ import annotations

import json
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import run_script
from test_vq_dream import write_first_codes

from worldmodels.config import apply_dict, load_config, validate
from worldmodels.control.dream_fitness import dream_rollout_returns
from worldmodels.control.evaluation import EpisodeSpec, run_episodes
from worldmodels.errors import ConfigError
from worldmodels.generative import VQVAE
from worldmodels.memory.mdnrnn import CodeRNN
from worldmodels.run import (
    load_agent,
    load_controller,
    load_dream,
    load_world_model,
    save_random_vq_world_model,
)
from worldmodels.stages.evaluate import evaluate
from worldmodels.stages.export import export_pretrained
from worldmodels.stages.train_controller import (
    dream_generation_seed,
    new_strategy,
    train_controller,
)

HIDDEN = 32
PARAMS = 3 * (256 + HIDDEN + 1)  # C on [z_q (8x8 codes of 4), h]
TINY = {"population": 4, "trials": 2, "generations": 2, "max_steps": 30, "eval_every": 1,
        "eval_episodes": 1, "workers": 1, "seed": 3}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    run = save_random_vq_world_model(tmp_path_factory.mktemp("vqworld"), hidden_dim=HIDDEN,
                                     seed=1, hidden_channels=32, residual_channels=8)
    write_first_codes(run, np.random.default_rng(2).integers(0, 128, (4, 64)),
                      sha=load_world_model_identity(run))
    return run


def load_world_model_identity(run):
    from worldmodels.run import mdnrnn_info

    return mdnrnn_info(run)["vae"]["sha256"]


def new_run(tmp_path, world, name="run"):
    run = tmp_path / name
    run.mkdir()
    for entry in ("vqvae", "mdnrnn", "latents_vqvae.h5"):
        (run / entry).symlink_to(world / entry)
    return run


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """C from two CMA-ES generations in the real environment, by the script (V named
    explicitly: --vae-model vqvae is a choice, as auto is)."""
    run = new_run(tmp_path_factory.mktemp("vqreal"), world)
    r = run_script("train_controller.py", "--run", run, "--vae-model", "vqvae",
                   "--population", "4", "--trials", "1",
                   "--generations", "2", "--max-steps", "30", "--eval-episodes", "1",
                   "--eval-every", "1", "--workers", "1", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 2 and summary["params"] == PARAMS
    assert [("eval" in h) for h in summary["history"]] == [True, True, True]
    return run


# ------------------------------------------------------------------------------ train C


def test_cma_es_in_the_real_env_trains_a_linear_c_on_z_q_and_h(trained):
    c, ckpt = load_controller(trained)
    assert c.hparams == {"latent_dim": 256, "hidden_dim": HIDDEN, "hidden_layer": 0,
                         "use_hidden_state": True}
    assert ckpt["extra"]["vae_model"] == "vqvae" and ckpt["extra"]["agent"]["z"] == "mu"
    assert ckpt["extra"]["world_model"]["vae"]["stage"] == "vqvae"
    agent = load_agent(trained)
    assert agent.discrete and np.array_equal(agent.controller.get_flat(), c.get_flat())
    assert np.abs(c.get_flat()).sum() > 0  # CMA-ES moved the mean from zero


def test_cma_es_in_the_code_dream_scores_the_population_in_the_dream(tmp_path, world):
    run = new_run(tmp_path, world)
    cfg = load_config(overrides={"controller": {**TINY, "env": "dream", "temperature": 1.2}})
    s = train_controller(cfg, run, progress=False)
    assert s["generations"] == 2 and s["params"] == PARAMS and "dream" in s["env"]
    # generation 1's fitness is the code dream's return of the first CMA-ES population
    es = new_strategy(PARAMS, cfg.controller)
    solutions = np.asarray(es.ask(), dtype=np.float64)
    dream = load_dream(run, 8, 1.2, "cpu", max_steps=30)
    assert "latents_vqvae.h5" in dream.start_source
    returns = dream_rollout_returns(solutions, 2, dream_generation_seed(3, 0), 30, dream=dream)
    assert s["history"][1]["mean"] == pytest.approx(returns.mean(axis=1).mean(), abs=1e-9)
    assert s["history"][1]["best"] == pytest.approx(returns.mean(axis=1).max(), abs=1e-9)
    assert len(set(returns.mean(axis=1))) > 1  # the candidates' dream returns differ


def test_sampled_z_is_refused_for_a_vq_vae(tmp_path, world):
    cfg = load_config(overrides={"controller": {**TINY, "z": "sample"}})
    with pytest.raises(ConfigError, match="z_q is deterministic"):
        train_controller(cfg, new_run(tmp_path, world), progress=False)


# ------------------------------------------------------------------------------ evaluate, watch


def test_evaluate_scores_the_vq_agent_as_it_drives_alone(trained):
    r = run_script("evaluate.py", "--run", trained, "--episodes", "2", "--seed", "7",
                   "--max-steps", "30", "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["seeds"] == [7, 8] and len(result["returns"]) == 2
    alone = run_episodes(load_agent(trained), [EpisodeSpec(k, -1, s) for k, s in
                                               enumerate([7, 8])], max_steps=30, batch_size=1)
    assert [x.episode_return for x in alone] == result["returns"]


def test_watch_real_shows_real_vq_reconstruction_and_m_prediction(trained, tmp_path):
    out = tmp_path / "real.gif"
    r = run_script("watch.py", "--run", trained, "--env", "real", "--max-steps", 3, "--save",
                   out, "--seed", 3, timeout=120)
    assert r.returncode == 0, r.stderr
    frames = iio.imread(out, index=None)
    assert frames.shape == (4, 224, 576, 3)  # reset + 3 steps; header + 3 panels of 192
    recon, prediction = frames[1, 32:, 192:384], frames[1, 32:, 384:]
    assert recon.std() > 0 and prediction.std() > 0 and not np.array_equal(recon, prediction)


def test_watch_dream_decodes_the_sampled_codes(trained, tmp_path):
    out = tmp_path / "dream.gif"
    r = run_script("watch.py", "--run", trained, "--env", "dream", "--episodes", 1, "--tau",
                   1.0, "--max-steps", 3, "--save", out, timeout=120)
    assert r.returncode == 0, r.stderr
    frames = iio.imread(out, index=None)
    assert frames.shape[1:] == (416, 384, 3) and 2 <= len(frames) <= 4


# ------------------------------------------------------------------------------ export


def test_export_of_a_vq_run_loads_evaluates_and_dreams(trained, tmp_path):
    out = tmp_path / "pretrained" / "vq"
    result = export_pretrained(trained, out, video=True, video_max_steps=3)
    assert result["vae_model"] == "vqvae" and (out / "vqvae" / "best.pt").exists()
    assert result["video"]["frames"] == 4
    vae, mdnrnn, name = load_world_model(out)
    assert (name, type(vae), type(mdnrnn)) == ("vqvae", VQVAE, CodeRNN)
    source = load_world_model(trained)[0]
    # V to fp16 rounding (the codebook too); C exactly
    torch.testing.assert_close(vae.quantizer.codebook, source.quantizer.codebook.half().float())
    c0, c1 = load_controller(trained)[0], load_controller(out)[0]
    assert c0.get_flat().tobytes() == c1.get_flat().tobytes()
    r = evaluate(out, 1, 0, workers=1, max_steps=10)
    assert len(r["returns"]) == 1
    dream = load_dream(out, batch_size=2, device="cpu", start="env", start_tracks=1)
    assert dream.reset(seed=0).shape == (2, 256 + HIDDEN)


# ------------------------------------------------------------------------------ the pipeline


VQ_TINY = {
    "collect": {"episodes": 6, "max_steps": 100, "workers": 1},
    "vae": {"model": "vqvae", "max_steps": 20, "batch_size": 16, "log_every": 10,
            "prior_epochs": 0},
    "encode": {"workers": 0},
    "mdnrnn": {"seq_len": 40, "batch_size": 4, "steps": 50, "eval_every": 50,
               "log_every": 10},
    "controller": {"population": 4, "trials": 1, "generations": 2, "max_steps": 100,
                   "eval_every": 1, "eval_episodes": 2, "workers": 1},
}


@pytest.mark.slow
def test_pipeline_with_a_vq_vae_runs_end_to_end_then_skips_every_stage(tmp_path):
    from worldmodels.stages.pipeline import STAGES, run_pipeline

    def cfg():
        return validate(apply_dict(load_config("smoke"), VQ_TINY, "test"))

    run = tmp_path / "run"
    first = run_pipeline(cfg(), run, progress=False, episodes=2, max_steps=100)
    assert [r["stage"] for r in first["rows"]] == list(STAGES)
    assert all(r["status"] == "ran" for r in first["rows"]), first["rows"]
    assert "code grids of 64 cells" in first["rows"][2]["metric"]
    assert first["summaries"]["mdnrnn"]["model"] == "discrete_mdnrnn"
    assert first["summaries"]["controller"]["params"] == 3 * (256 + 256 + 1)
    assert (run / "videos" / "pipeline.mp4").stat().st_size > 0
    assert load_agent(run).discrete
    summary = json.loads((run / "pipeline" / "summary.json").read_text())
    assert len(summary["evaluation"]["returns"]) == 2
    assert set(summary["baselines"]) == {"zero", "random"}
    assert "zero C" in (run / "pipeline" / "summary.txt").read_text()
    assert first["summaries"]["controller"]["generations"] == 2
    assert torch.is_grad_enabled(), "the pipeline switched autograd off for its caller"
    t0 = time.perf_counter()
    second = run_pipeline(cfg(), run, progress=False, episodes=2, max_steps=100)
    assert time.perf_counter() - t0 < 15
    assert all(r["status"] == "skipped" for r in second["rows"]), second["rows"]
    assert second["baselines"] == first["baselines"]
    assert second["evaluation"] == first["evaluation"]
