"""Atomic file writing: a kill or a full disk never leaves a file that looks complete.

Everything durable is written to ``<name>.tmp-<pid>`` beside its destination, flushed,
``fsync``-ed and then renamed over the destination (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from worldmodels.errors import WorldModelsError

TMP_MARK = ".tmp-"


def tmp_path_for(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def describe_os_error(e: OSError, path: str | os.PathLike[str]) -> str:
    """A one-line, actionable message for an OSError on ``path``."""
    if e.errno == errno.ENOSPC or "no space left" in str(e).lower():
        return f"disk full while writing {path}: free some space or point --run elsewhere"
    if e.errno == errno.EFBIG:
        return f"cannot write {path}: file too large for the file system or the process limit (ulimit -f)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: permission denied or read-only file system"
    if e.errno == errno.ENOENT:
        return f"cannot write {path}: the directory does not exist"
    return f"cannot write {path}: {e.strerror or e}"


def io_error_message(e: BaseException, path: str | os.PathLike[str]) -> str | None:
    """The one-line message for an I/O failure, or None when ``e`` is not one.

    HDF5 reports write failures as ``RuntimeError`` or ``OSError`` whose text carries
    ``errno = N``; those are mapped back to the OS error.
    """
    if isinstance(e, OSError) and e.errno is not None:
        return describe_os_error(e, path)
    match = re.search(r"errno = (\d+)", str(e))
    if isinstance(e, (OSError, RuntimeError)) and match:
        code = int(match.group(1))
        return describe_os_error(OSError(code, os.strerror(code)), path)
    if isinstance(e, OSError):
        return describe_os_error(e, path)
    return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsync-ed and renamed to ``path``.

    On any exception the temporary file is removed and the destination is untouched;
    an ``OSError`` (full disk, permissions) becomes a one-line :class:`WorldModelsError`.
    """
    path = Path(path)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        message = io_error_message(e, path)
        if message is None:
            raise
        raise WorldModelsError(message) from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents); a clear error when that is impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise WorldModelsError(f"cannot write {path}: {blocker} is not a directory (a file "
                               "is in the way); pass a directory, created if needed") from None
    except OSError as e:
        raise WorldModelsError(describe_os_error(e, path)) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise WorldModelsError(f"cannot write {path}: permission denied")
    return path


def remove_stale_tmp(directory: str | os.PathLike[str]) -> int:
    """Delete temp files a killed process left behind in ``directory``."""
    n = 0
    directory = Path(directory)
    if directory.is_dir():
        for p in directory.iterdir():
            if TMP_MARK in p.name:
                with contextlib.suppress(OSError):
                    p.unlink()
                    n += 1
    return n


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created) or raise
    ``WorldModelsError(busy)`` at once if another process holds it; the file is removed
    when the block ends, so no empty lock file stays behind.

    The lock is re-taken if the file was replaced or removed between opening and locking
    (its previous holder unlinked it on the way out): the lock held is always on the file
    that ``path`` names.
    """
    path = Path(path)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WorldModelsError(describe_os_error(e, path)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise WorldModelsError(busy) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still locked: a waiting process re-opens the path after this
        os.close(fd)
