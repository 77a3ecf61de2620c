"""The pretrained export (worldmodels.stages.export, scripts/export_pretrained.py), the plots it
draws (worldmodels.utils.plots) and the default run of evaluate.py and watch.py
(worldmodels.pretrained).

The source run: random V and M (``save_random_world_model``, M's checkpoint re-saved with
the V identity and training settings ``train_mdnrnn`` records), a C from two tiny CMA-ES
generations (``train_controller``, which also writes ``config.json`` and C's metrics), and
V's and M's ``metrics.jsonl`` written by :class:`RunLogger`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import runpy
import shutil
import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from helpers import ROOT, SCRIPTS, run_script

import worldmodels.pretrained as pretrained
from worldmodels.config import load_config
from worldmodels.errors import DataError, WorldModelsError
from worldmodels.run import (
    load_controller,
    load_dream,
    load_encoder,
    load_mdnrnn,
    load_vae,
    load_world_model,
    mdnrnn_info,
    save_random_world_model,
)
from worldmodels.stages.export import export_pretrained
from worldmodels.stages.train_controller import train_controller
from worldmodels.utils.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.utils.logs import RunLogger, read_metrics
from worldmodels.utils.plots import BACKGROUND, COLORS, line_plot

H = 32
TINY = {"population": 4, "trials": 1, "generations": 2, "max_steps": 15, "eval_every": 1,
        "eval_episodes": 1, "workers": 1, "seed": 3}
TEMPERATURE = 1.15


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    run = save_random_world_model(tmp_path_factory.mktemp("src") / "run", hidden_dim=H, seed=4)
    # M as train_mdnrnn records it: the identity of the V whose latents it read, its settings
    m = load_checkpoint(run / "mdnrnn" / "best.pt")
    net = load_mdnrnn(run)
    save_checkpoint(run / "mdnrnn" / "best.pt", kind="mdnrnn", model=net,
                    model_config=m["model_config"], step=7, metrics={"val/loss": 1.5},
                    extra={"vae": load_encoder(run, "vae")[1], "train": {"temperature":
                                                                         TEMPERATURE}})
    for stage, columns in (("vae", ("recon", "kl")), ("mdnrnn", ("nll", "reward_mse"))):
        with RunLogger(run, stage) as log:
            for step in range(1, 7):
                log.log(step, {f"losses/{c}": 10.0 / step + k for k, c in enumerate(columns)},
                        **({"charts/lr": 1e-3} if step % 2 else {}))
                if step % 3 == 0:  # validation, and a NaN (logged as null)
                    log.log(step, {"val/loss": 5.0 / step, "val/nll": math.nan})
    train_controller(load_config(overrides={"controller": TINY}), run, progress=False)
    return run


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "pretrained" / "carracing"
    result = export_pretrained(source, out, video=False)
    return out, result


def tree(directory):
    """{relative path: (bytes, mtime_ns)} of every file under ``directory``."""
    return {p.relative_to(directory).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line_exit_2(r):
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ checkpoints


def test_v_and_m_are_fp16_and_c_fp32_with_what_the_loaders_need(source, exported):
    out, result = exported
    for stage, dtype in (("vae", torch.float16), ("mdnrnn", torch.float16),
                         ("controller", torch.float32)):
        src = load_checkpoint(next((source / stage / n) for n in ("best.pt", "last.pt")
                                   if (source / stage / n).exists()))
        ckpt = load_checkpoint(out / stage / "best.pt", kind=src["kind"])
        floats = {t.dtype for t in ckpt["state_dict"].values() if t.is_floating_point()}
        assert floats == {dtype}, stage
        assert ckpt["state_dict"].keys() == src["state_dict"].keys()
        for key in ("kind", "step", "epoch", "model_config", "metrics"):
            assert ckpt[key] == src[key], (stage, key)
        assert ckpt["optimizer"] is None and ckpt["scheduler"] is None and ckpt["rng"] is None
        assert result["checkpoints"][f"{stage}/best.pt"]["dtype"] == str(dtype)[6:]
    c_src = load_checkpoint(load_controller(source)[1]["path"])
    c = load_checkpoint(out / "controller" / "best.pt")
    assert "es" in c_src["extra"] and "es" not in c["extra"]  # CMA-ES state: training only
    assert c["extra"]["history"] == c_src["extra"]["history"] and len(c["extra"]["history"]) >= 2
    assert c["extra"]["vae_model"] == "vae" and c["extra"]["train"] == c_src["extra"]["train"]
    assert "extra.es" in result["checkpoints"]["controller/best.pt"]["dropped"]
    assert not list(out.glob("*/last.pt"))


def test_loaded_v_and_m_match_the_trained_ones_to_fp16_rounding_and_c_exactly(source, exported):
    out, _ = exported
    torch.manual_seed(0)
    v0, v1 = load_vae(source, "vae"), load_vae(out, "vae")
    assert all(p.dtype == torch.float32 for p in v1.parameters())  # cast back on load
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        (mu0, _), (mu1, _) = v0.encode(x), v1.encode(x)
        y0, y1 = v0.decode(mu0), v1.decode(mu0)
    for a, b in ((mu0, mu1), (y0, y1)):
        assert not torch.equal(a, b)  # the weights really were rounded
        assert torch.allclose(a, b, rtol=1e-2, atol=2e-3 * float(a.abs().max()))

    m0, m1 = load_mdnrnn(source), load_mdnrnn(out)
    assert all(p.dtype == torch.float32 for p in m1.parameters())
    z, a = torch.randn(2, 5, 32), torch.rand(2, 5, 3)
    with torch.no_grad():
        o0, o1 = m0(z, a), m1(z, a)
    for name in ("mu", "logsigma", "logpi", "reward"):
        t0, t1 = getattr(o0, name), getattr(o1, name)
        assert not torch.equal(t0, t1), name
        assert torch.allclose(t0, t1, rtol=1e-2, atol=5e-3 * float(t0.abs().max())), name

    c0, c1 = load_controller(source)[0], load_controller(out)[0]
    assert c0.get_flat().tobytes() == c1.get_flat().tobytes()
    zh = torch.randn(3, 32), torch.randn(3, H)
    assert torch.equal(c0(*zh), c1(*zh))


def test_the_loaders_evaluation_and_dream_work_on_the_export(source, exported):
    from worldmodels.stages.evaluate import evaluate

    out, result = exported
    vae, mdnrnn, vae_model = load_world_model(out)
    assert vae_model == "vae" == result["vae_model"] and mdnrnn.hidden_dim == H
    info = mdnrnn_info(out)
    assert info["vae_model"] == "vae" and info["temperature"] == TEMPERATURE and info["step"] == 7
    r = evaluate(out, 1, 0, workers=1, max_steps=10)
    assert r["episodes"] == 1 and len(r["returns"]) == 1
    assert r["generation"] == load_controller(source)[1]["step"]
    dream = load_dream(out, batch_size=2, device="cpu", start="env", start_tracks=1)
    obs = dream.reset(seed=0)
    assert obs.shape == (2, 32 + H) and dream.temperature == TEMPERATURE
    dream.step(torch.zeros(2, 3))


def test_m_records_the_exported_vs_identity(source, exported):
    out, _ = exported
    trained = load_encoder(source, "vae")[1]
    shipped = load_encoder(out, "vae")[1]  # the identity a latents file of the export gets
    recorded = mdnrnn_info(out)["vae"]
    assert recorded["sha256"] == shipped["sha256"] != trained["sha256"]
    assert recorded["source"]["sha256"] == trained["sha256"] == mdnrnn_info(source)["vae"]["sha256"]
    assert recorded["step"] == trained["step"] and recorded["checkpoint"] == "best.pt"


def test_m_trained_on_another_v_is_refused(source, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("tb"))
    m = load_checkpoint(run / "mdnrnn" / "best.pt")
    m["extra"]["vae"]["sha256"] = "0" * 64
    torch.save(m, run / "mdnrnn" / "best.pt")
    with pytest.raises(DataError, match="M was trained on the latents of another V"):
        export_pretrained(run, tmp_path / "out", video=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_the_v_m_was_trained_on_is_exported_betavae_too(source, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("tb", "last.pt"))
    (run / "vae").rename(run / "betavae")
    for path, patch in ((run / "betavae" / "best.pt", lambda c: c["model_config"].update(
                            model="betavae")),
                        (run / "mdnrnn" / "best.pt", lambda c: c["extra"]["vae"].update(
                            model="betavae")),
                        (run / "controller" / "best.pt", lambda c: c["extra"].update(
                            vae_model="betavae"))):
        ckpt = load_checkpoint(path)
        patch(ckpt)
        torch.save(ckpt, path)
    out = tmp_path / "out"
    assert export_pretrained(run, out, video=False)["vae_model"] == "betavae"
    assert (out / "betavae" / "best.pt").exists() and not (out / "vae").exists()
    assert load_world_model(out)[2] == "betavae" == mdnrnn_info(out)["vae"]["model"]


# ------------------------------------------------------------------------------ files


def test_curves_are_the_jsonl_as_csv_and_pngs_of_the_requested_size(source, exported):
    out, result = exported
    stages = sorted(p.parent.name for p in source.glob("*/metrics.jsonl"))
    assert stages == ["controller", "mdnrnn", "vae"]
    for stage in stages:
        records = read_metrics(source / stage / "metrics.jsonl")
        with open(out / "curves" / f"{stage}.csv", newline="") as f:
            rows = list(csv.reader(f))
        header, rows = rows[0], rows[1:]
        keys = list(dict.fromkeys(k for r in records for k in r))
        assert header == ["step"] + [k for k in keys if k != "step"]
        assert len(rows) == len(records) == result["curves"][stage]
        for record, row in zip(records, rows):
            for column, cell in zip(header, row):
                value = record.get(column)
                assert cell == "" if value is None else float(cell) == value, (stage, column)
    history = load_checkpoint(source / "controller" / "last.pt")["extra"]["history"]
    assert len(history) == TINY["generations"] + 1  # the whole run, not best.pt's part
    with open(out / "curves" / "controller_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(history) and list(rows[0])[0] == "generation"
    assert [float(r["eval"]) for r in rows] == [h["eval"] for h in history]
    assert [r["mean"] for r in rows][0] == ""  # generation 0: the held-out baseline only
    pngs = sorted(p.name for p in (out / "curves").glob("*.png"))
    assert pngs == ["controller.png", "controller_history.png", "mdnrnn.png", "vae.png"]
    for name in pngs:
        image = iio.imread(out / "curves" / name)
        assert image.shape[:2] == (450, 800) and image.dtype == np.uint8
        assert (image[..., :3] != BACKGROUND).any(axis=-1).mean() > 0.01


def test_the_manifest_lists_every_file_with_its_size_and_hash(source, exported):
    out, result = exported
    manifest = json.loads((out / "MANIFEST.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(files) == on_disk - {"MANIFEST.json"}
    assert {"config.json", "vae/best.pt", "mdnrnn/best.pt", "controller/best.pt"} <= set(files)
    for path, entry in files.items():
        data = (out / path).read_bytes()
        assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert (out / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert manifest["source_run"] == str(source.resolve()) and manifest["exported"]
    assert manifest["git_commit"] is None or len(manifest["git_commit"]) == 40
    assert manifest["video"] is None and not (out / "drive.mp4").exists()
    assert result["bytes"] == sum(f["bytes"] for f in files.values()) + len(
        (out / "MANIFEST.json").read_bytes())


# ------------------------------------------------------------------------------ refusals


def test_an_existing_out_is_refused_untouched_and_replaced_with_overwrite(source, exported,
                                                                          tmp_path):
    out = tmp_path / "carracing"
    shutil.copytree(exported[0], out)
    before = tree(out)
    r = run_script("export_pretrained.py", "--run", source, "--out", out, "--no-video",
                   timeout=120)
    one_line_exit_2(r)
    assert "already exists" in r.stderr and "--overwrite" in r.stderr
    assert tree(out) == before
    (out / "stale.txt").write_text("from an older export")
    result = export_pretrained(source, out, video=False, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "MANIFEST.json").exists()
    assert result["files"] == json.loads((out / "MANIFEST.json").read_text())["files"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carracing"]  # no temp dir left


@pytest.mark.parametrize("stage,script", [("controller", "train_controller.py"),
                                          ("vae", "train_vae.py")])
def test_a_missing_stage_is_one_line_and_leaves_nothing(source, tmp_path, stage, script):
    run = tmp_path / "run"
    run.mkdir()
    for p in source.iterdir():
        if p.name != stage:
            (run / p.name).symlink_to(p)
    out = tmp_path / "pretrained" / "carracing"
    r = run_script("export_pretrained.py", "--run", run, "--out", out, timeout=120)
    one_line_exit_2(r)
    assert f"{run / stage / 'best.pt'}" in r.stderr and f"scripts/{script}" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("pretrained/*"))


def test_a_resumable_export_continues_the_cma_es_run(source, tmp_path):
    out = tmp_path / "campaign"
    result = export_pretrained(source, out, video=False, resumable=True)
    assert result["resumable"] and "controller/last.pt" in result["checkpoints"]
    last = torch.load(out / "controller" / "last.pt", weights_only=True)  # no pickle payload
    trained = load_checkpoint(source / "controller" / "last.pt")
    assert last["extra"]["history"] == trained["extra"]["history"]
    assert last["extra"]["world_model"]["mdnrnn"]["step"] == 7
    assert last["extra"]["exported_from"]["world_model"] == trained["extra"]["world_model"]
    # continuing on the export: generation 3 after the source's 2, its history kept
    cfg = load_config(overrides={"controller": {**TINY, "generations": 3}})
    s = train_controller(cfg, out, progress=False)
    assert s["generations"] == 3
    history = load_checkpoint(out / "controller" / "last.pt")["extra"]["history"]
    assert [h["generation"] for h in history] == [0, 1, 2, 3]  # 0: the held-out start
    assert history[:3] == trained["extra"]["history"]
    # without --resumable there is no ES state to continue from: a fresh run would start
    plain = tmp_path / "plain"
    export_pretrained(source, plain, video=False)
    assert not (plain / "controller" / "last.pt").exists()


def test_re_exporting_a_continued_run_keeps_v_and_m_byte_for_byte(source, tmp_path):
    """The campaign's cycle: export resumable, continue C on the export's V and M, export
    again over the first: V's and M's files are the first export's (only their creation
    time would have changed), C's are new, and the result continues again."""
    out = tmp_path / "carracing"
    export_pretrained(source, out, video=False, resumable=True)
    first = {stage: (out / stage / "best.pt").read_bytes() for stage in ("vae", "mdnrnn")}
    curves = {f: (out / "curves" / f).read_bytes() for f in ("vae.csv", "vae.png",
                                                              "mdnrnn.csv", "mdnrnn.png")}
    rows = json.loads((out / "MANIFEST.json").read_text())["curves"]
    c_first = (out / "controller" / "best.pt").read_bytes()
    c_first_path = tmp_path / "c_first.pt"
    c_first_path.write_bytes(c_first)
    run = tmp_path / "campaign"
    shutil.copytree(out, run)
    train_controller(load_config(overrides={"controller": {**TINY, "generations": 3}}), run,
                     progress=False)
    export_pretrained(run, out, video=False, resumable=True, overwrite=True)
    for stage, data in first.items():
        assert (out / stage / "best.pt").read_bytes() == data, stage
    # the continued run holds V's and M's checkpoints, not their logs: their curves stay
    for name, data in curves.items():
        assert (out / "curves" / name).read_bytes() == data, name
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["curves"]["vae"] == rows["vae"] > 0
    assert manifest["curves"]["mdnrnn"] == rows["mdnrnn"] > 0
    assert "curves/vae.csv" in {f["path"] for f in manifest["files"]}
    assert load_checkpoint(out / "controller" / "last.pt")["step"] == 3
    # C is the continued run's (its file the first export's if its best did not move)
    from worldmodels.run import load_controller

    assert np.array_equal(load_controller(out)[0].get_flat(), load_controller(run)[0].get_flat())
    same_c = load_checkpoint(run / "controller" / "best.pt")["step"] == \
        torch.load(c_first_path, weights_only=True)["step"]
    assert ((out / "controller" / "best.pt").read_bytes() == c_first) == same_c
    s = train_controller(load_config(overrides={"controller": {**TINY, "generations": 4}}),
                         out, progress=False)  # V and M are those C was trained on
    assert s["generations"] == 4


