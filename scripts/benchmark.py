#!/usr/bin/env python
"""Benchmarks, measured side by side in one run, printed as a markdown table.

    python scripts/benchmark.py env       # stock CarRacing-v3 vs FastCarRacing-v3 (steps/s)
    python scripts/benchmark.py collect   # collection env-steps/s (1 vs all workers), storage
    python scripts/benchmark.py data      # frames/s delivered by the dataset readers
    python scripts/benchmark.py vae       # V training images/s (also: betavae, vqvae)
    python scripts/benchmark.py gan       # DCGAN training images/s (one D + one G step)
    python scripts/benchmark.py mdnrnn    # M training sequence-steps/s
    python scripts/benchmark.py dream     # batched dream env-steps/s vs the real environment
    python scripts/benchmark.py agent     # agent-in-the-loop steps/s, one CMA-ES generation
    python scripts/benchmark.py fitness   # frames/s of a CMA-ES generation vs stock CarRacing-v3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from worldmodels.cli import run_cli


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true",
                        help="also print the rows as one JSON line (the last line)")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("env", parents=[common], help="stock vs fast CarRacing, alternating episodes")
    p.add_argument("--episodes", type=int, default=5, help="episodes per environment (median)")
    p.add_argument("--steps", type=int, default=1000, help="steps per episode at most")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("collect", parents=[common], help="collection throughput and on-disk format sweep")
    p.add_argument("--episodes", type=int, default=4, help="episodes per measurement")
    p.add_argument("--steps", type=int, default=500, help="steps per episode")
    p.add_argument("--workers", type=int, default=0, help="'all workers' count (0 = all cores)")
    p = sub.add_parser("data", parents=[common], help="dataset reader throughput")
    p.add_argument("--path", help="an existing run dir or rollouts.h5 (default: collect a small one)")
    p.add_argument("--quick", action="store_true")
    for name in ("vae", "betavae", "vqvae", "gan"):
        p = sub.add_parser(name, parents=[common], help=f"{name} training throughput (images/s, TFLOP/s on CUDA)")
        p.add_argument("--batch-size", type=int, default=128 if name == "gan" else 100)
        p.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p = sub.add_parser("mdnrnn", parents=[common], help="MDN-RNN training sequence-steps/s")
    p.add_argument("--batch-size", type=int, default=100, help="sequences per batch (paper: 100)")
    p.add_argument("--seq-len", type=int, default=999, help="steps per sequence (paper: 999)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p = sub.add_parser("dream", parents=[common], help="batched dream vs real env steps/s")
    p.add_argument("--batch-size", type=int, default=1024, help="dream episodes in lockstep (64 x 16)")
    p.add_argument("--steps", type=int, default=50, help="timed dream steps")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p = sub.add_parser("agent", parents=[common], help="agent-in-the-loop steps/s, a generation")
    p.add_argument("--population", type=int, default=8, help="CMA-ES candidates")
    p.add_argument("--trials", type=int, default=2, help="tracks per candidate")
    p.add_argument("--steps", type=int, default=200, help="steps per episode")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = all cores)")
    p.add_argument("--run", help="a run with V and M (default: random-weight V and M)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p = sub.add_parser("fitness", parents=[common],
                       help="frames/s of a CMA-ES generation (each lever a row) vs stock CarRacing-v3")
    p.add_argument("--population", type=int, default=8, help="CMA-ES candidates")
    p.add_argument("--trials", type=int, default=2, help="tracks per candidate")
    p.add_argument("--steps", type=int, default=400, help="frames per episode at most")
    p.add_argument("--workers", type=int, default=0, help="worker processes (0 = all cores)")
    p.add_argument("--repeats", type=int, default=1, help="timed generations per row (best of)")
    p.add_argument("--run", help="V, M and C (default: the shipped pretrained/carracing)")
    args = parser.parse_args()

    from worldmodels.benchmark import format_table

    print(f"# benchmark {args.what} on {_machine()}", flush=True)
    if args.what == "env":
        from worldmodels.benchmark.env import run

        rows = run(args.episodes, args.steps, args.seed)
    elif args.what == "collect":
        from worldmodels.benchmark.collect import run

        rows = run(args.episodes, args.steps, args.workers)
    elif args.what == "data":
        from worldmodels.benchmark.data import run

        rows = run(args.path, args.quick)
    elif args.what == "agent":
        from worldmodels.benchmark.agent import run

        rows = run(args.population, args.trials, args.steps, args.workers, run_dir=args.run,
                   device=args.device)
    elif args.what == "fitness":
        from worldmodels.benchmark.fitness import run, summary

        rows = run(args.population, args.trials, args.steps, args.workers, run_dir=args.run,
                   repeats=args.repeats)
        print(format_table(rows))
        if args.json:
            print(json.dumps(summary(rows), default=str))
        return 0
    elif args.what == "dream":
        from worldmodels.benchmark.dream import run

        rows = run(args.batch_size, args.steps, args.device)
    elif args.what == "mdnrnn":
        from worldmodels.benchmark.mdnrnn import run

        rows = run(args.batch_size, args.seq_len, args.steps, args.device)
    elif args.what == "gan":
        from worldmodels.benchmark.gan import run

        rows = run(args.batch_size, args.steps, args.device)
    else:
        from worldmodels.benchmark.vae import run

        rows = run(args.what, args.batch_size, args.steps, args.device)
    print(format_table(rows))
    if args.json:
        print(json.dumps(rows, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
