#!/usr/bin/env python
"""Collect random-policy CarRacing rollouts into <run>/rollouts.h5 (resumable).

    python scripts/collect_rollouts.py --run runs/demo --episodes 8 --workers 2 --seed 0

Episode k always uses track seed S+k, so the data are the same whatever --workers;
re-running the same command after a kill resumes where it stopped.
"""

from worldmodels.cli import build_parser, config_from_args, run_cli, summary


def main() -> int:
    parser = build_parser(summary(__doc__), ["collect"])
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing dataset collected with other settings")
    parser.add_argument("--no-grid", action="store_true",
                        help="do not write <run>/rollouts_grid.png")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from worldmodels.stages.collect import main as collect_main

    s = collect_main(cfg, args.run, overwrite=args.overwrite, grid=not args.no_grid)
    mb = s["bytes"] / 2**20
    print(f"{s['episodes']} episodes, {s['frames']} frames, {mb:.1f} MiB "
          f"({s['bytes'] / max(s['frames'], 1):.0f} B/frame) -> {s['dataset']} in {s['seconds']} s")
    if "grid" in s:
        print(f"frame grid: {s['grid']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
