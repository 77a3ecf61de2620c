"""Every script answers --help (exit 0, a usage line, no traceback)."""

import pytest
from helpers import SCRIPTS, run_script

SCRIPT_NAMES = sorted(p.name for p in SCRIPTS.glob("*.py"))


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_help(name):
    r = run_script(name, "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:") and "Traceback" not in r.stderr


def test_benchmark_unknown_subcommand_fails_cleanly():
    r = run_script("benchmark.py", "nope")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_env_benchmark_reports_identity():
    r = run_script("benchmark.py", "env", "--episodes", "1", "--steps", "60", "--json")
    assert r.returncode == 0, r.stderr
    import json

    rows = json.loads(r.stdout.strip().splitlines()[-1])
    fast = next(row for row in rows if row["env"] == "worldmodels/FastCarRacing-v3")
    assert fast["identical"] == "yes" and fast["steps/s"] > 0
