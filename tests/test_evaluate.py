"""scripts/train_controller.py and scripts/evaluate.py end to end on a random world model.

evaluate.py's contract (DESIGN.md): tracks S .. S+N-1; with --json the last stdout line is one
JSON object with mean, std and returns (one CarRacing-v3 return per track, in seed order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_script

from worldmodels.control import WorldModelAgent
from worldmodels.control.agent import save_random_world_model
from worldmodels.control.evaluation import EpisodeSpec, evaluate, run_episodes
from worldmodels.errors import DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run with random V and M and a controller from one tiny CMA-ES generation."""
    run = save_random_world_model(tmp_path_factory.mktemp("run"), hidden_dim=32, seed=2)
    r = run_script("train_controller.py", "--run", run, "--population", "4", "--trials", "1",
                   "--generations", "1", "--max-steps", "30", "--eval-episodes", "1",
                   "--workers", "1", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 1 and summary["params"] == 3 * (32 + 32 + 1)
    assert "generation    1: fitness mean" in r.stdout
    assert (run / "controller" / "best.pt").exists()
    return run


def test_evaluate_script_json_is_the_returns_of_tracks_s_to_s_plus_n(trained):
    r = run_script("evaluate.py", "--run", trained, "--episodes", "3", "--seed", "7",
                   "--max-steps", "40", "--workers", "1", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["seeds"] == [7, 8, 9] and len(result["returns"]) == 3
    returns = np.array(result["returns"])
    assert result["mean"] == pytest.approx(returns.mean())
    assert result["std"] == pytest.approx(returns.std())
    assert (result["min"], result["max"]) == (returns.min(), returns.max())
    assert "bit-identical to CarRacing-v3" in r.stdout
    # the same episodes stepped here, one at a time: the same returns, exactly
    agent = WorldModelAgent.from_run(trained)
    alone = run_episodes(agent, [EpisodeSpec(k, -1, s) for k, s in enumerate([7, 8, 9])],
                         max_steps=40, batch_size=1)
    assert [x.episode_return for x in alone] == result["returns"]


def test_evaluate_is_the_same_with_two_workers(trained):
    one = evaluate(trained, 4, 3, workers=1, max_steps=25)
    two = evaluate(trained, 4, 3, workers=2, envs_per_worker=1, max_steps=25)
    assert one["returns"] == two["returns"] and two["workers"] == 2


def test_missing_controller_is_a_one_line_error(tmp_path):
    save_random_world_model(tmp_path, hidden_dim=8)
    with pytest.raises(DataError, match="no trained controller"):
        evaluate(tmp_path, 1, 0)
    r = run_script("evaluate.py", "--run", tmp_path, "--episodes", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: no trained controller")
    r = run_script("train_controller.py", "--run", tmp_path / "empty")
    assert r.returncode == 2 and r.stderr.startswith("error: no trained M")
