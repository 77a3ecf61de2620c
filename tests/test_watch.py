"""scripts/watch.py and worldmodels.utils.video: watching the agent in the real environment
and in M's dream (Ha & Schmidhuber 2018, arXiv:1803.10122), as mp4 or gif files.

The run has random V and M and an untrained controller saved as train_controller.py saves
it; episodes are cut at a few steps. Videos are read back to count their frames.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import run_script

from worldmodels.control.controller import Controller
from worldmodels.errors import WorldModelsError
from worldmodels.run import save_random_world_model
from worldmodels.utils.checkpoint import save_checkpoint
from worldmodels.utils.video import VideoWriter, annotate, panels, write_video

H = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = save_random_world_model(tmp_path_factory.mktemp("watch"), hidden_dim=H, seed=3)
    c = Controller(latent_dim=32, hidden_dim=H)
    save_checkpoint(run / "controller" / "best.pt", kind="controller", model=c,
                    model_config=c.hparams, step=0, extra={"vae_model": "vae"})
    return run


def mp4_frames(path: Path) -> np.ndarray:
    """Every frame of an mp4, decoded by imageio's ffmpeg plugin: (N, H, W, 3)."""
    return iio.imread(path, index=None, plugin="FFMPEG")


# ------------------------------------------------------------------------------ video files


def test_mp4_and_gif_round_trip(tmp_path):
    frames = [np.full((40, 50, 3), 20 * k, np.uint8) for k in range(6)]
    mp4 = write_video(tmp_path / "a.mp4", frames, fps=25)
    back = mp4_frames(mp4)
    assert len(back) == 6 and back[0].shape == (48, 64, 3)  # padded to multiples of 16
    assert abs(int(back[3][:40, :50].mean()) - 60) <= 3
    gif = write_video(tmp_path / "a.gif", frames, fps=25)
    assert iio.imread(gif, index=None).shape == (6, 40, 50, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "a.mp4"]  # no temp files


def test_a_failed_video_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "b.mp4") as video:
        video.append(np.zeros((32, 32, 3), np.uint8))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WorldModelsError, match=".mp4 or .gif"):
        VideoWriter(tmp_path / "c.avi")


def test_overlay_and_panels_shapes():
    image = panels([np.zeros((96, 96, 3), np.uint8), np.zeros((64, 64, 3), np.uint8), None],
                   ["real", "V", "M"], size=192)
    assert image.shape == (192, 576, 3)
    assert (image[100:, 400:] == 64).all()  # no prediction yet: a grey panel
    out = annotate(image, ["step 3", "score 1.0"])
    assert out.shape == (224, 576, 3) and out[:32].max() > 0  # the text is drawn


# ------------------------------------------------------------------------------ the script


def test_help():
    r = run_script("watch.py", "--help", timeout=60)
    assert r.returncode == 0 and "--env" in r.stdout and "--save" in r.stdout


