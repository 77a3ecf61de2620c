"""The dream (Ha & Schmidhuber 2018, arXiv:1803.10122, sec. 4): DreamEnv, BatchedDream and
CMA-ES fitness in lockstep.

V and M have random weights (saved in the formats of their training stages, M's done head
biased so that episodes last); start states come from a small synthetic latents file, or
from V on real CarRacing reset frames. The central properties: the env passes gymnasium's
checker; an episode is fixed by its seed; a batched row is the single env's episode of the
same seed; a CMA-ES population's returns are shaped (P, T), deterministic and the same as
driving each candidate alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import worldmodels.envs as envs
from worldmodels.control.controller import Controller
from worldmodels.control.dream_fitness import (
    BatchedControllers,
    dream_rollout_returns,
    dream_trial_seeds,
)
from worldmodels.data.latents import FORMAT, FORMAT_VERSION, latents_path
from worldmodels.data.rollouts import episode_name
from worldmodels.envs.dream import BatchedDream, decode_frames, keyed_uniform
from worldmodels.envs.dream_env import DreamEnv
from worldmodels.errors import DataError
from worldmodels.memory.mdnrnn import MDNRNN, sample_next
from worldmodels.run import load_dream, load_world_model, make_dream_env, save_random_world_model
from worldmodels.utils.checkpoint import load_checkpoint, save_checkpoint

D, H = 32, 64  # a small M keeps the tests fast; the paper's H is 256
ROOT = Path(__file__).resolve().parents[1]


def set_done_bias(run: Path, bias: float) -> None:
    """Rewrite M's checkpoint with the done head's bias set (random M: logit ~ 0)."""
    path = run / "mdnrnn" / "best.pt"
    ckpt = load_checkpoint(path, kind="mdnrnn")
    m = load_world_model(run)[1]
    with torch.no_grad():
        m.done_head.bias.fill_(bias)
    save_checkpoint(path, kind="mdnrnn", model=m, model_config=ckpt["model_config"], step=0,
                    extra=ckpt["extra"])


def write_first_frames(run: Path, mu0: np.ndarray, sha: str | None = None) -> Path:
    """A latents file whose episode k starts at mu0[k] (logvar -30: z_0 = mu0[k])."""
    path = latents_path(run, "vae")
    E = len(mu0)
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "gaussian",
                        "latent_dim": D, "latent_shape": json.dumps([D]), "codebook_size": 0,
                        "num_episodes": E,
                        "vae": json.dumps({"model": "vae", "sha256": sha, "step": 0}),
                        "rollouts": json.dumps({"num_episodes": E, "config": {}})})
        for k in range(E):
            T = 3
            g = f.create_group(f"episodes/{episode_name(k)}")
            g["mu"] = np.repeat(mu0[k:k + 1], T, axis=0).astype(np.float32)
            g["logvar"] = np.full((T, D), -30.0, np.float32)
            g["actions"] = np.zeros((T, 3), np.float32)
            g["rewards"] = np.zeros(T)
            g["terminated"] = np.zeros(T, bool)
            g["truncated"] = np.zeros(T, bool)
            g.attrs.update({"seed": k, "length": T})
        f["index/seed"] = np.arange(E, dtype=np.int64)
        f["index/length"] = np.full(E, 3, dtype=np.int64)
        f["index/terminated"] = np.zeros(E, bool)
    return path


START = np.random.default_rng(0).normal(size=(6, D)).astype(np.float32)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = save_random_world_model(tmp_path_factory.mktemp("dream"), hidden_dim=H, seed=3)
    set_done_bias(run, -6.0)  # P(done) ~ 0.25% per step: episodes last
    write_first_frames(run, START)
    return run


def rollout(env: gym.Env, seed: int, actions: np.ndarray) -> tuple[list, list]:
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], []
    for a in actions:
        obs, r, terminated, truncated, _ = env.step(a)
        observations.append(obs)
        rewards.append(r)
        if terminated or truncated:
            break
    return observations, rewards


def actions(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-1, 0, 0], [1, 1, 1], (n, 3)).astype(np.float32)


# ------------------------------------------------------------------------------ the env


def test_registered_env_passes_the_gymnasium_checker(run):
    env = gym.make(envs.DREAM_ENV_ID, run=str(run), temperature=1.0, render_mode="rgb_array")
    check_env(env.unwrapped)
    dream = env.unwrapped
    assert isinstance(dream, DreamEnv)
    assert dream.observation_space.shape == (D + H,)
    assert dream.observation_space.dtype == np.float32
    assert dream.action_space == gym.make("CarRacing-v3").action_space
    assert "latents_vae.h5" in dream.dream.start_source
    env.close()


def test_z_only_observation(run):
    env = make_dream_env(run, observation="z")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (D,) and env.observation_space.shape == (D,)
    assert obs in env.observation_space


def test_same_seed_same_episode_other_seed_another(run):
    env = make_dream_env(run)
    a = actions(40)
    obs1, rew1 = rollout(env, 7, a)
    obs2, rew2 = rollout(env, 7, a)
    obs3, rew3 = rollout(env, 8, a)
    assert len(obs1) == 41
    assert all(np.array_equal(x, y) for x, y in zip(obs1, obs2)) and rew1 == rew2
    assert not np.array_equal(obs1[0], obs3[0]) or not np.array_equal(obs1[-1], obs3[-1])
    assert rew1 != rew3
    # seedless resets after a seeded one are reproducible (gymnasium's contract)
    env.reset(seed=3)
    after = env.reset()[0]
    env.reset(seed=3)
    assert np.array_equal(env.reset()[0], after)


def test_start_state_is_a_real_first_frame(run):
    env = make_dream_env(run)
    z0 = np.stack([env.reset(seed=s)[0][:D] for s in range(20)])
    distance = np.abs(z0[:, None, :] - START[None]).max(axis=-1)  # (20, 6)
    assert (distance.min(axis=1) < 1e-5).all()  # each z_0 is one of the first frames
    assert len(set(distance.argmin(axis=1).tolist())) > 2  # drawn from several episodes
    assert np.array_equal(env.reset(seed=0)[0][D:], np.zeros(H, np.float32))  # h_0 = 0


def test_lower_temperature_less_variance(run):
    vae, m, _ = load_world_model(run)
    one = np.zeros((1, D), np.float32)
    spread = {}
    for tau in (1.0, 0.1, 0.0):
        dream = BatchedDream(m, one, np.full_like(one, -40.0), temperature=tau,
                                         batch_size=64, device="cpu")
        dream.reset(seed=0)  # 64 episodes from the same z_0: only M's sampling differs
        for _ in range(3):
            obs, _, _ = dream.step(torch.full((64, 3), 0.5))
        spread[tau] = float(obs[:, :D].var(dim=0).mean())
    assert spread[1.0] > 5 * spread[0.1] > 0
    assert spread[0.0] < 1e-12  # tau = 0: the mean of the most likely component


def test_render_decodes_z_with_v(run):
    env = make_dream_env(run, render_mode="rgb_array")
    env.reset(seed=1)
    env.step(actions(1)[0])
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    vae = env.dream.vae
    assert np.array_equal(frame, decode_frames(vae, env.dream.z)[0])
    big = make_dream_env(run, render_mode="rgb_array", render_scale=3)
    big.reset(seed=1)
    assert big.render().shape == (192, 192, 3)


def test_truncation_termination_and_frozen_rows(run, tmp_path):
    env = make_dream_env(run, max_steps=5)
    env.reset(seed=0)
    flags = [env.step(a)[2:4] for a in actions(5)]
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])
    # an M sure of the end: terminated after one step, threshold or sampled
    ending = save_random_world_model(tmp_path / "end", hidden_dim=H, seed=3)
    set_done_bias(ending, 20.0)
    write_first_frames(ending, START)
    for done in ("threshold", "sample"):
        env = make_dream_env(ending, done=done)
        env.reset(seed=0)
        _, _, terminated, truncated, info = env.step(actions(1)[0])
        assert terminated and not truncated and info["done_prob"] > 0.99
    dream = load_dream(ending, 3, device="cpu")
    obs0 = dream.reset(seed=0)
    obs1, r1, done1 = dream.step(torch.zeros(3, 3))
    obs2, r2, done2 = dream.step(torch.zeros(3, 3))
    assert done1.all() and done2.all() and (r2 == 0).all() and torch.equal(obs1, obs2)
    assert not torch.equal(obs0, obs1)
    assert torch.equal(dream.returns, r1.double()) and (dream.lengths == 1).all()


def test_latents_of_another_v_are_not_used(run, tmp_path):
    other = save_random_world_model(tmp_path / "other", hidden_dim=H, seed=3)
    ckpt = load_checkpoint(other / "mdnrnn" / "best.pt", kind="mdnrnn")
    m = load_world_model(other)[1]
    save_checkpoint(other / "mdnrnn" / "best.pt", kind="mdnrnn", model=m,
                    model_config=ckpt["model_config"], step=0,
                    extra={"vae": {"model": "vae", "sha256": "aaaa"}})
    write_first_frames(other, START, sha="bbbb")
    with pytest.raises(DataError, match="another V"):
        load_dream(other, start="latents", device="cpu")
    dream = load_dream(other, start="auto", start_tracks=2, device="cpu")  # real tracks
    assert "tracks 0..1" in dream.start_source and len(dream.start_mu) == 2


def test_missing_run_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="no run directory"):
        make_dream_env(tmp_path / "nope")
    with pytest.raises(DataError, match="no trained M"):
        load_dream(tmp_path, device="cpu")


# test_import_does_not_import_torch: in test_readme_make_lines_work_after_importing_only_gymnasium
# (one fresh interpreter for both: each start costs seconds)


# ------------------------------------------------------------------------------ batched


def test_keyed_noise_is_uniform_and_per_key():
    keys = torch.arange(4096, dtype=torch.int64) * 7919
    slots = torch.arange(1, 9, dtype=torch.int64) * 0x9E3779B9 % 2**32
    u = keyed_uniform(keys, 5, slots)
    assert u.shape == (4096, 8) and u.dtype == torch.float32
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - 12**-0.5) < 0.01
    assert torch.equal(keyed_uniform(keys[100:101], 5, slots), u[100:101])  # per key
    assert not torch.equal(keyed_uniform(keys, 6, slots), u)  # per step
    corr = np.corrcoef(u[:, 0].numpy(), u[:, 1].numpy())[0, 1]
    assert abs(corr) < 0.05


def test_batched_rows_are_the_single_envs_of_their_seeds(run):
    """Row i of reset(seed=S) is DreamEnv.reset(seed=S+i): the noise is keyed per episode,
    so they agree to the float rounding of the batched matrix products."""
    B, steps = 5, 30
    a = actions(steps, seed=1)
    dream = load_dream(run, B, device="cpu")
    batched = [dream.reset(seed=100)]
    for t in range(steps):
        batched.append(dream.step(np.repeat(a[t:t + 1], B, axis=0))[0])
    batched = torch.stack(batched, dim=1).numpy()  # (B, steps+1, D+H)
    env = make_dream_env(run)
    for i in range(B):
        single, _ = rollout(env, 100 + i, a)
        assert len(single) == steps + 1
        np.testing.assert_allclose(np.stack(single), batched[i], atol=1e-4, rtol=0)
    # the same rows in another order and company: each row unchanged
    dream.reset(seeds=[104, 7, 102, 100, 9, 101, 103])
    again = torch.stack([dream.step(np.repeat(a[t:t + 1], 7, axis=0))[0]
                         for t in range(steps)], dim=1).numpy()
    for j, i in ((0, 4), (2, 2), (3, 0), (5, 1), (6, 3)):
        np.testing.assert_allclose(again[j], batched[i, 1:], atol=1e-4, rtol=0)
    # and a repeated reset replays the batch exactly
    dream.reset(seed=100)
    assert np.array_equal(dream.step(np.repeat(a[:1], B, axis=0))[0].numpy(), batched[:, 1])


def test_bf16_products_follow_fp32_to_bf16_rounding(run):
    """precision="bf16" rounds only the inputs of the two products (fp32 accumulation, state
    and sampling in fp32): one step lands within bf16 rounding of fp32's, and the step did
    run in bf16 (not bit-equal)."""
    B = 64
    a = np.repeat(actions(1, seed=3), B, axis=0)
    obs = {}
    for precision in ("fp32", "bf16"):
        dream = load_dream(run, B, device="cpu", precision=precision)
        dream.reset(seed=11)
        obs[precision] = dream.step(a)[0].numpy()
    h32, h16 = obs["fp32"][:, D:], obs["bf16"][:, D:]
    assert not np.array_equal(h32, h16)
    np.testing.assert_allclose(h16, h32, atol=3e-2, rtol=0)
    assert np.abs(h16 - h32).mean() < 5e-3
    # z is sampled: the same keyed noise picks the same component unless rounding flips it
    same = np.abs(obs["bf16"][:, :D] - obs["fp32"][:, :D]) < 5e-2
    assert same.mean() > 0.9


def test_batched_controllers_match_controller():
    rng = np.random.default_rng(0)
    for kwargs in ({}, {"hidden_layer": 4}, {"use_hidden_state": False}):
        cs = [Controller(D, H, **kwargs).set_flat(rng.normal(0, 0.3, Controller(D, H, **kwargs)
                                                             .num_parameters)) for _ in range(3)]
        batch = BatchedControllers.from_controllers(cs, torch.device("cpu"))
        obs = torch.from_numpy(rng.normal(size=(3, 4, D + H)).astype(np.float32))
        out = batch(obs)
        for c, (ctrl, x) in enumerate(zip(cs, obs)):
            torch.testing.assert_close(out[c], ctrl(x[:, :D], x[:, D:]), atol=1e-5, rtol=1e-5)


def test_dream_rollout_returns_shape_determinism_and_single_episodes(run):
    P, T, steps = 3, 2, 25
    n = Controller(D, H).num_parameters
    params = np.random.default_rng(0).normal(0.0, 0.3, (P, n))
    params[2] = params[0]  # two equal candidates see the same trials (common random numbers)
    dream = load_dream(run, device="cpu")
    returns = dream_rollout_returns(params, T, seed=11, max_steps=steps, dream=dream)
    assert returns.shape == (P, T) and returns.dtype == np.float64
    assert np.array_equal(returns, dream_rollout_returns(params, T, 11, steps, dream=dream))
    assert not np.array_equal(returns, dream_rollout_returns(params, T, 12, steps, dream=dream))
    np.testing.assert_allclose(returns[2], returns[0], atol=1e-4)
    controllers = [Controller(D, H).set_flat(p) for p in params]
    np.testing.assert_allclose(
        dream_rollout_returns(controllers, T, 11, steps, dream=dream), returns, atol=1e-4)
    from_dir = dream_rollout_returns(params, T, 11, steps, dream=load_dream(run, device="cpu"))
    np.testing.assert_allclose(from_dir, returns, atol=1e-4)
    # candidate 1, trial 1 driven alone in a DreamEnv
    env = make_dream_env(run, max_steps=steps)
    obs, _ = env.reset(seed=dream_trial_seeds(11, T)[1])
    total, done = 0.0, False
    with torch.no_grad():
        while not done:
            x = torch.from_numpy(obs[None])
            a = controllers[1](x[:, :D], x[:, D:])[0].numpy()
            obs, r, terminated, truncated, _ = env.step(a)
            total += r
            done = terminated or truncated
    assert total == pytest.approx(returns[1, 1], abs=1e-3)


def test_benchmark_runs():
    from worldmodels.benchmark.dream import run as bench

    rows = bench(batch_size=32, steps=2, device="cpu", real_steps=3, agent=False)
    assert [r["what"].split(":")[0].split(" (")[0] for r in rows] == [
        "real", "real", "dream", "dream", "dream + C", "dream + C"]
    assert all(r["env-steps/s"] > 0 for r in rows)
    stock, fast = rows[0]["env-steps/s"], rows[1]["env-steps/s"]
    assert rows[2]["x CarRacing-v3"] == pytest.approx(rows[2]["env-steps/s"] / stock)
    assert rows[2]["x fast"] == pytest.approx(rows[2]["env-steps/s"] / fast)


# ------------------------------------------------------------------------------ the dream is M


def _sharp_m(seed: int = 4) -> MDNRNN:
    """A random M whose mixtures are far from uniform: logits and means spread by 4x, so a
    wrong temperature on the weights or on sigma moves the moments visibly."""
    torch.manual_seed(seed)
    m = MDNRNN(latent_dim=D, hidden_dim=H, num_gaussians=5).eval()
    with torch.no_grad():
        m.mdn.weight[:2 * D * 5] *= 4
        m.mdn.bias[:2 * D * 5] *= 4
        m.done_head.bias.fill_(-8.0)  # episodes last: no row freezes during the test
    return m


def _mixture_moments(out, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (B, D) of the tempered mixture: weights softmax(logpi / tau),
    components N(mu_k, tau sigma_k^2) (the paper's temperature)."""
    w = torch.softmax(out.logpi.double() / tau, dim=-1)
    mu, var = out.mu.double(), out.logsigma.double().mul(2).exp() * tau
    mean = (w * mu).sum(-1)
    return mean, (w * (var + mu**2)).sum(-1) - mean**2


