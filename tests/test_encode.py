"""Encoding rollouts with V (worldmodels.data.latents, scripts/encode.py) and the latent
sequences M trains on.

Ha & Schmidhuber (2018, arXiv:1803.10122) store V's posterior (mu, log sigma^2) per frame
and train M on z resampled from it at every batch. On a real tiny dataset (4 episodes x 40
steps) and a V trained for 5 steps: the file has the documented format and holds exactly
what V gives for each frame; an interrupted encoding resumes to the same file; a file made
by another V is refused (one line, suggesting --overwrite); missing inputs name the command
to run. On synthetic latents whose values name their (episode, step): windows are the
right consecutive steps of one episode, targets are the next step's latents, a terminated
episode keeps its last transition with the missing next latent masked, and memory and
file reads agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import run_script

from worldmodels.config import load_config
from worldmodels.data.datasets import RolloutDataset
from worldmodels.data.latents import FORMAT, FORMAT_VERSION, LatentDataset, latents_path
from worldmodels.data.rollouts import DATASET_NAME, episode_name
from worldmodels.data.sequences import LatentSequences
from worldmodels.errors import DataError
from worldmodels.run import load_encoder, load_vae
from worldmodels.stages.collect import collect
from worldmodels.stages.encode import encode
from worldmodels.stages.encode import main as encode_main
from worldmodels.stages.train_vae import train_vae
from worldmodels.utils.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A run with 4 real episodes of 40 steps and a VAE trained for 5 steps."""
    run = tmp_path_factory.mktemp("source")
    collect(load_config(overrides={"collect": {"episodes": 4, "max_steps": 40, "workers": 1}}),
            run, progress=False)
    train_vae(load_config(overrides={"vae": {"batch_size": 8, "max_steps": 5, "lr": 1e-3,
                                             "device": "cpu"}}), run, progress=False)
    return run


def new_run(tmp_path: Path, source: Path, name: str = "run", vae: bool = True) -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / DATASET_NAME).symlink_to(source / DATASET_NAME)
    if vae:
        (run / "vae").symlink_to(source / "vae")
    return run


def encode_config(**settings):
    return load_config(overrides={"encode": {"device": "cpu", "workers": 0, **settings}})


