#!/usr/bin/env python
"""Train V (VAE, beta-VAE or VQ-VAE) on <run>/rollouts.h5 into <run>/<model>/ (resumable).

    python scripts/train_vae.py --run runs/demo --model vae --epochs 10
    python scripts/train_vae.py --run runs/demo --preset smoke --model vqvae

Re-running the same command after Ctrl-C or a kill resumes from <run>/<model>/last.pt;
a finished run prints its summary. TensorBoard: tensorboard --logdir <run>/tb
"""

import json

from worldmodels.cli import build_parser, config_from_args, run_cli, summary


def main() -> int:
    parser = build_parser(summary(__doc__), ["vae"])
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on the last line")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from worldmodels.stages.train_vae import train_vae

    s = train_vae(cfg, args.run)
    val = ", ".join(f"{k[4:]} {v:.4g}" for k, v in s.items() if k.startswith("val/"))
    print(f"{s['model']}: {s['params']:,} params, {s['epochs']:g} epochs ({s['steps']} steps), "
          f"{s['images_per_s']:.0f} images/s, {s['wall_seconds']:.0f} s -> {s['checkpoint']}")
    if val:
        print(f"validation: {val}")
    if "prior_checkpoint" in s:
        prior = ", ".join(f"{k[6:]} {v:.4g}" for k, v in s.items() if k.startswith("prior/"))
        print(f"code prior: {prior} -> {s['prior_checkpoint']}")
    if args.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    run_cli(main)