def test_a_changed_checkpoint_is_written_anew(tmp_path):
    """Only a checkpoint equal in everything but its creation time is kept."""
    from torch import nn

    from worldmodels.stages.export import _keep_previous

    net = nn.Linear(3, 2)
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    save_checkpoint(old, kind="vae", model=net, model_config={"n": 3}, step=5)
    save_checkpoint(new, kind="vae", model=net, model_config={"n": 3}, step=5)
    assert old.read_bytes() != new.read_bytes()  # the creation time
    assert _keep_previous(new, old) and new.read_bytes() == old.read_bytes()
    for change in ({"step": 6}, {"model_config": {"n": 4}}):
        save_checkpoint(new, kind="vae", model=net, **{"model_config": {"n": 3}, "step": 5,
                                                        **change})
        assert not _keep_previous(new, old) and new.read_bytes() != old.read_bytes()
    with torch.no_grad():
        net.weight[0, 0] += 1e-3
    save_checkpoint(new, kind="vae", model=net, model_config={"n": 3}, step=5)
    assert not _keep_previous(new, old)
    assert not _keep_previous(new, tmp_path / "none.pt")


def test_video_is_one_real_episode_side_by_side(source, tmp_path):
    out = tmp_path / "carracing"
    result = export_pretrained(source, out, video=True, video_seed=2, video_max_steps=4)
    frames = iio.imread(out / "drive.mp4", index=None, plugin="FFMPEG")
    assert frames.shape == (5, 224, 576, 3)  # reset frame + 4 steps; real | V | M panels
    assert result["video"]["seed"] == 2 and result["video"]["steps"] == 4
    assert "drive.mp4" in {f["path"] for f in result["files"]}


