"""Training C with CMA-ES in the real CarRacing environment, or inside M's dream.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 4.4: C's parameters are
evolved with CMA-ES (Hansen & Ostermeier 2001; Hansen, *The CMA Evolution Strategy: A
Tutorial*, 2016, arXiv:1604.00772) using ``pycma``, a population of 64 candidates, each scored
by the mean return of 16 episodes. The authors' loop (estool) starts from the zero vector with
``sigma0 = 0.1`` and scores the distribution's mean every 25 generations on 1024 episodes.

    python scripts/train_controller.py --run runs/demo
    python scripts/train_controller.py --run runs/demo --preset smoke

One generation, reading top to bottom in :func:`train_controller`:

1. ``ask``: P candidate vectors from the search distribution ``N(m, sigma^2 C)``;
2. tracks: T seeds drawn from ``(seed, generation)`` -- the *same* T tracks for every
   candidate (common random numbers: candidates are compared on equal terms, so the ranking
   is less noisy), *fresh* tracks each generation (no overfitting to a track set);
3. evaluate the P x T episodes on the backend (:mod:`~worldmodels.parallel.backends`: local
   worker processes stepping their environments in lockstep, or Ray); fitness = mean return;
4. ``tell`` CMA-ES the fitnesses (it minimises ``-fitness``);
5. every ``eval_every`` generations (and after the last) score the new mean ``m`` on a fixed
   held-out track set, without early termination (generation 0 scores the start point, so
   the curve shows the improvement on the same tracks);
6. log to TensorBoard (``fitness/best|mean|worst``, ``charts/sigma``, ``eval/mean``,
   generation time, env-steps/s) and checkpoint ``<run>/controller/last.pt``; ``best.pt`` when
   the held-out score improves. Both hold C at the distribution's mean.

**Training inside the dream** (``env="dream"``). The paper's DoomTakeCover experiment
(section 4.4, "Learning Inside of a Dream"): step 3 scores the P x T episodes in M's dream
(:func:`~worldmodels.envs.dream.dream_rollout_returns` on one
:class:`~worldmodels.envs.dream.BatchedDream` built for the run, at temperature ``tau``);
the generation's T dream episodes (start states and noise) are shared by its candidates and
new each generation (:func:`dream_generation_seed`). Step 5 is unchanged: the mean is scored
in the *real* environment, which is what shows whether the dream-trained C transfers.
``early_stop_steps`` does not apply in the dream (M has no track tiles).

**A discrete world model** (V a VQ-VAE, van den Oord et al. 2017, arXiv:1711.00937, M a
:class:`~worldmodels.memory.CodeRNN`): the same loop; C reads the quantised latent ``z_q`` of
the code grid (256 numbers for the default 8x8 grid of 4-d codes) beside ``h``
(:class:`~worldmodels.control.agent.WorldModelAgent`), and the dream samples code grids
(:class:`~worldmodels.envs.code_dream.BatchedCodeDream`).

**Resume.** The checkpoint holds the whole CMA-ES state as plain data
(:mod:`worldmodels.control.es_state`: mean, step size, covariance (upper triangle) and its
eigen-decomposition, evolution paths, counters and the private NumPy generator it samples
from, as tensors and numbers), so the file loads with ``torch.load(weights_only=True)`` and
resuming runs no code the file names; a checkpoint holding a pickled strategy (written before)
is refused with a one-line error (continue from its C with ``--init``). The generation's track
seeds are recomputed from ``(seed, generation)``. Episodes are deterministic given seed and
parameters, so a killed and resumed run follows exactly the trajectory of an uninterrupted one
(the tests check it). A generation interrupted mid-way is re-run from its start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodels.config import (
    Config,
    ControllerConfig,
    save_stage_config,
)
from worldmodels.control.calibration import fit_latent_shift
from worldmodels.control.controller import Controller
from worldmodels.control.es_state import strategy_from_state, strategy_state
from worldmodels.control.evaluation import ENV_NOTE, EpisodeSpec, worker_bundle
from worldmodels.errors import ConfigError, DataError
from worldmodels.parallel import make_backend
from worldmodels.run import (
    CONTROLLER_KIND,
    checkpoint_path,
    load_world_model,
    world_action_repeat,
)
from worldmodels.seeds import training_track
from worldmodels.utils.checkpoint import CheckpointManager, restore_rng
from worldmodels.utils.logs import RunLogger
from worldmodels.utils.progress import progress_bar
from worldmodels.utils.torch import auto_precision, derive_seed, resolve_device

__all__ = [
    "new_strategy",
    "generation_seeds",
    "heldout_seeds",
    "dream_generation_seed",
    "strategy_to_tensor",
    "strategy_from_tensor",
    "train_controller",
]

# Settings that change the search trajectory: they must not change within a run.
TRAJECTORY_KEYS = ("population", "trials", "sigma0", "seed", "hidden_layer", "use_hidden_state",
                   "max_steps", "early_stop_steps", "early_stop", "batch_invariant", "env",
                   "temperature", "init", "z", "renderer", "latent_shift")
# What a checkpoint made before a setting existed was trained with.
_OLD_DEFAULTS = {"early_stop": "tiles", "z": "mu", "renderer": "exact", "latent_shift": "none"}
#: training tracks the approximate renderer's latent shift is fitted on
SHIFT_TRACKS = 4


# ----------------------------------------------------------------------------- CMA-ES


def _import_cma() -> Any:
    """``import cma`` without its warning that matplotlib (plots only) is missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import cma
    return cma


