"""The shipped reference run: where it lives and how the scripts find it.

``scripts/export_pretrained.py`` writes it (:func:`worldmodels.stages.export.export_pretrained`);
``scripts/evaluate.py`` and ``scripts/watch.py`` use it when no ``--run`` is given. The
default is looked for in the current directory first, then in the repository root, so that
the scripts find it from any directory. Standard library only: ``evaluate.py`` resolves it
before NumPy and torch are imported (it sets their thread counts first).
"""

from __future__ import annotations

from pathlib import Path

import worldmodels
from worldmodels.errors import DataError

__all__ = ["DEFAULT_RUN", "repository_root", "resolve_run"]

#: the shipped run, relative to the current directory or to the repository root
DEFAULT_RUN = "pretrained/carracing"


def repository_root() -> Path:
    """The directory that contains the ``worldmodels`` package (the checkout's root)."""
    return Path(worldmodels.__file__).resolve().parents[1]


def resolve_run(run: str | Path) -> Path:
    """The run directory a script was given.

    :param run: ``--run``; the default :data:`DEFAULT_RUN` is taken relative to the current
        directory when it exists there, else relative to :func:`repository_root`. Any other
        path is used as given.
    :raises DataError: no such directory (for the default, saying how to make it).
    """
    path = Path(run)
    is_default = str(run) == DEFAULT_RUN
    if is_default and not path.is_dir():
        path = repository_root() / DEFAULT_RUN
    if not path.is_dir():
        hint = (" (the shipped reference run is not in this checkout: "
                "scripts/export_pretrained.py writes it)" if is_default else "")
        raise DataError(f"no run directory {path}{hint}: pass --run DIR, a run with a trained "
                        "V, M and controller")
    return path
