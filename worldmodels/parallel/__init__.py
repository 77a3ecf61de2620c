"""The one worker pool of every stage (collection, C's evaluation): this process, local
processes (pinned, one thread each) or Ray actors, with crash and hang recovery from progress
heartbeats (:mod:`~worldmodels.parallel.backends`; Ray: :mod:`~worldmodels.parallel.ray_backend`);
:func:`make_backend` picks one."""

from collections.abc import Callable
from typing import Any

from worldmodels.errors import ConfigError
from worldmodels.parallel.backends import EvaluationBackend, InProcessBackend, LocalBackend
from worldmodels.parallel.ray_backend import RayBackend
from worldmodels.utils.parallel import usable_cores

__all__ = ["EvaluationBackend", "InProcessBackend", "LocalBackend", "RayBackend", "make_backend"]


def make_backend(bundle: bytes, *, backend: str = "local", workers: int = 0,
                 envs_per_worker: int = 0, address: str = "",
                 worker_timeout: float = 600.0, worker: Callable[[bytes], Any] | None = None,
                 name: str = "an evaluation worker") -> EvaluationBackend:
    """The backend a config asks for: ``ray``; ``local`` with one worker runs in this
    process, with more a process pool (``workers = 0``: one per usable core). ``worker``
    builds each worker's state from ``bundle`` (default: C's evaluation, V and M)."""
    if backend == "ray":
        return RayBackend(bundle, workers, envs_per_worker, worker_timeout, address, worker,
                          name)
    if backend != "local":
        raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    n = workers or len(usable_cores())
    if n == 1:
        return InProcessBackend(bundle, envs_per_worker, worker_timeout, worker, name)
    return LocalBackend(bundle, n, envs_per_worker, worker_timeout, worker, name)
