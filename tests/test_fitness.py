"""The cheaper real-environment fitness: action repeat, early-termination rules, the
approximate training renderer, and the benchmark that measures them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import worldmodels.envs as envs
from worldmodels.config import load_config
from worldmodels.control.agent import WorldModelAgent
from worldmodels.control.evaluation import (
    ZOOM_FRAMES,
    EpisodeSpec,
    _EarlyStop,
    run_episodes,
)
from worldmodels.envs.car_racing import ApproxFrameRenderer
from worldmodels.envs.preprocess import preprocess_frame
from worldmodels.errors import ConfigError
from worldmodels.run import load_world_model, save_random_world_model

HIDDEN = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return save_random_world_model(tmp_path_factory.mktemp("world"), hidden_dim=HIDDEN, seed=3)


@pytest.fixture(scope="module")
def agent(world):
    vae, mdnrnn, _ = load_world_model(world)
    return WorldModelAgent(vae, mdnrnn)


def params(n, seed=0):
    return np.random.default_rng(seed).normal(0, 0.5, (n, 3 * (32 + HIDDEN + 1)))


@pytest.mark.parametrize("repeat", [1, 3])
def test_action_repeat_is_the_stock_env_with_each_decision_held(agent, repeat):
    """run_episodes with k: the same return and frame count as deciding on stock CarRacing-v3
    every k frames and stepping it k times with that action."""
    p = params(1, seed=1)
    (result,) = run_episodes(agent, [EpisodeSpec(0, 0, 42)], p, max_steps=100,
                             action_repeat=repeat)
    c = agent.make_controller(p[0])
    env = gym.make(envs.STOCK_ENV_ID)
    obs, _ = env.reset(seed=42)
    agent.reset(1, seeds=[42])
    total, frames, done = 0.0, 0, False
    while not done:
        a = agent.act(obs[None], controllers=[c])[0]
        for _ in range(min(repeat, 100 - frames)):
            obs, r, term, trunc, _ = env.step(a)
            total += float(r)
            frames += 1
            done = term or trunc or frames >= 100
            if term or trunc:
                break
    env.close()
    assert (result.steps, result.episode_return) == (frames, total)
    assert frames == 100


def test_early_stop_rules_count_frames():
    tiles = _EarlyStop("tiles", 5)
    tiles.start(1)
    # a positive reward (a new tile) resets the count; 5 frames without one stop
    stops = [tiles.update(0, f, r) for f, r in enumerate([3.0, -0.1, -0.1, 2.9, -0.1, -0.1,
                                                          -0.1, -0.1, -0.1], 1)]
    assert stops == [False] * 8 + [True]
    negative = _EarlyStop("negative", 3)
    negative.start(1)
    # the zoom-in never counts, then three negative frames in a row stop
    assert not any(negative.update(0, f, -0.1) for f in range(1, ZOOM_FRAMES + 1))
    stops = [negative.update(0, ZOOM_FRAMES + i, r) for i, r in
             enumerate([-0.1, -0.1, 3.0, -0.1, -0.1, -0.1], 1)]
    assert stops == [False, False, False, False, False, True]
    off = _EarlyStop("negative", 0)
    off.start(1)
    assert not any(off.update(0, f, -0.1) for f in range(1, 200))


def test_early_stopped_episodes_are_scored_as_staying_lost(agent):
    p = np.zeros((1, 3 * (32 + HIDDEN + 1)))  # the zero controller never moves
    full, = run_episodes(agent, [EpisodeSpec(0, 0, 7)], p, max_steps=200)
    for rule, limit in (("tiles", 60), ("negative", 20)):
        (early,) = run_episodes(agent, [EpisodeSpec(0, 0, 7)], p, max_steps=200,
                                early_stop_steps=limit, early_stop=rule)
        assert early.stopped_early and early.steps < 200
        # a car standing still: the estimate is exactly its true return
        assert early.episode_return == pytest.approx(full.episode_return, abs=1e-6)
        assert early.tiles == full.tiles
    with pytest.raises(ConfigError, match="early_stop must be one of"):
        run_episodes(agent, [EpisodeSpec(0, 0, 7)], p, early_stop="sometimes")


@pytest.mark.parametrize("renderer,bound", [("approx", 3e-4), ("coarse", 6e-4)])
def test_approx_renderer_is_close_to_the_exact_frame(renderer, bound):
    """V's frame drawn small against the exact observation, preprocessed, along a drive:
    a mean squared error far below V's reconstruction error (~1.3e-3 per pixel)."""
    from worldmodels.control.evaluation import RENDER_SCALES

    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    renderer = ApproxFrameRenderer(RENDER_SCALES[renderer])
    env.reset(seed=11)
    errors = []
    for t in range(120):
        a = np.array([np.sin(t / 20.0), 0.6, 0.0], np.float32)
        obs, *_ = env.step(a)
        approx = renderer.frame(env.unwrapped)
        assert approx.shape == (64, 64, 3) and approx.dtype == np.uint8
        errors.append((approx.astype(np.float64) - preprocess_frame(obs)) / 255.0)
    env.close()
    mse = float(np.mean(np.square(errors)))
    assert mse < bound
    assert float(np.mean(np.square(errors[-1]))) > 0  # an approximation, not the same code


