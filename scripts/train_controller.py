#!/usr/bin/env python
"""Train C by CMA-ES in the real CarRacing environment or in M's dream on <run>'s V and M.

    python scripts/train_controller.py --run runs/demo
    python scripts/train_controller.py --run runs/demo --preset smoke
    python scripts/train_controller.py --run runs/demo --backend ray --address HOST:6379
    python scripts/train_controller.py --run runs/demo --env dream --temperature 1.15

Each generation: population x trials episodes on the same fresh tracks for every candidate,
fitness = mean return; checkpoint of the whole CMA-ES state in <run>/controller/last.pt,
best.pt when the distribution's mean improves on the held-out tracks. With --env dream the
fitness comes from M's dream (the paper's DoomTakeCover experiment); the held-out tracks stay
real. Re-running the same command after Ctrl-C or a kill resumes exactly where the last
generation ended.
TensorBoard: tensorboard --logdir <run>/tb
"""

import json

from worldmodels.cli import build_parser, config_from_args, run_cli, summary
from worldmodels.utils.parallel import single_threaded_process


def main() -> int:
    parser = build_parser(summary(__doc__), ["controller"])
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on the last line")
    args = parser.parse_args()
    cfg = config_from_args(args)
    # this process coordinates the workers, or with --workers 1 runs the episodes itself
    single_threaded_process()

    from worldmodels.stages.train_controller import train_controller

    s = train_controller(cfg, args.run)
    print(f"C: {s['params']:,} params, {s['generations']} generations of "
          f"{s['population']} x {s['trials']} episodes in {s['env']}")
    history = s["history"]
    shown = history[:1] + history[max(1, len(history) - 10):]  # generation 0, the last 10
    for r in shown:
        if "mean" not in r:  # generation 0: the start point's held-out score
            print(f"  generation    0: held-out {r['eval']:.1f} (the zero controller)")
            continue
        held = f", held-out {r['eval']:.1f}" if "eval" in r else ""
        print(f"  generation {r['generation']:4d}: fitness mean {r['mean']:8.2f} best "
              f"{r['best']:8.2f} worst {r['worst']:8.2f}, sigma {r['sigma']:.4f}{held}")
    if s["generation_seconds"] is not None:
        print(f"{s['generation_seconds']:.1f} s per generation, "
              f"{s['env_steps_per_s']:.0f} env-steps/s, {s['wall_seconds']:.0f} s in all")
    print(f"-> {s['checkpoint']}")
    if args.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    run_cli(main)
