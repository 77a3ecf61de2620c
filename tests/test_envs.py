"""FastCarRacing must be bit-identical to gymnasium's CarRacing-v3."""

import gymnasium as gym
import numpy as np
import pytest

import worldmodels.envs as envs
from worldmodels.data.policies import BrownianPolicy
from worldmodels.envs import FastCarRacing, preprocess_frame, preprocess_frames


def _actions(kind: str, seed: int, n: int, continuous: bool):
    rng = np.random.default_rng(seed)
    if not continuous:
        return [int(a) for a in rng.integers(0, 5, n)]
    if kind == "brownian":
        pol = BrownianPolicy(rng)
        return [pol.act(None) for _ in range(n)]
    if kind == "full_gas_turns":  # drives fast, leaves the road, touches kerbs
        return [np.array([np.sin(t / 25.0), 1.0, 0.0], np.float32) for t in range(n)]
    return [rng.uniform([-1, 0, 0], [1, 1, 1]).astype(np.float32) for _ in range(n)]


def _trace(env_id: str, seed: int, actions, **kwargs):
    env = gym.make(env_id, **kwargs)
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2] or step[3]:
            break
    env.close()
    return out


def _assert_same(stock, fast):
    assert len(stock) == len(fast)
    for t, (s, f) in enumerate(zip(stock, fast)):
        assert s[0].dtype == f[0].dtype == np.uint8
        assert np.array_equal(s[0], f[0]), f"observation differs at step {t}"
        assert s[1:] == f[1:], f"reward/terminated/truncated/info differ at step {t}"


CASES = [
    ("brownian", {}),
    ("uniform", {}),
    ("full_gas_turns", {}),
    ("brownian", {"domain_randomize": True}),
    ("discrete", {"continuous": False}),
    ("discrete", {"continuous": False, "domain_randomize": True}),
]


# Every case on one of two tracks, the first case on both (each trace is ~1 s of the stock
# env: the quick suite pays for 7, not 12).
SEEDED = [(0, *CASES[0])] + [(7 if i % 2 else 0, *case) for i, case in enumerate(CASES) if i] \
    + [(7, *CASES[0])]


@pytest.mark.parametrize("seed,policy,kwargs", SEEDED)
def test_identical_to_stock_short(policy, kwargs, seed):
    # 120 steps: the zoom-in of the first second (50 steps) and the start of the drive.
    acts = _actions(policy, seed, 120, kwargs.get("continuous", True))
    stock = _trace(envs.STOCK_ENV_ID, seed, acts, **kwargs)
    fast = _trace(envs.FAST_ENV_ID, seed, acts, **kwargs)
    _assert_same(stock, fast)


@pytest.mark.slow
# One full episode (a fast driver reaching far along the track); the other cases, the
# discrete env among them, run their first 120 steps above (each on one of two seeds), and
# action repeat its first 200 frames twice (the suite must stay < 10 min).
@pytest.mark.parametrize("policy,kwargs", [CASES[2]])
def test_identical_to_stock_full_episode(policy, kwargs):
    seed = 3
    acts = _actions(policy, seed, 1000, kwargs.get("continuous", True))
    _assert_same(_trace(envs.STOCK_ENV_ID, seed, acts, **kwargs),
                 _trace(envs.FAST_ENV_ID, seed, acts, **kwargs))


def test_identical_rgb_array_render_and_reset_options():
    acts = _actions("uniform", 1, 60, True)
    out = []
    for env_id in (envs.STOCK_ENV_ID, envs.FAST_ENV_ID):
        env = gym.make(env_id, render_mode="rgb_array", domain_randomize=True)
        env.reset(seed=1)
        frames = [env.render()]
        env.reset(seed=2, options={"randomize": False})
        for a in acts:
            env.step(a)
            frames.append(env.render())
        env.close()
        out.append(frames)
    for s, f in zip(*out):
        assert s.shape == (400, 600, 3)
        assert np.array_equal(s, f)


def test_registered_and_subclass():
    env = gym.make(envs.FAST_ENV_ID)
    assert isinstance(env.unwrapped, FastCarRacing)
    assert env.spec.max_episode_steps == gym.spec(envs.STOCK_ENV_ID).max_episode_steps == 1000
    assert env.observation_space == gym.make(envs.STOCK_ENV_ID).observation_space
    env.close()


# ------------------------------------------------------------------------ preprocessing


