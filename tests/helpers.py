"""Shared test helpers."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(name: str, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def read_all(path) -> dict:
    """Every episode array and the index of a rollouts file, as numpy."""
    out = {}
    with h5py.File(path, "r") as f:
        for name, g in f["episodes"].items():
            for field, ds in g.items():
                out[f"{name}/{field}"] = ds[()]
            out[f"{name}/seed"] = int(g.attrs["seed"])
        out["index/seed"] = f["index/seed"][()]
        out["index/length"] = f["index/length"][()]
    return out


def assert_same_data(a, b):
    da, db = read_all(a), read_all(b)
    assert da.keys() == db.keys()
    for k in da:
        assert np.array_equal(da[k], db[k]), k
