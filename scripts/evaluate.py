#!/usr/bin/env python
"""Score a run's controller on tracks S .. S+N-1: CarRacing-v3 returns, mean ± std, min, max.

    python scripts/evaluate.py                                             # pretrained/carracing
    python scripts/evaluate.py --run runs/demo --episodes 100 --seed 0     # the paper's protocol
    python scripts/evaluate.py --run runs/demo --episodes 10 --seed 1000 --json

Loads V, M and <run>/controller/best.pt (else last.pt); without --run, the shipped
pretrained/carracing (here, else in the repository root). Episodes run in
worldmodels/FastCarRacing-v3, which is bit-identical to gymnasium's CarRacing-v3 (same
observations, rewards and 1,000-step limit) with a faster renderer, so the returns are
CarRacing-v3 returns. No early termination. With --json the last line of stdout is one JSON
object with mean, std (population std), min, max and returns (in seed order), and per
episode its frames, tiles visited, the track's tiles and whether the lap was completed; the
line before it says how many laps were completed, and how far the others got (a return above
900 needs a completed lap: 1000 * visited / N - 0.1 * frames).

Evaluation tracks are 0 .. 999,999,999; training (collection, CMA-ES fitness and held-out
selection) uses the tracks above (worldmodels/seeds.py). Tracks inside the training range or
inside the run's own collection range give a one-line warning on stderr.
"""

import json
import sys

from worldmodels.cli import build_parser, config_from_args, run_cli, summary
from worldmodels.pretrained import DEFAULT_RUN, resolve_run
from worldmodels.seeds import training_overlap_warning
from worldmodels.utils.parallel import single_threaded_process


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        summary(__doc__), ["evaluate"], run_default=DEFAULT_RUN,
        run_help=f"run directory holding V, M and controller/ (default: {DEFAULT_RUN}, here or "
                 "in the repository root)")
    parser.add_argument("--json", action="store_true",
                        help="print the result as one JSON object on the last line")
    args = parser.parse_args(argv)
    e = config_from_args(args).evaluate
    # this process coordinates the workers, or with --workers 1 runs the episodes itself
    single_threaded_process()
    run = resolve_run(args.run)
    warning = training_overlap_warning(e.seed, e.episodes, _collect_section(run))
    if warning:
        print(warning, file=sys.stderr)

    from worldmodels.stages.evaluate import evaluate, lap_summary

    r = evaluate(run, e.episodes, e.seed, workers=e.workers, backend=e.backend,
                 address=e.address, device=e.device, max_steps=e.max_steps,
                 checkpoint=e.checkpoint)
    print(f"{r['checkpoint']} (generation {r['generation']}) on {r['episodes']} tracks "
          f"(seeds {e.seed}..{e.seed + e.episodes - 1}) in {r['env']}:")
    print(f"return {r['mean']:.1f} ± {r['std']:.1f} (min {r['min']:.1f}, max {r['max']:.1f}); "
          f"{r['steps']} steps at {r['env_steps_per_s']:.0f} steps/s on {r['workers']} "
          f"worker(s)")
    print(lap_summary(r))
    if args.json:
        print(json.dumps({k: r[k] for k in ("mean", "std", "min", "max", "returns", "seeds",
                                            "episodes", "max_steps", "checkpoint", "env",
                                            "frames", "tiles", "track_tiles", "laps")}))
    return 0


def _collect_section(run) -> dict | None:
    """The run's recorded collection settings (its tracks), if it has them."""
    try:
        return json.loads((run / "config.json").read_text()).get("collect")
    except (OSError, ValueError, AttributeError):
        return None


if __name__ == "__main__":
    run_cli(main)
