"""The dream of a discrete world model: code grids of a VQ-VAE (van den Oord et al. 2017,
arXiv:1711.00937) stepped by a CodeRNN, as CarRacing inside M's dream (Ha & Schmidhuber 2018,
arXiv:1803.10122, sec. 4): BatchedCodeDream, DreamEnv on it, CMA-ES fitness in it.

A tiny world (a 2x2 grid of 8 codes, M's head sharpened so that its categoricals are far from
uniform) checks the sampler against CodeRNN.step and its tempered categoricals; a run of
random VQ-VAE and CodeRNN checkpoints checks the loaders, the env and the fitness.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldmodels.envs  # noqa: F401 (registers worldmodels/Dream-v0)
from worldmodels.control.controller import Controller
from worldmodels.control.dream_fitness import dream_rollout_returns, dream_trial_seeds
from worldmodels.data.latents import FORMAT, FORMAT_VERSION, latents_path
from worldmodels.data.rollouts import episode_name
from worldmodels.envs.code_dream import BatchedCodeDream
from worldmodels.envs.dream import BatchedDream
from worldmodels.envs.dream_env import DreamEnv
from worldmodels.errors import DataError
from worldmodels.generative import VQVAE
from worldmodels.memory.mdnrnn import MDNRNN, CodeRNN, codes_to_latent, sample_next_codes
from worldmodels.run import load_dream, load_world_model, make_dream_env, save_random_vq_world_model
from worldmodels.utils.checkpoint import load_checkpoint, save_checkpoint

K, CELLS, H = 8, 4, 16  # the tiny world: 2x2 grid, 8 codes of 2 numbers
START = np.random.default_rng(0).integers(0, K, (6, CELLS))


def tiny_world(done_bias: float = -6.0) -> tuple[VQVAE, CodeRNN]:
    torch.manual_seed(0)
    vae = VQVAE(codebook_size=K, code_dim=2, hidden_channels=8, residual_channels=4,
                downsample=5).eval()
    m = CodeRNN(K, CELLS, hidden_dim=H, code_embed_dim=3).eval()
    with torch.no_grad():  # logits of several nats: tempering visibly changes them
        m.head.weight.mul_(20.0)
        m.head.bias.normal_(0.0, 2.0)
        m.done_head.bias.fill_(done_bias)
        vae.quantizer.codebook.normal_()
    return vae, m


def actions(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-1, 0, 0], [1, 1, 1], (n, 3)).astype(np.float32)


# ------------------------------------------------------------------------------ the sampler


def test_dream_at_tau_0_is_coderrnn_step_and_its_argmax_closed_loop():
    """The fused LSTM and heads against CodeRNN.step + sample_next_codes at tau = 0, closed
    loop from the same start codes: the codes equal exactly, z = z_q(codes), h, c, reward
    and P(done) to float rounding; and the dream replays itself bit for bit."""
    vae, m = tiny_world()
    B, steps = 6, 25
    dream = BatchedCodeDream(m, START, vae=vae, batch_size=B, temperature=0.0, device="cpu",
                             precision="fp32")
    obs = dream.reset(seed=11)
    codes = dream.codes.clone()
    assert obs.shape == (B, 2 * CELLS + H) and dream.latent_dim == 2 * CELLS
    assert all(any(np.array_equal(c, s) for s in START) for c in codes.numpy())
    state = m.initial_state(B)
    moves = actions(steps, seed=5)
    seen = set()
    with torch.no_grad():
        for t in range(steps):
            a = torch.from_numpy(np.repeat(moves[t:t + 1], B, axis=0))
            obs, reward, done = dream.step(a)
            out, state = m.step(codes, a, state)
            codes = sample_next_codes(out, temperature=0.0)
            assert torch.equal(dream.codes, codes), t
            assert torch.equal(obs[:, :2 * CELLS], codes_to_latent(vae.quantizer.codebook, codes))
            torch.testing.assert_close(obs[:, 2 * CELLS:], state[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(dream.c, state[1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(reward, out.reward, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(dream.done_prob, torch.sigmoid(out.done_logit),
                                       rtol=1e-4, atol=1e-9)
            assert not done.any()
            seen |= {tuple(c) for c in codes.tolist()}
    assert len(seen) > 5  # the grids changed: the comparison saw real values
    final = dream.observation.clone()
    dream.reset(seed=11)
    for t in range(steps):
        dream.step(np.repeat(moves[t:t + 1], B, axis=0))
    assert torch.equal(dream.observation, final)


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
def test_dream_samples_codes_from_ms_tempered_categoricals(tau):
    """One step of N rows from the same start codes and h_0 = 0: every cell's next code is a
    draw of softmax(logits / tau) of M's step. The frequencies match those probabilities
    (chi-square per cell), the tempering matters (tau != 1 gives visibly other
    probabilities), and M's own sampler draws the same distribution."""
    from scipy.stats import chisquare

    vae, m = tiny_world()
    N = 20_000
    dream = BatchedCodeDream(m, START[:1], vae=vae, batch_size=N, temperature=tau,
                             device="cpu", precision="fp32")
    dream.reset(seed=0)
    assert (dream.codes == torch.from_numpy(START[:1])).all()  # one start grid
    a = torch.tensor([[0.3, 0.6, 0.1]]).repeat(N, 1)
    dream.step(a)
    with torch.no_grad():
        out, _ = m.step(torch.from_numpy(START[:1]), a[:1])
    p = torch.softmax(out.logits[0].double() / tau, dim=-1)  # (cells, K)
    g = torch.Generator().manual_seed(1)
    big = type(out)(out.logits.expand(N, CELLS, K), None, None, None)
    reference = sample_next_codes(big, temperature=tau, generator=g)
    for draws in (dream.codes, reference):
        for i in range(CELLS):
            counts = torch.bincount(draws[:, i], minlength=K).double()
            expected = p[i] * N
            keep = expected > 5  # chi-square needs expected counts; the rest must be rare
            assert counts[~keep].sum() <= max(10.0, 3 * expected[~keep].sum())
            stat = chisquare(counts[keep].numpy(), expected[keep].numpy()
                             * counts[keep].sum().item() / expected[keep].sum().item())
            assert stat.pvalue > 1e-4, (i, stat)
    assert p.max(dim=-1).values.min() < 0.99  # not one certain code per cell
    if tau != 1.0:
        p1 = torch.softmax(out.logits[0].double(), dim=-1)
        assert (p1 - p).abs().max() > 0.05


