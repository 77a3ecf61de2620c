"""Shared test helpers."""

import contextlib
import io
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from subprocess import CompletedProcess

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(name: str | os.PathLike, *args, timeout: float = 300, subprocess: bool = False,
               **kwargs) -> CompletedProcess:
    """``python scripts/<name> *args`` as its user would see it: exit status, stdout, stderr.

    By default the script runs in this process (``runpy``, as ``__main__``), which spares the
    6-10 s of interpreter and torch start-up a new process costs: ``sys.exit`` codes, an
    uncaught exception (status 1, its traceback on stderr) and output written to
    ``sys.stdout``/``sys.stderr`` (print, tqdm, warnings) or to file descriptors 1 and 2
    (C code, worker processes) come back as from a subprocess, and the process-wide state a
    script may change (argv, path, environment, cwd, torch threads, signal handlers, RNGs,
    logging, warning filters) is restored afterwards. ``timeout`` raises
    ``subprocess.TimeoutExpired`` as ``subprocess.run`` does.

    ``subprocess=True`` starts a separate interpreter instead, for what only a fresh process
    shows (start-up, first imports, signals and kills, rlimits via ``preexec_fn`` and other
    ``subprocess.run`` keyword arguments). ``name`` may also be an absolute path.
    """
    argv = [str(SCRIPTS / name), *map(str, args)]
    if subprocess:
        return _run_subprocess(argv, timeout, **kwargs)
    if kwargs:
        raise TypeError(f"run_script: {sorted(kwargs)} only apply to a separate process; "
                        "pass subprocess=True")
    with _process_state_restored(), _fds_captured() as fds, _timeout(timeout, argv):
        out, err = _text_stream(), _text_stream()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            sys.argv = argv[:]
            sys.path.insert(0, str(Path(argv[0]).parent))  # as `python script.py` does
            try:
                runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as e:
                code = _exit_status(e.code)
            except Exception:
                traceback.print_exc()
                code = 1
            for stream in (out, err):
                stream.flush()
    stdout, stderr = (_universal_newlines(s.buffer.getvalue().decode() + fds[fd])
                      for s, fd in ((out, 1), (err, 2)))
    return CompletedProcess([sys.executable, *argv], code, stdout, stderr)


def _run_subprocess(argv: list[str], timeout: float, env: dict | None = None,
                    **kwargs) -> CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def _exit_status(code) -> int:
    """The exit status Python gives ``sys.exit(code)``; a non-integer is printed to stderr."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256
    print(code, file=sys.stderr)
    return 1


def _text_stream() -> io.TextIOWrapper:
    """A captured ``sys.stdout``/``sys.stderr``: text with a ``.buffer``, not a terminal."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")


def _universal_newlines(text: str) -> str:
    """What ``subprocess.run(text=True)`` makes of the bytes: ``\\r\\n`` and ``\\r`` -> ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


@contextlib.contextmanager
def _fds_captured():
    """File descriptors 1 and 2 redirected to temporary files; their text lands in the
    yielded dict (keys 1, 2) on exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    captured: dict[int, str] = {}
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    files = {fd: tempfile.TemporaryFile() for fd in (1, 2)}
    try:
        for fd, f in files.items():
            os.dup2(f.fileno(), fd)
        yield captured
    finally:
        for fd, f in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            f.seek(0)
            captured[fd] = f.read().decode(errors="backslashreplace")
            f.close()


class _ScriptTimeout(BaseException):
    """Raised in the script by the timer: BaseException, so no ``except Exception`` eats it."""


@contextlib.contextmanager
def _timeout(seconds: float, argv: list[str]):
    def expire(signum, frame):
        raise _ScriptTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _ScriptTimeout:
        raise subprocess.TimeoutExpired([sys.executable, *argv], seconds) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
            signal.SIGUSR2, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ]


@contextlib.contextmanager
def _process_state_restored():
    """Undo what a script may change in this process: argv, path, environment (thread
    variables), cwd, torch threads and flags, signal handlers, RNG states, hooks, logging
    and warning filters."""
    import logging
    import random

    import torch

    argv, path, environ, cwd = sys.argv[:], sys.path[:], dict(os.environ), os.getcwd()
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    dtype = torch.get_default_dtype()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    handlers = {s: h for s in _SIGNALS if (h := signal.getsignal(s)) is not None}
    rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    hooks = sys.excepthook, sys.unraisablehook
    root = logging.getLogger()
    log = root.handlers[:], root.level, logging.root.manager.disable
    try:
        with warnings.catch_warnings():
            # Python's own filters and printing (pytest's record warnings instead)
            warnings.resetwarnings()
            for action, category in (("ignore", ResourceWarning), ("ignore", ImportWarning),
                                     ("ignore", PendingDeprecationWarning),
                                     ("ignore", DeprecationWarning)):
                warnings.simplefilter(action, category)
            warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
            warnings.showwarning = _print_warning
            yield
    finally:
        sys.argv[:] = argv
        sys.path[:] = path
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        os.chdir(cwd)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        sys.excepthook, sys.unraisablehook = hooks
        root.handlers[:], root.level = log[0], log[1]
        logging.disable(log[2])


def _print_warning(message, category, filename, lineno, file=None, line=None):
    (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


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