@pytest.mark.parametrize("scale", [0.384, 0.192])
def test_fast_car_drawing_draws_what_gymnasiums_car_draw_does(scale, monkeypatch):
    """The approximate renderers draw the car with one 2x2 map per body instead of
    gymnasium's per-vertex Vector2s: the frames equal those drawn by ``car.draw`` along a
    drive (wheel stripes turning, the car rotating), at both scales."""
    import worldmodels.envs.car_racing as car_racing

    fast = car_racing._draw_car
    stock = lambda surf, car, zoom, trans, angle: car.draw(surf, zoom, trans, angle, False)  # noqa: E731
    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    renderer = ApproxFrameRenderer(scale)
    env.reset(seed=3)
    differing = 0
    for t in range(150):
        env.step(np.array([np.sin(t / 15.0), 0.7, 0.0], np.float32))
        monkeypatch.setattr(car_racing, "_draw_car", stock)
        want = renderer.frame(env.unwrapped)
        monkeypatch.setattr(car_racing, "_draw_car", fast)
        got = renderer.frame(env.unwrapped)
        differing += int((want != got).any(-1).sum())
    env.close()
    assert differing <= 150 * 64 * 64 // 10_000  # at most 0.01 % of the pixels (rounding)


@pytest.mark.parametrize("scale", [0.384, 0.192])
def test_culling_draws_the_same_frames(scale):
    """Only the polygons near the view are transformed and tested, and a surface the field
    covers is filled: every frame, the zoom-in of the first second included and the car
    spun off the road, equals the frame drawn from every polygon, the field as one."""
    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    culled, everything = ApproxFrameRenderer(scale), ApproxFrameRenderer(scale)
    everything.cull = False
    for seed in (2, 9):
        env.reset(seed=seed)
        for t in range(110):
            steer = 1.0 if t > 80 else np.sin(t / 12.0)
            env.step(np.array([steer, 1.0, 0.0], np.float32))
            want = everything.frame(env.unwrapped)
            assert np.array_equal(culled.frame(env.unwrapped), want), (seed, t)
        near = env.unwrapped._near(16.2 * scale, (500 * scale, 0.0), 0.3, *culled.size, 3.0)
        assert 0 < len(near) < len(env.unwrapped._geometry()) / 3  # it does skip work
    env.close()


@pytest.mark.parametrize("scale", [0.384, 0.192])
def test_approx_frame_is_the_drawn_surface_flipped_then_box_filtered(scale):
    """The small surface is box-filtered to 64 x 64 and then flipped, and read row-major:
    the same bytes as the stock order (flip the drawn surface, smoothscale it, read it
    through surfarray), along a drive with the zoom-in."""
    import pygame

    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    renderer = ApproxFrameRenderer(scale)
    env.reset(seed=4)
    for t in range(90):
        env.step(np.array([np.sin(t / 10.0), 0.8, 0.0], np.float32))
        got = renderer.frame(env.unwrapped)
        flipped = pygame.transform.flip(renderer.surf, False, True)
        small = pygame.transform.smoothscale(flipped, (64, 64))
        want = np.transpose(pygame.surfarray.array3d(small), (1, 0, 2))
        assert np.array_equal(got, want), t
        assert got.flags.writeable and got.flags.c_contiguous
    env.close()


def test_approx_training_episodes_run_and_count_frames(agent):
    p = params(2, seed=4)
    specs = [EpisodeSpec(0, 0, 5), EpisodeSpec(1, 1, 6)]
    exact = run_episodes(agent, specs, p, max_steps=80, action_repeat=4)
    approx = run_episodes(agent, specs, p, max_steps=80, action_repeat=4, renderer="approx")
    coarse = run_episodes(agent, specs, p, max_steps=80, action_repeat=4, renderer="coarse")
    assert [r.steps for r in approx] == [r.steps for r in exact] == [80, 80]
    assert [r.steps for r in coarse] == [80, 80]
    with pytest.raises(ConfigError, match="renderer must be one of"):
        run_episodes(agent, specs, p, renderer="fast")


