#!/usr/bin/env python
"""Ship a trained run as a small, git-friendly pretrained directory (what evaluate.py and
watch.py use without --run).

    python scripts/export_pretrained.py --run runs/ref                  # -> pretrained/carracing
    python scripts/export_pretrained.py --run runs/ref --out /tmp/ref --no-video --overwrite

V and M are stored in fp16, C in fp32 exactly as trained; the run's config.json, its
training curves (curves/<stage>.csv and .png, C's history per generation), a video of one
real episode (drive.mp4) and MANIFEST.json (every file's size and SHA-256, the source run,
the date, the git commit). Optimiser, scheduler, RNG and CMA-ES states are left out. The
directory is built beside --out and renamed into place when complete; an existing --out is
only replaced with --overwrite. See worldmodels/export.py.
"""

import argparse

from worldmodels.cli import build_parser, run_cli, summary


def main() -> int:
    from worldmodels.stages.export import DEFAULT_OUT

    parser = build_parser(summary(__doc__), [],
                          run_help="the trained run: V, M (mdnrnn/), controller/ and config.json")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"the directory to write (default: {DEFAULT_OUT})")
    parser.add_argument("--video", action=argparse.BooleanOptionalAction, default=True,
                        help="drive.mp4: one real episode of the exported agent, real frame | "
                             "V's reconstruction | M's prediction (default: on)")
    parser.add_argument("--video-seed", type=int, default=0, metavar="S",
                        help="track seed of the video's episode (default: 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out (only once the new export is complete)")
    parser.add_argument("--resumable", action="store_true",
                        help="also export C's CMA-ES state (controller/last.pt, pickle-free), so "
                             "that train_controller.py --run OUT continues the run")
    args = parser.parse_args()

    from worldmodels.stages.export import export_pretrained

    r = export_pretrained(args.run, args.out, video=args.video, video_seed=args.video_seed,
                          overwrite=args.overwrite, progress=None,
                          resumable=args.resumable)
    for f in r["files"]:
        print(f"{f['bytes']:>12,}  {f['path']}")
    clip = r["video"]
    if clip is not None:
        print(f"video: track seed {clip['seed']}, {clip['steps']} steps, return "
              f"{clip['return']:.1f}")
    print(f"exported {args.run} -> {r['out']}: {len(r['files']) + 1} files, "
          f"{r['bytes'] / 1e6:.1f} MB (V: {r['vae_model']})")
    return 0


if __name__ == "__main__":
    run_cli(main)
