"""CMA-ES inside M's dream (``controller.env = "dream"``).

Ha & Schmidhuber (2018, arXiv:1803.10122), section 4.4 (DoomTakeCover): C is trained entirely
inside M's dream -- the population's fitness is the return M predicts -- and the resulting
policy is scored in the real environment. Random-weight V and M, tiny populations, short
episodes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from worldmodels.config import load_config
from worldmodels.control.dream_fitness import dream_rollout_returns
from worldmodels.errors import ConfigError
from worldmodels.parallel.backends import InProcessBackend
from worldmodels.run import load_dream, save_random_world_model
from worldmodels.stages.train_controller import (
    dream_generation_seed,
    heldout_seeds,
    new_strategy,
    train_controller,
)
from worldmodels.utils.checkpoint import load_checkpoint

HIDDEN = 32
TINY = {"population": 4, "trials": 2, "generations": 2, "max_steps": 30, "eval_every": 1,
        "eval_episodes": 2, "workers": 1, "seed": 3, "env": "dream", "temperature": 1.2}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return save_random_world_model(tmp_path_factory.mktemp("world"), hidden_dim=HIDDEN, seed=1)


def new_run(tmp_path, world, name="run"):
    run = tmp_path / name
    run.mkdir()
    for stage in ("vae", "mdnrnn"):
        (run / stage).symlink_to(world / stage)
    return run


def config(**controller):
    return load_config(overrides={"controller": {**TINY, **controller}})


def untimed(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "env_steps_per_s")}
            for r in history]


def test_dream_training_scores_the_population_in_the_dream_and_the_mean_in_reality(
        tmp_path, world, monkeypatch):
    real_run, calls = InProcessBackend.run, []

    def recording_run(self, params, specs, **kwargs):
        calls.append(sorted(s.seed for s in specs))
        return real_run(self, params, specs, **kwargs)

    monkeypatch.setattr(InProcessBackend, "run", recording_run)
    run = new_run(tmp_path, world, "a")
    s = train_controller(config(), run, progress=False)
    assert s["generations"] == 2 and "dream" in s["env"]
    # the real environment saw only the held-out tracks: generation 0's start point and the
    # mean after each generation
    held = sorted(heldout_seeds(3, 2))
    assert calls == [held, held, held]
    assert [("eval" in r) for r in s["history"]] == [True, True, True]
    records = [json.loads(x) for x in (run / "controller" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all("eval/mean" in r for r in records)

    # generation 1's fitness is the dream's return of the first CMA-ES population
    cfg = config()
    es = new_strategy(s["params"], cfg.controller)
    solutions = np.asarray(es.ask(), dtype=np.float64)
    dream = load_dream(run, 8, 1.2, "cpu", max_steps=30)
    returns = dream_rollout_returns(solutions, 2, dream_generation_seed(3, 0), 30, dream=dream)
    assert s["history"][1]["mean"] == pytest.approx(returns.mean(axis=1).mean(), abs=1e-9)
    assert s["history"][1]["best"] == pytest.approx(returns.mean(axis=1).max(), abs=1e-9)

    # deterministic for a seed
    again = train_controller(config(), new_run(tmp_path, world, "b"), progress=False)
    assert untimed(again["history"]) == untimed(s["history"])
    a = load_checkpoint(run / "controller" / "last.pt")
    assert a["extra"]["train"]["env"] == "dream" and a["extra"]["train"]["temperature"] == 1.2


def test_resuming_a_dream_run_with_another_env_or_temperature_is_refused(tmp_path, world):
    run = new_run(tmp_path, world)
    train_controller(config(generations=1, eval_every=0), run, progress=False)
    with pytest.raises(ConfigError, match="env='dream' but the config asks for env='real'"):
        train_controller(config(generations=2, env="real"), run, progress=False)
    with pytest.raises(ConfigError, match="temperature=1.2 but the config asks for "
                                          "temperature=1.0"):
        train_controller(config(generations=2, temperature=1.0), run, progress=False)
    assert train_controller(config(generations=2, eval_every=0), run,
                            progress=False)["generations"] == 2


def test_temperature_must_be_positive():
    with pytest.raises(ConfigError, match="controller.temperature must be > 0"):
        config(temperature=0.0)
    with pytest.raises(ConfigError, match="controller.env must be one of real, dream"):
        config(env="doom")
