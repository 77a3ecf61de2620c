"""The whole World Models pipeline in one call: collect -> V -> encode -> M -> C -> evaluate ->
video, each stage skipped when its output is already complete.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, section 3 ("Car Racing
Experiment: Procedure"):

1. collect rollouts of a random policy (:func:`worldmodels.data.rollouts.main`);
2. train V, the VAE, on their frames (:func:`worldmodels.stages.train_vae.train_vae`);
3. encode every frame into ``z`` (:func:`worldmodels.data.latents.main`);
4. train M, the MDN-RNN, on the latent sequences (:func:`worldmodels.stages.train_mdnrnn.train_mdnrnn`);
5. evolve C by CMA-ES (:func:`worldmodels.stages.train_controller.train_controller`; in M's dream with
   ``controller.env = "dream"``, the paper's section 4);
6. score C on ``N`` held-out tracks (:func:`worldmodels.control.evaluation.evaluate`) and, on
   the same tracks, two references: the zero controller (CMA-ES's start point) and a random
   linear C (parameters ``N(0, 1)``, a random policy that still reads ``[z, h]``);
7. record one episode (:func:`worldmodels.stages.watch.main`), as long as C's training
   episodes at most, to ``<run>/videos/pipeline.mp4``.

``vae.model = "vqvae"`` runs the same pipeline on a discrete world model (a VQ-VAE, van den
Oord et al. 2017, arXiv:1711.00937; its code grids encoded; M a CodeRNN over them; C on the
quantised latent ``z_q`` and ``h``): ``--preset smoke --set vae.model=vqvae``
(docs/vqvae-agent.md).

Every stage resumes or returns at once when finished (the stage functions themselves check),
so re-running the same command continues an interrupted pipeline and a finished one costs
seconds: the evaluation, the references and the video are cached in
``<run>/pipeline/evaluation.json`` against the controller checkpoint they were made with.
A stage is reported ``ran`` when it changed its output (checkpoint, dataset or latents file),
else ``skipped``. The summary (one row per stage: status, wall seconds, key metric) is printed
and written to ``<run>/pipeline/summary.json`` and ``summary.txt``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldmodels.config import Config
from worldmodels.errors import ConfigError, DataError
from worldmodels.run import CONTROLLER_KIND, checkpoint_path
from worldmodels.utils.io import atomic_write_text, ensure_dir

__all__ = ["STAGES", "run_pipeline", "format_table"]

STAGES = ("collect", "vae", "encode", "mdnrnn", "controller", "evaluate", "baselines", "video")
PIPELINE_DIR = "pipeline"
VIDEO_NAME = "pipeline.mp4"
HELDOUT_SEED = 100_000  # first evaluation track: far from the collected tracks 0 .. episodes-1


def _signature(*paths: Path) -> tuple[int | None, ...]:
    """Modification times of a stage's outputs: a stage that wrote nothing leaves them."""
    return tuple(p.stat().st_mtime_ns if p.exists() else None for p in paths)


def _controller_identity(run_dir: Path) -> dict[str, Any]:
    """Which controller checkpoint the evaluation, references and video were made with."""
    try:
        path = checkpoint_path(run_dir, CONTROLLER_KIND)
    except DataError:
        return {}
    return {"file": path.name, "mtime_ns": path.stat().st_mtime_ns}


def _reference_returns(run_dir: Path, cfg: Config, episodes: int, seed: int,
                       max_steps: int) -> dict[str, Any]:
    """Returns of the zero controller and of a random linear C (parameters ``N(0, 1)``,
    seeded) on tracks ``seed .. seed + episodes - 1``: the references the trained C is
    compared with, on the same tracks and with the same V and M."""
    from worldmodels.control.evaluation import EpisodeSpec, worker_bundle
    from worldmodels.parallel import make_backend
    from worldmodels.run import load_controller, load_world_model
    from worldmodels.utils.torch import derive_seed

    k = cfg.controller
    controller, ckpt = load_controller(run_dir, "cpu", "best")
    vae, mdnrnn, _ = load_world_model(run_dir, (ckpt.get("extra") or {}).get("vae_model",
                                                                             "auto"), "cpu")
    hp = controller.hparams
    kwargs = {"hidden_layer": hp["hidden_layer"], "use_hidden_state": hp["use_hidden_state"]}
    bundle = worker_bundle(vae, mdnrnn, controller_kwargs=kwargs, device=k.device)
    n = controller.num_parameters
    rng = np.random.default_rng(derive_seed(k.seed, "pipeline-random-controller"))
    params = np.stack([np.zeros(n), rng.standard_normal(n)])
    seeds = [seed + j for j in range(episodes)]
    specs = [EpisodeSpec(c * episodes + j, c, s) for c in range(2) for j, s in enumerate(seeds)]
    runner = make_backend(bundle, backend=k.backend, workers=k.workers,
                          envs_per_worker=k.envs_per_worker, address=k.address,
                          worker_timeout=k.worker_timeout)
    try:
        results = runner.run(params, specs, max_steps=max_steps, early_stop_steps=0)
    finally:
        runner.close()
    returns = np.array([r.episode_return for r in results]).reshape(2, episodes)
    return {name: {"mean": float(r.mean()), "std": float(r.std()),
                   "returns": [float(x) for x in r]}
            for name, r in zip(("zero", "random"), returns)}


