"""The README's commands work as written (the main job runs on the shipped default,
CI runs the README's test command, and the Python examples run)."""

import re
import subprocess
import sys

import pytest
from helpers import ROOT

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
    (main_cmd,) = _bash_lines("pip install torch==2.13.0 -e . &&")
    python_part = main_cmd.split("&&", 1)[1].strip().replace("runs/demo", str(tmp_path / "demo"))
    args = python_part.split()
    assert args[0] == "python"
    r = subprocess.run([sys.executable, *args[1:]], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "16 episodes" in r.stdout and (tmp_path / "demo" / "rollouts_grid.png").exists()
    # the README's Python example reads that very dataset
    (example,) = [body for lang, body in BLOCKS if lang == "python" and "RolloutDataset" in body]
    code = example.replace("runs/demo", str(tmp_path / "demo"))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["ep"]["frames"].shape[1:] == (64, 64, 3)
    assert len(namespace["ds"]) == 16