def test_dream_at_tau_0_is_m_step_and_its_deterministic_sampler():
    """The fused LSTM, the reordered heads and the sampler against MDNRNN.step + sample_next
    (tau = 0: the mean of the most likely component), closed loop from the same z_0:
    latents, hidden and cell state, reward and P(done) equal to float rounding."""
    m = _sharp_m()
    B, steps = 6, 25
    dream = BatchedDream(m, START, np.full_like(START, -2.0), batch_size=B,
                                     temperature=0.0, device="cpu", precision="fp32")
    obs = dream.reset(seed=11)
    z = obs[:, :D].clone()
    state = m.initial_state(B)
    moves = actions(steps, seed=5)
    with torch.no_grad():
        for t in range(steps):
            a = torch.from_numpy(np.repeat(moves[t:t + 1], B, axis=0))
            obs, reward, done = dream.step(a)
            out, state = m.step(z, a, state)
            z = sample_next(out, temperature=0.0)
            torch.testing.assert_close(obs[:, :D], z, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(obs[:, D:], state[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(dream.c, state[1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(reward, out.reward, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(dream.done_prob, torch.sigmoid(out.done_logit),
                                       rtol=1e-4, atol=1e-9)
            assert not done.any()
    assert float(z.std()) > 0.1  # the latents moved: the comparison saw real values


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
def test_dream_samples_at_tau_have_the_moments_of_ms_mixture(tau):
    """One step of N rows from the same z_0 and h_0 = 0: their z_1 are draws from M's tempered
    mixture. Mean and variance per latent dimension match the mixture's analytic moments
    (and M's own sampler's), and the dream's and sample_next's draws are the same
    distribution (two-sample Kolmogorov-Smirnov per dimension)."""
    from scipy.stats import ks_2samp

    m = _sharp_m()
    N = 20_000
    dream = BatchedDream(m, START[:1], np.full((1, D), -40.0, np.float32),
                                     batch_size=N, temperature=tau, device="cpu",
                                     precision="fp32")
    z0 = dream.reset(seed=0)[:, :D]
    assert float((z0 - z0[0]).abs().max()) < 1e-6  # one start state
    a = torch.tensor([[0.3, 0.6, 0.1]]).repeat(N, 1)
    z1 = dream.step(a)[0][:, :D].double()
    with torch.no_grad():
        out, _ = m.step(z0[:1], a[:1])
    mean, var = (x[0] for x in _mixture_moments(out, tau))
    se_mean = (var / N).sqrt()
    assert (z1.mean(0) - mean).abs().max() < 5 * se_mean.max()
    assert ((z1.var(0) / var) - 1).abs().max() < 0.08
    # the tempering matters here: the untempered mixture's moments are visibly different
    mean1, var1 = (x[0] for x in _mixture_moments(out, 1.0))
    if tau != 1.0:
        assert ((var1 / var) - 1).abs().max() > 0.2
    g = torch.Generator().manual_seed(1)
    big = type(out)(*(t.expand(N, *t.shape[1:]) for t in out[:3]), None, None, None)
    ref = sample_next(big, temperature=tau, generator=g).double()
    assert (ref.mean(0) - mean).abs().max() < 5 * se_mean.max()
    assert ((ref.var(0) / var) - 1).abs().max() < 0.08
    p = [ks_2samp(z1[:, j].numpy(), ref[:, j].numpy()).pvalue for j in range(D)]
    assert min(p) > 1e-4  # 32 tests: a real difference gives p ~ 0


def test_readme_make_lines_work_after_importing_only_gymnasium(run):
    """Gymnasium 1.x loads no plugins: the README's ids name the module to import
    ("worldmodels.envs:worldmodels/Dream-v0"), so a fresh interpreter that imported only
    gymnasium makes both envs; the real env imports no torch (the dream env does, lazily)."""
    readme = (ROOT / "README.md").read_text()
    assert 'gymnasium.make("worldmodels.envs:worldmodels/Dream-v0", run=DIR' in readme
    code = ("import sys, gymnasium\n"
            "assert 'worldmodels' not in sys.modules\n"
            "fast = gymnasium.make('worldmodels.envs:worldmodels/FastCarRacing-v3')\n"
            "assert fast.reset(seed=0)[0].shape == (96, 96, 3)\n"
            "import worldmodels.envs as e\n"
            "assert 'torch' not in sys.modules\n"
            "assert gymnasium.spec(e.DREAM_ENV_ID).entry_point == 'worldmodels.run:make_dream_env'\n"
            "e.DreamEnv\n"
            "assert 'torch' in sys.modules\n"
            "env = gymnasium.make('worldmodels.envs:worldmodels/Dream-v0', run=sys.argv[1], "
            "temperature=1.0)\n"
            "obs, _ = env.reset(seed=0)\n"
            "assert env.step(env.action_space.sample())[0].shape == obs.shape\n"
            "assert gymnasium.make('worldmodels/Dream-v0', run=sys.argv[1]).unwrapped.dream\n")
    r = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
