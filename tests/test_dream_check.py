"""scripts/dream_vs_real.py: the same C in M's dream and in the real environment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels.config import load_config
from worldmodels.control.dream_fitness import dream_trial_seeds
from worldmodels.errors import ConfigError
from worldmodels.run import load_controller, make_dream_env, save_random_world_model
from worldmodels.stages.dream_check import dream_vs_real, format_table
from worldmodels.stages.evaluate import evaluate
from worldmodels.stages.train_controller import train_controller


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = save_random_world_model(tmp_path_factory.mktemp("run"), hidden_dim=16, seed=4)
    cfg = load_config(overrides={"controller": {
        "population": 4, "trials": 1, "generations": 1, "max_steps": 20, "eval_episodes": 1,
        "workers": 1}})
    train_controller(cfg, run, progress=False)
    return run


def test_both_sides_are_what_the_dream_env_and_evaluate_give(trained):
    r = dream_vs_real(trained, episodes=3, seed=1_000_000_123, temperature=1.0, workers=1,
                      max_steps=30)
    # the real side is evaluate.py's returns on the same tracks
    ref = evaluate(trained, 3, 1_000_000_123, workers=1, max_steps=30)
    assert r["real"]["returns"] == ref["returns"]
    assert all(n <= 30 for n in r["real"]["lengths"])
    # the dream side, episode by episode in DreamEnv with C stepped by hand
    controller, _ = load_controller(trained)
    env = make_dream_env(trained, temperature=1.0, max_steps=30)
    for j, s in enumerate(dream_trial_seeds(1_000_000_123, 3)):
        obs, _ = env.reset(seed=s)
        total, steps, done = 0.0, 0, False
        while not done:
            with torch.no_grad():
                a = controller(torch.as_tensor(obs[None, :32]), torch.as_tensor(obs[None, 32:]))
            obs, reward, terminated, truncated, _ = env.step(a[0].numpy())
            total += reward
            steps += 1
            done = terminated or truncated
        assert r["dream"]["returns"][j] == pytest.approx(total, abs=1e-3)
        assert r["dream"]["lengths"][j] == steps  # action repeat 1: a dream step is a frame
    assert r["dream"]["return"]["mean"] == pytest.approx(np.mean(r["dream"]["returns"]))
    table = format_table(r)
    assert "dream (tau 1)" in table and "real env" in table


def test_bad_arguments_are_config_errors(trained):
    with pytest.raises(ConfigError, match="episodes must be >= 1"):
        dream_vs_real(trained, episodes=0)
    with pytest.raises(ConfigError, match="max_steps in 1..1000"):
        dream_vs_real(trained, episodes=1, max_steps=2000)
