"""The World Models agent (V + M + C, batched) and lockstep episodes in the real environment.

Ha & Schmidhuber (2018, arXiv:1803.10122): z = mu_V(frame), a = C(z, h), h advanced by M. The
central property: an episode's return does not depend on which episodes share its lockstep
batch (lockstep == alone, exactly). V and M have random weights (saved in the formats of
their training stages), so nothing here depends on trained models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels.control import Controller, WorldModelAgent
from worldmodels.control.evaluation import (
    TIME_PENALTY,
    EnvCache,
    EpisodeSpec,
    run_episodes,
)
from worldmodels.envs import preprocess_frame
from worldmodels.errors import DataError
from worldmodels.generative import ConvVAE
from worldmodels.memory.mdnrnn import MDNRNN
from worldmodels.run import load_agent, load_controller, load_world_model, save_random_world_model
from worldmodels.utils.checkpoint import save_checkpoint

HIDDEN = 64  # a small M keeps the tests fast; the paper's is 256


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_random_world_model(tmp_path_factory.mktemp("world"), hidden_dim=HIDDEN, seed=3)


@pytest.fixture(scope="module")
def agent(run):
    vae, mdnrnn, name = load_world_model(run)
    assert name == "vae"
    return WorldModelAgent(vae, mdnrnn)


@pytest.fixture(scope="module")
def envs():
    pool = EnvCache()
    yield pool
    pool.close()


def candidates(agent: WorldModelAgent, n: int, seed: int = 0, scale: float = 0.3) -> np.ndarray:
    """n random controller vectors (K, N) around zero (zero = straight ahead at half gas)."""
    size = agent.make_controller().num_parameters
    return np.random.default_rng(seed).normal(0.0, scale, (n, size))


def observations(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ the agent


def test_act_shapes_action_box_and_state(agent):
    agent.reset(5)
    assert agent.batch_size == 5
    assert [tuple(t.shape) for t in agent.state] == [(5, HIDDEN)] * 2
    a = agent.act(observations(5))
    assert a.shape == (5, 3) and a.dtype == np.float32
    assert (a[:, 0] >= -1).all() and (a[:, 0] <= 1).all()
    assert (a[:, 1:] >= 0).all() and (a[:, 1:] <= 1).all()
    assert agent.state[0].abs().sum() > 0  # M read (z, a)


def test_raw_observations_use_the_collection_preprocessing(agent):
    obs = observations(3, seed=1)
    frames = np.stack([preprocess_frame(o) for o in obs])
    assert torch.equal(agent.encode(obs), agent.encode(frames))


def test_one_step_is_v_then_c_then_m(agent):
    """a_t = C(mu_V(x_t), h_t); (h, c) <- M.step(z_t, a_t): written out by hand."""
    obs = observations(2, seed=2)
    agent.reset(2)
    h0 = torch.randn(2, HIDDEN) * 0.1
    agent.state = (h0.clone(), torch.zeros(2, HIDDEN))
    a = agent.act(obs)
    x = torch.from_numpy(np.stack([preprocess_frame(o) for o in obs])).permute(0, 3, 1, 2)
    z = agent.vae.encode(x.float() / 255.0)[0]
    expected_a = agent.controller(z, h0)
    _, (h1, _) = agent.mdnrnn.step(z, expected_a, (h0, torch.zeros(2, HIDDEN)))
    torch.testing.assert_close(torch.from_numpy(a), expected_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agent.state[0], h1, rtol=1e-5, atol=1e-6)


def test_rows_are_independent_of_the_batch(agent):
    """V's z, M's state and C's action of a row are bit-identical alone and in any batch."""
    obs = observations(7, seed=3)
    params = candidates(agent, 7, seed=3)
    controllers = [agent.make_controller(p) for p in params]
    agent.reset(7)
    together = agent.act(obs, controllers=controllers)
    together = agent.act(obs, controllers=controllers)  # a second step reads the carried h
    state = [t.clone() for t in agent.state]
    for i in range(7):
        agent.reset(1)
        alone = agent.act(obs[i:i + 1], controllers=controllers[i:i + 1])
        alone = agent.act(obs[i:i + 1], controllers=controllers[i:i + 1])
        assert np.array_equal(alone[0], together[i]), i
        assert torch.equal(agent.state[0][0], state[0][i]), i
    # a subset of rows (finished environments leave the batch) steps only those rows
    agent.reset(7)
    agent.act(obs[[1, 4]], rows=[1, 4], controllers=[controllers[1], controllers[4]])
    assert agent.state[0][[0, 2, 3, 5, 6]].abs().sum() == 0


