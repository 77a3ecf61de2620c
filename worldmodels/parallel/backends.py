"""The one worker pool of every stage: this process, local worker processes, or a Ray cluster.

Ha & Schmidhuber (2018, arXiv:1803.10122) collect 10,000 rollouts and evaluate each CMA-ES
generation (Hansen, *The CMA Evolution Strategy: A Tutorial*, 2016, arXiv:1604.00772) on 64
candidates x 16 episodes in parallel on many CPU cores. A backend runs *tasks* on workers:
each worker builds its state once from a *bundle* of bytes sent at its start (``worker``, a
picklable callable ``bundle -> state``; ``state.run(task, on_step)`` returns the task's results
and calls ``on_step`` as it makes progress), and :meth:`EvaluationBackend.execute` hands the
tasks out as workers become free. Collection runs its episodes this way
(:class:`~worldmodels.stages.collect.CollectWorker`); C's evaluation is the default worker
(:class:`~worldmodels.control.evaluation.WorkerState`): :meth:`EvaluationBackend.run` takes a
table of candidate parameter vectors and a list of
:class:`~worldmodels.control.evaluation.EpisodeSpec` and returns one result per episode, in the
order given, whatever the number of workers:

* the episodes are cut into *tasks* of ``envs_per_worker`` episodes; a worker runs a task's
  episodes in lockstep (:func:`~worldmodels.control.evaluation.run_episodes`), so that V and M
  run batched over them; tasks are handed out as workers become free;
* each worker loads V and M once (from a bundle of their weights sent at its start, so Ray
  nodes need not share the run directory) and keeps its environments across tasks;
* a worker that dies (killed, out of memory, a segfault) or makes no progress for
  ``worker_timeout`` seconds is killed and replaced, and its task is run again from the start
  (episodes are deterministic given their seed and parameters, so the re-run gives what the
  lost one would have). Liveness is *progress*, not duration: a worker reports every lockstep
  decision (a heartbeat, sent at most every :data:`HEARTBEAT_SECONDS`), so a task on a machine
  ten times slower, or shared with other jobs, just takes longer, while a worker that stops
  stepping is caught ``worker_timeout`` seconds after its last step. A task that kills
  :data:`MAX_ATTEMPTS` workers stops the run with an error: a generation is never scored on
  fewer episodes;
* an exception inside a worker is a bug, not a crash: it stops the run with its traceback.

:class:`LocalBackend` pins worker ``i`` to core ``i`` with one torch thread;
:class:`~worldmodels.parallel.ray_backend.RayBackend` uses one actor per CPU of the cluster (``--address``, or a local cluster).
With one worker, :class:`InProcessBackend` runs the tasks in this process.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from worldmodels.errors import WorldModelsError
from worldmodels.utils.parallel import single_threaded_children, usable_cores
from worldmodels.utils.progress import progress_bar

if TYPE_CHECKING:  # torch stays out of workers that do not need it (collection)
    import numpy as np

    from worldmodels.control.evaluation import EpisodeResult, EpisodeSpec

__all__ = [
    "MAX_ATTEMPTS",
    "EvaluationBackend",
    "InProcessBackend",
    "LocalBackend",
    "usable_cores",
]

#: a task is tried at most this many times (each failure kills and replaces its worker)
MAX_ATTEMPTS = 3
#: seconds a new worker may take to start (import torch, build V and M) before it is
#: taken as hung, when that is longer than ``worker_timeout``
STARTUP_GRACE = 120.0
#: lockstep group size when ``envs_per_worker = 0``: at most this (see ``task_size``)
AUTO_ENVS_CAP = 32

#: a busy worker reports its progress at most this often (seconds)
HEARTBEAT_SECONDS = 1.0

OnDone = Callable[[int, Any], None]


def _fault_hook() -> Callable[[int], None] | None:
    """Test hook: ``WORLDMODELS_FAULT=crash:PATH`` (or ``hang:PATH``, ``slow:PATH``) makes the
    first worker that reaches lockstep step 3 of a task while ``PATH`` does not exist create
    it and die (``os._exit``), hang, or from then on take :data:`SLOW_STEP_SECONDS` longer per
    step (a slow or busy machine). Only workers read it, never the main process."""
    spec = os.environ.get("WORLDMODELS_FAULT", "")
    if ":" not in spec:
        return None
    mode, path = spec.split(":", 1)
    slow = [False]

    def hook(t: int) -> None:
        if slow[0]:
            time.sleep(SLOW_STEP_SECONDS)
        if t != 3:
            return
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        if mode == "crash":
            os._exit(17)
        if mode == "hang":
            while True:
                time.sleep(3600)
        if mode == "slow":
            slow[0] = True

    return hook


#: the extra seconds per lockstep step of a ``slow`` test fault
SLOW_STEP_SECONDS = 0.25


def _evaluation_worker() -> Callable[[bytes], Any]:
    from worldmodels.control.evaluation import WorkerState

    return WorkerState


def _set_torch_threads(worker: Any) -> None:
    """One torch thread in a worker whose state uses torch (``uses_torch``, default true)."""
    if getattr(worker, "uses_torch", True):
        from worldmodels.utils.torch import set_threads

        set_threads(1)


class _Heartbeat:
    """The ``on_step`` of a task in a worker: the test fault hook, then a progress report
    through ``send(count)`` at most every :data:`HEARTBEAT_SECONDS`."""

    def __init__(self, send: Callable[[int], None] | None) -> None:
        self.send = send
        self.hook = _fault_hook()
        self.last = time.monotonic()
        self.count = 0

    def __call__(self, t: int) -> None:
        if self.hook is not None:
            self.hook(t)
        self.count += 1
        now = time.monotonic()
        if self.send is not None and now - self.last >= HEARTBEAT_SECONDS:
            self.last = now
            self.send(self.count)


@contextlib.contextmanager
def _torch_threads(n: int, worker: Any) -> Iterator[None]:
    if not getattr(worker, "uses_torch", True):
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EvaluationBackend:
    """Runs tasks on ``num_workers`` workers; subclasses implement :meth:`_execute`.

    :param bundle: what each worker builds its state from; for the default worker, V and M
        (:func:`~worldmodels.control.evaluation.worker_bundle`).
    :param envs_per_worker: episodes per task of :meth:`run` (one lockstep group); 0: automatic.
    :param worker_timeout: seconds a busy worker may go without progress (``on_step``: a
        lockstep decision) before it counts as hung.
    :param worker: ``bundle -> state`` in each worker (a picklable class or function; default
        :class:`~worldmodels.control.evaluation.WorkerState`); ``uses_torch = False`` on it keeps
        torch out of the workers.
    :param name: what messages call one worker.
    """

    num_workers: int = 1

    def __init__(self, bundle: bytes, envs_per_worker: int = 0,
                 worker_timeout: float = 600.0, worker: Callable[[bytes], Any] | None = None,
                 name: str = "an evaluation worker") -> None:
        self.bundle = bundle
        self.envs_per_worker = envs_per_worker
        self.worker_timeout = worker_timeout
        self.worker = worker if worker is not None else _evaluation_worker()
        self.name = name
        #: workers replaced after a crash or a hang, in total
        self.restarts = 0

    def task_size(self, episodes: int) -> int:
        """Episodes per task for a batch of ``episodes``."""
        if self.envs_per_worker > 0:
            return self.envs_per_worker
        # the fewest tasks of at most AUTO_ENVS_CAP, a multiple of the workers, of equal size:
        # 100 episodes on 2 workers are 4 tasks of 25, not 32 + 32 + 32 + 4 (one worker idle
        # for most of a task)
        rounds = max(1, math.ceil(episodes / (self.num_workers * AUTO_ENVS_CAP)))
        return max(1, math.ceil(episodes / (self.num_workers * rounds)))

    def run(self, params: np.ndarray, specs: Sequence[EpisodeSpec], *, max_steps: int = 1000,
            early_stop_steps: int = 0, early_stop: str = "tiles", renderer: str = "exact",
            latent_shift: Sequence[float] | None = None,
            progress: bool | None = False, desc: str = "episodes") -> list[EpisodeResult]:
        """Run every episode of ``specs``; one result per spec, in order.

        :param params: (K, N) float64 flat controller parameters; ``spec.candidate`` is a row.
        :param latent_shift: the approximate renderer's correction of V's z
            (:func:`~worldmodels.control.evaluation.run_episodes`).
        :raises WorldModelsError: a task failed :data:`MAX_ATTEMPTS` times, or raised.
        """
        import numpy as np

        from worldmodels.control.evaluation import EpisodeResult

        params = np.asarray(params, dtype=np.float64)
        size = self.task_size(len(specs))
        tasks = []
        for start in range(0, len(specs), size):
            chunk = specs[start:start + size]
            rows = sorted({s.candidate for s in chunk if s.candidate >= 0})
            remap = {k: i for i, k in enumerate(rows)}
            tasks.append({
                "params": params[rows] if rows else np.zeros((0, params.shape[1])),
                "specs": [(s.key, remap.get(s.candidate, -1), s.seed) for s in chunk],
                "max_steps": int(max_steps), "early_stop_steps": int(early_stop_steps),
                "early_stop": str(early_stop), "renderer": str(renderer),
                "latent_shift": None if latent_shift is None else [float(x) for x in latent_shift],
            })
        done: dict[int, EpisodeResult] = {}
        bar = progress_bar(progress, total=len(specs), desc=desc, unit="ep")

        def on_done(task_id: int, results: list[tuple]) -> None:
            for r in results:
                done[r[0]] = EpisodeResult(*r)
            bar.update(len(results))

        try:
            self._execute(tasks, on_done)
        finally:
            bar.close()
        missing = [s.key for s in specs if s.key not in done]
        if missing:  # never score on fewer episodes than asked
            raise WorldModelsError(f"{len(missing)} of {len(specs)} episodes have no result")
        return [done[s.key] for s in specs]

    def execute(self, tasks: Sequence[Any], on_done: OnDone) -> None:
        """Run every task (each given to ``state.run`` in some worker); ``on_done(i, results)``
        in this process as task ``i`` finishes, in any order. A task whose worker dies or goes
        silent is run again on a fresh one (at most :data:`MAX_ATTEMPTS` times in all)."""
        self._execute(list(tasks), on_done)

    def _execute(self, tasks: list[Any], on_done: OnDone) -> None:
        raise NotImplementedError

    def _failed(self, attempts: list[int], task_id: int | None, what: str) -> None:
        """Count a lost task; raise when it has failed too often."""
        self.restarts += 1
        if task_id is None:
            print(f"warning: {self.name} {what}; replaced", file=sys.stderr)
            return
        attempts[task_id] += 1
        if attempts[task_id] >= MAX_ATTEMPTS:
            raise WorldModelsError(
                f"{self.name} {what} on the same task {attempts[task_id]} times in a row; "
                "stopping rather than going on without its results (finished work is saved: "
                "fix the cause and re-run the same command)")
        print(f"warning: {self.name} {what}; replaced, its task is run again", file=sys.stderr)

    def close(self) -> None:
        """Stop the workers (idempotent)."""

    def __enter__(self) -> EvaluationBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ in-process


class InProcessBackend(EvaluationBackend):
    """One worker: the tasks run in this process, with one torch thread (as a worker's).

    NumPy's BLAS threads are fixed when NumPy loads: a process meant to run episodes itself
    should start with ``OMP_NUM_THREADS=1`` / ``OPENBLAS_NUM_THREADS=1`` (the scripts do)."""

    num_workers = 1

    def __init__(self, bundle: bytes, envs_per_worker: int = 0,
                 worker_timeout: float = 600.0, worker: Callable[[bytes], Any] | None = None,
                 name: str = "an evaluation worker") -> None:
        super().__init__(bundle, envs_per_worker, worker_timeout, worker, name)
        self._state: Any = None

    def _execute(self, tasks: list[Any], on_done: OnDone) -> None:
        from worldmodels.utils.parallel import set_numpy_blas_threads

        set_numpy_blas_threads(1)  # as a worker's; NumPy's are spinning threads otherwise
        with _torch_threads(1, self.worker):
            if self._state is None:
                self._state = self.worker(self.bundle)
            for task_id, task in enumerate(tasks):
                on_done(task_id, self._state.run(task))

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None


# ------------------------------------------------------------------------ local pool


def _worker_main(conn: Any, bundle_path: str, core: int | None, worker: Any) -> None:
    """A local worker: build its state (for C's evaluation: load V and M), say ready, then run
    tasks until told to stop."""
    # Ctrl-C reaches the whole process group: only the main process handles it (and stops
    # the workers), so no worker dies in the middle of a task on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if core is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {core})
    _set_torch_threads(worker)
    with open(bundle_path, "rb") as f:
        state = worker(f.read())
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        task_id, task = message
        beat = _Heartbeat(lambda n, task_id=task_id: conn.send(("beat", task_id, n)))
        try:
            results = state.run(task, on_step=beat)
        except Exception:
            conn.send(("error", task_id, traceback.format_exc()))
        else:
            conn.send(("ok", task_id, results))
    state.close()


def _remove_file(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class _Worker:
    """One worker process of :class:`LocalBackend` and what it is doing."""

    def __init__(self, ctx: Any, bundle_path: str, core: int | None, worker: Any) -> None:
        self.conn, child = ctx.Pipe()
        # The bundle goes by file: a large argument would be written into the start-up pipe,
        # and CPython blocks for ever on that write if the child dies before reading it.
        self.process = ctx.Process(target=_worker_main, args=(child, bundle_path, core, worker),
                                   daemon=True)
        with single_threaded_children():
            self.process.start()
        child.close()
        self.core = core
        self.ready = False
        self.task: int | None = None
        # last sign of life: start of the process or of the current task, or its last step
        self.since = time.monotonic()

    def stop(self, wait: float = 2.0) -> None:
        if self.process.is_alive() and self.ready and self.task is None:
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            self.process.join(wait)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(wait)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(wait)
        with contextlib.suppress(OSError):
            self.conn.close()


class LocalBackend(EvaluationBackend):
    """A pool of worker processes on this machine (spawned once, reused every generation).

    :param workers: number of processes (0: one per usable core); worker ``i`` is pinned to
        core ``i mod cores`` and uses one torch thread.
    """

    def __init__(self, bundle: bytes, workers: int = 0, envs_per_worker: int = 0,
                 worker_timeout: float = 600.0, worker: Callable[[bytes], Any] | None = None,
                 name: str = "an evaluation worker") -> None:
        import multiprocessing as mp

        super().__init__(bundle, envs_per_worker, worker_timeout, worker, name)
        self.cores = usable_cores()
        self.num_workers = workers or len(self.cores)
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._bundle_path: str | None = None
        self._start_failures = 0  # workers in a row that died before they were ready

    def _spawn(self, slot: int) -> _Worker:
        if self._bundle_path is None:
            fd, self._bundle_path = tempfile.mkstemp(prefix="worldmodels-bundle-", suffix=".pt")
            # removed by close(), or at exit if close() is never reached
            self._remove_bundle = weakref.finalize(self, _remove_file, self._bundle_path)
            with os.fdopen(fd, "wb") as f:
                f.write(self.bundle)
        return _Worker(self._ctx, self._bundle_path, self.cores[slot % len(self.cores)],
                       self.worker)

    def _execute(self, tasks: list[Any], on_done: OnDone) -> None:
        from multiprocessing.connection import wait

        while len(self._workers) < min(self.num_workers, len(tasks)):
            self._workers.append(self._spawn(len(self._workers)))
        queue = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        while queue or any(w.task is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.task is None and queue:
                    w.task = queue.popleft()
                    w.since = time.monotonic()
                    with contextlib.suppress(OSError):  # a dead worker: found by _poll
                        w.conn.send((w.task, tasks[w.task]))
            # Wake up for a message, a death, or the next deadline (at least once a second).
            busy = [w.since + self._limit(w) for w in self._workers
                    if w.task is not None or not w.ready]
            timeout = min([1.0] + [d - time.monotonic() for d in busy])
            objects = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
            wait(objects, timeout=max(0.01, timeout))
            for slot, w in enumerate(self._workers):
                problem = self._poll(w, tasks, on_done)
                if problem is not None:
                    self._check_start(w, problem)
                    lost = w.task
                    w.stop(wait=0.5)
                    self._workers[slot] = self._spawn(slot)
                    if lost is not None:
                        queue.appendleft(lost)
                    self._failed(attempts, lost, problem)

    def _poll(self, w: _Worker, tasks: list[Any], on_done: OnDone) -> str | None:
        """Handle what worker ``w`` sent; a description of its failure, or None."""
        try:
            while w.conn.poll():
                kind, *rest = w.conn.recv()
                if kind == "ready":
                    w.ready, w.since = True, time.monotonic()
                    self._start_failures = 0
                elif kind == "beat":
                    if rest[0] == w.task:
                        w.since = time.monotonic()
                elif kind == "ok":
                    task_id, results = rest
                    w.task = None
                    on_done(task_id, results)
                else:
                    task_id, text = rest
                    raise WorldModelsError(
                        f"{self.name} raised on task {task_id}:\n{text.rstrip()}")
        except (EOFError, OSError):
            pass  # the process is gone: reported below with its exit code
        if not w.process.is_alive():
            w.process.join(0.1)
            return f"died (exit code {w.process.exitcode})"
        if (w.task is not None or not w.ready) and time.monotonic() - w.since > self._limit(w):
            if not w.ready:
                return f"did not start within {self._limit(w):g} s"
            return f"hung (no progress for worker_timeout={self.worker_timeout:g} s)"
        return None

    def _check_start(self, w: _Worker, problem: str) -> None:
        """Workers that cannot even start would be replaced for ever: stop after a few."""
        if w.ready:
            return
        self._start_failures += 1
        if self._start_failures >= MAX_ATTEMPTS:
            raise WorldModelsError(
                f"{self.name.split(' ', 1)[1]}s cannot start: {self._start_failures} in a row "
                f"{problem} (out of memory? a script calling this without an "
                "`if __name__ == '__main__':` guard?)")

    def _limit(self, w: _Worker) -> float:
        """Seconds ``w`` may stay silent: ``worker_timeout`` while busy, or the start-up
        grace."""
        return self.worker_timeout if w.ready else max(self.worker_timeout, STARTUP_GRACE)

    def close(self) -> None:
        try:
            for w in self._workers:
                with contextlib.suppress(Exception):  # stop the others whatever happens
                    w.stop()
        finally:
            self._workers = []
            if self._bundle_path is not None:
                self._remove_bundle()
                self._bundle_path = None
