import math

import numpy as np
import pytest

from worldmodels.data.policies import (
    HIGH,
    LOW,
    BrownianPolicy,
    RandomWeightsPolicy,
    controller_action,
    make_policy,
)

FRAME = np.full((64, 64, 3), 120, np.uint8)


def _rollout(policy, n=500):
    return np.stack([policy.act(FRAME) for _ in range(n)])


@pytest.mark.parametrize("name", ["brownian", "random_weights", "mixed", "uniform"])
def test_actions_in_the_box_and_reproducible(name):
    a = _rollout(make_policy(name, seed=3, episode=1))
    b = _rollout(make_policy(name, seed=3, episode=1))
    c = _rollout(make_policy(name, seed=4, episode=1))
    assert a.dtype == np.float32 and a.shape == (500, 3)
    assert (a >= LOW - 1e-6).all() and (a <= HIGH + 1e-6).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_brownian_increments_have_the_right_scale():
    dt = 1 / 50
    pol = BrownianPolicy(np.random.default_rng(0), dt)
    pol.action = np.array([0.0, 0.5, 0.5])  # start mid-box so clipping is rare
    acts = _rollout(pol, 40).astype(np.float64)
    steps = np.diff(acts, axis=0)
    interior = (np.abs(acts[:-1, 0]) < 0.9) & (np.abs(acts[1:, 0]) < 0.9)
    std = steps[interior, 0].std()
    assert 0.6 * math.sqrt(dt) < std < 1.4 * math.sqrt(dt)


def test_random_weights_uses_the_original_action_mapping():
    import torch

    from worldmodels.control import map_action

    assert np.allclose(controller_action(np.array([0.0, 0.0, -1.0])), [0.0, 0.5, 0.0])
    assert np.allclose(controller_action(np.array([100.0, 100.0, 30.0])), [1.0, 1.0, 1.0])
    raw = np.random.default_rng(0).normal(0, 2, (50, 3))
    ref = map_action(torch.from_numpy(raw)).numpy()
    assert np.allclose(np.stack([controller_action(r) for r in raw]), ref, atol=1e-6)
    pol = RandomWeightsPolicy(np.random.default_rng(1), stdev_max=5.0)
    other = FRAME.copy()
    other[:32] = 0
    assert not np.allclose(pol.act(FRAME), pol.act(other))  # the action depends on the frame


def test_mixed_alternates_and_unknown_policy_fails():
    assert isinstance(make_policy("mixed", 0, 0), BrownianPolicy)
    assert isinstance(make_policy("mixed", 0, 1), RandomWeightsPolicy)
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("greedy", 0, 0)


def test_random_weights_are_the_originals_cauchy_times_uniform_stdev():
    """Authors' extract.py: stdev = rand() * 0.01, every parameter standard_cauchy() * stdev;
    C has (32 + 256) * 3 + 3 = 867 of them. Heavy tails tell Cauchy from Gaussian weights:
    P(|w| > 10 stdev) = 2/pi atan(1/10) = 0.0635 (Gaussian: 1.5e-23), median |w| = stdev
    (Gaussian: 0.674 stdev)."""
    policies = [make_policy("random_weights", seed, 1) for seed in range(100)]
    stdevs = np.array([p.stdev for p in policies])
    assert (stdevs >= 0).all() and (stdevs < 0.01).all()
    assert abs(stdevs.mean() - 0.005) < 0.0012  # U(0, 0.01): mean 0.005, s.e. 0.0003
    assert abs(np.median(stdevs) - 0.005) < 0.0015
    for p in policies:
        assert p.weight.shape == (32 + 256, 3) and p.bias.shape == (3,)
    scaled = np.concatenate([np.concatenate([p.weight.ravel(), p.bias]) / p.stdev
                             for p in policies])
    assert scaled.size == 100 * 867
    tail = np.mean(np.abs(scaled) > 10)
    assert abs(tail - 2 / math.pi * math.atan(0.1)) < 0.004  # s.e. 0.0008
    assert abs(np.median(np.abs(scaled)) - 1.0) < 0.03
    lstm = policies[0].lstm.ravel() / policies[0].stdev  # M's stand-in: the same draw
    assert abs(np.mean(np.abs(lstm) > 10) - 2 / math.pi * math.atan(0.1)) < 0.004


def test_random_weights_acts_as_the_originals_controller_on_z_and_h():
    """a = map(tanh(W^T [z, h] + b)) with h = 0 before the first step, then M's state moves."""
    pol = make_policy("random_weights", 7, 1)
    x = FRAME.reshape(-1).astype(np.float32) / 255.0 - 0.5
    z = np.tanh(pol.proj @ x).astype(np.float64)
    first = pol.act(FRAME)
    assert np.array_equal(first, controller_action(z @ pol.weight[:32] + pol.bias))
    h = pol.h.copy()
    assert np.abs(h).max() > 0  # M's stand-in stepped on [z, a]: the next action reads h
    second = pol.act(FRAME)
    assert np.array_equal(second, controller_action(np.concatenate([z, h]) @ pol.weight + pol.bias))