def test_approx_episodes_never_draw_the_exact_frame(agent, monkeypatch):
    """With a training renderer the environment draws nothing, reset's first frame included
    (it would be thrown away); a reset that skips its frame leaves the same simulation."""
    from worldmodels.envs import FastCarRacing

    p = params(2, seed=5)
    specs = [EpisodeSpec(0, 0, 8), EpisodeSpec(1, 1, 9)]
    drawn = []
    road = FastCarRacing._render_road
    monkeypatch.setattr(FastCarRacing, "_render_road",
                        lambda self, *a: (drawn.append(1), road(self, *a))[1])
    run_episodes(agent, specs, p, max_steps=60, renderer="approx")
    assert drawn == []
    run_episodes(agent, specs[:1], p, max_steps=3)  # the exact renderer does draw
    assert drawn

    traces = []
    for skip in (False, True):
        env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
        env.unwrapped.skip_observation = skip
        obs, _ = env.reset(seed=8)
        env.unwrapped.skip_observation = False
        assert (obs is None) is skip
        car = env.unwrapped.car
        trace = [(tuple(car.hull.position), car.hull.angle, env.unwrapped.reward)]
        for t in range(80):
            _, reward, *_ = env.step(np.array([np.sin(t / 9.0), 0.9, 0.0]))
            trace.append((tuple(car.hull.position), reward))
        traces.append(trace)
        env.close()
    assert traces[0] == traces[1]


def test_controller_action_repeat_must_be_the_world_models(world, tmp_path):
    from worldmodels.stages.train_controller import train_controller

    run = tmp_path / "run"
    run.mkdir()
    for stage in ("vae", "mdnrnn"):
        (run / stage).symlink_to(world / stage)
    cfg = load_config(overrides={"controller": {"population": 2, "trials": 1, "generations": 1,
                                                "max_steps": 20, "eval_every": 0,
                                                "workers": 1, "action_repeat": 4}})
    with pytest.raises(ConfigError, match="built with action repeat 1"):
        train_controller(cfg, run, progress=False)


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_fitness_benchmark_rows_measure_the_levers(world):
    """Two rows (k=1 and k=4) on one worker: the same episodes give the same frames per
    generation, and the JSON summary's ratio is the faster row's frames/s over stock."""
    from worldmodels.benchmark.fitness import run, summary
    from worldmodels.control.controller import Controller
    from worldmodels.utils.checkpoint import save_checkpoint

    c = Controller(latent_dim=32, hidden_dim=HIDDEN)
    save_checkpoint(world / "controller" / "best.pt", kind="controller", model=c,
                    model_config=c.hparams, step=0)
    levers = (("k=1", "fp32", 1, "exact", "tiles", 0), ("k=4", "fp32", 4, "approx", "tiles", 0))
    rows = run(population=2, trials=1, steps=60, workers=1, run_dir=str(world), levers=levers)
    assert rows[0]["setting"].startswith("stock CarRacing-v3") and rows[0]["frames/s"] > 0
    assert rows[1]["frames/gen"] == rows[2]["frames/gen"] == 120
    # the last row is the ceiling: physics alone, faster than any drawn-frame row, and not
    # a fitness setting, so not the summary's ratio
    assert rows[-1].get("ceiling") and rows[-1]["frames/s"] > rows[1]["frames/s"]
    out = summary(rows)
    assert out["ratio"] == max(r["vs stock"] for r in rows[1:-1]) < rows[-1]["vs stock"]
    assert out["stock_steps_per_s"] == rows[0]["frames/s"]


def test_collection_with_action_repeat_stores_one_step_per_decision():
    """collect.action_repeat = 3: each stored step is the frame the policy saw, its action
    (held for 3 frames) and the sum of those frames' rewards; 100 frames give 34 steps; the
    same policy seed with k = 1 on stock CarRacing-v3 reproduces the rewards."""
    from worldmodels.data.rollouts import _same_data
    from worldmodels.stages.collect import run_episode

    cfg = load_config(overrides={"collect": {"max_steps": 100, "action_repeat": 3,
                                             "policy": "brownian"}}).collect
    ep = run_episode(cfg, 0)
    assert len(ep["frames"]) == len(ep["actions"]) == len(ep["rewards"]) == 34
    assert ep["truncated"][-1] and not ep["truncated"][:-1].any()
    env = gym.make(envs.STOCK_ENV_ID)
    obs, _ = env.reset(seed=ep["seed"])
    for t, (frame, action) in enumerate(zip(ep["frames"], ep["actions"])):
        assert np.array_equal(frame, preprocess_frame(obs)), t
        total = 0.0
        for _ in range(min(3, 100 - 3 * t)):
            obs, r, *_ = env.step(action)
            total += float(r)
        assert ep["rewards"][t] == total, t
    env.close()
    # a dataset from before action_repeat existed was collected with k = 1
    old = {"seed": 0, "max_steps": 100, "policy": "brownian", "brownian_dt": 0.02,
           "domain_randomize": False}
    assert _same_data(old, {**old, "action_repeat": 1}) == []
    assert _same_data(old, {**old, "action_repeat": 3}) == ["action_repeat"]