def _reference_area_resize(obs: np.ndarray) -> np.ndarray:
    """Independent float reference: exact box-filter area average of the 84x96 crop."""
    crop = obs[:84].astype(np.float64)

    def weights(n_in, n_out):
        r = n_in / n_out
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            for j in range(n_in):
                w[i, j] = max(0.0, min((i + 1) * r, j + 1) - max(i * r, j))
        return w / r

    return np.einsum("iy,jx,yxc->ijc", weights(84, 64), weights(96, 64), crop)


def test_preprocess_matches_area_average():
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    out = preprocess_frame(obs)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # fixed-point weights are rounded to 1/256: within one grey level of the exact average
    assert np.abs(out.astype(float) - _reference_area_resize(obs)).max() <= 1.0


def test_preprocess_crops_dashboard_and_keeps_constants():
    obs = np.full((96, 96, 3), 77, np.uint8)
    assert (preprocess_frame(obs) == 77).all()
    obs[84:] = 0  # the dashboard rows do not reach the 64x64 frame
    assert (preprocess_frame(obs) == 77).all()
    obs[83] = 0
    assert (preprocess_frame(obs)[-1] < 77).all()


def test_preprocess_batch_equals_single_and_rejects_bad_shapes():
    rng = np.random.default_rng(1)
    obs = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    batch = preprocess_frames(obs)
    for b in range(5):
        assert np.array_equal(batch[b], preprocess_frame(obs[b]))
    with pytest.raises(ValueError, match="96, 96, 3"):
        preprocess_frame(obs[0, :64])


def test_preprocess_is_exact_fixed_point():
    """The float32 BLAS path equals the same fixed-point formula computed in int64."""
    from worldmodels.envs.preprocess import _WX, _WY

    rng = np.random.default_rng(2)
    obs = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    obs[0] = 255  # the largest sums
    ref = (np.einsum("jx,iy,byxc->bijc", _WX, _WY, obs[:, :84].astype(np.int64)) + 32768) // 65536
    assert np.array_equal(preprocess_frames(obs), ref)


def test_cached_font_survives_pygame_quit():
    import pygame

    env = gym.make(envs.FAST_ENV_ID)
    first, _ = env.reset(seed=4)
    pygame.quit()  # what closing any human-mode CarRacing does: every Font becomes invalid
    again, _ = env.reset(seed=4)
    env.close()
    assert np.array_equal(first, again)


# k = 1 is plain stepping: test_identical_to_stock_short and test_fitness's k = 1 case cover it
@pytest.mark.parametrize("policy,seed,repeat", [("full_gas_turns", 0, 4), ("uniform", 7, 3)])
def test_step_repeated_is_stock_with_repeated_actions(policy, seed, repeat):
    # Action repeat without drawing the skipped frames: every reward and every observation
    # that is drawn equals stock CarRacing-v3 stepped with each action `repeat` times.
    from worldmodels.envs.car_racing import step_repeated

    decisions = _actions(policy, seed, 200 // repeat, True)
    stock = gym.make(envs.STOCK_ENV_ID)
    fast = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    s_obs, _ = stock.reset(seed=seed)
    f_obs, _ = fast.reset(seed=seed)
    assert np.array_equal(s_obs, f_obs)
    for t, a in enumerate(decisions):
        s_rewards = []
        for _ in range(repeat):
            s_obs, r, s_term, s_trunc, _ = stock.step(a)
            s_rewards.append(float(r))
            if s_term or s_trunc:
                break
        f_obs, total, frames, f_term, f_trunc, info = step_repeated(fast, a, repeat)
        assert info["frame_rewards"] == s_rewards, f"rewards differ at decision {t}"
        assert total == sum(s_rewards) and frames == len(s_rewards)
        assert (f_term, f_trunc) == (s_term, s_trunc)
        if s_term or s_trunc:
            break
        assert np.array_equal(s_obs, f_obs), f"observation differs at decision {t}"
    assert not fast.unwrapped.skip_observation
    # the skipped frames were really skipped: a frame with the flag set draws nothing
    fast.unwrapped.skip_observation = True
    assert fast.step(decisions[0])[0] is None
    stock.close()
    fast.close()


def test_step_repeated_counts_every_frame_against_the_time_limit():
    from worldmodels.envs.car_racing import step_repeated

    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True, max_episode_steps=10)
    env.reset(seed=1)
    a = np.array([0.0, 0.3, 0.0], np.float32)
    _, _, frames, _, truncated, _ = step_repeated(env, a, 4)
    assert frames == 4 and not truncated
    step_repeated(env, a, 4)
    obs, _, frames, _, truncated, _ = step_repeated(env, a, 4)
    assert frames == 2 and truncated and obs is None  # frame 10 ends it, not drawn
    with pytest.raises(ValueError):
        step_repeated(env, a, 0)
    env.close()


