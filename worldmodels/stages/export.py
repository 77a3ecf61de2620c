"""Ship a trained run as a small, git-friendly "pretrained" directory: the logic of
``scripts/export_pretrained.py``.

The export has the layout the loaders read (``load_world_model``, ``load_controller``,
``mdnrnn_info``, ``load_vae``, ``evaluate``, ``BatchedDream`` / ``DreamEnv`` work on it
unchanged), and only what using and understanding the agent needs::

    <out>/
      MANIFEST.json              every other file: size and SHA-256; source run, date, commit
      config.json                the run's resolved config, as it was
      <vae|betavae|vqvae>/best.pt  V (the one M was trained on), float tensors in fp16
      mdnrnn/best.pt             M, float tensors in fp16
      controller/best.pt         C, fp32, exactly the trained weights, with its history
      curves/<stage>.csv|png     every <run>/<stage>/metrics.jsonl as a table and a plot
      curves/controller_history.csv|png   CMA-ES per generation: population, held-out
      drive.mp4                  one real episode: real frame | V's reconstruction | M's guess

Checkpoints keep ``kind``, ``step``, ``epoch``, ``model_config``, ``metrics`` and the small
``extra`` entries (M's ``vae`` and ``train``, C's ``history`` and ``vae_model``...); the
optimiser, scheduler and RNG states and tensor-valued extras (C's CMA-ES state) are
dropped: an export is for using the agent, not for resuming its training. A run whose V is
a VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) and M a CodeRNN exports the same way
(the codebook in fp16 too); its code prior (``vqvae/prior.pt``, for sampling images, not
used by the agent) is not exported.
``load_state_dict`` copies the fp16 tensors into the fp32 parameters of a freshly built
model, so V and M run in fp32 with weights rounded to fp16 (relative error <= 2^-11).

**V's identity.** M records the identity of the V whose latents it was trained on (a SHA-256
of V's weights, as ``latents_<V>.h5`` files do). The export checks that the run's V is that
one, then records in M the identity of the *exported* V (the SHA-256 of its fp16 weights,
what :func:`~worldmodels.data.latents.load_encoder` computes on the export) with the trained
V's under ``source``, so identity checks made on the export compare like with like.

The directory is built under ``<out>.tmp-<pid>`` beside ``out`` and renamed into place
when complete; an existing ``out`` is replaced only with ``overwrite`` and only then.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import filecmp
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import worldmodels
from worldmodels.errors import DataError, WorldModelsError
from worldmodels.pretrained import DEFAULT_RUN, repository_root
from worldmodels.utils.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
)
from worldmodels.utils.io import TMP_MARK, describe_os_error, ensure_dir, fsync_dir, tmp_path_for

__all__ = ["DEFAULT_OUT", "MANIFEST", "export_pretrained"]

#: where ``scripts/export_pretrained.py`` writes by default (what evaluate and watch read)
DEFAULT_OUT = DEFAULT_RUN
MANIFEST = "MANIFEST.json"
CURVES = "curves"
VIDEO = "drive.mp4"
#: how the exported V and M store their floating-point tensors
WORLD_MODEL_DTYPE = torch.float16
_FORMAT = "worldmodels/pretrained"
# validation metrics that are not losses (another scale, or "higher is better")
_NOT_LOSSES = ("accuracy", "perplexity", "codes_used", "elbo", "bits_per_dim")


# ------------------------------------------------------------------------------ sources


def _stage_checkpoint(run: Path, stage: str, fix: str) -> Path:
    """``<run>/<stage>/best.pt``, else ``last.pt``; a one-line error naming the fix."""
    from worldmodels.run import checkpoint_path

    try:
        return checkpoint_path(run, stage)
    except DataError:
        raise DataError(f"cannot export {run}: {run / stage / CheckpointManager.BEST} (or "
                        f"{CheckpointManager.LAST}) is missing: run {fix} first") from None


def _sources(run: Path) -> dict[str, Any]:
    """What is exported, checked to exist and to fit together before anything is written."""
    from worldmodels.run import CONTROLLER_KIND, mdnrnn_info
    from worldmodels.stages.train_mdnrnn import STAGE

    mdnrnn = _stage_checkpoint(run, STAGE, f"scripts/train_mdnrnn.py --run {run}")
    vae_model = mdnrnn_info(run)["vae_model"] or "vae"
    vae = _stage_checkpoint(run, vae_model,
                            f"scripts/train_vae.py --run {run} --model {vae_model}")
    controller = _stage_checkpoint(run, CONTROLLER_KIND,
                                   f"scripts/train_controller.py --run {run}")
    config = run / "config.json"
    if not config.is_file():
        raise DataError(f"cannot export {run}: {config} is missing (every stage's script "
                        "writes the resolved config): was the run made by the scripts?")
    return {"vae_model": vae_model, "vae": vae, "mdnrnn": mdnrnn, "controller": controller,
            "config": config}


# ------------------------------------------------------------------------------ checkpoints


def _holds_tensors(value: Any) -> bool:
    """A tensor, or a container with one (C's CMA-ES state is a tree of tensors)."""
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_tensors(v) for v in value)
    return False


