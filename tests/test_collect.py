"""Rollout collection: determinism across workers, resume after a kill, clear errors."""

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import ROOT, SCRIPTS, assert_same_data, read_all, run_script

from worldmodels.config import load_config
from worldmodels.data.rollouts import DATASET_NAME, PARTS_DIR, open_rollouts
from worldmodels.errors import DataError, WorldModelsError
from worldmodels.stages.collect import collect, run_episode

SMALL = {"episodes": 3, "max_steps": 40, "seed": 5}


def cfg(**kw):
    return load_config(overrides={"collect": {**SMALL, **kw}})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-episode collection with one worker."""
    run = tmp_path_factory.mktemp("ref")
    return collect(cfg(workers=1), run, progress=False)


def test_file_layout_and_contents(reference):
    with open_rollouts(reference) as f:
        assert f.attrs["num_episodes"] == 3
        assert list(f["index/seed"][()]) == [5, 6, 7]
        g = f["episodes/000001"]
        T = g.attrs["length"]
        assert T == 40 and g["frames"].shape == (T, 64, 64, 3) and g["frames"].dtype == np.uint8
        assert g["actions"].shape == (T, 3) and g["rewards"].shape == (T,)
        assert g["truncated"][-1] and not g["truncated"][:-1].any()  # max_steps reached
        assert g["frames"].compression == "gzip" and g["frames"].chunks[0] == 10
    # the stored episode is exactly what a fresh run of that seed gives
    ep = run_episode(cfg().collect, 1)
    data = read_all(reference)
    for field in ("frames", "actions", "rewards", "terminated", "truncated"):
        assert np.array_equal(data[f"000001/{field}"], ep[field])


def test_same_data_whatever_the_number_of_workers(reference, tmp_path):
    path = collect(cfg(workers=2), tmp_path, progress=False)
    assert_same_data(reference, path)
    assert not (tmp_path / PARTS_DIR).exists()


@pytest.mark.parametrize("fault", ["crash"])
def test_a_dead_or_silent_worker_is_replaced_and_its_episode_collected_again(
        reference, tmp_path, fault, monkeypatch, capfd):
    """Collection runs on the stages' one worker pool: a worker that dies (os._exit) in the
    middle of an episode is replaced, its episode is collected again, and the dataset equals
    an undisturbed one. (A silent worker, "hang", passes too, in ~10 s: left out of the suite
    for time; the pool's hang detection is tested with C's evaluation in test_cmaes.py.)"""
    flag = tmp_path / "fault.flag"
    monkeypatch.setenv("WORLDMODELS_FAULT", f"{fault}:{flag}")
    timeout = 6.0 if fault == "hang" else 600.0
    path = collect(cfg(workers=2, worker_timeout=timeout), tmp_path / "run", progress=False)
    assert flag.exists(), "the fault never fired"
    assert "a collection worker " + ("died" if fault == "crash" else "hung") in capfd.readouterr().err
    assert_same_data(reference, path)


def test_extending_equals_collecting_at_once(reference, tmp_path):
    collect(cfg(episodes=2, workers=1), tmp_path, progress=False)
    path = collect(cfg(workers=1), tmp_path, progress=False)
    assert_same_data(reference, path)


def test_kill_and_resume_equals_uninterrupted(reference, tmp_path):
    args = [sys.executable, str(SCRIPTS / "collect_rollouts.py"), "--run", str(tmp_path),
            "--episodes", "3", "--max-steps", "40", "--seed", "5", "--workers", "1", "--no-grid"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / PARTS_DIR
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("ep-*.h5"))) < 1:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / DATASET_NAME).exists(), "killed too late: nothing was interrupted"
    done = sorted(p.name for p in parts.glob("ep-*.h5"))
    assert 1 <= len(done) < 3
    r = run_script(*args[1:])  # the resume itself runs in this process
    assert r.returncode == 0, r.stderr
    assert_same_data(reference, tmp_path / DATASET_NAME)
    assert not any(".tmp-" in p.name for p in tmp_path.rglob("*"))


def test_complete_dataset_is_kept_and_other_settings_refused(reference, tmp_path):
    path = collect(cfg(workers=1), tmp_path, progress=False)
    mtime = path.stat().st_mtime_ns
    assert collect(cfg(workers=2), tmp_path, progress=False) == path  # already complete
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(WorldModelsError, match="other settings .*seed=5.*--overwrite"):
        collect(cfg(seed=6, workers=1), tmp_path, progress=False)
    assert path.stat().st_mtime_ns == mtime
    collect(cfg(seed=6, episodes=1, workers=1), tmp_path, overwrite=True, progress=False)
    with open_rollouts(path) as f:
        assert list(f["index/seed"][()]) == [6]


def test_corrupt_and_foreign_files_are_one_line_errors(reference, tmp_path):
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    data = reference.read_bytes()
    (trunc / DATASET_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_rollouts(trunc)
    r = run_script("collect_rollouts.py", "--run", trunc, "--episodes", "3", "--max-steps", "40",
                   "--seed", "5", "--workers", "1")
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    assert (trunc / DATASET_NAME).read_bytes() == data[: len(data) // 2]  # left as it was

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(DataError, match="not a worldmodels rollouts file"):
        open_rollouts(foreign)
    with pytest.raises(DataError, match="no rollouts at"):
        open_rollouts(tmp_path / "missing")


@pytest.mark.parametrize("args,message", [
    (["--episodes", "-3"], "collect.episodes must be >= 1"),
    (["--workers", "-1"], "collect.workers must be >= 0"),
    (["--policy", "nope"], "invalid choice"),
])
def test_bad_arguments_exit_nonzero(tmp_path, args, message):
    r = run_script("collect_rollouts.py", "--run", tmp_path / "r", *args)
    assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "r" / DATASET_NAME).exists()


def test_unwritable_run_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_script("collect_rollouts.py", "--run", blocker / "run", "--episodes", "1")
    assert r.returncode == 2 and r.stderr.startswith("error: cannot write")
    assert r.stderr.count("\n") == 1


def test_full_disk_leaves_existing_dataset_intact(reference, tmp_path):
    """A real write failure (RLIMIT_FSIZE makes writes past the limit fail with EFBIG,
    as a full disk fails them with ENOSPC) while extending a dataset."""
    collect(cfg(episodes=2, workers=1), tmp_path, progress=False)
    before = (tmp_path / DATASET_NAME).read_bytes()
    limit = len(before) + 4096  # the extended file will not fit

    def limit_file_size():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = run_script("collect_rollouts.py", "--run", tmp_path, "--episodes", "3", "--max-steps",
                   "40", "--seed", "5", "--workers", "1", subprocess=True,  # the rlimit
                   preexec_fn=limit_file_size)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "disk full" in r.stderr or "too large" in r.stderr
    assert (tmp_path / DATASET_NAME).read_bytes() == before
    assert not any(".tmp-" in p.name for p in tmp_path.rglob("*"))
    # with space again, the same command finishes the job
    r = run_script("collect_rollouts.py", "--run", tmp_path, "--episodes", "3", "--max-steps",
                   "40", "--seed", "5", "--workers", "1", "--no-grid")
    assert r.returncode == 0, r.stderr
    assert_same_data(reference, tmp_path / DATASET_NAME)


def test_second_collector_on_same_run_is_refused(tmp_path):
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    fd = os.open(tmp_path / ".collect.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(WorldModelsError, match="another collect_rollouts.py"):
            collect(cfg(episodes=1), tmp_path, progress=False)
    finally:
        os.close(fd)


def test_script_prints_summary_and_grid(tmp_path):
    r = run_script("collect_rollouts.py", "--run", tmp_path, "--episodes", "2", "--max-steps",
                   "20", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "2 episodes, 40 frames" in r.stdout
    import imageio.v3 as iio

    grid = iio.imread(tmp_path / "rollouts_grid.png")
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert (tmp_path / "config.json").exists()


def test_ctrl_c_stops_workers_at_once_and_resumes(reference, tmp_path):
    args = [sys.executable, str(SCRIPTS / "collect_rollouts.py"), "--run", str(tmp_path),
            "--episodes", "3", "--max-steps", "40", "--seed", "5", "--workers", "2", "--no-grid"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a new session, as a terminal's foreground job: Ctrl-C reaches every process of it
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as from a terminal: SIGINT not ignored, whatever the runner had
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = tmp_path / PARTS_DIR
    deadline = time.time() + 120
    while time.time() < deadline and not list(parts.glob("ep-*.h5")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "re-run the same command to resume" in err and "Traceback" not in err
    # no worker left behind (multiprocessing's resource tracker may take a moment to go)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("processes of the interrupted collection are still running")
    r = run_script(*args[1:])  # the resume itself runs in this process
    assert r.returncode == 0, r.stderr
    assert_same_data(reference, tmp_path / DATASET_NAME)


def _collect_script(*args) -> tuple[int, str]:
    """scripts/collect_rollouts.py in this process: (exit status, stderr)."""
    r = run_script("collect_rollouts.py", *args)
    return r.returncode, r.stderr


def test_corrupt_chunks_are_a_one_line_error_exit_2(tmp_path):
    """A real rollouts.h5 whose frame chunks no longer decompress (metadata intact, so it
    opens): extending it, or re-running on it, is one line and exit 2, not a traceback."""
    path = collect(cfg(episodes=2, max_steps=20, workers=1), tmp_path, progress=False)
    with h5py.File(path, "r") as f:
        ds = f["episodes/000000/frames"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    with open(path, "r+b") as fh:
        for c in chunks:  # overwrite the gzip streams past their headers
            fh.seek(c.byte_offset + 10)
            fh.write(b"\xff" * (c.size - 10))
    with h5py.File(path, "r") as f, pytest.raises(OSError):
        f["episodes/000000/frames"][0]  # really corrupt
    for episodes in (2, 3):
        code, err = _collect_script("--run", tmp_path, "--episodes",
                                    episodes, "--max-steps", 20, "--seed", 5, "--workers", 1)
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1
        assert err.startswith("error: cannot read episodes/000000/frames of ")
        assert "collect again" in err


def test_no_lock_file_stays_behind(tmp_path):
    collect(cfg(episodes=1, max_steps=5, workers=1), tmp_path, progress=False)
    assert not (tmp_path / ".collect.lock").exists()
    with pytest.raises(WorldModelsError, match="other settings"):  # an error: removed too
        collect(cfg(episodes=1, max_steps=6, workers=1), tmp_path, progress=False)
    assert not (tmp_path / ".collect.lock").exists()


def test_exclusive_lock_is_retaken_on_a_replaced_file(tmp_path, monkeypatch):
    """The holder unlinks the lock on the way out; a process that opened the old file just
    before must not lock that orphan while a third holds the new file at the same path."""
    import fcntl

    import worldmodels.utils.io as io

    lock = tmp_path / "x.lock"
    with io.exclusive_lock(lock, "busy"):
        assert lock.exists()
        with pytest.raises(WorldModelsError, match="^busy$"), io.exclusive_lock(lock, "busy"):
            pass
    assert not lock.exists()

    orphan = os.open(tmp_path / "old.lock", os.O_RDWR | os.O_CREAT)
    os.unlink(tmp_path / "old.lock")  # opened, then unlinked by the previous holder
    holder = os.open(lock, os.O_RDWR | os.O_CREAT)  # the third process, on the new file
    fcntl.flock(holder, fcntl.LOCK_EX)
    real_open, opened = os.open, []

    def open_orphan_first(path, *args):
        opened.append(path)
        return os.dup(orphan) if len(opened) == 1 else real_open(path, *args)

    monkeypatch.setattr(io.os, "open", open_orphan_first)
    try:
        with pytest.raises(WorldModelsError, match="busy"), io.exclusive_lock(lock, "busy"):
            pass
        assert len(opened) == 2  # it noticed the orphan and re-opened the path
    finally:
        os.close(holder)
        os.close(orphan)


def test_run_that_is_a_file_says_not_a_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _collect_script("--run", blocker, "--episodes", 1)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write {blocker}: {blocker} is not a directory")
    assert "File exists" not in err
    assert blocker.read_text() == "x"
