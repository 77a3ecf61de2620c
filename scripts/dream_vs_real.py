#!/usr/bin/env python
"""The same controller in M's dream and in the real CarRacing-v3: episode lengths and returns
side by side (how faithful the dream is; training tracks, never evaluation ones).

    python scripts/dream_vs_real.py --run runs/demo --episodes 32
    python scripts/dream_vs_real.py --run runs/demo --temperature 1.15 --json
"""

import argparse
import json

from worldmodels.cli import run_cli, summary
from worldmodels.utils.parallel import single_threaded_process


def main() -> int:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="run directory with V, M and controller/")
    parser.add_argument("--episodes", type=int, default=32,
                        help="episodes on each side (default: 32)")
    parser.add_argument("--seed", type=int, default=None,
                        help="first real track and the dream episodes' seed (default: a "
                             "training track)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="the dream's tau (default: the one M's training recorded, else 1)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes for the real episodes (0: one per core)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="controller/best.pt (else last.pt) or last.pt")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on the last line")
    args = parser.parse_args()
    single_threaded_process()

    from worldmodels.stages.dream_check import dream_vs_real, format_table

    r = dream_vs_real(args.run, args.episodes, args.seed, args.temperature, args.workers,
                      args.checkpoint)
    print(f"{r['checkpoint']}: action repeat {r['action_repeat']}, {r['episodes']} episodes "
          f"each, seed {r['seed']}")
    print(format_table(r))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    run_cli(main)