def test_finished_rows_keep_their_codes():
    vae, m = tiny_world(done_bias=6.0)  # M ends every episode at its first step
    dream = BatchedCodeDream(m, START, vae=vae, batch_size=3, temperature=1.0, device="cpu")
    dream.reset(seed=4)
    _, _, done = dream.step(actions(3))
    assert done.all() and dream.terminated.all()
    codes, z, h = dream.codes.clone(), dream.z.clone(), dream.h.clone()
    _, reward, done = dream.step(actions(3, seed=1))
    assert done.all() and (reward == 0).all()
    assert torch.equal(dream.codes, codes) and torch.equal(dream.z, z)
    assert torch.equal(dream.h, h)


def test_bad_world_models_and_start_codes_are_one_line_errors():
    vae, m = tiny_world()
    with pytest.raises(DataError, match="V is a VQ-VAE but M is MDNRNN"):
        BatchedCodeDream(MDNRNN(latent_dim=8, hidden_dim=4), START, vae=vae)
    with pytest.raises(DataError, match="needs the VQ-VAE"):
        BatchedCodeDream(m, START, vae=None)
    with pytest.raises(DataError, match="M was trained on another V"):
        BatchedCodeDream(CodeRNN(K, 16, hidden_dim=4), START, vae=vae)
    with pytest.raises(DataError, match=r"start codes must be \(N, 4\) in \[0, 8\)"):
        BatchedCodeDream(m, START + K, vae=vae)
    with pytest.raises(DataError, match="integers"):
        BatchedCodeDream(m, START.astype(np.float32), vae=vae)
    with pytest.raises(DataError, match="a CodeRNN dreams in a BatchedCodeDream"):
        BatchedDream(m, np.zeros((1, 8)), np.zeros((1, 8)))


# ------------------------------------------------------------------------------ from a run


def write_first_codes(run: Path, codes: np.ndarray, sha: str | None = None) -> Path:
    """A latents file of code grids whose episode k starts with codes[k] (8x8 grids)."""
    path = latents_path(run, "vqvae")
    E = len(codes)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "codes",
                        "latent_dim": 64, "latent_shape": json.dumps([8, 8]),
                        "codebook_size": 128, "num_episodes": E,
                        "vae": json.dumps({"model": "vqvae", "sha256": sha, "step": 0}),
                        "rollouts": json.dumps({"num_episodes": E, "config": {}})})
        for k in range(E):
            g = f.create_group(f"episodes/{episode_name(k)}")
            g["codes"] = np.repeat(codes[k:k + 1], 2, axis=0).reshape(2, 8, 8).astype(np.int16)
            for name, value in (("actions", np.zeros((2, 3), np.float32)),
                                ("rewards", np.zeros(2)), ("terminated", np.zeros(2, bool)),
                                ("truncated", np.zeros(2, bool))):
                g[name] = value
            g.attrs.update({"seed": k, "length": 2})
        f["index/seed"] = np.arange(E, dtype=np.int64)
        f["index/length"] = np.full(E, 2, dtype=np.int64)
        f["index/terminated"] = np.zeros(E, bool)
    return path


FIRST = np.random.default_rng(1).integers(0, 128, (5, 64))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = save_random_vq_world_model(tmp_path_factory.mktemp("vqdream"), hidden_dim=32, seed=2,
                                     hidden_channels=32, residual_channels=8)
    path = run / "mdnrnn" / "best.pt"
    ckpt = load_checkpoint(path, kind="mdnrnn")
    m = load_world_model(run)[1]
    with torch.no_grad():
        m.done_head.bias.fill_(-6.0)  # P(done) ~ 0.25% per step: episodes last
    save_checkpoint(path, kind="mdnrnn", model=m, model_config=ckpt["model_config"], step=0,
                    extra=ckpt["extra"])
    write_first_codes(run, FIRST)
    return run


