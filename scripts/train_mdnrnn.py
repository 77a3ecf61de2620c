#!/usr/bin/env python
"""Train M (the MDN-RNN) on <run>/latents_<model>.h5 into <run>/mdnrnn/ (resumable).

    python scripts/train_mdnrnn.py --run runs/demo                # after scripts/encode.py
    python scripts/train_mdnrnn.py --run runs/demo --preset smoke --model vqvae

Re-running the same command after Ctrl-C or a kill resumes from <run>/mdnrnn/last.pt; a
finished run prints its summary. Validation compares M with baselines that ignore the past.
TensorBoard: tensorboard --logdir <run>/tb
"""

import json

from worldmodels.cli import build_parser, config_from_args, run_cli, summary


def main() -> int:
    parser = build_parser(summary(__doc__), ["mdnrnn"])
    parser.add_argument("--model", dest="encode.model", choices=("vae", "betavae", "vqvae"),
                        default=None, help="whose latents M models: the V given to encode.py "
                        "(sets encode.model; default: 'vae')")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object on the last line")
    args = parser.parse_args()
    cfg = config_from_args(args)

    from worldmodels.stages.train_mdnrnn import train_mdnrnn

    s = train_mdnrnn(cfg, args.run)
    print(f"{s['model']} on {s['vae_model']} latents: {s['params']:,} params, {s['steps']} steps "
          f"({s['epochs']:g} epochs of {s['train_sequences']} sequences), "
          f"{s['seq_steps_per_s']:.0f} sequence-steps/s, {s['wall_seconds']:.0f} s -> "
          f"{s['checkpoint']}")
    if "val/nll" in s:
        print(f"validation: nll {s['val/nll']:.4g} (baseline {s['baseline/nll']:.4g}), "
              f"reward mse {s['val/reward_mse']:.4g} (baseline {s['baseline/reward_mse']:.4g}), "
              f"done bce {s['val/done_bce']:.4g} (baseline {s['baseline/done_bce']:.4g})")
    if s.get("figure"):
        print(f"predictions: {s['figure']}")
    if args.json:
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    run_cli(main)
