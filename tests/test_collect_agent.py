"""Collection with the current agent (iterative training): collect.agent / agent_from."""

from __future__ import annotations

import numpy as np
import pytest

from worldmodels.config import load_config
from worldmodels.control.controller import Controller
from worldmodels.data.datasets import RolloutDataset
from worldmodels.errors import ConfigError, WorldModelsError
from worldmodels.run import load_agent, save_random_world_model
from worldmodels.stages.collect import AgentPolicy, collect
from worldmodels.utils.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory):
    run = save_random_world_model(tmp_path_factory.mktemp("agent"), hidden_dim=16, seed=5)
    torch_c = Controller(latent_dim=32, hidden_dim=16)
    flat = np.random.default_rng(0).normal(0, 0.3, torch_c.num_parameters)
    torch_c.set_flat(flat)
    save_checkpoint(run / "controller" / "best.pt", kind="controller", model=torch_c,
                    model_config=torch_c.hparams, step=1)
    return run


def cfg_of(episodes, **collect):
    return load_config(overrides={"collect": {"episodes": episodes, "max_steps": 24,
                                              "workers": 1, "seed": 1_000_000_000,
                                              "policy": "brownian", **collect}})


def test_agent_episodes_extend_random_ones_and_are_the_agents_actions(agent_run, tmp_path):
    run = tmp_path / "run"
    collect(cfg_of(2), run, progress=False)
    with RolloutDataset(run) as data:
        before = [data.episode(k) for k in range(2)]
    # extended with two agent episodes: the first two stay as they were
    collect(cfg_of(4, agent=str(agent_run), agent_from=2, agent_noise=0.1), run,
            progress=False)
    with RolloutDataset(run) as data:
        assert len(data) == 4
        for k in range(2):
            after = data.episode(k)
            for field in ("frames", "actions", "rewards"):
                assert np.array_equal(after[field], before[k][field])
        # the agent's episodes: its actions, replayed here on the stored frames
        agent = load_agent(agent_run)
        for k in (2, 3):
            ep = data.episode(k)
            policy = AgentPolicy(agent, int(ep["seed"]), 0.1)
            replayed = np.stack([policy.act(f) for f in ep["frames"]])
            assert np.array_equal(replayed, ep["actions"])
        # parameter noise: the two agent episodes were driven by different controllers
        a2, a3 = data.episode(2)["actions"], data.episode(3)["actions"]
        n = min(len(a2), len(a3))
        assert not np.array_equal(a2[:n], a3[:n])


def test_latents_of_the_random_episodes_are_extended_by_the_agents(agent_run, tmp_path):
    """Iterative training: latents encoded from the random episodes stay valid when the
    rollouts are extended by agent episodes; encode adds only the new ones."""
    import shutil

    from worldmodels.data.latents import LatentDataset
    from worldmodels.stages.encode import encode

    run = tmp_path / "run"
    collect(cfg_of(2), run, progress=False)
    shutil.copytree(agent_run / "vae", run / "vae")
    enc = load_config(overrides={"encode": {"workers": 0, "device": "cpu"}})
    path = encode(enc, run, progress=False)
    with LatentDataset(path) as lat:
        first = lat.episode(1)["mu"]
    collect(cfg_of(3, agent=str(agent_run), agent_from=2), run, progress=False)
    path = encode(enc, run, progress=False)
    with LatentDataset(path) as lat, RolloutDataset(run) as data:
        assert len(lat) == 3 and np.array_equal(lat.episode(1)["mu"], first)
        assert np.array_equal(lat.episode(2)["actions"], data.episode(2)["actions"])


def test_another_agent_on_an_agent_dataset_is_refused(agent_run, tmp_path):
    run = tmp_path / "run"
    collect(cfg_of(2, agent=str(agent_run), agent_from=1), run, progress=False)
    with pytest.raises(WorldModelsError, match="other settings.*agent_noise"):
        collect(cfg_of(3, agent=str(agent_run), agent_from=1, agent_noise=0.2), run,
                progress=False)
    # random episodes past agent_from would differ from the agent's: refused too
    with pytest.raises(WorldModelsError, match="other settings"):
        collect(cfg_of(3), run, progress=False)


def test_an_agent_of_another_action_repeat_is_refused(agent_run, tmp_path):
    with pytest.raises(ConfigError, match="decides every 1 frames, the collection every 4"):
        collect(cfg_of(1, agent=str(agent_run), action_repeat=4), tmp_path / "r",
                progress=False)
    with pytest.raises(Exception, match="no run directory"):
        collect(cfg_of(1, agent=str(tmp_path / "nope")), tmp_path / "r2", progress=False)