def _small_extra(extra: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """``extra`` without its tensors (training state: C's CMA-ES, ...), and their names."""
    extra = dict(extra or {})
    dropped = sorted(k for k, v in extra.items() if _holds_tensors(v))
    return {k: v for k, v in extra.items() if k not in dropped}, dropped


def _same_content(a: Any, b: Any) -> bool:
    """Two loaded checkpoints (or parts) hold the same values: tensors equal in dtype,
    shape and every element, everything else ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same_content(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_content(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _keep_previous(path: Path, previous: Path | None) -> bool:
    """Replace the checkpoint just written at ``path`` by the previous export's file when
    the two differ only in their creation time: re-exporting a run whose V and M did not
    change (a continued CMA-ES) then leaves their files (and C's, if its best did not move)
    byte for byte, so a repository that tracks the export does not store them again."""
    if previous is None or not previous.is_file():
        return False
    try:
        old = torch.load(previous, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or another format: the new file stands
        return False
    new = torch.load(path, map_location="cpu", weights_only=True)
    if not _same_content({**old, "created": None}, {**new, "created": None}):
        return False
    shutil.copyfile(previous, path)
    return True


def _resave(source: Mapping[str, Any], net: nn.Module, path: Path, dtype: torch.dtype,
            extra: Mapping[str, Any], previous: Path | None = None) -> None:
    """Write ``source`` (a loaded checkpoint) again at ``path`` with ``net``'s floating
    tensors in ``dtype``, without optimiser, scheduler or RNG state (or keep ``previous``,
    the file an earlier export wrote there, if that is all it would change:
    :func:`_keep_previous`)."""
    net.load_state_dict(source["state_dict"])
    net.to(dtype)  # floating parameters and buffers only
    for name, t in net.state_dict().items():
        if t.is_floating_point() and not torch.isfinite(t).all() \
                and torch.isfinite(source["state_dict"][name]).all():
            raise DataError(f"cannot export {source['kind']}: {name} exceeds the range of "
                            f"{dtype} (|w| > {torch.finfo(dtype).max:g})")
    save_checkpoint(path, kind=source["kind"], model=net, model_config=source["model_config"],
                    step=source["step"], epoch=source.get("epoch"),
                    metrics=source.get("metrics"), extra=extra, rng=False)
    _keep_previous(path, previous)


def _export_checkpoints(src: dict[str, Any], run: Path, tmp: Path,
                        previous: Path | None = None) -> dict[str, Any]:
    """V, M (fp16) and C (fp32) into ``tmp``; returns what the manifest says of them.
    ``previous``: the export being replaced, whose V, M and C files are kept where only
    their creation time would change."""
    from worldmodels.control.controller import Controller
    from worldmodels.generative.registry import KINDS, build_model
    from worldmodels.memory.mdnrnn import build_mdnrnn
    from worldmodels.run import CONTROLLER_KIND, load_encoder
    from worldmodels.stages.train_mdnrnn import STAGE
    from worldmodels.utils.checkpoint import weights_sha256

    vae_model, best = src["vae_model"], CheckpointManager.BEST
    v = load_checkpoint(src["vae"], kind=KINDS[vae_model])
    m = load_checkpoint(src["mdnrnn"], kind=STAGE)
    c = load_checkpoint(src["controller"], kind=CONTROLLER_KIND)

    # -- V: M must have been trained on this V's latents
    trained_sha = weights_sha256(v["state_dict"])
    m_extra, m_dropped = _small_extra(m.get("extra"))
    recorded = dict(m_extra.get("vae") or {})
    if recorded.get("sha256") not in (None, trained_sha):
        raise DataError(f"cannot export {run}: M was trained on the latents of another V "
                        f"({vae_model} step {recorded.get('step')}) than {src['vae']} "
                        f"(step {v['step']}): run scripts/encode.py --run {run} --model "
                        f"{vae_model} --overwrite and scripts/train_mdnrnn.py first")
    v_extra, v_dropped = _small_extra(v.get("extra"))
    def before(stage: str) -> Path | None:
        return previous / stage / best if previous is not None else None

    _resave(v, build_model(v["model_config"]), tmp / vae_model / best, WORLD_MODEL_DTYPE,
            v_extra, before(vae_model))

    # -- M, recording the exported V's identity (see the module docstring)
    _, identity = load_encoder(tmp, vae_model)
    # the V M was trained on: this run's, or, for a run made from an export (a continued
    # campaign), the one that export recorded
    origin = recorded.get("source") or {
        "checkpoint": f"{vae_model}/{src['vae'].name}", "sha256": trained_sha,
        "note": f"sha256 is that of the exported V (weights rounded to "
                f"{str(WORLD_MODEL_DTYPE).removeprefix('torch.')}); source.sha256 that of "
                "the V M was trained on"}
    m_extra["vae"] = {**recorded, **identity, "source": origin}
    _resave(m, build_mdnrnn(m["model_config"]), tmp / STAGE / best, WORLD_MODEL_DTYPE, m_extra,
            before(STAGE))

    # -- C: fp32, the exact trained weights
    c_extra, c_dropped = _small_extra(c.get("extra"))
    if c_extra.get("vae_model", "auto") not in ("auto", vae_model):
        raise DataError(f"cannot export {run}: C was trained on {c_extra['vae_model']!r} but "
                        f"M on {vae_model!r} latents: retrain C (scripts/train_controller.py)")
    _resave(c, Controller(**c["model_config"]), tmp / CONTROLLER_KIND / best, torch.float32,
            c_extra, before(CONTROLLER_KIND))

    def info(stage: str, ckpt: dict[str, Any], source: Path, dtype: torch.dtype,
             dropped: list[str]) -> tuple[str, dict[str, Any]]:
        return f"{stage}/{best}", {
            "source": f"{stage}/{source.name}", "kind": ckpt["kind"], "step": int(ckpt["step"]),
            "dtype": str(dtype).removeprefix("torch."),
            "dropped": ["optimizer", "scheduler", "rng", *(f"extra.{k}" for k in dropped)]}

    return dict([info(vae_model, v, src["vae"], WORLD_MODEL_DTYPE, v_dropped),
                 info(STAGE, m, src["mdnrnn"], WORLD_MODEL_DTYPE, m_dropped),
                 info(CONTROLLER_KIND, c, src["controller"], torch.float32, c_dropped)])


def _verify(run: Path, tmp: Path) -> None:
    """The export loads as a run does, and C's weights are the trained ones bit for bit."""
    from worldmodels.run import load_controller, load_world_model

    trained, _ = load_controller(run)
    exported, ckpt = load_controller(tmp)
    load_world_model(tmp, (ckpt.get("extra") or {}).get("vae_model", "auto"))
    a, b = trained.get_flat(), exported.get_flat()
    if a.shape != b.shape or a.tobytes() != b.tobytes():
        raise WorldModelsError(f"bug: the exported controller differs from {run}'s")


# ------------------------------------------------------------------------------ curves


def _history(controller: Path) -> list[dict[str, Any]]:
    """C's per-generation history, whole: ``last.pt``'s when there is one (``best.pt``'s
    stops at the best generation)."""
    last = controller.with_name(CheckpointManager.LAST)
    ckpt = load_checkpoint(last if last.is_file() else controller)
    return list((ckpt.get("extra") or {}).get("history") or [])


def _table(records: Sequence[Mapping[str, Any]], first: str) -> list[str]:
    """The columns of ``records``: ``first``, then every key with numbers (or nulls), in
    order of first appearance."""
    columns: dict[str, bool] = {}
    for record in records:
        for key, value in record.items():
            number = value is None or (isinstance(value, (int, float))
                                       and not isinstance(value, bool))
            columns[key] = columns.get(key, True) and number
    return [first] + [k for k, ok in columns.items() if ok and k != first]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _write_csv(path: Path, records: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([_cell(record.get(c)) for c in columns])


def _series(records: Sequence[Mapping[str, Any]], x: str, y: str
            ) -> tuple[list[Any], list[Any]]:
    """(xs, ys) of the records that have ``y`` (null: a gap in the line)."""
    rows = [r for r in records if y in r]
    return [r[x] for r in rows], [r[y] for r in rows]


def plotted_columns(stage: str, columns: Sequence[str]) -> list[str]:
    """The columns of a stage's metrics drawn in its plot: the fitness and held-out score
    for C; the training losses and validation losses for the others (every column but
    ``wall_time`` when none)."""
    if stage == "controller":
        chosen = [c for c in ("fitness/mean", "fitness/best", "fitness/worst", "eval/mean")
                  if c in columns]
    else:
        chosen = [c for c in columns if c.startswith(("losses/", "val/", "prior/"))
                  and not any(word in c for word in _NOT_LOSSES)]
    return chosen or [c for c in columns if c not in ("step", "wall_time")]


def _export_curves(run: Path, history: Sequence[Mapping[str, Any]], out: Path
                   ) -> dict[str, int]:
    """``curves/<stage>.csv|png`` for each ``<run>/<stage>/metrics.jsonl`` and
    ``curves/controller_history.csv|png``; returns the rows of each table."""
    from worldmodels.utils.logs import read_metrics
    from worldmodels.utils.plots import line_plot

    ensure_dir(out)
    rows = {}
    for path in sorted(run.glob("*/metrics.jsonl")):
        stage, records = path.parent.name, read_metrics(path)
        columns = _table(records, "step")
        _write_csv(out / f"{stage}.csv", records, columns)
        xlabel = "generation" if stage == "controller" else "step"
        line_plot({c: _series(records, "step", c) for c in plotted_columns(stage, columns)},
                  out / f"{stage}.png", f"{stage}: {path.relative_to(run)}", xlabel,
                  "return" if stage == "controller" else "loss")
        rows[stage] = len(records)
    if history:
        _write_csv(out / "controller_history.csv", history, _table(history, "generation"))
        line_plot({"population mean": _series(history, "generation", "mean"),
                   "population best": _series(history, "generation", "best"),
                   "held-out (C at the mean)": _series(history, "generation", "eval")},
                  out / "controller_history.png", "controller: CMA-ES per generation",
                  "generation", "return")
        rows["controller_history"] = len(history)
    return rows


def _keep_previous_curves(previous: Path | None, tmp: Path, stages: Sequence[str],
                          curves: dict[str, int]) -> None:
    """The earlier export's ``curves/<stage>.csv|png`` of each stage in ``stages`` whose
    checkpoint it kept (:func:`_keep_previous`: the same file) and whose log the run lacks:
    a run made from an export (a continued campaign) holds V's and M's checkpoints, not
    their training logs, and re-exporting it must not drop their curves."""
    if previous is None:
        return
    try:
        recorded = json.loads((previous / MANIFEST).read_text(encoding="utf-8")).get("curves")
    except (OSError, ValueError):
        recorded = None
    for stage in stages:
        ours, theirs = (d / stage / CheckpointManager.BEST for d in (tmp, previous))
        csv_file = previous / CURVES / f"{stage}.csv"
        if stage in curves or not csv_file.is_file() or not theirs.is_file() \
                or not filecmp.cmp(ours, theirs, shallow=False):
            continue
        for suffix in (".csv", ".png"):
            if (previous / CURVES / f"{stage}{suffix}").is_file():
                shutil.copyfile(previous / CURVES / f"{stage}{suffix}",
                                tmp / CURVES / f"{stage}{suffix}")
        rows = (recorded or {}).get(stage)
        curves[stage] = int(rows) if isinstance(rows, int) else \
            max(0, len(csv_file.read_text(encoding="utf-8").splitlines()) - 1)


# ------------------------------------------------------------------------------ video


def _export_video(run: Path, path: Path, seed: int, max_steps: int,
                  progress: bool) -> dict[str, Any]:
    """One real episode of the exported agent, as ``scripts/watch.py`` shows it."""
    from worldmodels.run import load_agent
    from worldmodels.stages.watch import real_episode
    from worldmodels.utils.progress import progress_bar
    from worldmodels.utils.video import VideoWriter

    agent = load_agent(run, device="cpu")
    total = 0.0
    with torch.no_grad(), VideoWriter(path, fps=50.0) as writer, \
            progress_bar(progress, total=max_steps + 1, desc="video", unit="frame") as bar:
        for image, score in real_episode(agent, seed, max_steps, True, f"real seed {seed}"):
            writer.append(image)
            total = score
            bar.update(1)
    return {"file": path.name, "seed": seed, "frames": writer.frames, "steps": writer.frames - 1,
            "return": round(total, 3), "env": "CarRacing-v3 (worldmodels/FastCarRacing-v3)"}


# ------------------------------------------------------------------------------ manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _git(*args: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["git", "-C", str(repository_root()), *args], capture_output=True,
                           text=True, timeout=30)
        if r.returncode == 0:
            return r.stdout.strip()
    return None


def file_entries(directory: Path) -> list[dict[str, Any]]:
    """``{"path", "bytes", "sha256"}`` of every file under ``directory`` but the manifest,
    sorted by path (``/``-separated, relative)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return [{"path": p.relative_to(directory).as_posix(), "bytes": p.stat().st_size,
             "sha256": _sha256(p)} for p in files if p.relative_to(directory).as_posix()
            != MANIFEST]


# ------------------------------------------------------------------------------ directories


_TMP_DIR = re.compile(rf"{re.escape(TMP_MARK)}(\d+)(-old)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Directories a killed export left beside ``out``: its unfinished build, and the
    previous export it was replacing once the new one is in place."""
    for p in out.parent.glob(f"{out.name}{TMP_MARK}*"):
        match = _TMP_DIR.search(p.name)
        if match and p.is_dir() and not _alive(int(match.group(1))) \
                and (match.group(2) is None or out.is_dir()):
            shutil.rmtree(p, ignore_errors=True)


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing an existing ``out`` only now."""
    if out.exists():
        old = out.with_name(f"{out.name}{TMP_MARK}{os.getpid()}-old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    fsync_dir(out.parent)


# ------------------------------------------------------------------------------ export


def _export_es_state(run: Path, tmp: Path, vae_model: str) -> dict[str, Any]:
    """``controller/last.pt`` with its CMA-ES state (pickle-free tensors), for
    ``train_controller.py --run OUT`` to continue from: its world model identity is rewritten
    to the exported V and M (rounded to fp16: from here on C trains on those), the rest (ES
    state, RNG, history) is the trained run's, unchanged."""
    from worldmodels.run import CONTROLLER_KIND
    from worldmodels.stages.train_controller import _stage_identity
    from worldmodels.utils.io import atomic_path

    source = run / CONTROLLER_KIND / CheckpointManager.LAST
    if not source.exists():
        raise DataError(f"cannot export {run} resumably: no {source} (the CMA-ES state); "
                        "train C first or export without --resumable")
    ckpt = load_checkpoint(source, kind=CONTROLLER_KIND)
    extra = dict(ckpt.get("extra") or {})
    before = extra.get("world_model")
    extra["world_model"] = {"vae_model": vae_model,
                            "vae": _stage_identity(tmp, vae_model),
                            "mdnrnn": _stage_identity(tmp, "mdnrnn")}
    extra["exported_from"] = {"run": str(run), "world_model": before,
                              "note": "V and M rounded to fp16 at export; the CMA-ES state "
                                      "continues on them"}
    ckpt["extra"] = extra
    path = tmp / CONTROLLER_KIND / CheckpointManager.LAST
    with atomic_path(path) as part:
        torch.save(ckpt, part)
    for name in ("metrics.jsonl", "hparams.json"):
        if (run / CONTROLLER_KIND / name).exists():
            shutil.copyfile(run / CONTROLLER_KIND / name, tmp / CONTROLLER_KIND / name)
    return {"source": f"{CONTROLLER_KIND}/{CheckpointManager.LAST}", "kind": ckpt["kind"],
            "step": int(ckpt["step"]), "dtype": "float64 (CMA-ES state), float32 (C)",
            "dropped": ["optimizer", "scheduler"]}


def export_pretrained(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
                      = DEFAULT_OUT, *, video: bool = True, video_seed: int = 0,
                      video_max_steps: int = 1000, overwrite: bool = False,
                      progress: bool | None = False, resumable: bool = False
                      ) -> dict[str, Any]:
    """Write ``run_dir``'s V, M, C, config, training curves and a video to ``out_dir``
    (layout in the module docstring), atomically.

    :param video: play one real episode (``drive.mp4``) with the exported agent.
    :param video_seed: its track seed.
    :param video_max_steps: its length at most (1000: a whole CarRacing-v3 episode).
    :param overwrite: replace an existing ``out_dir`` (once the new export is complete).
    :param progress: one line per part and a bar for the video on stderr (None: on a
        terminal only).
    :param resumable: also ``controller/last.pt`` with the CMA-ES state (and C's log), so
        that ``train_controller.py --run OUT`` continues the run (on the fp16 V and M).
    :return: the manifest (as ``MANIFEST.json``) with ``out`` and ``bytes`` (the total).
    :raises DataError: a missing stage (naming the file and the script to run), V, M and C
        that do not fit together, an existing ``out_dir`` without ``overwrite``.
    """
    run, out = Path(run_dir), Path(out_dir)
    verbose = sys.stderr.isatty() if progress is None else bool(progress)

    def say(text: str) -> None:
        if verbose:
            print(text, file=sys.stderr, flush=True)

    if not run.is_dir():
        raise DataError(f"no run directory {run}: pass --run DIR, a run with a trained V, M "
                        "and controller")
    r, o = run.resolve(), out.resolve()
    if r == o or r in o.parents or o in r.parents:
        raise DataError(f"--out {out} and --run {run} overlap: export to another directory")
    if out.exists() and not (overwrite and out.is_dir()):
        what = "is not a directory" if not out.is_dir() else "already exists"
        raise DataError(f"{out} {what}: pass --overwrite to replace it, or choose another "
                        "--out")
    if video and video_max_steps < 1:
        raise DataError(f"video_max_steps must be >= 1, got {video_max_steps}")
    src = _sources(run)

    ensure_dir(out.parent)
    _remove_stale(out)
    tmp = tmp_path_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        say(f"V ({src['vae_model']}), M: fp16; C: fp32 <- {run}")
        previous = out if out.is_dir() else None  # the export this one replaces
        checkpoints = _export_checkpoints(src, run, tmp, previous)
        _verify(run, tmp)
        if resumable:
            say("C's CMA-ES state (resumable)")
            checkpoints["controller/last.pt"] = _export_es_state(run, tmp, src["vae_model"])
        shutil.copyfile(src["config"], tmp / "config.json")
        say("training curves")
        curves = _export_curves(run, _history(src["controller"]), tmp / CURVES)
        _keep_previous_curves(previous, tmp, (src["vae_model"], "mdnrnn"), curves)
        clip = None
        if video:
            say(f"video: one real episode, track seed {video_seed}")
            clip = _export_video(tmp, tmp / VIDEO, video_seed, video_max_steps, verbose)
        files = file_entries(tmp)
        manifest = {
            "format": _FORMAT, "format_version": 1,
            "source_run": str(r),
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": (None if (status := _git("status", "--porcelain",
                                                  "--untracked-files=no")) is None
                          else bool(status)),
            "worldmodels_version": worldmodels.__version__, "torch_version": str(torch.__version__),
            "vae_model": src["vae_model"], "checkpoints": checkpoints,
            "curves": curves, "video": clip, "files": files, "resumable": resumable,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _put_in_place(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorldModelsError(describe_os_error(e, e.filename or tmp)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(f["bytes"] for f in files) + (out / MANIFEST).stat().st_size
    say(f"{out}: {len(files) + 1} files, {total / 1e6:.1f} MB")
    return {**manifest, "out": str(out), "bytes": total}

