"""Progress bars: tqdm on a terminal, silent otherwise (logs and CI stay clean)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(enable: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar; ``enable=None`` shows it only when stderr is a terminal."""
    if enable is None:
        enable = sys.stderr.isatty()
    return tqdm(disable=not enable, dynamic_ncols=True, **kwargs)