def new_strategy(num_params: int, cfg: ControllerConfig, x0: np.ndarray | None = None) -> Any:
    """A fresh ``cma.CMAEvolutionStrategy`` at ``x0`` (default: the zero vector) with
    ``sigma0``, population
    ``cfg.population``, sampling from its own ``numpy.random.RandomState`` seeded from
    ``cfg.seed`` (not NumPy's global generator: the stored strategy carries its generator,
    and nothing else in the process can move it)."""
    cma = _import_cma()
    rng = np.random.RandomState(derive_seed(cfg.seed, "cmaes"))
    options = {"popsize": cfg.population, "randn": rng.randn, "seed": np.nan,
               "verbose": -9, "verb_disp": 0, "verb_log": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = np.zeros(num_params) if x0 is None else np.asarray(x0, dtype=np.float64)
        return cma.CMAEvolutionStrategy(start, cfg.sigma0, options)


def initial_mean(init: str | Path, controller: Controller) -> np.ndarray:
    """The flat parameters of the C that ``controller.init`` names (a run directory or a
    controller checkpoint), checked to have ``controller``'s shape.

    :raises DataError: no such run or checkpoint.
    :raises ConfigError: a C of another shape (other latent size, hidden layer, or [z, h]
        against z only).
    """
    from worldmodels.run import load_controller
    from worldmodels.utils.checkpoint import load_checkpoint

    path = Path(init)
    if path.is_dir():
        source, _ = load_controller(path)
    elif path.is_file():
        checkpoint = load_checkpoint(path, kind=CONTROLLER_KIND, map_location="cpu")
        source = Controller(**checkpoint["model_config"])
        source.load_state_dict(checkpoint["state_dict"])
    else:
        raise DataError(f"controller.init: no run directory or controller checkpoint {path}")
    if source.hparams != controller.hparams:
        raise ConfigError(f"controller.init: the C in {path} has {source.hparams}, this "
                          f"run's has {controller.hparams}")
    return source.get_flat()


def strategy_to_tensor(es: Any) -> dict[str, Any]:
    """The strategy as plain data for a ``weights_only`` checkpoint
    (:func:`~worldmodels.control.es_state.strategy_state`; the name is kept from when it
    was a pickle in a uint8 tensor)."""
    return strategy_state(es)


def strategy_from_tensor(data: Any) -> Any:
    """Inverse of :func:`strategy_to_tensor`, on the same trajectory; a pickled strategy (a
    uint8 tensor, checkpoints before the plain format) is refused (:class:`DataError`)."""
    _import_cma()
    return strategy_from_state(data)


def generation_seeds(seed: int, generation: int, trials: int) -> list[int]:
    """The T track seeds of ``generation``: shared by its candidates, new each generation;
    training tracks (:data:`worldmodels.seeds.TRAINING_SEEDS`), never evaluation ones."""
    return [training_track(derive_seed(seed, "tracks", generation, j)) for j in range(trials)]


def dream_generation_seed(seed: int, generation: int) -> int:
    """``env="dream"``: the seed of ``generation``'s T dream episodes
    (:func:`~worldmodels.envs.dream.dream_rollout_returns` derives the trials from it):
    shared by the generation's candidates (common random numbers), new each generation."""
    return derive_seed(seed, "dream-tracks", generation)


def shift_seeds(seed: int, tracks: int = SHIFT_TRACKS) -> list[int]:
    """The training tracks the run's latent shift is fitted on (``latent_shift="fit"``)."""
    return [training_track(derive_seed(seed, "latent-shift", j)) for j in range(tracks)]


def uses_shift(k: ControllerConfig | dict[str, Any]) -> bool:
    """Whether the population's frames get the latent shift: real env, approximate frames
    (``k`` a config, or a checkpoint's recorded settings)."""
    get = k.get if isinstance(k, dict) else (lambda name, default: getattr(k, name))
    return (get("env", "real") == "real" and get("renderer", "exact") != "exact"
            and get("latent_shift", "none") == "fit")


def heldout_seeds(seed: int, episodes: int) -> list[int]:
    """The run's fixed held-out tracks, which select ``best.pt``: derived from the run seed
    (so they almost surely differ from the fitness tracks) and in the training range, so never
    one of ``evaluate.py``'s evaluation tracks (:mod:`worldmodels.seeds`)."""
    return [training_track(derive_seed(seed, "heldout", j)) for j in range(episodes)]


# ------------------------------------------------------------------------------ helpers


def _stage_identity(run_dir: Path, stage: str) -> dict[str, Any]:
    """Which checkpoint of V or M a controller was trained with (file, step, creation)."""
    path = checkpoint_path(run_dir, stage)
    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"stage": stage, "file": path.name, "step": int(data["step"]),
            "created": float(data.get("created", 0.0))}


