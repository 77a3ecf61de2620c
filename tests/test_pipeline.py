"""The whole pipeline in one call (worldmodels.stages.pipeline.run_pipeline, scripts/pipeline.py).

Ha & Schmidhuber (2018, arXiv:1803.10122), section 3's procedure end to end -- collect, V,
encode, M, C, evaluation on held-out tracks beside the zero and a random controller, a
video -- at a scale far below the smoke preset; a second call finds every stage complete.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers import run_script
from worldmodels.config import apply_dict, load_config, validate
from worldmodels.stages.pipeline import STAGES, run_pipeline

TINY = {
    "collect": {"episodes": 6, "max_steps": 100, "workers": 1},
    "vae": {"max_steps": 20, "batch_size": 16, "log_every": 10},
    "encode": {"workers": 0},
    "mdnrnn": {"seq_len": 40, "batch_size": 4, "steps": 50, "eval_every": 50,
               "log_every": 10},
    "controller": {"population": 4, "trials": 1, "generations": 2, "max_steps": 100,
                   "eval_every": 1, "eval_episodes": 2, "workers": 1},
}


def tiny_config():
    return validate(apply_dict(load_config("smoke"), TINY, "test"))


@pytest.mark.slow
def test_pipeline_runs_end_to_end_then_skips_every_stage(tmp_path):
    run = tmp_path / "run"
    first = run_pipeline(tiny_config(), run, progress=False, episodes=2, max_steps=100)
    assert [r["stage"] for r in first["rows"]] == list(STAGES)
    assert all(r["status"] == "ran" for r in first["rows"]), first["rows"]
    assert (run / "videos" / "pipeline.mp4").stat().st_size > 0
    summary = json.loads((run / "pipeline" / "summary.json").read_text())
    assert len(summary["evaluation"]["returns"]) == 2
    assert set(summary["baselines"]) == {"zero", "random"}
    assert "zero C" in (run / "pipeline" / "summary.txt").read_text()
    assert first["summaries"]["controller"]["generations"] == 2
    import torch

    assert torch.is_grad_enabled(), "the pipeline switched autograd off for its caller"

    t0 = time.perf_counter()
    second = run_pipeline(tiny_config(), run, progress=False, episodes=2, max_steps=100)
    assert time.perf_counter() - t0 < 15
    assert all(r["status"] == "skipped" for r in second["rows"]), second["rows"]
    assert second["evaluation"] == first["evaluation"]
    assert second["baselines"] == first["baselines"]


def test_pipeline_script_help():
    r = run_script("pipeline.py", "--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--preset" in r.stdout and "--episodes" in r.stdout