@pytest.mark.parametrize("precision,z", [("bf16", "mu"), ("fp32", "sample"), ("bf16", "sample")])
def test_bf16_and_sampled_z_rows_are_independent_of_the_batch(agent, precision, z):
    other = WorldModelAgent(agent.vae, agent.mdnrnn, precision=precision, z=z)
    obs = observations(6, seed=4)
    seeds = [11, 12, 13, 14, 15, 16]
    other.reset(6, seeds=seeds)
    together = other.encode(obs, rows=range(6))
    for i in range(6):
        other.reset(1, seeds=[seeds[i]])
        assert torch.equal(other.encode(obs[i:i + 1]), together[i:i + 1]), i


def test_bf16_encoder_follows_fp32_to_bf16_rounding(agent):
    obs = observations(4, seed=5)
    fp32 = agent.encode(obs)
    bf16 = WorldModelAgent(agent.vae, agent.mdnrnn, precision="bf16").encode(obs)
    assert not torch.equal(fp32, bf16)  # really ran in bf16
    scale = fp32.abs().max()
    assert (bf16 - fp32).abs().max() < 0.05 * scale  # a few bf16 ulps through 4 convolutions
    assert agent.vae.encoder[0].weight.dtype == torch.float32  # V itself untouched


def test_sampled_z_is_mu_plus_sigma_times_standard_noise(agent):
    sampler = WorldModelAgent(agent.vae, agent.mdnrnn, z="sample")
    obs = np.repeat(observations(1, seed=6), 400, axis=0)
    sampler.reset(400, seeds=range(400))
    z = sampler.encode(obs)
    x = torch.from_numpy(np.stack([preprocess_frame(o) for o in obs[:1]])).permute(0, 3, 1, 2)
    mu, logvar = agent.vae.encode(x.float() / 255.0)
    eps = (z - mu) / logvar.mul(0.5).exp()  # (400, D): standard normal if z ~ N(mu, sigma^2)
    assert abs(eps.mean()) < 0.05 and abs(eps.std() - 1) < 0.05
    sampler.reset(400, seeds=range(400))
    assert torch.equal(sampler.encode(obs), z)  # the seeds decide the noise
    with pytest.raises(DataError, match="z must be one of"):
        WorldModelAgent(agent.vae, agent.mdnrnn, z="mean")


def test_bad_inputs_are_clear_errors(agent, run):
    agent.reset(2)
    with pytest.raises(ValueError, match="expected observations"):
        agent.act(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="pass rows="):
        agent.act(observations(3))
    with pytest.raises(DataError, match="reads z of size"):
        WorldModelAgent(agent.vae, agent.mdnrnn, Controller(latent_dim=16, hidden_dim=HIDDEN))
    with pytest.raises(DataError, match="M was trained on another V"):
        WorldModelAgent(ConvVAE(latent_dim=16), MDNRNN(latent_dim=32, hidden_dim=8))
    with pytest.raises(DataError, match="no trained controller"):
        load_controller(run)


def test_missing_or_mismatched_world_model(tmp_path):
    with pytest.raises(DataError, match="no trained M"):
        load_world_model(tmp_path)
    save_random_world_model(tmp_path, hidden_dim=8)
    with pytest.raises(DataError, match="trained on the latents of 'vae'"):
        load_world_model(tmp_path, "betavae")
    m = MDNRNN(latent_dim=16, hidden_dim=8)
    save_checkpoint(tmp_path / "mdnrnn" / "best.pt", kind="mdnrnn", model=m,
                    model_config={"model": "mdnrnn", **m.hparams}, step=0)
    with pytest.raises(DataError, match="does not read V's z"):
        load_world_model(tmp_path)


def test_from_run_loads_the_trained_controller(run, tmp_path):
    c = Controller(latent_dim=32, hidden_dim=HIDDEN)
    save_checkpoint(run / "controller" / "last.pt", kind="controller", model=c,
                    model_config=c.hparams, step=1, extra={"vae_model": "vae"})
    try:
        agent = load_agent(run)
        assert np.array_equal(agent.controller.get_flat(), c.get_flat())
        assert load_controller(run)[1]["path"].endswith("last.pt")
    finally:
        (run / "controller" / "last.pt").unlink()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_agent_runs_on_cuda(run):
    vae, mdnrnn, _ = load_world_model(run, device="cuda")
    agent = WorldModelAgent(vae, mdnrnn, device="cuda")
    agent.reset(3)
    assert agent.act(observations(3)).shape == (3, 3)


