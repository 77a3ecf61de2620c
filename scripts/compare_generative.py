#!/usr/bin/env python
"""Train (or load) VAE, β-VAE, VQ-VAE (+ prior) and DCGAN on one run's frames and compare
them: reconstruction, ELBO / bits per dim, code usage, FD / KID / precision / recall in
two in-project feature spaces, cost; writes <run>/compare/report.md, report.json, figures.

    python scripts/collect_rollouts.py --run runs/demo --preset smoke
    python scripts/compare_generative.py --run runs/demo --preset smoke

Settings of each model come from the [vae] and [gan] sections (same preset, same flags
as train_vae.py / train_gan.py via --set vae.epochs=...); finished models are loaded,
not retrained.
"""

from pathlib import Path

from worldmodels.cli import build_parser, config_from_args, run_cli, summary


def main() -> int:
    parser = build_parser(summary(__doc__), ["compare"], epilog=__doc__)
    args = parser.parse_args()
    cfg = config_from_args(args)

    from worldmodels.stages.compare import compare_generative

    report = compare_generative(cfg, args.run)
    print((Path(args.run) / "compare" / "report.md").read_text())
    print(f"report: {args.run}/compare/report.md ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