def test_missing_run_is_one_line_exit_2(tmp_path):
    r = run_script("watch.py", "--run", tmp_path / "nope", timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no run directory" in r.stderr


def test_missing_controller_names_the_fix(tmp_path):
    run = save_random_world_model(tmp_path / "run", hidden_dim=H)
    r = run_script("watch.py", "--run", run, timeout=60)
    assert r.returncode == 2 and "--controller random" in r.stderr


def test_real_side_by_side_mp4(run, tmp_path):
    out = tmp_path / "real.mp4"
    r = run_script("watch.py", "--run", run, "--env", "real", "--max-steps", 4, "--save", out,
                   "--seed", 3, timeout=120)
    assert r.returncode == 0, r.stderr
    frames = mp4_frames(out)
    assert len(frames) == 5  # the reset frame + 4 steps
    assert frames[0].shape == (224, 576, 3)  # header + real | V | M panels


def test_stills_picture_picks_evenly_spread_kept_frames():
    from worldmodels.stages.watch import stills_picture

    kept = [(i, np.full((4, 6, 3), i, np.uint8)) for i in range(0, 31, 5)]  # steps 0..30
    picture = stills_picture(kept)
    assert picture.shape == (3 * 4 + 2 * 8, 2 * 6 + 8, 3)
    tiles = [picture[r * 12:r * 12 + 4, c * 14:c * 14 + 6] for r in range(3) for c in range(2)]
    # targets 2.5, 7.5, ..., 27.5; a tie goes to the earlier frame
    assert [int(t[0, 0, 0]) for t in tiles] == [0, 5, 10, 15, 20, 25]
    assert (picture[4:12] == 255).all() and (picture[:, 6:14] == 255).all()  # the gaps
    with pytest.raises(WorldModelsError, match="no frames"):
        stills_picture([])


def test_real_stills_next_to_the_video(run, tmp_path):
    """--stills: six composed frames of the first episode in 3 rows of 2, each (up to the
    video's lossy coding) the video's frame at that step."""
    out, png = tmp_path / "real.mp4", tmp_path / "stills.png"
    r = run_script("watch.py", "--run", run, "--env", "real", "--max-steps", 30, "--save", out,
                   "--stills", png, "--seed", 3, timeout=180)
    assert r.returncode == 0, r.stderr
    assert str(png) in r.stdout
    frames = mp4_frames(out)
    picture = iio.imread(png)[..., :3]
    h, w = frames[0].shape[:2]
    assert picture.shape == (3 * h + 2 * 8, 2 * w + 8, 3)
    tiles = [picture[r * (h + 8):r * (h + 8) + h, c * (w + 8):c * (w + 8) + w]
             for r in range(3) for c in range(2)]
    for tile, step in zip(tiles, (0, 5, 10, 15, 20, 25)):
        err = np.abs(tile.astype(int) - frames[step].astype(int)).mean()
        assert err < 6, (step, err)


def test_stills_must_be_png(run, tmp_path):
    r = run_script("watch.py", "--run", run, "--max-steps", 2, "--save", tmp_path / "a.mp4",
                   "--stills", tmp_path / "a.jpg", timeout=60)
    assert r.returncode == 2 and "must end in .png" in r.stderr


def test_dream_gif_two_episodes(run, tmp_path):
    out = tmp_path / "dream.gif"
    r = run_script("watch.py", "--run", run, "--env", "dream", "--episodes", 2, "--tau", 0.5,
                   "--max-steps", 3, "--save", out, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "episode 2 (seed 1)" in r.stdout
    frames = iio.imread(out, index=None)
    assert frames.shape[1:] == (416, 384, 3)
    assert 2 <= len(frames) <= 8  # each episode: reset frame + up to 3 steps (M may end it)


def _run_with_controller(path: Path) -> Path:
    run = save_random_world_model(path, hidden_dim=H, seed=3)
    c = Controller(latent_dim=32, hidden_dim=H)
    save_checkpoint(run / "controller" / "best.pt", kind="controller", model=c,
                    model_config=c.hparams, step=0, extra={"vae_model": "vae"})
    return run


def test_without_save_never_writes_into_an_exported_run(tmp_path, monkeypatch, capsys):
    """No display, no --save: a run you trained gets <run>/videos/; an exported run (its
    MANIFEST.json lists every file; the shipped pretrained/carracing is git-tracked) is left
    as it was and the video goes to ./runs/watch/."""
    from helpers import ROOT

    from worldmodels.stages.watch import default_video, main

    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # no display
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    exported = _run_with_controller(tmp_path / "exported")
    (exported / "MANIFEST.json").write_text("{}")
    before = sorted(p.relative_to(exported) for p in exported.rglob("*"))
    assert main(["--run", str(exported), "--max-steps", "2", "--no-side-by-side"]) == 0
    assert sorted(p.relative_to(exported) for p in exported.rglob("*")) == before
    video = cwd / "runs" / "watch" / "exported_real_seed0.mp4"
    assert len(mp4_frames(video)) == 3 and f"writing {Path('runs/watch')}" in capsys.readouterr().err

    trained = _run_with_controller(tmp_path / "trained")
    assert main(["--run", str(trained), "--max-steps", "2", "--no-side-by-side",
                 "--seed", "4"]) == 0
    assert len(mp4_frames(trained / "videos" / "watch_real_seed4.mp4")) == 3

    shipped = ROOT / "pretrained" / "carracing"
    if (shipped / "MANIFEST.json").exists():
        assert shipped.resolve() not in default_video(shipped, "real", 0).resolve().parents


def test_help_descriptions_are_whole_sentences(capsys):
    from worldmodels.stages.watch import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "inside M's dream (Ha & Schmidhuber 2018, arXiv:1803.10122)." in out
    assert "runs/watch/" in out  # where a video goes without --save
