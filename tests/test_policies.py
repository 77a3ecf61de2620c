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
