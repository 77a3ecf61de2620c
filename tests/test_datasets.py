"""Tests for worldmodels.data.datasets: the reading side of the rollout store.

Two kinds of files: a real one collected with ``collect`` (3 short episodes), and small
synthetic ones written with the writer helpers of ``rollouts.py`` whose episodes have
different lengths and whose frames encode where they come from (channel 0 = episode,
channel 1 = step, channel 2 = noise), so any mix-up shows.
"""

from __future__ import annotations

import collections
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from worldmodels.config import CollectConfig, load_config
from worldmodels.data.datasets import (
    FrameDataset,
    RolloutDataset,
    available_memory,
)
from worldmodels.data.frames import _load_frames_staged, fits_in_memory, frame_bytes, load_frames
from worldmodels.data.rollouts import (
    DATASET_NAME,
    FIELDS,
    _write_root_attrs,
    episode_name,
    write_episode_group,
)
from worldmodels.errors import DataError
from worldmodels.stages.collect import collect, run_episode

torch.set_num_threads(1)

SYNTHETIC_LENGTHS = (7, 1, 12, 5)
CHUNK = 4


def make_episode(k: int, length: int, rng: np.random.Generator) -> dict:
    frames = rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8)
    frames[..., 0] = k
    frames[..., 1] = np.arange(length, dtype=np.uint8)[:, None, None]
    terminated = np.zeros(length, dtype=bool)
    terminated[-1] = k % 2 == 0
    return {
        "frames": frames,
        "actions": rng.standard_normal((length, 3)).astype(np.float32),
        "rewards": rng.standard_normal(length).astype(np.float32),
        "terminated": terminated,
        "truncated": ~terminated & (np.arange(length) == length - 1),
        "seed": 1000 + k,
    }


def write_rollouts(path: Path, episodes: list[dict], chunk_frames: int = CHUNK) -> Path:
    """A rollouts file laid out as ``consolidate`` writes it."""
    cfg = CollectConfig(chunk_frames=chunk_frames, seed=1000)
    with h5py.File(path, "w") as f:
        _write_root_attrs(f, cfg, len(episodes))
        group = f.create_group("episodes")
        for k, ep in enumerate(episodes):
            write_episode_group(group.create_group(episode_name(k)), ep, cfg)
        f.create_dataset("index/seed", data=np.asarray([ep["seed"] for ep in episodes], np.int64))
        f.create_dataset("index/length", data=np.asarray([len(ep["frames"]) for ep in episodes], np.int64))
    return path


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> tuple[Path, list[dict]]:
    run_dir = tmp_path_factory.mktemp("synthetic")
    rng = np.random.default_rng(0)
    episodes = [make_episode(k, T, rng) for k, T in enumerate(SYNTHETIC_LENGTHS)]
    return write_rollouts(run_dir / DATASET_NAME, episodes), episodes


@pytest.fixture(scope="session")
def collected(tmp_path_factory) -> tuple[Path, CollectConfig]:
    run_dir = tmp_path_factory.mktemp("collected")
    cfg = load_config(overrides={"collect": {"episodes": 3, "max_steps": 60, "workers": 1,
                                             "chunk_frames": 16}})
    collect(cfg, run_dir, progress=False)
    return run_dir, cfg.collect


def all_frames_chw(episodes: list[dict], chosen=None) -> np.ndarray:
    chosen = range(len(episodes)) if chosen is None else chosen
    return np.concatenate([episodes[k]["frames"] for k in chosen]).transpose(0, 3, 1, 2)


# ----------------------------------------------------------------------- RolloutDataset


def test_episode_returns_what_was_written(synthetic):
    path, episodes = synthetic
    for source in (path, path.parent):  # the file or its run directory
        with RolloutDataset(source) as ds:
            assert len(ds) == len(episodes)
            assert ds.lengths.tolist() == list(SYNTHETIC_LENGTHS)
            assert ds.seeds.tolist() == [ep["seed"] for ep in episodes]
            assert ds.num_frames == sum(SYNTHETIC_LENGTHS)
            assert ds.config["chunk_frames"] == CHUNK
            assert ds.chunk_lengths.tolist() == [CHUNK, 1, CHUNK, CHUNK]
            for k, expected in enumerate(episodes):
                ep = ds.episode(k)
                assert set(ep) == {*FIELDS, "seed"}
                assert ep["seed"] == expected["seed"] and isinstance(ep["seed"], int)
                assert ep["frames"].dtype == np.uint8 and ep["actions"].dtype == np.float32
                for field in FIELDS:
                    np.testing.assert_array_equal(ep[field], expected[field])


def test_episode_matches_a_fresh_collection(collected):
    """What collect stored is what run_episode produces for the same seed."""
    run_dir, cfg = collected
    with RolloutDataset(run_dir) as ds:
        assert len(ds) == 3 and ds.config["max_steps"] == 60
        assert ds.seeds.tolist() == [cfg.seed + k for k in range(3)]
        for k in (0, 2):
            ep, fresh = ds.episode(k), run_episode(cfg, k)
            assert ep["frames"].shape == (ds.lengths[k], 64, 64, 3)
            for field in FIELDS:
                np.testing.assert_array_equal(ep[field], fresh[field])


