#!/usr/bin/env python
"""The same controller in M's dream and in the real CarRacing-v3: episode lengths and returns
side by side (how faithful the dream is; training tracks, never evaluation ones).

    python scripts/dream_vs_real.py --run runs/demo --episodes 32
    python scripts/dream_vs_real.py --run runs/demo --temperature 1.15 --json
"""

import json

from worldmodels.cli import build_parser, config_from_args, run_cli, summary
from worldmodels.utils.parallel import single_threaded_process


def main() -> int:
    parser = build_parser(summary(__doc__), ["dream_check"],
                          run_help="run directory with V, M and controller/")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on the last line")
    args = parser.parse_args()
    d = config_from_args(args).dream_check
    single_threaded_process()

    from worldmodels.stages.dream_check import dream_vs_real, format_table

    r = dream_vs_real(args.run, d.episodes, d.seed if d.seed >= 0 else None,
                      d.temperature if d.temperature >= 0 else None, d.workers, d.checkpoint)
    print(f"{r['checkpoint']}: action repeat {r['action_repeat']}, {r['episodes']} episodes "
          f"each, seed {r['seed']}")
    print(format_table(r))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    run_cli(main)