def _metric(stage: str, s: dict[str, Any]) -> str:
    """The one number (or two) that says how a stage went."""
    if stage == "collect":
        return f"{s['episodes']} episodes, {s['frames']:,} frames"
    if stage == "vae":
        return f"{s['model']} val loss {s.get('val/loss', float('nan')):.4g} ({s['steps']} steps)"
    if stage == "encode":
        if s.get("kind") == "codes":
            return f"{s['frames']:,} frames -> code grids of {s['latent_dim']} cells"
        return f"{s['frames']:,} frames -> z of dim {s['latent_dim']}"
    if stage == "mdnrnn":
        if "val/nll" in s:
            return (f"val nll {s['val/nll']:.4g} (baseline {s['baseline/nll']:.4g}), "
                    f"{s['steps']} steps")
        return f"{s['steps']} steps"
    if stage == "controller":
        best = s.get("eval/best")
        held = f", held-out best {best:.1f}" if best is not None else ""
        fit = s.get("fitness/mean")
        fit_text = f"fitness mean {fit:.1f}" if fit is not None else "no generation"
        return f"{s['generations']} generations, {fit_text}{held}"
    if stage == "evaluate":
        return f"return {s['mean']:.1f} ± {s['std']:.1f} on {s['episodes']} tracks"
    if stage == "baselines":
        return (f"zero C {s['zero']['mean']:.1f} ± {s['zero']['std']:.1f}, random C "
                f"{s['random']['mean']:.1f} ± {s['random']['std']:.1f}")
    if stage == "video":
        return str(s["path"])
    return ""


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary rows as a fixed-width text table."""
    lines = [f"{'stage':<11} {'status':<8} {'seconds':>8}  metric", "-" * 72]
    lines += [f"{r['stage']:<11} {r['status']:<8} {r['seconds']:>8.1f}  {r['metric']}"
              for r in rows]
    return "\n".join(lines)


def run_pipeline(cfg: Config, run_dir: str | Path, progress: bool | None = None, *,
                 episodes: int | None = None, seed: int = HELDOUT_SEED,
                 max_steps: int = 1000, video: bool = True,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume, or find finished) every stage of the World Models pipeline on
    ``run_dir`` (Ha & Schmidhuber 2018, section 3's procedure), then score C on held-out
    tracks against the zero and a random controller and record a video.

    :param cfg: the whole config (a preset with overrides); ``encode.model`` follows
        ``vae.model`` (the V that was trained is the one that encodes).
    :param run_dir: the run directory (created if needed).
    :param progress: tqdm bars of the stages (None: only on a terminal).
    :param episodes: held-out tracks of the final evaluation (None: ``min(100,
        controller.eval_episodes)``; the paper's protocol is 100).
    :param seed: first held-out track: tracks ``seed .. seed + episodes - 1``.
    :param max_steps: steps per evaluation episode (1000: CarRacing-v3's full episode;
        fewer gives returns that are not CarRacing-v3 scores).
    :param video: record ``<run>/videos/pipeline.mp4`` (one real episode on track ``seed``).
    :param log: called with one line as each stage ends (e.g. ``print``).
    :return: ``rows`` (per stage: ``stage``, ``status`` ran|skipped, ``seconds``,
        ``metric``), ``summaries`` (each stage function's summary), ``evaluation``,
        ``baselines``, ``video`` (path or None), ``table`` (text), ``summary_path``.
    :raises ConfigError: bad episode counts.
    """
    from worldmodels.data.rollouts import DATASET_NAME
    from worldmodels.stages.collect import main as collect_main
    from worldmodels.stages.encode import main as encode_main
    from worldmodels.stages.evaluate import evaluate
    from worldmodels.stages.train_controller import train_controller
    from worldmodels.stages.train_mdnrnn import train_mdnrnn
    from worldmodels.stages.train_vae import train_vae

    episodes = min(100, cfg.controller.eval_episodes) if episodes is None else int(episodes)
    if episodes < 1 or seed < 0 or not 1 <= max_steps <= 1000:
        raise ConfigError(f"need episodes >= 1, seed >= 0 and max_steps in 1..1000; got "
                          f"{episodes}, {seed} and {max_steps}")
    cfg.encode.model = cfg.vae.model
    run_dir = ensure_dir(run_dir)
    out_dir = ensure_dir(run_dir / PIPELINE_DIR)
    rows: list[dict[str, Any]] = []
    summaries: dict[str, Any] = {}

    def stage(name: str, fn: Callable[[], dict[str, Any]], outputs: tuple[Path, ...],
              ran: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        before = _signature(*outputs)
        t0 = time.perf_counter()
        s = fn()
        seconds = time.perf_counter() - t0
        changed = ran(s) if ran is not None else _signature(*outputs) != before
        row = {"stage": name, "status": "ran" if changed else "skipped",
               "seconds": round(seconds, 2), "metric": _metric(name, s)}
        rows.append(row)
        summaries[name] = s
        if log is not None:
            log(f"{name}: {row['status']} in {seconds:.1f} s: {row['metric']}")
        return s

    v, m = cfg.vae.model, "mdnrnn"
    stage("collect", lambda: collect_main(cfg, run_dir, progress=progress),
          (run_dir / DATASET_NAME,))
    stage("vae", lambda: train_vae(cfg, run_dir, progress=progress),
          (run_dir / v / "last.pt",))
    stage("encode", lambda: encode_main(cfg, run_dir, progress=progress),
          (run_dir / f"latents_{v}.h5",), ran=lambda s: bool(s.get("encoded_frames")))
    stage("mdnrnn", lambda: train_mdnrnn(cfg, run_dir, progress=progress),
          (run_dir / m / "last.pt",))
    stage("controller", lambda: train_controller(cfg, run_dir, progress=progress),
          (run_dir / "controller" / "last.pt",))

    # -- evaluation, references and video: cached against the controller they were made with
    cache_path = out_dir / "evaluation.json"
    key = {"controller": _controller_identity(run_dir), "episodes": episodes, "seed": seed,
           "max_steps": max_steps}
    cache: dict[str, Any] = {}
    if cache_path.exists():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
    fresh = cache.get("key") == key
    if not fresh:  # made with another controller or protocol: nothing of it is reused
        cache = {}

    def cached(name: str, compute: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        def fn() -> dict[str, Any]:
            if fresh and name in cache:
                return cache[name]
            cache[name] = compute()
            cache["key"] = key
            atomic_write_text(cache_path, json.dumps(cache, indent=2) + "\n")
            return cache[name]
        return fn

    k = cfg.controller
    had = {name: fresh and name in cache for name in ("evaluate", "baselines", "video")}
    evaluation = stage("evaluate", cached("evaluate", lambda: evaluate(
        run_dir, episodes, seed, workers=k.workers, backend=k.backend, address=k.address,
        device=k.device, max_steps=max_steps, envs_per_worker=k.envs_per_worker,
        worker_timeout=k.worker_timeout, progress=progress)), (),
        ran=lambda s: not had["evaluate"])
    baselines = stage("baselines", cached("baselines", lambda: _reference_returns(
        run_dir, cfg, episodes, seed, max_steps)), (), ran=lambda s: not had["baselines"])

    video_path = None
    if video:
        video_path = run_dir / "videos" / VIDEO_NAME

        def record() -> dict[str, Any]:
            from worldmodels.stages.watch import main as watch_main

            watch_main(["--run", str(run_dir), "--env", "real", "--episodes", "1",
                        "--seed", str(seed),
                        "--max-steps", str(min(max_steps, cfg.controller.max_steps)),
                        "--save", str(video_path), "--device", "cpu"])
            return {"path": str(video_path)}

        if not video_path.exists():
            cache.pop("video", None)
            had["video"] = False
        stage("video", cached("video", record), (), ran=lambda s: not had["video"])

    table = format_table(rows)
    delta_zero = evaluation["mean"] - baselines["zero"]["mean"]
    delta_random = evaluation["mean"] - baselines["random"]["mean"]
    comparison = (f"on tracks {seed}..{seed + episodes - 1} ({max_steps} steps): trained C "
                  f"{evaluation['mean']:.1f} ± {evaluation['std']:.1f}, zero C "
                  f"{baselines['zero']['mean']:.1f} ({delta_zero:+.1f}), random C "
                  f"{baselines['random']['mean']:.1f} ({delta_random:+.1f})")
    result = {"rows": rows, "summaries": summaries, "evaluation": evaluation,
              "baselines": baselines, "comparison": comparison,
              "video": str(video_path) if video_path is not None else None,
              "table": table, "summary_path": str(out_dir / "summary.json")}
    atomic_write_text(out_dir / "summary.json", json.dumps(
        {key_: result[key_] for key_ in ("rows", "evaluation", "baselines", "comparison",
                                         "video")}, indent=2, default=str) + "\n")
    atomic_write_text(out_dir / "summary.txt", f"{table}\n\n{comparison}\n")
    return result
