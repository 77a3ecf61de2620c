"""ruff (the dev extra's linter; rules in pyproject.toml's [tool.ruff]) reports nothing on
the package, the scripts and the tests."""

import subprocess
import sys

from helpers import ROOT


def test_ruff_reports_nothing():
    paths = ["worldmodels", "scripts", "tests"]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *paths],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"ruff check {' '.join(paths)}:\n{r.stdout}{r.stderr}"