# ------------------------------------------------------------------------- lockstep runs


@pytest.mark.parametrize("renderer", [
    "approx",  # the training fitness's frames; ~20x cheaper to draw
    pytest.param("exact", marks=pytest.mark.slow),  # evaluation's: 1000x800, then preprocessed
])
def test_lockstep_returns_equal_alone_returns_exactly(agent, envs, renderer):
    """6 episodes of 3 candidates on 2 tracks: stepped together (batches of 6, then 4 with
    other neighbours) and one by one give bit-identical returns, steps and tiles."""
    params = candidates(agent, 3, seed=4)
    specs = [EpisodeSpec(k, k % 3, 50 + k // 3) for k in range(6)]
    kwargs = {"max_steps": 70, "envs": envs, "renderer": renderer}
    alone = run_episodes(agent, specs, params, batch_size=1, **kwargs)
    together = run_episodes(agent, specs, params, batch_size=6, **kwargs)
    shuffled = run_episodes(agent, specs[::-1], params, batch_size=4, **kwargs)[::-1]
    assert alone == together == shuffled
    assert [r.key for r in alone] == list(range(6))
    assert all(r.steps == 70 and not r.stopped_early for r in alone)
    assert len({r.episode_return for r in alone}) > 1  # the candidates do differ


def test_early_termination_scores_a_stuck_car_as_the_full_episode(agent, envs):
    """A car that never moves (gas 0, full brake) reaches no tile after the start: stopped
    after K steps, its estimate (return so far - 0.1 per remaining step) is its real return."""
    c = agent.make_controller()
    flat = np.zeros(c.num_parameters)
    bias = flat[-3:]  # the linear C's bias: (steer, gas, brake) pre-activations
    bias[1], bias[2] = -20.0, 20.0
    spec = [EpisodeSpec(0, 0, 11)]
    full = run_episodes(agent, spec, flat[None], max_steps=120, envs=envs)[0]
    early = run_episodes(agent, spec, flat[None], max_steps=120, early_stop_steps=30,
                         envs=envs)[0]
    assert early.stopped_early and early.steps < 120 and not full.stopped_early
    assert early.tiles == full.tiles
    assert early.episode_return == pytest.approx(full.episode_return, abs=1e-6)
    assert TIME_PENALTY == -0.1


def test_early_termination_never_cuts_a_car_that_keeps_finding_tiles(agent, envs):
    params = np.zeros((1, agent.make_controller().num_parameters))  # straight, half gas
    spec = [EpisodeSpec(0, 0, 12)]
    full = run_episodes(agent, spec, params, max_steps=60, envs=envs)[0]
    early = run_episodes(agent, spec, params, max_steps=60, early_stop_steps=40, envs=envs)[0]
    assert full == early and full.tiles > 1


def test_results_say_how_far_the_car_got_and_whether_the_lap_was_completed(agent, envs):
    """``tiles`` / ``track_tiles`` are the env's own counts, and a return without a completed
    lap is CarRacing's reward sum ``1000 * tiles / N - 0.1 * frames`` (its definition, an
    independent reference). A lap that counts as complete at the start line
    (``lap_complete_percent = 0``: the first touch of tile 0) ends the episode with
    ``lap_completed``; early termination and running out of frames never set it."""
    params = np.zeros((1, agent.make_controller().num_parameters))  # straight, half gas
    spec = [EpisodeSpec(0, 0, 12)]
    (full,) = run_episodes(agent, spec, params, max_steps=80, envs=envs)
    assert not full.lap_completed and not full.stopped_early and full.steps == 80
    assert 1 < full.tiles < full.track_tiles == len(envs.take(1)[0].unwrapped.track)
    assert full.episode_return == pytest.approx(
        1000.0 * full.tiles / full.track_tiles - 0.1 * full.steps, abs=1e-6)
    stuck = params.copy()
    stuck[0, -2], stuck[0, -1] = -20.0, 20.0  # gas 0, full brake
    (early,) = run_episodes(agent, spec, stuck, max_steps=120, early_stop_steps=30, envs=envs)
    assert early.stopped_early and not early.lap_completed
    env = envs.take(1)[0].unwrapped
    try:
        env.lap_complete_percent = 0.0
        (lap,) = run_episodes(agent, spec, params, max_steps=80, envs=envs)
    finally:
        env.lap_complete_percent = 0.95
    assert lap.lap_completed and lap.steps < 80 and lap.tiles >= 1
