#!/usr/bin/env python
"""Encode every frame of <run>/rollouts.h5 with a trained V into <run>/latents_<model>.h5.

    python scripts/encode.py --run runs/demo                  # V = <run>/vae/best.pt
    python scripts/encode.py --run runs/demo --model vqvae    # code grids of the VQ-VAE

Stores mu and log sigma^2 per frame (VAE, beta-VAE) or the code grid (VQ-VAE), with the
actions, rewards, terminated and truncated flags, for scripts/train_mdnrnn.py. Re-running
resumes; a finished file is left as is; a file made by another V is refused unless
--overwrite.
"""

import json

from worldmodels.cli import build_parser, config_from_args, run_cli, summary


def main() -> int:
    parser = build_parser(summary(__doc__), ["encode"])
    parser.add_argument("--overwrite", action="store_true",
                        help="re-encode a latents file made by another V or from other rollouts")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on the last line")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from worldmodels.stages.encode import main as encode_main

    s = encode_main(cfg, args.run, overwrite=args.overwrite)
    speed = f", {s['frames_per_s']:.0f} frames/s" if s["encoded_frames"] else " (already complete)"
    print(f"{s['model']} step {s['vae_step']}: {s['episodes']} episodes, {s['frames']:,} frames "
          f"-> {s['kind']} latents of dim {s['latent_dim']}, {s['bytes'] / 1e6:.1f} MB in "
          f"{s['seconds']:.1f} s{speed} -> {s['latents']}")
    if args.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    run_cli(main)