def test_help(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["export_pretrained.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPTS / "export_pretrained.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage:")
    assert all(flag in out for flag in ("--run", "--out", "--no-video", "--video-seed",
                                        "--overwrite", "pretrained/carracing"))
    # the description is the docstring's whole first sentence, not its first line
    assert ("git-friendly pretrained directory (what evaluate.py and watch.py use without "
            "--run).") in " ".join(out.split())


# ------------------------------------------------------------------------------ plots


def test_line_plot_draws_the_lines_where_they_are(tmp_path):
    xs = np.arange(50)
    path = line_plot({"rising": (xs, 2.0 * xs), "falling": (xs, [None if 20 <= x < 25 else
                                                                 98.0 - 2 * x for x in xs])},
                     tmp_path / "p.png", "title", "x", "y", width=640, height=360)
    image = iio.imread(path)[..., :3].astype(int)
    assert image.shape == (360, 640, 3)
    rows, cols = np.nonzero((image == 0).all(-1))  # pure black: only the axes' frame
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    assert right - left > 400 and bottom - top > 200
    mid_row, mid_col = (top + bottom) / 2, (left + right) / 2

    def pixels(k):  # the series' pixels in the middle half of the columns (no legend there)
        r, c = np.nonzero(np.abs(image - COLORS[k]).sum(-1) < 40)
        keep = np.abs(c - mid_col) < (right - left) / 4
        return r[keep], c[keep]

    r, c = pixels(0)  # rising: through the centre, up (smaller rows) to the right
    assert len(r) > 200 and np.corrcoef(r, c)[0, 1] < -0.99
    assert abs(np.mean(r[np.abs(c - mid_col) < 3]) - mid_row) < 3
    r, c = pixels(1)  # falling, with a gap where its values are missing (x = 20 .. 24)
    assert len(r) > 100 and np.corrcoef(r, c)[0, 1] > 0.99
    x = (c - left) / (right - left) * 49
    assert not ((x > 20.3) & (x < 23.7)).any() and (x < 19.5).any() and (x > 25).any()


def test_line_plot_needs_neither_pygame_nor_pyplot(tmp_path, monkeypatch):
    """matplotlib's Agg canvas, no pygame fonts (a pygame.quit() elsewhere once left them
    stale and broke the suite) and no pyplot (no global state, no backend switch)."""
    for name in ("pygame", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it would now fail
    image = iio.imread(line_plot({"a": ([0, 1, 2], [0, 1, 0.5])}, tmp_path / "a.png", "t",
                                 "x", "y"))
    assert image.shape[:2] == (450, 800)
    assert (np.abs(image[..., :3].astype(int) - COLORS[0]).sum(-1) < 40).sum() > 300


def test_line_plot_marks_isolated_points_and_rejects_mismatched_series(tmp_path):
    image = iio.imread(line_plot({"dots": ([0, 1, 2, 3, 4], [1, None, 2, float("nan"), 3])},
                                 tmp_path / "d.png"))[..., :3].astype(int)
    drawn = np.abs(image - COLORS[0]).sum(-1) < 40
    assert 3 * 10 < drawn.sum() < 3 * 200  # three dots, no lines between them
    with pytest.raises(ValueError, match="as many x as y"):
        line_plot({"bad": ([0, 1], [0])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_line_plot_of_nothing_is_an_empty_frame(tmp_path):
    image = iio.imread(line_plot({"none": ([], [])}, tmp_path / "e.png"))
    assert image.shape[:2] == (450, 800)


# ------------------------------------------------------------------------------ default run


def test_the_default_run_is_found_in_the_repository_root(tmp_path, monkeypatch, capsys):
    assert pretrained.repository_root() == ROOT
    monkeypatch.chdir(tmp_path)
    shipped = ROOT / "pretrained" / "carracing"
    if shipped.is_dir():
        assert pretrained.resolve_run(pretrained.DEFAULT_RUN) == shipped
    else:  # the clear error, naming where it was looked for
        with pytest.raises(DataError, match=f"no run directory {shipped} \\(the shipped"):
            pretrained.resolve_run(pretrained.DEFAULT_RUN)

    # a repository root with the shipped run (here without a controller) and another cwd
    repo = tmp_path / "repo"
    (repo / "pretrained" / "carracing").mkdir(parents=True)
    monkeypatch.setattr(pretrained, "repository_root", lambda: repo)
    expected = repo / "pretrained" / "carracing"
    assert pretrained.resolve_run("pretrained/carracing") == expected
    with pytest.raises(WorldModelsError, match=f"no trained controller in {expected}"):
        from worldmodels.stages.watch import main as watch_main

        watch_main([])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # evaluate.py sets them; restored after the test
    monkeypatch.setattr("sys.argv", ["evaluate.py", "--episodes", "1"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPTS / "evaluate.py"), run_name="__main__")
    assert exit_.value.code == 2
    assert f"no trained controller in {expected / 'controller'}" in capsys.readouterr().err

    # the current directory's own pretrained/carracing comes first; other paths as given
    (tmp_path / "pretrained" / "carracing").mkdir(parents=True)
    assert pretrained.resolve_run("pretrained/carracing").resolve() == (
        tmp_path / "pretrained" / "carracing")
    with pytest.raises(DataError, match="no run directory elsewhere: pass --run"):
        pretrained.resolve_run("elsewhere")
