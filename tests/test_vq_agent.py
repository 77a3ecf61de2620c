"""The agent on a discrete world model: V a VQ-VAE (van den Oord et al. 2017,
arXiv:1711.00937), M a CodeRNN over its code grids, C the linear map of Ha & Schmidhuber
(2018, arXiv:1803.10122) on ``[z_q, h]``.

V and M have random weights (``save_random_vq_world_model``: a small VQ-VAE whose codebook is
spread over its encoder's outputs, so frames use many codes). The central property is the
continuous agent's: a row's codes, z_q, action and M's state do not depend on the batch, and
lockstep returns equal alone returns bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_agent as vae_agent_checks
import torch

from worldmodels.control import Controller, WorldModelAgent
from worldmodels.control.evaluation import (
    EnvCache,
    EpisodeSpec,
    WorkerState,
    run_episodes,
    worker_bundle,
)
from worldmodels.envs import preprocess_frame
from worldmodels.errors import DataError
from worldmodels.generative import VQVAE
from worldmodels.memory.mdnrnn import MDNRNN, CodeRNN, codes_to_latent, sample_next_codes
from worldmodels.run import load_agent, load_world_model, save_random_vq_world_model
from worldmodels.utils.checkpoint import save_checkpoint

HIDDEN = 32
VQ = {"hidden_channels": 32, "residual_channels": 8}  # the default grid: 8x8 codes of 4, K=128


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return save_random_vq_world_model(tmp_path_factory.mktemp("vq"), hidden_dim=HIDDEN, seed=3,
                                      **VQ)


@pytest.fixture(scope="module")
def agent(run):
    vae, mdnrnn, name = load_world_model(run)
    assert (name, type(vae), type(mdnrnn)) == ("vqvae", VQVAE, CodeRNN)
    return WorldModelAgent(vae, mdnrnn)


@pytest.fixture(scope="module")
def envs():
    pool = EnvCache()
    yield pool
    pool.close()


def observations(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random observations (noise upsampled 12x): many codes, unlike white noise."""
    small = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return small.repeat(12, axis=1).repeat(12, axis=2)


def frames_of(obs: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.stack([preprocess_frame(o) for o in obs])).permute(0, 3, 1, 2)
    return x.float() / 255.0


# ------------------------------------------------------------------------------ V: z = z_q


def test_z_is_the_quantised_latent_of_the_vq_vaes_codes(agent):
    obs = observations(4, seed=1)
    codes = agent.encode_codes(obs)
    assert codes.shape == (4, 64) and codes.dtype == torch.int64
    assert len(torch.unique(codes)) > 20  # the frames use many codes
    vae = agent.vae
    with torch.no_grad():
        expected = vae.encode_codes(frames_of(obs))
        z_q = vae.quantizer.embed(expected).flatten(1)  # the decoder's input, flat
    assert torch.equal(codes, expected.flatten(1))
    z = agent.encode(obs)
    assert z.shape == (4, vae.latent_dim) == (4, 256)
    assert torch.equal(z, z_q) and torch.equal(z, codes_to_latent(vae.quantizer.codebook, codes))
    assert agent.make_controller().num_parameters == 3 * (256 + HIDDEN + 1)  # C stays linear