def test_encode_leaves_no_lock_file_behind(tmp_path):
    """encode.py's lock is utils.io.exclusive_lock: held while encoding, removed after."""
    from worldmodels.errors import WorldModelsError
    from worldmodels.stages.encode import _lock

    with _lock(tmp_path, "vae"):
        assert (tmp_path / ".encode_vae.lock").exists()
        with pytest.raises(WorldModelsError, match="another encode.py"), _lock(tmp_path, "vae"):
            pass
    assert not (tmp_path / ".encode_vae.lock").exists()


def test_world_action_repeat_is_read_from_the_runs_data(tmp_path):
    import json

    import h5py

    from worldmodels.run import world_action_repeat

    run = save_random_world_model(tmp_path / "run", hidden_dim=HIDDEN, seed=3)
    assert world_action_repeat(run) == 1  # nothing recorded: the paper's k
    with h5py.File(run / "rollouts.h5", "w") as f:
        f.attrs["config"] = json.dumps({"action_repeat": 3})
    assert world_action_repeat(run) == 3


# ------------------------------------------------------------ the approximate frames' latent shift


def test_latent_shift_is_the_mean_gap_between_the_two_frames_z(world):
    """fit_latent_shift: the mean of mu(exact frame) - mu(approximate frame) over the states
    past the zoom, against V's own batched encode of both frames along the same drive (a
    controller that ignores z and h: the same actions whatever V gives)."""
    import torch

    from worldmodels.control.calibration import fit_latent_shift
    from worldmodels.control.controller import Controller, map_action

    vae, mdnrnn, _ = load_world_model(world)
    c = Controller(latent_dim=32, hidden_dim=HIDDEN)
    bias = torch.tensor([0.3, 0.4, -2.0])
    with torch.no_grad():
        c.net.weight.zero_()
        c.net.bias.copy_(bias)
    fit = fit_latent_shift(vae, mdnrnn, c, [7, 8], max_steps=120)

    action = map_action(bias).numpy()
    renderer = ApproxFrameRenderer(0.384)
    exact, approx = [], []
    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    for seed in (7, 8):
        obs, _ = env.reset(seed=seed)
        for t in range(120):
            if t >= ZOOM_FRAMES:
                exact.append(preprocess_frame(obs))
                approx.append(renderer.frame(env.unwrapped))
            obs, *_ = env.step(action)
    env.close()

    def mu(frames):
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return vae.encode(x)[0]

    gap = (mu(exact) - mu(approx)).mean(0)
    assert fit["frames"] == len(exact) == 2 * (120 - ZOOM_FRAMES)
    assert fit["env_steps"] == 2 * 120  # the zoom's frames are stepped, not averaged
    assert fit["seeds"] == [7, 8] and fit["renderer"] == "approx"
    assert np.abs(gap.numpy()).max() > 5e-5  # the frames do differ in z (a random V: a little)
    np.testing.assert_allclose(fit["shift"], gap.numpy(), rtol=1e-3, atol=1e-6)
    assert fit["action_gap"] == fit["action_gap_shifted"] == [0.0, 0.0, 0.0]  # C ignores z
    with pytest.raises(ConfigError, match="approximate renderer"):
        fit_latent_shift(vae, mdnrnn, c, [7], renderer="exact")


def test_the_shift_moves_z_on_approximate_frames_only(agent):
    """run_episodes(latent_shift=s): C and M read mu + s of the approximate frames; exact
    episodes ignore it, a zero shift changes nothing, and the agent is left unshifted."""
    p = params(2, seed=11)
    specs = [EpisodeSpec(0, 0, 21), EpisodeSpec(1, 1, 22)]

    def returns(**kw):
        return [r.episode_return for r in run_episodes(agent, specs, p, max_steps=90, **kw)]

    big = np.full(32, 0.5, dtype=np.float32)
    assert returns(latent_shift=big) == returns()  # exact frames: no shift
    plain = returns(renderer="approx")
    assert returns(renderer="approx", latent_shift=np.zeros(32)) == plain
    assert returns(renderer="approx", latent_shift=big) != plain
    assert agent.latent_shift is None
    with pytest.raises(ConfigError, match="32 finite numbers"):
        returns(renderer="approx", latent_shift=np.zeros(5))

    import torch
    frame = ApproxFrameRenderer(0.384).frame  # z itself: mu + s
    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    env.reset(seed=3)
    x = frame(env.unwrapped)[None]
    env.close()
    z0 = agent.encode(x)
    agent.latent_shift = torch.as_tensor(big)
    try:
        np.testing.assert_allclose((agent.encode(x) - z0).numpy(), big[None], atol=1e-6)
    finally:
        agent.latent_shift = None
