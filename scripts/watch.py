#!/usr/bin/env python
"""Watch a run's agent drive: in the real CarRacing-v3 or inside M's dream.

    python scripts/watch.py                                   # pretrained/carracing, real env
    python scripts/watch.py --run runs/demo --env dream --tau 1.15 --episodes 3
    python scripts/watch.py --run runs/demo --env real --save real.mp4 --seed 7

See ``worldmodels/control/watch.py`` (``--help`` lists every option).
"""

from worldmodels.cli import run_cli
from worldmodels.stages.watch import main

if __name__ == "__main__":
    run_cli(main)