@pytest.mark.parametrize("k", [-1, 4, 100])
def test_episode_out_of_range_is_index_error(synthetic, k):
    with RolloutDataset(synthetic[0]) as ds, pytest.raises(IndexError, match=f"episode {k} out of range.*4 episodes"):
        ds.episode(k)


def test_pickle_with_open_handle_and_reopen_after_close(synthetic):
    path, episodes = synthetic
    ds = RolloutDataset(path)
    ds.episode(0)  # the handle is open now
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._handle is None
    np.testing.assert_array_equal(clone.episode(2)["frames"], episodes[2]["frames"])
    frames = FrameDataset(ds)
    frames[3]  # opens the handle and fills the chunk cache
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(frames))[9].numpy(),
                                  episodes[2]["frames"][1].transpose(2, 0, 1))
    ds.close()
    assert ds._handle is None
    np.testing.assert_array_equal(ds.episode(3)["actions"], episodes[3]["actions"])  # reopens
    with ds:
        pass
    assert ds._handle is None
    clone.close()


# -------------------------------------------------------------------------------- errors


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="no rollouts at"):
        RolloutDataset(tmp_path)
    with pytest.raises(DataError, match="no rollouts at"):
        FrameDataset(tmp_path / "elsewhere" / DATASET_NAME)


def test_truncated_file_is_data_error(synthetic, tmp_path):
    path = tmp_path / DATASET_NAME
    path.write_bytes(synthetic[0].read_bytes())
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(DataError, match="truncated or corrupt"):
        RolloutDataset(path)