def _car_state(car):
    return (tuple(car.hull.position), car.hull.angle, tuple(car.hull.linearVelocity),
            car.hull.angularVelocity,
            tuple((w.omega, w.phase, w.gas, w.brake, w.joint.angle, tuple(w.position),
                   w.skid_start is None, w.skid_particle is None) for w in car.wheels),
            len(car.particles), car.fuel_spent)


@pytest.mark.parametrize("seed", [5, 11])
def test_fast_physics_is_stock_bit_for_bit(seed):
    # The car's state after every frame (wheel spin, steering joint, skid traces, hull), not
    # only what the frame shows: full throttle, full and partial braking (both of Car.step's
    # brake branches), steering past the limits, grass and kerbs (the car leaves the road).
    from worldmodels.envs.car_racing import step_repeated

    rng = np.random.default_rng(seed)
    acts = []
    for t in range(700):
        brake = 0.95 if t % 150 < 12 else (0.4 if t % 90 < 8 else 0.0)
        acts.append(np.array([1.3 * np.sin(t / 30.0) + rng.normal(0, 0.2),
                              1.0 if t % 200 < 140 else rng.uniform(0, 1.2), brake]))
    traces = []
    for fast in (False, True):
        env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
        env.unwrapped.fast_physics = fast
        env.reset(seed=seed)
        assert (env.unwrapped.car.step.__func__.__module__ == "worldmodels.envs.car_physics") \
            is fast
        trace = []
        for a in acts:
            _, reward, _, terminated, truncated, _ = step_repeated(env, a, 1, draw_last=False)
            trace.append((reward, _car_state(env.unwrapped.car)))
            if terminated or truncated:
                break
        traces.append(trace)
        env.close()
    assert len(traces[0]) > 300
    assert traces[0] == traces[1]
    assert any(s[1][4][0][6] is False for s in traces[0])  # a skid trace was drawn


def test_fast_physics_keeps_stock_dynamics_for_other_source(monkeypatch):
    # Another gymnasium's Car.step (its source hash differs) is left in place.
    from worldmodels.envs import car_physics

    monkeypatch.setattr(car_physics, "_MATCHES", False)
    env = gym.make(envs.FAST_ENV_ID, disable_env_checker=True)
    env.reset(seed=1)
    assert not car_physics.matches_stock()
    assert "step" not in env.unwrapped.car.__dict__
    env.close()


def test_replayed_tracks_are_stock(monkeypatch):
    # One environment reset onto the same tracks again (the population's episodes share a
    # generation's tracks), seed 36's first generation attempt failing: the replayed track
    # gives the stock frames, rewards, random state and road, the first generation's too.
    from gymnasium.envs.box2d.car_racing import CarRacing

    from worldmodels.envs import track_cache

    generated = []
    stock_create = CarRacing._create_track
    monkeypatch.setattr(CarRacing, "_create_track",
                        lambda self: (generated.append(1), stock_create(self))[1])

    def trace(env_id, seeds, **kwargs):
        env = gym.make(env_id, disable_env_checker=True, **kwargs)
        out = []
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            out.append(obs)
            for t in range(40):
                obs, reward, terminated, *_ = env.step(np.array([np.sin(t / 7.0), 1.0, 0.0]))
                out.append((obs.tobytes(), reward, terminated))
            u = env.unwrapped
            out.append((u.start_alpha, [(tuple(p), tuple(c)) for p, c in u.road_poly[::7]],
                        [tuple(t.color) for t in u.road], tuple(u.car.hull.position),
                        repr(u.np_random.bit_generator.state)))
        env.close()
        return out

    seeds = [36, 5, 36, 5]
    stock = trace(envs.STOCK_ENV_ID, seeds)
    assert len(generated) == 6  # 36 takes two attempts
    track_cache.clear()
    generated.clear()
    fast = trace(envs.FAST_ENV_ID, seeds)
    assert len(generated) == 3  # each random state generated once, then replayed
    _assert_same_trace(stock, fast)
    # domain_randomize: the road colour is part of the key
    _assert_same_trace(trace(envs.STOCK_ENV_ID, [4, 4], domain_randomize=True),
                       trace(envs.FAST_ENV_ID, [4, 4], domain_randomize=True))


def _assert_same_trace(stock, fast):
    assert len(stock) == len(fast)
    for t, (s, f) in enumerate(zip(stock, fast)):
        assert np.array_equal(s, f) if isinstance(s, np.ndarray) else s == f, t
