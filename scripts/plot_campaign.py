#!/usr/bin/env python
"""Plot C's held-out score against the real frames its training stepped, beside the original
World Models CMA-ES log (823 at 25.5M frames, 867 at 51M, 900 at 1.7B).

    python scripts/plot_campaign.py --run pretrained/campaign-k4 --out docs/campaign.png
    python scripts/plot_campaign.py --run pretrained/campaign-k4:"round 1" \
        --run runs/k4r2:"round 2":8.0e6 --out campaign.png

Each --run is DIR, DIR:LABEL or DIR:LABEL:OFFSET, OFFSET being the real frames stepped
before that run started (a run continuing another, plus its data collection). The scores are
read from <run>/controller/last.pt (else best.pt); prints the table it plots.
"""

import argparse

from worldmodels.cli import run_cli, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=summary(__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="DIR[:LABEL[:OFFSET]]",
                        help="a run with a trained controller (repeatable)")
    parser.add_argument("--out", required=True, metavar="FILE.png", help="the figure to write")
    parser.add_argument("--title", default="", help="the figure's title")
    args = parser.parse_args()

    from worldmodels.metrics.campaign import Series, campaign_figure, held_out_curve

    series = [Series.parse(text) for text in args.run]
    print("| run | generation | held-out | real frames | hours (wall) |")
    print("|---|---|---|---|---|")
    for s in series:
        for c in held_out_curve(s.run):
            print(f"| {s.label} | {c['generation']} | {c['eval']:.1f} | "
                  f"{(c['env_frames'] + s.offset) / 1e6:.2f}M | {c['seconds'] / 3600:.2f} |")
    print(f"figure: {campaign_figure(series, args.out, args.title)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
