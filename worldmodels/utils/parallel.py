"""Worker processes: which cores they may use, and one BLAS/OpenMP thread each.

No torch here: collection workers never load it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["THREAD_ENV_VARS", "single_threaded_children", "usable_cores"]

# Environment variables read by the BLAS / OpenMP runtimes when a process starts them.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def usable_cores() -> list[int]:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Processes started inside get one BLAS/OpenMP thread from their first import: NumPy's
    OpenBLAS reads its thread count when it loads, before a worker's own code could set it,
    and a second BLAS thread on a worker pinned to one core made preprocessing 4-40x slower
    (collection ran at ~105 instead of ~370 steps/s per worker)."""
    saved = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    os.environ.update({var: "1" for var in THREAD_ENV_VARS})
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
