"""The README's commands work as written (the main job runs on the shipped default,
CI runs the README's test command, and the Python examples run)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import ROOT

from worldmodels.utils.checkpoint import load_checkpoint

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def _bash_lines(prefix: str) -> list[str]:
    return [line.strip() for lang, body in BLOCKS if lang == "bash"
            for line in body.splitlines() if line.strip().startswith(prefix)]


def test_ci_runs_the_readme_test_command():
    (test_cmd,) = _bash_lines('pip install torch==2.13.0 -e ".[dev')
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci]
    assert "pytest" in test_cmd


@pytest.mark.slow
def test_main_command_runs_on_the_shipped_default(tmp_path):
    """The README's main command: the whole smoke pipeline (collect, V, encode, M, CMA-ES,
    evaluation, references, video; ~4 CPU minutes) ends with an agent that beats the random
    and the zero controller by a clear margin on held-out tracks, with the population's mean
    fitness rising over the generations (not only the best of a noisy draw)."""
    (main_cmd,) = _bash_lines("pip install torch==2.13.0 -e . &&")
    python_part = main_cmd.split("&&", 1)[1].strip().replace("runs/demo", str(tmp_path / "demo"))
    args = python_part.split()
    assert args[0] == "python" and args[1] == "scripts/pipeline.py"
    r = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "demo"
    summary = json.loads((run / "pipeline" / "summary.json").read_text())
    trained = summary["evaluation"]["mean"]
    assert trained > summary["baselines"]["random"]["mean"] + 100, summary
    assert trained > summary["baselines"]["zero"]["mean"] + 100, summary
    assert (run / "videos" / "pipeline.mp4").stat().st_size > 10_000
    history = load_checkpoint(run / "controller" / "last.pt")["extra"]["history"]
    means = [h["mean"] for h in history if "mean" in h]
    assert np.mean(means[-3:]) > np.mean(means[:3]) + 20.0, means
    # the README's Python example reads that very dataset
    (example,) = [body for lang, body in BLOCKS if lang == "python" and "RolloutDataset" in body]
    code = example.replace("runs/demo", str(run))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["ep"]["frames"].shape[1:] == (64, 64, 3)
    assert len(namespace["ds"]) == 16
