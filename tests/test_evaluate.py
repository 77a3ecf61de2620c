"""scripts/train_controller.py and scripts/evaluate.py end to end on a random world model.

evaluate.py's contract (DESIGN.md): tracks S .. S+N-1; with --json the last stdout line is one
JSON object with mean, std and returns (one CarRacing-v3 return per track, in seed order).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_script

from worldmodels.control.evaluation import EpisodeSpec, run_episodes
from worldmodels.errors import DataError
from worldmodels.run import load_agent, save_random_world_model
from worldmodels.stages.evaluate import evaluate


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
    agent = load_agent(trained)
    alone = run_episodes(agent, [EpisodeSpec(k, -1, s) for k, s in enumerate([7, 8, 9])],
                         max_steps=40, batch_size=1)
    assert [x.episode_return for x in alone] == result["returns"]
    # where the points went: the env's counts, and the lap line that says so
    assert result["frames"] == [x.steps for x in alone] == [40, 40, 40]
    assert result["tiles"] == [x.tiles for x in alone]
    assert result["track_tiles"] == [x.track_tiles for x in alone]
    assert all(t > 100 for t in result["track_tiles"]) and result["laps"] == [False] * 3
    frac = np.median(np.array(result["tiles"]) / np.array(result["track_tiles"]))
    assert (f"laps completed 0/3; the other 3: median {100 * frac:.1f}% of the track's tiles "
            f"in a median 40 frames, return {returns.mean():.1f}") in r.stdout


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


def test_training_and_evaluation_tracks_are_disjoint_by_default():
    from worldmodels.config import CollectConfig
    from worldmodels.seeds import EVALUATION_SEEDS, TRAINING_SEEDS, overlap
    from worldmodels.stages.train_controller import generation_seeds, heldout_seeds

    assert not overlap(EVALUATION_SEEDS.start, len(EVALUATION_SEEDS), TRAINING_SEEDS)
    c = CollectConfig()
    collected = range(c.seed, c.seed + c.episodes)
    assert collected.start in TRAINING_SEEDS and collected[-1] in TRAINING_SEEDS
    trained = [s for g in range(50) for s in generation_seeds(0, g, 16)] + heldout_seeds(0, 1024)
    assert all(s in TRAINING_SEEDS for s in trained)
    assert len(set(trained)) == len(trained)  # still distinct: the mapping keeps 32-bit entropy
    assert max(trained) < 2**32  # valid for np.random.seed and gymnasium


def _evaluate_main():
    import runpy

    from helpers import SCRIPTS

    return runpy.run_path(str(SCRIPTS / "evaluate.py"), run_name="evaluate")["main"]


@pytest.mark.parametrize("seed, collect, warned", [
    (0, {"seed": 0, "episodes": 160}, "tracks 0..2 are among this run's collection tracks 0..159"),
    (1000, {"seed": 0, "episodes": 160}, None),  # an old run, scored beside its collection
    (999_999_999, None, "tracks 1000000000..1000000001 are among the training tracks"),
    (0, None, None),
])
def test_evaluate_warns_in_one_line_on_training_tracks(tmp_path, capsys, monkeypatch, seed,
                                                        collect, warned):
    from worldmodels.errors import WorldModelsError

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # evaluate.py sets them; restored after the test
    if collect is not None:
        (tmp_path / "config.json").write_text(json.dumps({"collect": collect}))
    with pytest.raises(WorldModelsError, match="no trained"):  # warned before it looks for C
        _evaluate_main()(["--run", str(tmp_path), "--episodes", "3", "--seed", str(seed)])
    err = capsys.readouterr().err
    if warned is None:
        assert "warning" not in err
    else:
        assert err.startswith(f"warning: {warned}") and err.count("\n") == 1
