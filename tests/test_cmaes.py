"""CMA-ES training of C (worldmodels.stages.train_controller) and its evaluation backends.

Ha & Schmidhuber (2018, arXiv:1803.10122) evolve C with CMA-ES (Hansen 2016,
arXiv:1604.00772): common random numbers within a generation, fresh tracks each generation; a
killed run resumes on the same trajectory; a crashed or hung worker is replaced and its
episodes re-run; Ray gives the local backend's fitness. Random-weight V and M, tiny
populations and short real episodes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from worldmodels.config import load_config
from worldmodels.control.evaluation import EpisodeSpec, worker_bundle
from worldmodels.errors import ConfigError, DataError, WorldModelsError
from worldmodels.parallel import make_backend
from worldmodels.parallel.backends import InProcessBackend, LocalBackend
from worldmodels.run import load_world_model, save_random_world_model
from worldmodels.stages.train_controller import (
    generation_seeds,
    heldout_seeds,
    new_strategy,
    strategy_from_tensor,
    strategy_to_tensor,
    train_controller,
)
from worldmodels.utils.checkpoint import load_checkpoint

HIDDEN = 32
TINY = {"population": 4, "trials": 2, "generations": 3, "max_steps": 40, "eval_every": 2,
        "eval_episodes": 2, "workers": 1, "seed": 5}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return save_random_world_model(tmp_path_factory.mktemp("world"), hidden_dim=HIDDEN, seed=1)


@pytest.fixture(scope="module")
def bundle(world):
    vae, mdnrnn, _ = load_world_model(world)
    return worker_bundle(vae, mdnrnn)


def new_run(tmp_path, world, name="run"):
    run = tmp_path / name
    run.mkdir()
    for stage in ("vae", "mdnrnn"):
        (run / stage).symlink_to(world / stage)
    return run


def config(**controller):
    return load_config(overrides={"controller": {**TINY, **controller}})


def some_episodes(n_candidates=3, trials=2, seed=0):
    params = np.random.default_rng(seed).normal(0, 0.3, (n_candidates, 3 * (32 + HIDDEN + 1)))
    specs = [EpisodeSpec(c * trials + j, c, 70 + j) for c in range(n_candidates)
             for j in range(trials)]
    return params, specs


@pytest.fixture(scope="module")
def reference(bundle):
    """The episodes of :func:`some_episodes` run in this process."""
    params, specs = some_episodes()
    with InProcessBackend(bundle) as backend:
        return backend.run(params, specs, max_steps=30)


# ------------------------------------------------------------------------------- CMA-ES


def test_track_seeds_are_common_within_and_fresh_across_generations():
    g0, g1 = generation_seeds(0, 0, 16), generation_seeds(0, 1, 16)
    assert g0 == generation_seeds(0, 0, 16) and len(set(g0)) == 16
    assert not set(g0) & set(g1)
    assert generation_seeds(1, 0, 16) != g0
    assert heldout_seeds(0, 8) == heldout_seeds(0, 8) and not set(heldout_seeds(0, 8)) & set(g0)


def test_strategy_state_round_trips_through_a_weights_only_tensor(tmp_path):
    cfg = config().controller
    es = new_strategy(10, cfg)
    for _ in range(2):
        x = es.ask()
        es.tell(x, [float(np.sum(np.square(v))) for v in x])
    data = strategy_to_tensor(es)
    torch.save({"es": data}, tmp_path / "es.pt")
    copy = strategy_from_tensor(torch.load(tmp_path / "es.pt", weights_only=True)["es"])
    np.random.seed(123)  # the global generator is not what CMA-ES samples from
    a, b = np.asarray(es.ask()), np.asarray(copy.ask())
    assert np.array_equal(a, b) and a.shape == (cfg.population, 10)
    assert np.array_equal(new_strategy(10, cfg).ask(), new_strategy(10, cfg).ask())


def test_strategy_state_is_plain_data_on_the_same_trajectory(tmp_path):
    """The paper's size (867 parameters): after a save -> weights_only load, 6 more
    generations sample and update exactly as the uninterrupted strategy; the file loads with
    weights_only=True (no pickled object in it; a pickled strategy, as older checkpoints hold,
    is refused, as is a tree naming a module outside cma/numpy); C stored as a triangle."""
    import pickle

    cfg = config(population=8).controller
    es = new_strategy(867, cfg)
    f = lambda x: float(np.sum(np.square(x - 0.3)))  # noqa: E731
    for _ in range(3):
        x = es.ask()
        es.tell(x, [f(v) for v in x])
    torch.save({"es": strategy_to_tensor(es)}, tmp_path / "es.pt")
    raw = (tmp_path / "es.pt").read_bytes()
    assert len(raw) < 0.8 * len(pickle.dumps(es))  # the covariance's upper triangle only
    copy = strategy_from_tensor(torch.load(tmp_path / "es.pt", weights_only=True)["es"])
    for g in range(6):
        xa, xb = np.asarray(es.ask()), np.asarray(copy.ask())
        assert np.array_equal(xa, xb), g
        es.tell(list(xa), [f(v) for v in xa])
        copy.tell(list(xb), [f(v) for v in xb])
    assert np.array_equal(es.mean, copy.mean) and es.sigma == copy.sigma
    legacy = torch.frombuffer(bytearray(pickle.dumps(es)), dtype=torch.uint8)
    with pytest.raises(DataError, match="pickle"):
        strategy_from_tensor(legacy)
    with pytest.raises(DataError, match="outside"):
        strategy_from_tensor({"format": "worldmodels/cmaes-state-v1",
                              "tree": {"id": 0, "ref": "os:system"}})
    assert new_strategy(10, cfg).sigma == cfg.sigma0 and not np.any(new_strategy(10, cfg).mean)


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_training_resumes_after_an_interruption_on_the_same_trajectory(tmp_path, world,
                                                                      monkeypatch):
    full = train_controller(config(), new_run(tmp_path, world, "full"), progress=False)
    assert full["generations"] == 3 and len(full["history"]) == 4  # + generation 0's score
    assert [("eval" in r) for r in full["history"]] == [True, False, True, True]

    run = new_run(tmp_path, world, "interrupted")
    real_run, calls = InProcessBackend.run, []

    def interrupt_in_generation_3(self, *args, **kwargs):  # g0 eval, g1, g2, g2 eval, g3
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(InProcessBackend, "run", interrupt_in_generation_3)
    with pytest.raises(KeyboardInterrupt):
        train_controller(config(), run, progress=False)
    monkeypatch.setattr(InProcessBackend, "run", real_run)
    assert load_checkpoint(run / "controller" / "last.pt")["step"] == 2
    resumed = train_controller(config(), run, progress=False)


    def untimed(history):
        return [{k: v for k, v in r.items() if k not in ("seconds", "env_steps_per_s")}
                for r in history]

    assert untimed(resumed["history"]) == untimed(full["history"])
    a = load_checkpoint(tmp_path / "full" / "controller" / "last.pt")
    b = load_checkpoint(run / "controller" / "last.pt")
    assert torch.equal(a["state_dict"]["net.weight"], b["state_dict"]["net.weight"])
    assert np.array_equal(strategy_from_tensor(a["extra"]["es"]).mean,
                          strategy_from_tensor(b["extra"]["es"]).mean)
    # logs: one record per generation, none duplicated by the resume
    records = [json.loads(x) for x in (run / "controller" / "metrics.jsonl").read_text()
               .splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert {"fitness/best", "fitness/mean", "fitness/worst", "charts/sigma",
            "charts/generation_seconds", "charts/env_steps_per_s"} <= set(records[1])
    assert "eval/mean" in records[0] and "eval/mean" not in records[1]
    assert list((run / "tb" / "controller").glob("events.out.tfevents.*"))
    best = load_checkpoint(run / "controller" / "best.pt", kind="controller")
    assert best["metrics"]["eval/mean"] == resumed["eval/best"]
    assert json.loads((run / "config.json").read_text())["controller"]["population"] == 4
    # a finished run returns at once
    assert train_controller(config(), run, progress=False)["generations"] == 3


def test_resuming_with_other_search_settings_is_refused(tmp_path, world):
    run = new_run(tmp_path, world)
    train_controller(config(generations=1, eval_every=0), run, progress=False)
    with pytest.raises(ConfigError, match="population=4 but the config asks for population=6"):
        train_controller(config(generations=2, population=6), run, progress=False)
    # a retrained M (another checkpoint) is another world model: refused too
    (run / "mdnrnn").unlink()
    save_random_world_model(tmp_path / "other", hidden_dim=HIDDEN, seed=9)
    (run / "mdnrnn").symlink_to(tmp_path / "other" / "mdnrnn")
    with pytest.raises(ConfigError, match="V or M in .* changed"):
        train_controller(config(generations=2), run, progress=False)


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_init_starts_the_search_at_a_trained_controller(tmp_path, world):
    """controller.init (dream pre-training, then real fine-tuning): generation 0's held-out
    score is that of the given C, CMA-ES's mean starts there, and a C of another shape or
    a missing one is refused with one line."""
    source = new_run(tmp_path, world, "source")  # a C far from zero: large steps
    # 64 frames: past the 50-frame zoom-in, so that controllers can differ on the tracks
    train_controller(config(generations=2, eval_every=1, sigma0=1.0, max_steps=64), source, progress=False)
    start = load_checkpoint(source / "controller" / "last.pt")
    run = new_run(tmp_path, world)
    init = str(source / "controller" / "last.pt")  # a file; a run directory gives best.pt
    s = train_controller(config(generations=1, eval_every=1, init=init, max_steps=64), run, progress=False)
    zero = new_run(tmp_path, world, "zero")
    z = train_controller(config(generations=1, eval_every=1, max_steps=64), zero, progress=False)
    assert s["history"][0]["eval"] == pytest.approx(start["extra"]["history"][-1]["eval"])
    assert s["history"][0]["eval"] != z["history"][0]["eval"]
    # one generation of sigma0 = 0.1 steps from the source's C, not from zero
    mean = load_checkpoint_flat(run)
    src = load_checkpoint_flat(source)
    assert np.linalg.norm(mean - src) < 0.5 * np.linalg.norm(src)
    with pytest.raises(ConfigError, match="controller.init: the C in"):
        train_controller(config(generations=1, init=init, use_hidden_state=False),
                         new_run(tmp_path, world, "zonly"), progress=False)
    with pytest.raises(WorldModelsError, match="no run directory or controller checkpoint"):
        train_controller(config(generations=1, init=str(tmp_path / "nope")),
                         new_run(tmp_path, world, "missing"), progress=False)


def load_checkpoint_flat(run):
    from worldmodels.run import load_controller

    return load_controller(run, which="last")[0].get_flat()


def test_config_checks():
    with pytest.raises(ConfigError, match="controller.population must be >= 2"):
        config(population=1)
    with pytest.raises(ConfigError, match="controller.max_steps must be in 1..1000"):
        config(max_steps=1001)
    with pytest.raises(ConfigError, match="controller.sigma0 must be > 0"):
        config(sigma0=0.0)
    cfg = load_config()
    assert (cfg.controller.population, cfg.controller.trials, cfg.controller.sigma0) == (64, 16,
                                                                                        0.1)


# ----------------------------------------------------------------------------- backends


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_crashed_or_hung_worker_does_not_corrupt_a_generation(tmp_path, bundle, reference,
                                                                 monkeypatch, fault):
    """A worker dies (os._exit) or hangs in the middle of its first task: it is replaced, its
    episodes are re-run, and the results equal an undisturbed run."""
    flag = tmp_path / "fault.flag"
    monkeypatch.setenv("WORLDMODELS_FAULT", f"{fault}:{flag}")
    params, specs = some_episodes()
    timeout = 8.0 if fault == "hang" else 600.0
    with LocalBackend(bundle, workers=2, envs_per_worker=2, worker_timeout=timeout) as backend:
        results = backend.run(params, specs, max_steps=30)
        assert backend.restarts == 1
    assert flag.exists()
    assert results == reference


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_a_slow_worker_is_never_killed_for_being_slow(tmp_path, bundle, reference, monkeypatch):
    """A worker that becomes slow (0.25 s more per step) takes ~7 s for its task, longer
    than worker_timeout=5 s, but it keeps stepping: it is not replaced, the results equal an
    undisturbed run. (5 s, not less: on a 2-core machine loaded by other jobs a heartbeat
    can lag a second or two behind the step.)"""
    flag = tmp_path / "fault.flag"
    monkeypatch.setenv("WORLDMODELS_FAULT", f"slow:{flag}")
    params, specs = some_episodes()
    with LocalBackend(bundle, workers=2, envs_per_worker=2, worker_timeout=5.0) as backend:
        t0 = time.monotonic()
        results = backend.run(params, specs, max_steps=30)
        assert time.monotonic() - t0 > 5.0  # really slower than the timeout
        assert backend.restarts == 0
    assert flag.exists()
    assert results == reference


def test_make_backend_choices(bundle):
    assert isinstance(make_backend(bundle, workers=1), InProcessBackend)
    assert isinstance(make_backend(bundle, workers=2), LocalBackend)
    assert make_backend(bundle, workers=2).task_size(20) == 10
    # equal tasks, a multiple of the workers, none above 32: the workers finish together
    assert make_backend(bundle, workers=2).task_size(100) == 25  # not 32, 32, 32, 4
    assert make_backend(bundle, workers=2).task_size(256) == 32  # 32 x 8, the campaign's
    assert make_backend(bundle, workers=2).task_size(65) == 17
    assert make_backend(bundle, workers=2, envs_per_worker=3).task_size(20) == 3
    with pytest.raises(ConfigError):
        make_backend(bundle, backend="mpi")


def test_a_worker_exception_stops_the_run_with_its_traceback(bundle):
    """An exception in an episode is a bug, not a crash: no retry, the traceback is shown."""
    params, _ = some_episodes()
    bad = [EpisodeSpec(0, 0, -1), EpisodeSpec(1, 0, 2)]  # gymnasium refuses a negative seed
    with LocalBackend(bundle, workers=2) as backend, \
            pytest.raises(WorldModelsError, match="raised on task 0") as error:
        backend.run(params, bad, max_steps=5)
    assert "Traceback" in str(error.value) and backend.restarts == 0


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_ray_backend_on_a_local_cluster_gives_the_local_fitness(bundle, reference):
    ray = pytest.importorskip("ray")
    from worldmodels.parallel import RayBackend

    params, specs = some_episodes()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayBackend(bundle, workers=2, envs_per_worker=2) as backend:
            assert backend.num_workers == 2
            results = backend.run(params, specs, max_steps=30)
    finally:
        ray.shutdown()
    assert results == reference


@pytest.mark.slow  # end to end: several trainings; runs in CI
def test_approximate_frames_get_a_latent_shift_fitted_once(tmp_path, world, monkeypatch):
    """renderer=approx: the shift is fitted at the start (4 training tracks), kept in the
    checkpoint and read back on resume; it changes the population's fitness, not the
    held-out score (exact frames); latent_shift=none on a shifted run is refused, and on
    exact frames the setting is moot."""
    import worldmodels.stages.train_controller as tc

    run = new_run(tmp_path, world, "shift")
    out = train_controller(config(generations=1, eval_every=1, renderer="approx"), run,
                           progress=False)
    info = out["latent_shift"]
    assert len(info["shift"]) == 32 and info["frames"] == tc.SHIFT_TRACKS * TINY["max_steps"]
    assert info["seeds"] == tc.shift_seeds(TINY["seed"]) and info["renderer"] == "approx"
    assert load_checkpoint(run / "controller" / "last.pt")["extra"]["latent_shift"] == info

    monkeypatch.setattr(tc, "fit_latent_shift", lambda *a, **k: pytest.fail("fitted again"))
    again = train_controller(config(generations=2, eval_every=1, renderer="approx"), run,
                             progress=False)
    assert again["generations"] == 2 and again["latent_shift"] == info

    plain = train_controller(config(generations=1, eval_every=1, renderer="approx",
                                    latent_shift="none"), new_run(tmp_path, world, "plain"),
                             progress=False)
    assert plain["latent_shift"] is None
    # a random V's shift is ~1e-4, too small to move 40 frames: a large one reaches the
    # workers' episodes, and only the population's
    monkeypatch.setattr(tc, "fit_latent_shift", lambda *a, **k: {**info, "shift": [0.5] * 32})
    big = train_controller(config(generations=1, eval_every=1, renderer="approx"),
                           new_run(tmp_path, world, "big"), progress=False)
    assert big["history"][0]["eval"] == plain["history"][0]["eval"]  # exact frames: the same
    assert big["history"][1]["mean"] != plain["history"][1]["mean"]  # shifted z: other returns
    with pytest.raises(ConfigError, match="latent_shift='fit' but the config asks for "
                                          "latent_shift='none'"):
        train_controller(config(generations=3, renderer="approx", latent_shift="none"), run,
                         progress=False)

    exact = new_run(tmp_path, world, "exact")
    train_controller(config(generations=1, eval_every=0), exact, progress=False)
    assert train_controller(config(generations=2, eval_every=0, latent_shift="none"), exact,
                            progress=False)["generations"] == 2