def _check_compatible(checkpoint: dict[str, Any], k: ControllerConfig,
                      world: dict[str, Any], stage_dir: Path) -> None:
    extra = checkpoint.get("extra") or {}
    trained = extra.get("train") or {}
    if trained:  # checkpoints from before env/temperature existed were real-env runs
        trained = {"env": "real", **_OLD_DEFAULTS, **trained}
        if trained["env"] != "dream" or k.env != "dream":  # tau only matters in the dream
            trained.pop("temperature", None)
        if not uses_shift(k) and not uses_shift(trained):
            trained.pop("latent_shift", None)  # only approximate frames are shifted
    diff = [(name, trained[name], getattr(k, name)) for name in TRAJECTORY_KEYS
            if name in trained and trained[name] != getattr(k, name)]
    if diff:
        was = ", ".join(f"{n}={a!r}" for n, a, _ in diff)
        now = ", ".join(f"{n}={b!r}" for n, _, b in diff)
        raise ConfigError(f"{stage_dir} holds a CMA-ES run with {was} but the config asks for "
                          f"{now}: pass the same settings, use another --run, or delete "
                          f"{stage_dir} to start over")
    if extra.get("world_model") not in (None, world):
        raise ConfigError(f"V or M in {stage_dir.parent} changed since {stage_dir} was "
                          f"started: delete {stage_dir} to train C on the new world model")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so the workers are stopped on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- training