def test_one_step_is_v_then_c_on_z_q_and_h_then_m_on_the_codes(agent):
    """a_t = C(z_q(x_t), h_t); (h, c) <- CodeRNN.step(codes_t, a_t): written out by hand."""
    obs = observations(2, seed=2)
    agent.reset(2)
    h0 = torch.randn(2, HIDDEN) * 0.1
    agent.state = (h0.clone(), torch.zeros(2, HIDDEN))
    a = agent.act(obs)
    with torch.no_grad():
        codes = agent.vae.encode_codes(frames_of(obs))
        z = agent.vae.quantizer.embed(codes).flatten(1)
        expected_a = agent.controller(z, h0)
        _, (h1, _) = agent.mdnrnn.step(codes, expected_a, (h0, torch.zeros(2, HIDDEN)))
    torch.testing.assert_close(torch.from_numpy(a), expected_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(agent.state[0], h1, rtol=1e-5, atol=1e-6)
    assert not torch.equal(agent.state[0], h0)


def test_predicted_z_is_ms_most_likely_next_codes_as_z_q(agent):
    obs = observations(3, seed=3)
    agent.reset(3)
    agent.act(obs)
    with torch.no_grad():
        out = agent.mdnrnn.predict(agent.state[0])
        # predict is forward's heads on the hidden state
        codes = agent.encode_codes(obs)
        full = agent.mdnrnn(codes[:, None], torch.zeros(3, 1, 3))
        torch.testing.assert_close(
            agent.mdnrnn.predict(full.state[0]).logits, full.logits[:, 0], rtol=1e-6, atol=1e-6)
    best = sample_next_codes(out, 0.0)
    assert torch.equal(agent.predicted_z(), codes_to_latent(agent.vae.quantizer.codebook, best))
    assert torch.equal(agent.predicted_z(rows=[2]), agent.predicted_z()[2:])


# ------------------------------------------------------------------------------ batch invariance


def test_rows_are_independent_of_the_batch(agent):
    """The continuous agent's check, on the VQ agent: codes, z_q, C's action and M's state of
    a row are bit-identical alone and in any batch (it failed before V's encoder ran frame by
    frame: a 3x3 convolution of one frame and of several differ in the last bit)."""
    assert len(torch.unique(agent.encode_codes(vae_agent_checks.observations(7, seed=3)))) > 20
    vae_agent_checks.test_rows_are_independent_of_the_batch(agent)


@pytest.mark.parametrize("renderer", ["approx", pytest.param("exact", marks=pytest.mark.slow)])
def test_lockstep_returns_equal_alone_returns_exactly(agent, envs, renderer):
    """Real episodes of 3 candidates on 2 tracks: together, alone and reshuffled give
    bit-identical returns, steps and tiles (the continuous agent's check)."""
    vae_agent_checks.test_lockstep_returns_equal_alone_returns_exactly(agent, envs, renderer)


# ------------------------------------------------------------------------------ loading, workers


def test_worker_bundle_rebuilds_the_vq_agent(run, agent, envs):
    """What evaluation workers hold: the VQ-VAE and the CodeRNN from the bundle's bytes,
    driving exactly as the agent they came from."""
    bundle = worker_bundle(agent.vae, agent.mdnrnn)
    worker = WorkerState(bundle)
    try:
        assert isinstance(worker.agent.vae, VQVAE) and isinstance(worker.agent.mdnrnn, CodeRNN)
        params = vae_agent_checks.candidates(agent, 2, seed=6)
        specs = [EpisodeSpec(k, k, 70 + k) for k in range(2)]
        got = worker.run({"params": params, "specs": [(s.key, s.candidate, s.seed)
                                                      for s in specs],
                          "max_steps": 40, "early_stop_steps": 0})
        expected = run_episodes(agent, specs, params, max_steps=40, envs=envs)
        assert got == [(r.key, r.episode_return, r.steps, r.tiles, r.stopped_early,
                        r.track_tiles, r.lap_completed) for r in expected]
    finally:
        worker.close()


def test_load_agent_drives_the_trained_controller(run):
    c = Controller(latent_dim=256, hidden_dim=HIDDEN)
    save_checkpoint(run / "controller" / "last.pt", kind="controller", model=c,
                    model_config=c.hparams, step=1,
                    extra={"vae_model": "vqvae", "agent": {"precision": "fp32", "z": "mu"}})
    try:
        agent = load_agent(run)
        assert agent.discrete and np.array_equal(agent.controller.get_flat(), c.get_flat())
    finally:
        (run / "controller" / "last.pt").unlink()


def test_mismatched_discrete_world_models_are_one_line_errors(run, agent):
    vae = agent.vae
    with pytest.raises(DataError, match="V is a VQ-VAE but M is MDNRNN"):
        WorldModelAgent(vae, MDNRNN(latent_dim=256, hidden_dim=8))
    with pytest.raises(DataError, match="M was trained on another V"):
        WorldModelAgent(vae, CodeRNN(64, 16, hidden_dim=8))
    with pytest.raises(DataError, match="continuous MDN-RNN"):
        from worldmodels.generative import ConvVAE

        WorldModelAgent(ConvVAE(), CodeRNN(128, 64, hidden_dim=8))
    with pytest.raises(DataError, match="z_q is deterministic"):
        WorldModelAgent(vae, agent.mdnrnn, z="sample")
    with pytest.raises(DataError, match="reads z of size"):
        WorldModelAgent(vae, agent.mdnrnn, Controller(latent_dim=32, hidden_dim=HIDDEN))
    # a run whose M reads another codebook
    other = save_random_vq_world_model(run.parent / "other", hidden_dim=8, seed=1,
                                       codebook_size=16, **VQ)
    m = CodeRNN(128, 64, hidden_dim=8)
    save_checkpoint(other / "mdnrnn" / "best.pt", kind="mdnrnn", model=m,
                    model_config={"model": "discrete_mdnrnn", **m.hparams}, step=0,
                    extra={"vae": {"model": "vqvae"}})
    with pytest.raises(DataError, match="does not read V's codes .*retrain M"):
        load_world_model(other)
