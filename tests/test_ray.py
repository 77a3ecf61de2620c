"""The Ray backend, against a local Ray cluster, gives the local backend's data."""

import pytest
from helpers import assert_same_data

from worldmodels.config import load_config
from worldmodels.stages.collect import collect

ray = pytest.importorskip("ray")


@pytest.mark.slow  # end to end: several trainings or a cluster; runs in CI
def test_ray_backend_equals_local(tmp_path):
    over = {"episodes": 3, "max_steps": 30, "seed": 2}
    local = collect(load_config(overrides={"collect": {**over, "workers": 1}}),
                    tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = collect(load_config(overrides={"collect": {**over, "backend": "ray"}}),
                         tmp_path / "ray", progress=False)
    finally:
        ray.shutdown()
    assert_same_data(local, remote)
