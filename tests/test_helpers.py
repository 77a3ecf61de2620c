"""run_script runs a script in this process as a subprocess would show it, and leaves this
process as it found it."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import run_script


def script(tmp_path, body: str, name: str = "s.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("body,code,err", [
    ("pass", 0, ""),
    ("import sys; sys.exit()", 0, ""),
    ("import sys; sys.exit(3)", 3, ""),
    ("import sys; sys.exit(256 + 2)", 2, ""),
    ("import sys; sys.exit('bad thing')", 1, "bad thing\n"),
    ("raise SystemExit(None)", 0, ""),
])
def test_exit_status_is_as_python_gives_it(tmp_path, body, code, err):
    for separate in (False, True):
        r = run_script(script(tmp_path, body), subprocess=separate)
        assert (r.returncode, r.stderr) == (code, err), separate


def test_uncaught_exception_is_status_1_with_traceback(tmp_path):
    r = run_script(script(tmp_path, "def f():\n    raise ValueError('boom')\nf()\n"))
    assert r.returncode == 1
    assert r.stderr.startswith("Traceback (most recent call last):")
    assert r.stderr.rstrip().endswith("ValueError: boom") and "in f" in r.stderr


def test_argv_output_tqdm_warnings_and_file_descriptors_are_captured(tmp_path):
    r = run_script(script(tmp_path, """
        import os, sys, warnings
        from tqdm import tqdm
        print("argv", sys.argv[1:], sys.argv[0].endswith("s.py"))
        print("to stderr", file=sys.stderr)
        for _ in tqdm(range(3), desc="bar"):
            pass
        warnings.warn("careful")
        os.write(1, b"fd1\\n")
        os.write(2, b"fd2\\n")
        sys.stdout.buffer.write(b"bytes\\n")
        if __name__ == "__main__":
            print("main")
    """), "--x", 1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["argv ['--x', '1'] True", "bytes", "main", "fd1"]
    assert "to stderr\n" in r.stderr and "bar: 100%" in r.stderr and "fd2\n" in r.stderr
    assert "UserWarning: careful" in r.stderr and "\r" not in r.stderr
    assert r.args[1:] == [str(tmp_path / "s.py"), "--x", "1"]


def test_process_state_is_restored(tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    before = (dict(os.environ), os.getcwd(), torch.get_num_threads(), sys.argv[:], sys.path[:],
              signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM),
              torch.rand(3))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    r = run_script(script(tmp_path, f"""
        import os, signal, sys, torch
        os.environ["OMP_NUM_THREADS"] = "7"
        os.environ["WORLDMODELS_TEST_LEAK"] = "1"
        torch.set_num_threads(2)
        os.chdir({str(other)!r})
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *a: None)
        sys.path.append("nowhere")
        torch.manual_seed(123)
        torch.rand(10)
        sys.exit(0)
    """))
    assert r.returncode == 0, r.stderr
    after = (dict(os.environ), os.getcwd(), torch.get_num_threads(), sys.argv[:], sys.path[:],
             signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert after == before[:-1]
    assert torch.equal(torch.rand(3), expected)  # the script's seeding is undone too


def test_spawned_workers_of_an_in_process_script(tmp_path):
    """Spawned children re-import the script as __mp_main__ (its guard keeps main() from
    running again) and find functions defined in it."""
    r = run_script(script(tmp_path, """
        import multiprocessing as mp

        def square(x):
            return x * x

        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(2) as pool:
                print(pool.map(square, range(4)))
    """), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[0, 1, 4, 9]\n"


def test_timeout_raises_as_subprocess_run_does(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_script(script(tmp_path, "import time\ntime.sleep(30)\n"), timeout=0.5)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


def test_subprocess_only_options_need_subprocess(tmp_path):
    path = script(tmp_path, "import os\nprint(os.getpid())\n")
    with pytest.raises(TypeError, match="subprocess=True"):
        run_script(path, preexec_fn=lambda: None)
    r = run_script(path, subprocess=True, preexec_fn=lambda: None)
    assert r.returncode == 0 and int(r.stdout) != os.getpid()
