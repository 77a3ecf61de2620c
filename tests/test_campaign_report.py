"""The campaign's report: held-out scores read from C's checkpoint history, the figure."""

import pytest
from helpers import run_script

from worldmodels.control.controller import Controller
from worldmodels.errors import DataError
from worldmodels.metrics.campaign import Series, campaign_figure, held_out_curve
from worldmodels.utils.checkpoint import save_checkpoint


def controller_run(tmp_path, history, name="run"):
    run = tmp_path / name
    c = Controller(latent_dim=4, hidden_dim=2)
    save_checkpoint(run / "controller" / "last.pt", kind="controller", model=c,
                    model_config=c.hparams, step=len(history), extra={"history": history})
    return run


HISTORY = [
    {"generation": 0, "eval": -50.0, "env_frames": 16000},
    {"generation": 1, "eval": None, "env_frames": 40000, "seconds": 10.0},
    {"generation": 2, "eval": 120.5, "env_frames": 90000, "seconds": 12.0},
    {"generation": 3, "env_frames": 130000, "seconds": 11.0},
]


def test_curve_keeps_the_scored_generations_with_cumulative_time(tmp_path):
    curve = held_out_curve(controller_run(tmp_path, HISTORY))
    assert [c["generation"] for c in curve] == [0, 2]
    assert [c["eval"] for c in curve] == [-50.0, 120.5]
    assert [c["env_frames"] for c in curve] == [16000, 90000]
    assert [c["seconds"] for c in curve] == [0.0, 22.0]


def test_figure_and_script(tmp_path):
    run = controller_run(tmp_path, HISTORY)
    out = campaign_figure([Series("a", run), Series("b", run, 1e6)], tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    r = run_script("plot_campaign.py", "--run", f"{run}:ours:2e6", "--out",
                   str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    assert "| ours | 2 | 120.5 | 2.09M |" in r.stdout and (tmp_path / "g.png").is_file()


def test_bad_runs_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="train C first"):
        held_out_curve(tmp_path)
    with pytest.raises(DataError, match="no held-out scores yet"):
        held_out_curve(controller_run(tmp_path, [{"generation": 1, "env_frames": 5}], "x"))
    with pytest.raises(DataError, match="offset must be a number"):
        Series.parse("runs/a:label:many")
    assert Series.parse("runs/a").label == "a" and Series.parse("d:l:3e6").offset == 3e6
    r = run_script("plot_campaign.py", "--run", str(tmp_path / "none"), "--out",
                   str(tmp_path / "h.png"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "train C first" in r.stderr