def test_load_dream_starts_from_the_latents_first_code_grids(run):
    dream = load_dream(run, 16, 1.0, "cpu")
    assert isinstance(dream, BatchedCodeDream) and "latents_vqvae.h5 (5" in dream.start_source
    assert torch.equal(dream.start_codes, torch.from_numpy(FIRST))
    obs = dream.reset(seed=3)
    vae = load_world_model(run)[0]
    for row, c in zip(obs, dream.codes):
        assert any(np.array_equal(c.numpy(), s) for s in FIRST)
        assert torch.equal(row[:256], codes_to_latent(vae.quantizer.codebook, c[None])[0])
    # latents of another V are not used: the dream starts from V on real tracks instead
    write_first_codes(run, FIRST, sha="0" * 64)
    try:
        from_env = load_dream(run, 2, 1.0, "cpu", start_tracks=2)
        assert "CarRacing tracks 0..1" in from_env.start_source
        assert len(from_env.start_codes) == 2
    finally:
        write_first_codes(run, FIRST)


def test_registered_env_passes_the_gymnasium_checker_and_renders_the_codes(run):
    env = gym.make("worldmodels/Dream-v0", run=run, temperature=1.0, render_mode="rgb_array")
    try:
        check_env(env.unwrapped, skip_render_check=True)
        dream = env.unwrapped
        assert isinstance(dream, DreamEnv) and dream.observation_space.shape == (256 + 32,)
        obs, _ = env.reset(seed=5)
        obs, _, _, _, info = env.step(np.array([0.1, 0.5, 0.0], np.float32))
        vae = dream.dream.vae
        codes = torch.from_numpy(info["codes"])
        z_q = codes_to_latent(vae.quantizer.codebook.detach(), codes[None])[0]
        assert np.array_equal(obs[:256], z_q.numpy())
        frame = env.render()
        with torch.no_grad():
            x = vae.decode_codes(codes.view(1, 8, 8))
        expected = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)[0].numpy()
        assert frame.shape == (64, 64, 3) and np.array_equal(frame, expected)
    finally:
        env.close()


def test_batched_rows_are_the_single_envs_of_their_seeds(run):
    """Row i of reset(seed=S) is DreamEnv.reset(seed=S+i) (the noise is keyed per episode):
    the same codes and, to the float rounding of the batched products, the same [z_q, h],
    until a rounding difference moves a uniform across a boundary of a cell's categorical
    (64 draws of 128 codes per step: rare, and from then on the rows part). A seed replays
    its episode exactly, another seed gives another."""
    B, steps = 4, 20
    a = actions(steps, seed=1)
    dream = load_dream(run, B, device="cpu")
    batched, codes = [dream.reset(seed=100)], []
    for t in range(steps):
        batched.append(dream.step(np.repeat(a[t:t + 1], B, axis=0))[0])
        codes.append(dream.codes.clone())
    batched = torch.stack(batched, dim=1).numpy()
    env = make_dream_env(run)
    agreed = 0
    for i in range(B):
        episode = [env.reset(seed=100 + i)[0]]
        for t in range(steps):
            obs, _, _, _, info = env.step(a[t])
            if not np.array_equal(info["codes"], codes[t][i].numpy()):
                break
            episode.append(obs)
        agreed += len(episode) - 1
        np.testing.assert_allclose(np.stack(episode), batched[i, :len(episode)], atol=1e-4,
                                   rtol=0)
    assert agreed >= 0.9 * B * steps
    replay = [env.reset(seed=102)[0]] + [env.step(x)[0] for x in a]
    again = [env.reset(seed=102)[0]] + [env.step(x)[0] for x in a]
    assert np.array_equal(np.stack(replay), np.stack(again))
    env.reset(seed=999)
    assert not np.array_equal(env.step(a[0])[0], replay[1])


def test_dream_fitness_in_the_code_dream_is_driving_each_candidate_alone(run):
    P, T, steps = 3, 2, 20
    D = 256
    n = Controller(D, 32).num_parameters
    params = np.random.default_rng(0).normal(0.0, 0.3, (P, n))
    params[2] = params[0]  # equal candidates see the same trials (common random numbers)
    dream = load_dream(run, device="cpu")
    returns = dream_rollout_returns(params, T, seed=11, max_steps=steps, dream=dream)
    assert returns.shape == (P, T)
    assert np.array_equal(returns, dream_rollout_returns(params, T, 11, steps, dream=dream))
    np.testing.assert_allclose(returns[2], returns[0], atol=1e-4)
    assert not np.allclose(returns[1], returns[0])
    env = make_dream_env(run, max_steps=steps)
    c = Controller(D, 32).set_flat(params[1])
    obs, _ = env.reset(seed=dream_trial_seeds(11, T)[1])
    total, done = 0.0, False
    with torch.no_grad():
        while not done:
            x = torch.from_numpy(obs[None])
            obs, r, terminated, truncated, _ = env.step(c(x[:, :D], x[:, D:])[0].numpy())
            total += r
            done = terminated or truncated
    assert total == pytest.approx(returns[1, 1], abs=1e-3)
