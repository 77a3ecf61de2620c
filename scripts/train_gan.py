#!/usr/bin/env python
"""Train the DCGAN baseline on <run>/rollouts.h5 (resumable): <run>/gan/last.pt.

    python scripts/train_gan.py --run runs/demo --preset smoke
    python scripts/train_gan.py --run runs/demo --epochs 20 --generator-loss minimax

Samples of a fixed noise batch are saved every epoch in <run>/gan/images/, curves in
<run>/tb/gan (tensorboard --logdir <run>/tb). Re-running the same command after a kill
continues from the last epoch's checkpoint; a finished run just prints its summary.
"""

from worldmodels.cli import build_parser, config_from_args, run_cli, summary


def main() -> int:
    parser = build_parser(summary(__doc__), ["gan"])
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from worldmodels.stages.train_gan import train_gan

    s = train_gan(cfg, args.run, progress=False if args.no_progress else None)
    print(f"DCGAN (G {s['generator_params']:,} + D {s['discriminator_params']:,} params): "
          f"{s['steps']} steps ({s['epochs']:g} epochs) on {s['device']}, "
          f"loss D {s['loss_d']:.4f} G {s['loss_g']:.4f}, D(x) {s['d_real']:.3f} "
          f"D(G(z)) {s['d_fake']:.3f}, {s['images_per_s']:.0f} images/s, "
          f"{s['seconds']} s -> {s['checkpoint']}")
    return 0


if __name__ == "__main__":
    run_cli(main)
