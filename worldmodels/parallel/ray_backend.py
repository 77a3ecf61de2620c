"""The worker pool on a Ray cluster: one actor per CPU, the same tasks and recovery as the
local pool (:mod:`~worldmodels.parallel.backends`), for collection and for C's episodes.

Ha & Schmidhuber (2018, arXiv:1803.10122) evaluated each CMA-ES generation on many machines;
with ``--backend ray --address HOST:PORT`` the population's episodes run on a Ray cluster
(Moritz et al. 2018, arXiv:1712.05889), each actor holding V and M from the bundle sent at
its start, so the nodes need not share the run directory.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from worldmodels.errors import WorldModelsError
from worldmodels.parallel.backends import (
    STARTUP_GRACE,
    EvaluationBackend,
    OnDone,
    _Heartbeat,
    _set_torch_threads,
)
from worldmodels.utils.parallel import usable_cores

__all__ = ["RayBackend"]
class _RayEvaluator:
    """The Ray actor behind :class:`RayBackend` (decorated with ``ray.remote`` there, with
    two threads: :meth:`progress` answers while :meth:`run` steps)."""

    def __init__(self, bundle: bytes, worker: Callable[[bytes], Any]) -> None:
        _set_torch_threads(worker)
        self.state = worker(bundle)
        self.steps = 0  # lockstep decisions since the actor started

    def run(self, task: dict[str, Any]) -> list[tuple]:
        beat = _Heartbeat(None)

        def on_step(t: int) -> None:
            beat(t)
            self.steps += 1

        return self.state.run(task, on_step=on_step)

    def progress(self) -> int:
        return self.steps


class RayBackend(EvaluationBackend):
    """One Ray actor per worker (default: one per CPU of the cluster).

    :param address: a running cluster's address; ``""`` starts a local cluster with
        ``workers`` CPUs (all cores when 0) and shuts it down in :meth:`close`. A Ray session
        already started by the caller (``ray.init``) is used as it is.
    """

    def __init__(self, bundle: bytes, workers: int = 0, envs_per_worker: int = 0,
                 worker_timeout: float = 600.0, address: str = "",
                 worker: Callable[[bytes], Any] | None = None,
                 name: str = "an evaluation worker") -> None:
        try:
            import ray
        except ImportError:
            raise WorldModelsError(
                "--backend ray needs Ray: pip install 'worldmodels[dist]'") from None
        super().__init__(bundle, envs_per_worker, worker_timeout, worker, name)
        self._ray = ray
        self._owns_session = not ray.is_initialized()
        if self._owns_session:
            kwargs = {} if address else {"num_cpus": workers or len(usable_cores())}
            ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                     **kwargs)
        self.num_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._bundle_ref = ray.put(bundle)
        from worldmodels.utils.torch import THREAD_ENV_VARS

        one_thread = {"env_vars": {var: "1" for var in THREAD_ENV_VARS}}  # see LocalBackend
        self._actor_class = ray.remote(num_cpus=1, max_restarts=0, max_concurrency=2,
                                       runtime_env=one_thread)(_RayEvaluator)
        self._actors: list[Any] = []
        self._fresh: list[bool] = []

    def _spawn(self) -> Any:
        return self._actor_class.remote(self._bundle_ref, self.worker)

    def _execute(self, tasks: list[Any], on_done: OnDone) -> None:
        ray = self._ray
        lost_errors = tuple(e for e in (getattr(ray.exceptions, n, None) for n in (
            "RayActorError", "WorkerCrashedError", "ActorUnavailableError", "NodeDiedError"))
            if e is not None)
        while len(self._actors) < min(self.num_workers, len(tasks)):
            self._actors.append(self._spawn())
            self._fresh.append(True)
        queue = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        # ref -> [slot, task, time of the last progress, steps then, pending progress ref]
        running: dict[Any, list[Any]] = {}
        idle = list(range(len(self._actors)))
        while queue or running:
            while idle and queue:
                slot, task_id = idle.pop(0), queue.popleft()
                grace = STARTUP_GRACE if self._fresh[slot] else 0.0
                ref = self._actors[slot].run.remote(tasks[task_id])
                running[ref] = [slot, task_id, time.monotonic() + grace, -1, None]
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                slot, task_id, *_ = running.pop(ref)
                try:
                    results = ray.get(ref)
                except lost_errors as e:
                    self._replace(slot)
                    queue.appendleft(task_id)
                    self._failed(attempts, task_id, f"died ({type(e).__name__})")
                except ray.exceptions.RayTaskError as e:
                    raise WorldModelsError(f"{self.name} raised on task {task_id}:\n"
                                           f"{e}") from None
                else:
                    self._fresh[slot] = False
                    on_done(task_id, results)
                idle.append(slot)
            self._check_progress(running, queue, idle, attempts)

    def _check_progress(self, running: dict[Any, list[Any]], queue: deque, idle: list[int],
                        attempts: list[int]) -> None:
        """Ask every busy actor how far it is; replace one silent for ``worker_timeout``."""
        ray = self._ray
        now = time.monotonic()
        for ref, entry in list(running.items()):
            slot, task_id, since, steps, probe = entry
            if probe is not None:
                done, _ = ray.wait([probe], timeout=0)
                if done:
                    with contextlib.suppress(Exception):  # a dead actor: its run ref says so
                        count = ray.get(done[0])
                        if count != steps:
                            entry[2], entry[3] = max(since, now), count
                    entry[4] = None
            if entry[4] is None:
                entry[4] = self._actors[slot].progress.remote()
            if now - entry[2] > self.worker_timeout:
                running.pop(ref)
                self._replace(slot)
                queue.appendleft(task_id)
                idle.append(slot)
                self._failed(attempts, task_id, "hung (no progress for worker_timeout="
                             f"{self.worker_timeout:g} s)")

    def _replace(self, slot: int) -> None:
        with contextlib.suppress(Exception):
            self._ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._spawn()
        self._fresh[slot] = True

    def close(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
        self._actors = []
        if self._owns_session and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_session = False
