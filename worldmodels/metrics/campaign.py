"""The campaign's report: C's held-out score against the real frames it has stepped, beside
the original World Models run's CMA-ES log.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, evolved C with CMA-ES, 64
candidates x 16 episodes a generation; their CarRacing log (WorldModelsExperiments
``carracing/log``) gives the mean over 1024 rollouts of the distribution's mean: 823 at
generation 25 (25.5M frames), 867 at 50 (51M), 880 at 200 and 900 at 1800 (1.7B frames; the
frames of generation 200 are taken in proportion, 189M). Ours is the held-out score of the
CMA-ES mean on the run's fixed training-range tracks (``controller.eval_episodes``), read from
``controller/last.pt``'s history, against the real frames of the population's and the
held-out episodes (``env_frames``), plus an offset for a run that continues another (its
frames before, and the frames its data collection stepped).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worldmodels.errors import DataError

__all__ = ["PAPER_LOG", "Series", "held_out_curve", "campaign_figure"]

#: (real frames, mean score) of the original's CMA-ES log (carracing/log)
PAPER_LOG: tuple[tuple[float, float], ...] = (
    (25.5e6, 823.0), (51e6, 867.0), (189e6, 880.0), (1.7e9, 900.0))


class Series:
    """One run on the figure: its label, directory and frame offset (see the module doc)."""

    def __init__(self, label: str, run: str | os.PathLike[str], offset: float = 0.0) -> None:
        self.label, self.run, self.offset = label, Path(run), float(offset)

    @classmethod
    def parse(cls, text: str) -> Series:
        """``DIR``, ``DIR:LABEL`` or ``DIR:LABEL:OFFSET_FRAMES``."""
        parts = text.split(":")
        if len(parts) > 3 or not parts[0]:
            raise DataError(f"--run {text!r}: expected DIR, DIR:LABEL or DIR:LABEL:OFFSET")
        try:
            offset = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise DataError(f"--run {text!r}: the offset must be a number of frames") from None
        return cls(parts[1] if len(parts) > 1 and parts[1] else Path(parts[0]).name,
                   parts[0], offset)


def held_out_curve(run: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``[{"generation", "eval", "env_frames", "seconds"}]`` of the generations that were
    scored on the held-out tracks, from ``<run>/controller/last.pt`` (else ``best.pt``);
    ``seconds`` is the wall time of the generations up to it (held-out scoring included
    where the run recorded it)."""
    from worldmodels.utils.checkpoint import load_checkpoint

    controller = Path(run) / "controller"
    path = next((controller / n for n in ("last.pt", "best.pt") if (controller / n).is_file()),
                None)
    if path is None:
        raise DataError(f"no controller/last.pt or best.pt in {run}: train C first "
                        "(scripts/train_controller.py)")
    history = (load_checkpoint(path).get("extra") or {}).get("history") or []
    out, seconds = [], 0.0
    for h in history:
        seconds += float(h.get("seconds") or 0.0)
        if h.get("eval") is not None:
            out.append({"generation": int(h["generation"]), "eval": float(h["eval"]),
                        "env_frames": float(h.get("env_frames") or 0.0), "seconds": seconds})
    if not out:
        raise DataError(f"{path} has no held-out scores yet (controller.eval_every)")
    return out


def campaign_figure(series: Sequence[Series], path: str | os.PathLike[str],
                    title: str = "") -> Path:
    """A PNG (matplotlib, Agg): held-out score against real frames (log scale) of each
    series, and the original's log; returns ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from worldmodels.utils.io import atomic_path

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s in series:
        curve = held_out_curve(s.run)
        ax.plot([max(c["env_frames"] + s.offset, 1.0) for c in curve],
                [c["eval"] for c in curve], marker="o", markersize=3, label=s.label)
    ax.plot([f for f, _ in PAPER_LOG], [v for _, v in PAPER_LOG], marker="s", color="black",
            linestyle="--", label="World Models (the paper's CMA-ES log, 64 x 16)")
    ax.set_xscale("log")
    ax.axhline(906, color="grey", linewidth=0.8, linestyle=":")
    ax.text(0.01, 906, "906: the paper's agent on 100 tracks", fontsize=8, color="grey",
            va="bottom", transform=ax.get_yaxis_transform())
    ax.set_xlabel("real environment frames stepped by C's training (log)")
    ax.set_ylabel("held-out score of the CMA-ES mean")
    ax.set_title(title or "CarRacing: C's held-out score against real frames")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png")
    return path
