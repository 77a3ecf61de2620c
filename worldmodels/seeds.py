"""Which tracks train and which tracks score: two disjoint ranges of CarRacing seeds.

A CarRacing track is a pure function of its seed. Every reported score must come from tracks
that no stage trained or selected on, so the seeds are split once, here:

- **evaluation**: tracks ``0 .. 999,999,999`` (:data:`EVALUATION_SEEDS`). ``evaluate.py
  --seed S --episodes N`` scores tracks ``S .. S+N-1``; the paper's protocol is ``--seed 0
  --episodes 100``. Small, readable seeds for the numbers people quote.
- **training**: tracks ``1,000,000,000 .. 2**32 - 1`` (:data:`TRAINING_SEEDS`). Collection
  (V's and M's data) starts at :data:`COLLECT_SEED` = 1,000,000,000 (episode k on track
  ``1,000,000,000 + k``); CMA-ES's per-generation fitness tracks and its held-out tracks (the
  selection of ``best.pt``) are 32-bit seeds derived from the controller seed and mapped into
  this range by :func:`training_track`.

The upper bound ``2**32`` keeps every seed valid for ``np.random.seed`` and gymnasium.

Runs made before this split (collection from seed 0, CMA-ES tracks anywhere in 32 bits) still
load, evaluate and resume; their collection tracks ``0 .. N-1`` lie in the evaluation range,
which ``evaluate.py`` warns about (it reads the run's collection range from its
``config.json``).
"""

from __future__ import annotations

EVALUATION_SEEDS = range(0, 1_000_000_000)
TRAINING_SEEDS = range(1_000_000_000, 2**32)
COLLECT_SEED = TRAINING_SEEDS.start


def training_track(seed: int) -> int:
    """Map a derived 32-bit seed into :data:`TRAINING_SEEDS` (a track no evaluation uses)."""
    return TRAINING_SEEDS.start + seed % len(TRAINING_SEEDS)


def overlap(first: int, count: int, seeds: range) -> range:
    """The tracks of ``first .. first+count-1`` that lie in ``seeds`` (empty if none)."""
    lo, hi = max(first, seeds.start), min(first + count, seeds.stop)
    return range(lo, max(lo, hi))


def training_overlap_warning(first: int, count: int,
                             collect: dict[str, int] | None = None) -> str | None:
    """The one-line warning for scoring tracks ``first .. first+count-1``, or None when none of
    them is a training track: one of :data:`TRAINING_SEEDS`, or one of the run's own collection
    tracks (``collect``: the ``collect`` section of its ``config.json``, with ``seed`` and
    ``episodes``; runs made before the split collected on ``0 .. N-1``)."""
    ranges = [("the training tracks {}", TRAINING_SEEDS)]
    if collect and "seed" in collect and "episodes" in collect:
        start = int(collect["seed"])
        ranges.insert(0, ("this run's collection tracks {} (V and M trained on them)",
                          range(start, start + int(collect["episodes"]))))
    for name, seeds in ranges:
        hit = overlap(first, count, seeds)
        if hit:
            where = name.format(f"{seeds.start}..{seeds.stop - 1}")
            return (f"warning: tracks {hit.start}..{hit.stop - 1} are among {where}, so this "
                    f"is not a held-out score; choose --seed so that the tracks avoid them "
                    f"(evaluation tracks: {EVALUATION_SEEDS.start}..{EVALUATION_SEEDS.stop - 1})")
    return None
