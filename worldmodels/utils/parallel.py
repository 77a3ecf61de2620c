"""Worker processes: which cores they may use, and one BLAS/OpenMP thread each.

No torch here: collection workers never load it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["THREAD_ENV_VARS", "set_numpy_blas_threads", "single_threaded_children",
           "single_threaded_process", "usable_cores"]

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


def single_threaded_process(override: bool = True) -> None:
    """One BLAS/OpenMP thread for this process (and those it starts), set before NumPy or
    torch load their runtimes: a process that coordinates workers, or runs episodes itself
    as one worker would, must not spin extra threads against them. ``override=False`` keeps
    values the user set."""
    for var in THREAD_ENV_VARS:
        if override:
            os.environ[var] = "1"
        else:
            os.environ.setdefault(var, "1")


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


def set_numpy_blas_threads(n: int) -> bool:
    """Set the thread count of the OpenBLAS that NumPy already loaded (its environment
    variables are read only at load time). In a process that steps the agent itself (watch,
    the pipeline's video), NumPy's default threads spin against torch's: one frame's
    preprocessing + encoding took ~13 ms instead of ~1.9 ms. Returns False when no OpenBLAS
    is loaded (e.g. NumPy built on another BLAS), leaving things as they are."""
    import ctypes

    import numpy  # noqa: F401  (loads its BLAS)

    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower()
                    and line.rstrip().endswith(".so") or ".so." in line and "openblas" in line}
    except OSError:
        return False
    done = False
    for lib in sorted(libs):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads", "scipy_openblas_set_num_threads"):
            fn = getattr(handle, name, None)
            if fn is not None:
                fn(int(n))
                done = True
                break
    return done