def test_encode_writes_the_format_and_v_s_posteriors(tmp_path, source):
    run = new_run(tmp_path, source)
    s = encode_main(encode_config(batch_size=16), run, progress=False)
    path = latents_path(run, "vae")
    assert s["latents"] == str(path) and path.name == "latents_vae.h5"
    assert (s["episodes"], s["frames"], s["encoded_frames"], s["kind"], s["latent_dim"]) == (
        4, 160, 160, "gaussian", 32)
    assert json.loads((run / "config.json").read_text())["encode"]["batch_size"] == 16

    net, identity = load_encoder(run, "vae")
    with h5py.File(path, "r") as f, RolloutDataset(run) as rollouts:
        assert (f.attrs["format"], f.attrs["format_version"]) == (FORMAT, FORMAT_VERSION)
        assert (f.attrs["kind"], f.attrs["latent_dim"], f.attrs["num_episodes"]) == ("gaussian", 32, 4)
        vae = json.loads(f.attrs["vae"])
        assert vae["sha256"] == identity["sha256"] == s["vae_sha256"]
        assert (vae["model"], vae["step"], vae["checkpoint"]) == ("vae", 5, "best.pt")
        assert json.loads(f.attrs["rollouts"]) == {"num_episodes": 4, "config": rollouts.config}
        np.testing.assert_array_equal(f["index/length"][()], rollouts.lengths)
        np.testing.assert_array_equal(f["index/seed"][()], rollouts.seeds)
        for k in range(4):
            g, ep = f[f"episodes/{episode_name(k)}"], rollouts.episode(k)
            T = len(ep["frames"])
            assert g["mu"].shape == g["logvar"].shape == (T, 32) and g["mu"].dtype == np.float32
            assert (g.attrs["seed"], g.attrs["length"]) == (ep["seed"], T)
            for field in ("actions", "rewards", "terminated", "truncated"):
                np.testing.assert_array_equal(g[field][()], ep[field])
            assert f["index/terminated"][k] == ep["terminated"][-1]
            # the same numbers as passing the frames through V directly (here all at once)
            x = torch.from_numpy(ep["frames"]).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                mu, logvar = load_vae(run, "vae").encode(x)
            np.testing.assert_allclose(g["mu"][()], mu.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(g["logvar"][()], logvar.numpy(), rtol=1e-4, atol=1e-5)
    assert not (run / "latents_vae.parts").exists()

    # complete: a second run encodes nothing and leaves the file alone
    mtime = path.stat().st_mtime_ns
    again = encode_main(encode_config(), run, progress=False)
    assert again["encoded_frames"] == 0 and path.stat().st_mtime_ns == mtime


def test_interrupted_encoding_resumes_to_the_same_file(tmp_path, source):
    straight = new_run(tmp_path, source, "straight")
    encode(encode_config(), straight, progress=False)
    run = new_run(tmp_path, source, "stopped")

    def stop_after_two(k: int, T: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode(encode_config(), run, progress=False, on_episode=stop_after_two)
    assert not latents_path(run).exists()
    assert sorted(p.name for p in (run / "latents_vae.parts").iterdir()) == [
        "ep-000000.h5", "ep-000001.h5"]
    done: list[int] = []
    encode(encode_config(), run, progress=False, on_episode=lambda k, T: done.append(k))
    assert done == [2, 3]
    with LatentDataset(latents_path(run)) as a, LatentDataset(latents_path(straight)) as b:
        assert a.vae == b.vae
        for k in range(4):
            ea, eb = a.episode(k), b.episode(k)
            for field in ("mu", "logvar", "actions", "rewards", "terminated", "truncated"):
                np.testing.assert_array_equal(ea[field], eb[field], err_msg=field)


def test_another_v_is_refused_unless_overwrite(tmp_path, source):
    run = new_run(tmp_path, source, vae=False)
    (run / "vae").mkdir()
    best = load_checkpoint(source / "vae" / "best.pt")
    net = load_vae(source, "vae")
    save_checkpoint(run / "vae" / "best.pt", kind="vae", model=net,
                    model_config=best["model_config"], step=best["step"])
    first = encode_main(encode_config(), run, progress=False)
    with torch.no_grad():
        net.fc_mu.bias += 1.0  # another V: same shapes, other weights
    save_checkpoint(run / "vae" / "best.pt", kind="vae", model=net,
                    model_config=best["model_config"], step=best["step"] + 1)
    with pytest.raises(DataError, match="encoded by another V.*--overwrite"):
        encode(encode_config(), run, progress=False)
    result = run_script("encode.py", "--run", run, "--device", "cpu", "--workers", "0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--overwrite" in lines[0], result.stderr
    second = encode_main(encode_config(), run, overwrite=True, progress=False)
    assert second["vae_sha256"] != first["vae_sha256"] and second["vae_step"] == 6
    with LatentDataset(latents_path(run)) as data:
        assert data.vae["sha256"] == second["vae_sha256"]


def test_missing_inputs_name_the_command_to_run(tmp_path, source):
    with pytest.raises(DataError, match="collect_rollouts.py"):
        encode(encode_config(), tmp_path / "empty", progress=False)
    run = new_run(tmp_path, source, vae=False)
    with pytest.raises(DataError, match="train_vae.py --run .* --model betavae"):
        encode(encode_config(model="betavae"), run, progress=False)
    assert not latents_path(run, "betavae").exists()
    with pytest.raises(DataError, match="encode.py --run .* --model vqvae"):
        LatentDataset(latents_path(run, "vqvae"))


def test_vqvae_stores_code_grids(tmp_path, source):
    run = new_run(tmp_path, source)
    train_vae(load_config(overrides={"vae": {"model": "vqvae", "batch_size": 8, "max_steps": 2,
                                             "prior_epochs": 0, "device": "cpu"}}),
              run, progress=False)
    s = encode_main(encode_config(model="vqvae"), run, progress=False)
    assert (s["kind"], s["latent_dim"]) == ("codes", 64)
    net = load_vae(run, "vqvae")
    with LatentDataset(latents_path(run, "vqvae")) as data, RolloutDataset(run) as rollouts:
        assert data.latent_shape == (8, 8) and data.codebook_size == 128
        codes = data.read(1, "codes")
        assert codes.dtype == np.int16 and codes.shape == (40, 8, 8)
        x = torch.from_numpy(rollouts.episode(1)["frames"]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            np.testing.assert_array_equal(codes, net.encode_codes(x).numpy())


def test_script_help():
    result = run_script("encode.py", "--help")
    assert result.returncode == 0 and "--overwrite" in result.stdout and "--model" in result.stdout


# ----------------------------------------------------------------- latent sequences

D = 3


def write_latents(path: Path, lengths: list[int], terminated: set[int],
                  mu: list[np.ndarray] | None = None) -> Path:
    """A latents file whose mu[t] = (1000 k + t, k, t) names episode k, step t (or the
    given ``mu``, one (T, D') array per episode)."""
    dim = D if mu is None else mu[0].shape[1]
    with h5py.File(path, "w") as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "gaussian",
                        "latent_dim": dim, "latent_shape": json.dumps([dim]), "codebook_size": 0,
                        "num_episodes": len(lengths),
                        "vae": json.dumps({"model": "vae", "sha256": "x", "step": 1}),
                        "rollouts": json.dumps({"num_episodes": len(lengths), "config": {}})})
        for k, T in enumerate(lengths):
            t = np.arange(T, dtype=np.float32)
            g = f.create_group(f"episodes/{episode_name(k)}")
            g["mu"] = (np.stack([1000 * k + t, np.full(T, k), t], axis=1) if mu is None
                       else mu[k]).astype(np.float32)
            g["logvar"] = np.full((T, dim), -4.0, np.float32)
            g["actions"] = np.stack([t, t + 0.5, np.full(T, k)], axis=1).astype(np.float32)
            g["rewards"] = (k + t / 100).astype(np.float64)
            done = np.zeros(T, bool)
            done[-1] = k in terminated
            g["terminated"] = done
            g["truncated"] = np.zeros(T, bool)
            g.attrs.update({"seed": k, "length": T})
        f["index/seed"] = np.arange(len(lengths), dtype=np.int64)
        f["index/length"] = np.asarray(lengths, dtype=np.int64)
        f["index/terminated"] = np.asarray([k in terminated for k in range(len(lengths))])
    return path


@pytest.mark.parametrize("in_memory", [True, False])
def test_windows_are_consecutive_steps_of_one_episode(tmp_path, in_memory):
    # episode 0: 30 steps (29 transitions); 1: 5 steps (4 transitions, shorter than a
    # sequence: one padded window); 2: 21 steps, terminated (21 transitions, the last
    # without a next frame); 3: 4 steps, terminated early (4 transitions, padded)
    data = LatentDataset(write_latents(tmp_path / "l.h5", [30, 5, 21, 4], {2, 3}))
    L = 7
    seqs = LatentSequences(data, L, in_memory=in_memory)
    assert list(seqs.episodes) == [0, 1, 2, 3] and seqs.skipped == 0 and seqs.padded == 2
    assert list(seqs.counts) == [4, 1, 3, 1] and list(seqs.slack) == [1, 0, 0, 0]
    windows = seqs.windows()
    assert windows.tolist() == [[0, 0], [0, 7], [0, 14], [0, 21], [1, 0], [2, 0], [2, 7],
                                [2, 14], [3, 0]] and len(seqs) == 9
    jittered = seqs.windows(np.random.default_rng(3))
    assert set(jittered[:4, 1] - windows[:4, 1]) <= {0, 1} and (jittered[4:] == windows[4:]).all()

    batch = seqs.batch(windows, sample=False)
    z, valid, mask = batch["z"].numpy(), batch["next_valid"].numpy(), batch["mask"].numpy()
    assert z.shape == (9, L + 1, D) and batch["actions"].shape == (9, L, 3)
    for row, (j, s) in enumerate(windows):
        k = int(seqs.episodes[j])
        T = int(seqs.lengths[j])
        U = T if k in (2, 3) else T - 1  # transitions
        steps = np.minimum(np.arange(s, s + L + 1), T - 1)
        assert (z[row, :, 1] == k).all()  # never another episode's step
        np.testing.assert_array_equal(z[row, :, 0], 1000 * k + steps)
        # transition t is real where the episode has it; its target where the frame exists
        np.testing.assert_array_equal(mask[row], np.arange(s, s + L) < U)
        np.testing.assert_array_equal(valid[row], (np.arange(s + 1, s + L + 1) <= T - 1)
                                      & mask[row])
        np.testing.assert_array_equal(batch["actions"][row, :, 0].numpy(), steps[:L])
        np.testing.assert_allclose(batch["rewards"][row].numpy(), k + steps[:L] / 100, rtol=1e-6)
        np.testing.assert_array_equal(batch["dones"][row].numpy(),
                                      (k in (2, 3)) & (steps[:L] == T - 1))
    # the terminated episode's last window ends on its terminal transition, z masked
    assert valid[7].tolist() == [True] * (L - 1) + [False] and batch["dones"][7, -1] == 1
    assert mask[7].all() and mask[:4].all() and valid[:4].all()
    # the short episodes: their real transitions, then padding; the early termination's done
    # is a real step (only its z target is missing)
    assert mask[4].tolist() == [True] * 4 + [False] * 3
    assert mask[8].tolist() == [True] * 4 + [False] * 3
    assert valid[8].tolist() == [True] * 3 + [False] * 4 and batch["dones"][8, 3] == 1
    assert (batch["dones"][8] * batch["mask"][8]).sum() == 1

    # z is drawn from N(mu, sigma^2) afresh per batch, the same for the same seed
    a = seqs.batch(windows, torch.Generator().manual_seed(0))["z"]
    b = seqs.batch(windows, torch.Generator().manual_seed(0))["z"]
    c = seqs.batch(windows, torch.Generator().manual_seed(1))["z"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    sigma = float(np.exp(-2.0))
    assert (a - batch["z"]).abs().max() < 6 * sigma and (a - batch["z"]).std() == pytest.approx(
        sigma, rel=0.2)

    # an epoch: every window once, in an order fixed by the seed, the partial batch dropped
    rows = np.concatenate(list(seqs.epoch(2, seed=5)))
    assert len(rows) == 8 and len({tuple(r) for r in rows}) == 8
    assert np.array_equal(rows, np.concatenate(list(seqs.epoch(2, seed=5))))
    assert np.array_equal(rows[2:], np.concatenate(list(seqs.epoch(2, seed=5, skip=1))))
    data.close()


def test_memory_and_file_windows_agree(tmp_path):
    data = LatentDataset(write_latents(tmp_path / "l.h5", [12, 9, 15, 5, 3], {1, 3}))
    windows = np.array([[0, 3], [1, 0], [2, 5], [1, 1], [3, 0], [4, 0]])
    a = LatentSequences(data, 8, in_memory=True).batch(windows, torch.Generator().manual_seed(0))
    b = LatentSequences(data, 8, in_memory=False).batch(windows, torch.Generator().manual_seed(0))
    assert a.keys() == b.keys() and "mask" in a
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_episodes_without_a_transition_are_skipped_or_one_line_error(tmp_path):
    data = LatentDataset(write_latents(tmp_path / "l.h5", [12, 1, 9, 1], {3}))
    seqs = LatentSequences(data, 40)  # longer than every episode: each one padded window
    # a 1-step episode has no transition unless it terminated (its done is one)
    assert list(seqs.episodes) == [0, 2, 3] and seqs.skipped == 1 and len(seqs) == 3
    data.close()
    data = LatentDataset(write_latents(tmp_path / "m.h5", [1, 1], set()))
    with pytest.raises(DataError, match=r"no episode .* has a transition"):
        LatentSequences(data, 40)
    assert len(LatentSequences(data, 40, episodes=[])) == 0  # nothing asked, nothing wrong
