"""worldmodels.run: which checkpoint of a stage is loaded, and the agent as C was trained."""

from __future__ import annotations

import shutil

import pytest

from worldmodels.control.controller import Controller
from worldmodels.errors import ConfigError, DataError
from worldmodels.run import (
    checkpoint_path,
    load_agent,
    load_controller,
    save_random_world_model,
)
from worldmodels.utils.checkpoint import save_checkpoint


def _save_c(path, step, extra=None):
    c = Controller(latent_dim=32, hidden_dim=16)
    save_checkpoint(path, kind="controller", model=c, model_config=c.hparams, step=step,
                    extra=extra)


def test_best_else_last_and_last_only(tmp_path):
    run = save_random_world_model(tmp_path / "run", hidden_dim=16)
    with pytest.raises(DataError, match="no trained controller.*scripts/train_controller.py"):
        checkpoint_path(run, "controller")
    _save_c(run / "controller" / "last.pt", 3)
    assert checkpoint_path(run, "controller").name == "last.pt"  # no best: the last
    _save_c(run / "controller" / "best.pt", 2)
    assert checkpoint_path(run, "controller").name == "best.pt"
    assert checkpoint_path(run, "controller", "last").name == "last.pt"
    assert load_controller(run, which="last")[1]["step"] == 3
    with pytest.raises(ConfigError):
        checkpoint_path(run, "controller", "newest")
    shutil.rmtree(run / "vae")
    with pytest.raises(DataError, match="no trained vae.*train_vae.py --run .* --model vae"):
        checkpoint_path(run, "vae")


def test_load_agent_runs_the_agent_as_c_was_trained(tmp_path):
    run = save_random_world_model(tmp_path / "run", hidden_dim=16)
    _save_c(run / "controller" / "best.pt", 1, {"agent": {"precision": "bf16", "z": "sample"}})
    agent = load_agent(run)
    assert (agent.precision, agent.z_mode) == ("bf16", "sample")
    assert load_agent(run, precision="fp32", z="mu").precision == "fp32"
    # a C from before the settings were recorded: fp32 and mu
    _save_c(run / "controller" / "best.pt", 1)
    old = load_agent(run)
    assert (old.precision, old.z_mode) == ("fp32", "mu")