def train_controller(cfg: Config, run_dir: str | Path, *, progress: bool | None = None
                     ) -> dict[str, Any]:
    """Evolve C by CMA-ES on ``<run>/`` V and M, resuming from ``controller/last.pt``;
    fitness in the real environment or, with ``env="dream"``, in M's dream (Ha &
    Schmidhuber 2018, section 4.4), the held-out score always in the real environment.

    :param cfg: the config; only ``cfg.controller`` is read.
    :param run_dir: holds V (``<vae_model>/``) and M (``mdnrnn/``); gets ``controller/`` and
        ``tb/controller/``.
    :param progress: tqdm bar over generations (None: only on a terminal).
    :return: summary: ``generations`` (done), ``population``, ``trials``, ``params``,
        ``history`` (per generation: ``mean``, ``best``, ``worst``, ``sigma``, ``seconds``,
        ``env_steps_per_s`` and, when scored, ``eval``), ``fitness/mean`` and ``fitness/best``
        of the last generation, ``eval/best`` (best held-out score), ``generation_seconds``
        and ``env_steps_per_s`` (this invocation), ``wall_seconds``, ``worker_restarts``,
        ``checkpoint`` (best.pt, else last.pt), ``env``.
    :raises DataError: V or M missing or not fitting together.
    :raises ConfigError: the run directory holds a CMA-ES run of other settings, or
        ``action_repeat`` differs from the world model's.
    """
    k = cfg.controller
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    vae, mdnrnn, vae_model = load_world_model(run_dir, k.vae_model, "cpu")
    if vae_model == "vqvae" and k.z != "mu":
        raise ConfigError(f"controller.z={k.z!r} samples a Gaussian posterior, but V in "
                          f"{run_dir} is a VQ-VAE (its z_q is deterministic): use z='mu'")
    repeat = world_action_repeat(run_dir)
    if k.action_repeat not in (0, repeat):
        raise ConfigError(f"controller.action_repeat={k.action_repeat} but the world model in "
                          f"{run_dir} was built with action repeat {repeat} (collection's k): "
                          f"C must decide at M's pace; use 0 (or {repeat}), or collect and "
                          "train V and M with the k you want")
    world = {"vae_model": vae_model, "vae": _stage_identity(run_dir, vae_model),
             "mdnrnn": _stage_identity(run_dir, "mdnrnn")}
    controller_kwargs = {"hidden_layer": k.hidden_layer, "use_hidden_state": k.use_hidden_state}
    controller = Controller(latent_dim=vae.latent_dim, hidden_dim=mdnrnn.hidden_dim,
                            **controller_kwargs)
    num_params = controller.num_parameters
    P, T = k.population, k.trials

    # -- resume from last.pt, or start fresh
    stage_dir = run_dir / CONTROLLER_KIND
    manager = CheckpointManager(stage_dir, CONTROLLER_KIND, metric="eval/mean", mode="max")
    checkpoint = manager.latest()
    generation, history, wall_before = 0, [], 0.0
    real_frames = [0]  # CarRacing frames stepped by this run so far (fitness + held-out)
    if checkpoint is not None:
        _check_compatible(checkpoint, k, world, stage_dir)
        extra = checkpoint["extra"]
        es = strategy_from_tensor(extra["es"])
        shift_info = extra.get("latent_shift")
        agent_settings = extra.get("agent") or {"precision": "fp32"}  # fp32 before it existed
        generation, history = int(checkpoint["step"]), list(extra.get("history", []))
        wall_before = float(extra.get("wall_seconds", 0.0))
        real_frames[0] = int(extra.get("env_frames", 0))
        restore_rng(checkpoint)
    else:
        es = new_strategy(num_params, k, initial_mean(k.init, controller) if k.init else None)
        agent_settings = {}
        shift_info = None
    # V's precision: 'auto' means the machine's choice when a run starts, then the run's.
    precision = k.precision
    if precision == "auto":
        precision = agent_settings.get("precision") or auto_precision(resolve_device(k.device))
    elif agent_settings.get("precision", precision) != precision:
        raise ConfigError(f"{stage_dir} was trained with V in {agent_settings['precision']}, "
                          f"not {precision}: pass --set controller.precision=auto (or "
                          f"{agent_settings['precision']}), or use another --run")
    agent_settings = {"precision": precision, "z": k.z, "action_repeat": repeat}

    env_note = ENV_NOTE if k.env == "real" else (
        f"M's dream (tau={k.temperature:g}), held-out scores in {ENV_NOTE}")

    def summary(seconds: list[float], steps_per_s: list[float], restarts: int) -> dict[str, Any]:
        path = manager.best_path if manager.best_path.exists() else manager.last_path
        last = history[-1] if history and "mean" in history[-1] else {}
        return {
            "generations": generation, "population": P, "trials": T, "params": num_params,
            "fitness/mean": last.get("mean"), "fitness/best": last.get("best"),
            "eval/best": manager.best_value, "history": history,
            "generation_seconds": float(np.mean(seconds)) if seconds else None,
            "env_steps_per_s": float(np.mean(steps_per_s)) if steps_per_s else None,
            "wall_seconds": wall_before + time.perf_counter() - t_start,
            "worker_restarts": restarts, "checkpoint": str(path), "env": env_note,
            "latent_shift": shift_info,
        }

    if generation >= k.generations:
        return summary([], [], 0)  # finished earlier: nothing to do

    shifted = uses_shift(k) and vae_model != "vqvae"  # a VQ-VAE's codes are not shifted
    if shifted and shift_info is None:
        # Fitted once, at the start point, and kept in the checkpoints: a resumed run scores
        # its candidates on the same frames.
        if progress is not False:
            print(f"fitting the {k.renderer} renderer's latent shift on {SHIFT_TRACKS} training "
                  f"tracks (exact episodes of the start point) ...", file=sys.stderr, flush=True)
        controller.set_flat(np.asarray(es.mean, dtype=np.float64))
        shift_info = fit_latent_shift(vae, mdnrnn, controller, shift_seeds(k.seed),
                                      renderer=k.renderer, precision=precision,
                                      max_steps=k.max_steps, device=k.device)
        real_frames[0] += shift_info["env_steps"]  # real frames, as the fitness counts them
        if progress is not False:
            gap, after = shift_info["action_gap"][1], shift_info["action_gap_shifted"][1]
            print(f"latent shift: {shift_info['frames']} frames, C's gas on approximate minus "
                  f"exact frames {gap:+.4f} -> {after:+.4f} with the shift", file=sys.stderr,
                  flush=True)
    latent_shift = shift_info["shift"] if shifted and shift_info else None

    bundle = worker_bundle(vae, mdnrnn, controller_kwargs=controller_kwargs, device=k.device,
                         batch_invariant=k.batch_invariant, action_repeat=repeat,
                         precision=precision, z=k.z)
    heldout = heldout_seeds(k.seed, k.eval_episodes)
    dream = None
    if k.env == "dream":
        # The paper's section 4.4: the population is scored inside M's dream (one batch of
        # P x T episodes, built once); the held-out score below stays real.
        from worldmodels.control.dream_fitness import dream_rollout_returns
        from worldmodels.run import load_dream

        dream = load_dream(run_dir, P * T, k.temperature, k.device, max_steps=k.max_steps,
                           vae_model=vae_model, precision=k.dream_precision)
    seconds: list[float] = []
    steps_per_s: list[float] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())
        # A fresh start drops the logs of an earlier attempt (resume_step=-1), a resume
        # those after its checkpoint.
        logger = stack.enter_context(RunLogger(
            run_dir, CONTROLLER_KIND, resume_step=generation if checkpoint is not None else -1))
        logger.hparams(dataclasses.asdict(k))
        save_stage_config(cfg, run_dir, "controller")
        backend = stack.enter_context(make_backend(
            bundle, backend=k.backend, workers=k.workers, envs_per_worker=k.envs_per_worker,
            address=k.address, worker_timeout=k.worker_timeout))
        bar = stack.enter_context(progress_bar(progress, total=k.generations,
                                               initial=generation, desc="cma-es", unit="gen"))

        def score_mean(params: np.ndarray) -> dict[str, float]:
            """The held-out score of one parameter vector (no early termination)."""
            held = backend.run(params[None], [EpisodeSpec(j, 0, s) for j, s in enumerate(heldout)],
                               max_steps=k.max_steps, early_stop_steps=0)
            real_frames[0] += sum(x.steps for x in held)
            r = np.array([x.episode_return for x in held])
            return {"eval/mean": float(r.mean()), "eval/std": float(r.std()),
                    "eval/min": float(r.min()), "eval/max": float(r.max())}

        if generation == 0 and k.eval_every > 0 and not history:
            # the baseline: the start point (the zero controller) on the held-out tracks
            baseline = score_mean(np.asarray(es.mean, dtype=np.float64))
            logger.log(0, baseline)
            history.append({"generation": 0, "eval": baseline["eval/mean"],
                            "env_frames": real_frames[0]})
        while generation < k.generations:
            t0 = time.perf_counter()
            # -- ask: P candidates; the same T fresh tracks for all of them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                solutions = np.asarray(es.ask(), dtype=np.float64)  # (P, N)
            # -- evaluate: P x T episodes, fitness = mean return per candidate
            if dream is None:
                seeds = generation_seeds(k.seed, generation, T)
                specs = [EpisodeSpec(c * T + j, c, seeds[j]) for c in range(P)
                         for j in range(T)]
                results = backend.run(solutions, specs, max_steps=k.max_steps,
                                      early_stop_steps=k.early_stop_steps,
                                      early_stop=k.early_stop, renderer=k.renderer,
                                      latent_shift=latent_shift)
                returns = np.array([r.episode_return for r in results]).reshape(P, T)
                steps = sum(r.steps for r in results)
                real_frames[0] += steps
                early_stopped = float(np.mean([r.stopped_early for r in results]))
            else:
                returns = dream_rollout_returns(
                    solutions, T, dream_generation_seed(k.seed, generation), k.max_steps,
                    dream=dream, controller_kwargs=controller_kwargs)
                steps = int(dream.lengths.sum())
                early_stopped = 0.0
            fitness = returns.mean(axis=1)
            eval_seconds = time.perf_counter() - t0

            # -- tell: CMA-ES minimises
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                es.tell(list(solutions), list(-fitness))
            generation += 1
            mean_params = np.asarray(es.mean, dtype=np.float64).copy()
            scalars = {
                "fitness/best": float(fitness.max()), "fitness/mean": float(fitness.mean()),
                "fitness/worst": float(fitness.min()), "fitness/std": float(fitness.std()),
                "charts/sigma": float(es.sigma),
                "charts/generation_seconds": eval_seconds,
                "charts/env_steps_per_s": steps / max(eval_seconds, 1e-9),
                "charts/env_frames_per_s": steps / max(eval_seconds, 1e-9),
                "charts/episode_steps": steps / (P * T),
                "charts/env_frames": real_frames[0],
                "charts/early_stopped": early_stopped,
                "charts/worker_restarts": backend.restarts,
            }
            record = {"generation": generation, "mean": scalars["fitness/mean"],
                      "best": scalars["fitness/best"], "worst": scalars["fitness/worst"],
                      "sigma": scalars["charts/sigma"], "seconds": eval_seconds,
                      "env_steps_per_s": scalars["charts/env_steps_per_s"]}

            # -- the distribution's mean on the held-out tracks (no early termination)
            metrics: dict[str, float] = {"fitness/mean": scalars["fitness/mean"]}
            due = k.eval_every > 0 and generation % k.eval_every == 0
            if due or generation == k.generations:
                metrics.update(score_mean(mean_params))
                record["eval"] = metrics["eval/mean"]
            record["env_frames"] = real_frames[0]
            history.append(record)
            logger.log(generation, {**scalars, **{m: v for m, v in metrics.items()
                                                  if m.startswith("eval/")}})

            # -- checkpoint: C at the mean, and the whole CMA-ES state
            controller.set_flat(mean_params)
            manager.save(model=controller, model_config=controller.hparams, step=generation,
                         metrics=metrics, extra={
                             "es": strategy_to_tensor(es), "train": dataclasses.asdict(k),
                             "agent": agent_settings, "env_frames": real_frames[0],
                             "vae_model": vae_model, "world_model": world,
                             "history": history, "latent_shift": shift_info,
                             "wall_seconds": wall_before + time.perf_counter() - t_start})
            logger.flush()
            seconds.append(time.perf_counter() - t0)
            steps_per_s.append(scalars["charts/env_steps_per_s"])
            bar.update(1)
            held_text = f" held-out {record['eval']:.1f}" if "eval" in record else ""
            bar.set_postfix_str(
                f"mean {record['mean']:.1f} best {record['best']:.1f} sigma {es.sigma:.3g}"
                f"{held_text} | {seconds[-1]:.1f} s/gen {steps_per_s[-1]:.0f} steps/s")
        return summary(seconds, steps_per_s, backend.restarts)
