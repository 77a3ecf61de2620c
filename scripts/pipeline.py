#!/usr/bin/env python
"""Run the whole World Models pipeline on <run>, each stage skipped when already complete.

collect -> V -> encode -> M -> C -> evaluate -> video, resumable like every stage.

    python scripts/pipeline.py --run runs/smoke --preset smoke
    python scripts/pipeline.py --run runs/paper --preset carracing --episodes 100
    python scripts/pipeline.py --run runs/dream --preset smoke --set controller.env=dream

Ha & Schmidhuber (2018), arXiv:1803.10122, section 3's procedure, one stage after the other
in this process (the same functions the per-stage scripts call). The final evaluation scores C
on held-out tracks S .. S+N-1 (CarRacing-v3 returns) beside the zero controller and a random
linear C on the same tracks; one real episode is recorded to <run>/videos/pipeline.mp4. A
table (stage, ran/skipped, wall seconds, key metric) is printed and written to
<run>/pipeline/summary.txt and summary.json. Re-running the same command resumes an
interrupted pipeline; a finished one is only re-read.
"""

import json

from worldmodels.cli import build_parser, config_from_args, run_cli, summary
from worldmodels.utils.parallel import single_threaded_process


def main() -> int:
    parser = build_parser(summary(__doc__), [])
    parser.add_argument("--episodes", type=int, default=None,
                        help="held-out tracks of the final evaluation (default: min(100, "
                             "controller.eval_episodes); the paper's protocol is 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="first held-out track S: tracks S .. S+N-1 (default: 100000, "
                             "away from the collected tracks)")
    parser.add_argument("--max-steps", type=int, default=1000,
                        help="steps per evaluation episode (default: 1000, CarRacing-v3's "
                             "episode; fewer gives returns that are not CarRacing-v3 scores)")
    parser.add_argument("--no-video", action="store_true",
                        help="do not record <run>/videos/pipeline.mp4")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on the last line")
    args = parser.parse_args()
    cfg = config_from_args(args)
    single_threaded_process(override=False)  # workers and C's episodes: one BLAS thread each

    from worldmodels.stages.pipeline import HELDOUT_SEED, run_pipeline

    r = run_pipeline(cfg, args.run, episodes=args.episodes,
                     seed=HELDOUT_SEED if args.seed is None else args.seed,
                     max_steps=args.max_steps, video=not args.no_video, log=print)
    print()
    print(r["table"])
    print()
    print(r["comparison"])
    print(f"-> {r['summary_path']}")
    if args.json:
        print(json.dumps({k: r[k] for k in ("rows", "evaluation", "baselines", "comparison",
                                            "video")}, default=str))
    return 0


if __name__ == "__main__":
    run_cli(main)