def test_non_hdf5_and_foreign_hdf5_are_data_errors(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all\n")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        RolloutDataset(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="not a worldmodels rollouts file"):
        RolloutDataset(foreign)


def test_index_that_disagrees_with_episodes_is_data_error(synthetic, tmp_path):
    path = tmp_path / DATASET_NAME
    path.write_bytes(synthetic[0].read_bytes())
    with h5py.File(path, "r+") as f:
        f["index/length"][2] = 11  # the episode holds 12 frames
    with pytest.raises(DataError, match=r"inconsistent: episodes/000002/frames has shape \(12, 64, 64, 3\)"):
        RolloutDataset(path)
    with h5py.File(path, "r+") as f:
        del f["index/length"]
    with pytest.raises(DataError, match="incomplete"):
        RolloutDataset(path)


# -------------------------------------------------------------------------- FrameDataset


def test_frame_dataset_is_the_concatenation_of_episodes(synthetic):
    path, episodes = synthetic
    ds = FrameDataset(path)
    expected = all_frames_chw(episodes)
    assert len(ds) == len(expected) == sum(SYNTHETIC_LENGTHS)
    got = torch.stack([ds[i] for i in range(len(ds))])  # every frame, in order
    assert got.dtype == torch.uint8 and got.shape == (len(ds), 3, 64, 64)
    np.testing.assert_array_equal(got.numpy(), expected)
    order = np.random.default_rng(1).permutation(len(ds))  # random order: cache stays right
    for i in order:
        np.testing.assert_array_equal(ds[int(i)].numpy(), expected[i])
    assert ds.locate(7) == (1, 0) and ds.locate(8) == (2, 0) and ds.locate(-1) == (3, 4)
    np.testing.assert_array_equal(ds[-1].numpy(), expected[-1])
    with pytest.raises(IndexError, match="frame 25 out of range for 25 frames"):
        ds[len(ds)]


def test_frame_dataset_episode_subset(synthetic):
    path, episodes = synthetic
    ds = FrameDataset(path, episodes=[3, 0])
    expected = all_frames_chw(episodes, [3, 0])
    assert len(ds) == 12
    np.testing.assert_array_equal(torch.stack([ds[i] for i in range(len(ds))]).numpy(), expected)
    with pytest.raises(IndexError, match="episode 4 out of range"):
        FrameDataset(path, episodes=[0, 4])


def frame_ids(batch: torch.Tensor) -> list[tuple[int, int]]:
    """(episode, step) of each synthetic frame in a (B, 3, 64, 64) batch."""
    return [(int(x[0, 0, 0]), int(x[1, 0, 0])) for x in batch]


@pytest.mark.parametrize("batch_size,buffer_frames", [(4, 8), (5, 3), (32, 4096), (1, 1)])
def test_sample_batches_yield_each_frame_once_per_epoch(synthetic, batch_size, buffer_frames):
    path, episodes = synthetic
    ds = FrameDataset(path)
    batches = list(ds.sample_batches(batch_size, rng=7, buffer_frames=buffer_frames))
    n = sum(SYNTHETIC_LENGTHS)
    assert [len(b) for b in batches] == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    seen = []
    for b in batches:
        assert b.dtype == torch.uint8 and b.shape[1:] == (3, 64, 64) and b.is_contiguous()
        for x, (k, t) in zip(b, frame_ids(b), strict=True):
            np.testing.assert_array_equal(x.numpy(), episodes[k]["frames"][t].transpose(2, 0, 1))
        seen += frame_ids(b)
    assert sorted(seen) == [(k, t) for k, T in enumerate(SYNTHETIC_LENGTHS) for t in range(T)]


def test_sample_batches_reproducible_shuffled_and_multi_epoch(synthetic):
    ds = FrameDataset(synthetic[0], episodes=[0, 2, 3])
    first = [frame_ids(b) for b in ds.sample_batches(6, rng=3, buffer_frames=8)]
    again = [frame_ids(b) for b in ds.sample_batches(6, rng=np.random.default_rng(3), buffer_frames=8)]
    other = [frame_ids(b) for b in ds.sample_batches(6, rng=4, buffer_frames=8)]
    assert first == again and first != other
    in_order = [(k, t) for k in (0, 2, 3) for t in range(SYNTHETIC_LENGTHS[k])]
    assert sum(first, []) != in_order  # shuffled
    two = list(ds.sample_batches(6, rng=3, buffer_frames=8, epochs=2, drop_last=True))
    assert all(len(b) == 6 for b in two) and len(two) == 2 * (24 // 6)
    assert sorted(sum(map(frame_ids, two), [])) == sorted(in_order * 2)
    endless = ds.sample_batches(5, rng=0, epochs=None)
    assert len([next(endless) for _ in range(20)]) == 20  # 100 frames from 24
    view = next(ds.sample_batches(4, rng=0, channels_last=True))
    assert view.shape == (4, 3, 64, 64) and view.is_contiguous(memory_format=torch.channels_last)


def test_sample_batches_on_collected_data(collected):
    run_dir, _ = collected
    ds = FrameDataset(run_dir)
    batches = list(ds.sample_batches(32, rng=0, buffer_frames=64))
    assert all(b.shape[1:] == (3, 64, 64) and b.dtype == torch.uint8 for b in batches)
    got = collections.Counter(x.numpy().tobytes() for b in batches for x in b)
    everything = collections.Counter(ds[i].numpy().tobytes() for i in range(len(ds)))
    assert got == everything and sum(got.values()) == ds.rollouts.num_frames == 180


# ------------------------------------------------------------------- DataLoader workers


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_give_the_same_items(synthetic, context):
    """Forked workers inherit an open handle (and must reopen), spawned ones unpickle."""
    if context not in torch.multiprocessing.get_all_start_methods():
        pytest.skip(f"no {context} start method here")
    path, _ = synthetic
    frames = FrameDataset(path)
    frames[0]  # the parent holds an open handle before the workers start
    for ds in (frames,):
        single = list(DataLoader(ds, batch_size=3, num_workers=0))
        multi = list(DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context=context))
        assert len(single) == len(multi)
        for a, b in zip(single, multi, strict=True):
            if isinstance(a, dict):
                assert a.keys() == b.keys()
                for key in a:
                    assert torch.equal(a[key], b[key])
            else:
                assert torch.equal(a, b)


# ----------------------------------------------------------------------- whole set at once


def test_load_frames_is_every_frame_in_episode_order(synthetic):
    path, episodes = synthetic
    x = load_frames(path)
    assert x.shape == (sum(SYNTHETIC_LENGTHS), 3, 64, 64) and x.dtype == torch.uint8
    assert x.device.type == "cpu"
    np.testing.assert_array_equal(x.contiguous().numpy(), all_frames_chw(episodes))
    np.testing.assert_array_equal(load_frames(path, episodes=[2, 1]).numpy(),
                                  all_frames_chw(episodes, [2, 1]))
    assert load_frames(path, episodes=[]).shape == (0, 3, 64, 64)


def test_staged_loading_across_buffer_boundaries(synthetic):
    """The device path (staging buffers) on the CPU: 5-frame buffers cut episodes apart."""
    path, episodes = synthetic
    ds = RolloutDataset(path)
    chosen = np.array([0, 1, 2, 3])
    x = _load_frames_staged(ds, chosen, torch.device("cpu"), ds.num_frames, staging_frames=5)
    np.testing.assert_array_equal(x.numpy(), all_frames_chw(episodes))


def test_fits_in_memory(synthetic):
    path, _ = synthetic
    assert frame_bytes(path) == sum(SYNTHETIC_LENGTHS) * 64 * 64 * 3
    free = available_memory("cpu")
    assert free is not None and free > 0
    assert fits_in_memory(path, "cpu")
    assert not fits_in_memory(path, "cpu", fraction=frame_bytes(path) / free / 1000)


def test_split_episodes_is_a_deterministic_partition():
    from worldmodels.data import split_episodes

    train, val = split_episodes(20, 0.1, seed=3)
    assert len(val) == 2 and len(train) == 18
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(20))
    again = split_episodes(20, 0.1, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_episodes(20, 0.1, seed=4)[1])
    assert len(split_episodes(3, 0.01)[1]) == 1  # something is always held out
    assert len(split_episodes(1, 0.5)[1]) == 0  # but never everything
