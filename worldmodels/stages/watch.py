"""Watch a run's agent drive: in the real CarRacing-v3 or inside M's dream (Ha &
Schmidhuber 2018, arXiv:1803.10122).

The logic of ``scripts/watch.py``::

    python scripts/watch.py                                   # pretrained/carracing, real env
    python scripts/watch.py --run runs/demo --env dream --tau 1.15 --episodes 3
    python scripts/watch.py --run runs/demo --env real --save real.mp4 --seed 7
    python scripts/watch.py --seed 1013 --save drive.mp4 --stills drive.png   # + 6 stills

A live window when there is a display (pygame, as CarRacing's human mode; Esc or q stops),
a video file otherwise or with --save (.mp4 or .gif); without --save the file is
<run>/videos/watch_<env>_seed<S>.mp4, or runs/watch/<run name>_<env>_seed<S>.mp4 under the
current directory for an exported run (the shipped pretrained/carracing: its files are
git-tracked and listed in its MANIFEST.json, so nothing is written there). --env real
shows, side by side, the real frame, V's reconstruction of it and
M's prediction of it from the previous step (the mean of the most likely mixture component,
decoded by V); --env dream shows V's decoding of the dream's z (the agent acts on M's
[z, h]). With a VQ-VAE as V (van den Oord et al. 2017, arXiv:1711.00937) the panels are the
real frame, the VQ-VAE's reconstruction from its codes and M's most likely next codes
decoded; the dream shows its sampled code grids decoded. The header gives the episode, the step and the score. Episodes use seeds S, S+1,
... (track seeds in the real env, episode seeds in the dream). ``--stills FILE.png`` also
writes six moments of the first episode, evenly spread over it, as one picture (3 rows of
2, each the whole composed frame): what the README shows beside a video.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worldmodels.cli import summary
from worldmodels.errors import DataError, WorldModelsError
from worldmodels.pretrained import DEFAULT_RUN, resolve_run

PANEL = 192  # side-by-side panel size (96 x 2, 64 x 3)
STILLS = 6  # moments in the --stills picture (3 rows of 2)
STILLS_KEEP_EVERY = 5  # frames of the first episode kept for it: every 5th (bounded memory)
SINGLE = 384  # single-view size (96 x 4, 64 x 6)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--run``, ``--save`` and the ``[watch]`` settings (flags, ``--preset``, ``--set``), as
    one namespace; a negative ``--tau`` becomes None (M's recorded temperature)."""
    from worldmodels.cli import build_parser, config_from_args

    parser = build_parser(
        summary(__doc__), ["watch"], run_default=DEFAULT_RUN,
        run_help=f"run directory with V, M and controller/ (default: {DEFAULT_RUN}, here or in "
                 "the repository root)")
    parser.add_argument("--save", metavar="FILE",
                        help="write the video here (.mp4 or .gif) instead of opening a window "
                             "(without a display and without --save: <run>/videos/watch_<env>_"
                             "seed<S>.mp4, or ./runs/watch/<run name>_<env>_seed<S>.mp4 for an "
                             "exported run such as the shipped pretrained/carracing)")
    parser.add_argument("--stills", metavar="FILE.png",
                        help="also write six moments of the first episode, evenly spread over "
                             "it, as one PNG (3 rows of 2 composed frames)")
    args = parser.parse_args(argv)
    w = config_from_args(args).watch
    values = dataclasses.asdict(w)
    values["tau"] = None if w.tau < 0 else w.tau
    return argparse.Namespace(run=args.run, save=args.save, stills=args.stills, **values)


def stills_picture(kept: list[tuple[int, Any]], n: int = STILLS, gap: int = 8) -> Any:
    """``n`` of the ``(step, image)`` pairs ``kept``, the nearest to the steps evenly spread
    over the episode (the middles of ``n`` equal stretches), in rows of 2 with ``gap``
    white pixels between: (rows * (H + gap) - gap, 2 * W + gap, 3) uint8."""
    import numpy as np

    from worldmodels.utils.images import make_grid

    if not kept:
        raise WorldModelsError("--stills: the episode gave no frames")
    last = kept[-1][0]
    steps = np.array([k for k, _ in kept])
    picked = [kept[int(np.abs(steps - (j + 0.5) * last / n).argmin())][1] for j in range(n)]
    return make_grid(np.stack(picked), ncols=2, pad=gap)[gap:-gap, gap:-gap]  # no outer border


# ------------------------------------------------------------------------------ episodes


def real_episode(agent: Any, seed: int, max_steps: int, side_by_side: bool,
                 label: str) -> Iterator[tuple[Any, float]]:
    """Frames of one real episode and the return so far: the reset frame, then one per step."""
    import gymnasium as gym

    import worldmodels.envs as envs
    from worldmodels.envs.dream import decode_frames
    from worldmodels.utils.video import annotate, fit, panels

    names = ["real", "VQ reconstruction" if agent.discrete else "V reconstruction",
             "M prediction"]
    env = gym.make(envs.FAST_ENV_ID)
    try:
        obs, _ = env.reset(seed=seed)
        agent.reset(1)
        total, t, ended, predicted = 0.0, 0, False, None
        while True:
            if side_by_side:
                recon = decode_frames(agent.vae, agent.encode(obs[None]))[0]
                image = panels([obs, recon, predicted], names, PANEL)
            else:
                image = fit(obs, SINGLE)
            yield annotate(image, [label, f"step {t}", f"score {total:.1f}",
                                   *(["done"] if ended else [])]), total
            if ended:
                return
            action = agent.act(obs[None])[0]  # also advances M: h_{t+1}
            if side_by_side:  # M's guess of the next frame: its most likely next z
                predicted = decode_frames(agent.vae, agent.predicted_z())[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            t += 1
            ended = terminated or truncated or t >= max_steps
    finally:
        env.close()


def dream_episode(agent: Any, env: Any, seed: int, label: str) -> Iterator[tuple[Any, float]]:
    """Frames of one dream episode (V's decoding of z_t) and the return so far; the agent's
    C acts on the dream's observation [z_t, h_t]."""
    import torch

    from worldmodels.utils.video import annotate, fit

    D = env.dream.latent_dim
    obs, _ = env.reset(seed=seed)
    total, t, ended = 0.0, 0, False
    while True:
        yield annotate(fit(env.render(), SINGLE),
                       [label, f"tau {env.temperature:g}", f"step {t}", f"score {total:.1f}",
                        *(["done"] if ended else [])]), total
        if ended:
            return
        x = torch.from_numpy(obs[None]).to(agent.device)
        action = agent.controller(x[:, :D], x[:, D:])[0].float().cpu().numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        t += 1
        ended = terminated or truncated


# ------------------------------------------------------------------------------ main


def default_video(run: Path, env: str, seed: int) -> Path:
    """Where a video goes without ``--save``: ``<run>/videos/`` of a run you trained; for an
    exported run (``MANIFEST.json``: the shipped ``pretrained/carracing``, git-tracked, every
    file listed with its hash) ``runs/watch/`` under the current directory, never the export."""
    from worldmodels.run import MANIFEST

    if (run / MANIFEST).exists():
        return Path("runs") / "watch" / f"{run.resolve().name}_{env}_seed{seed}.mp4"
    return run / "videos" / f"watch_{env}_seed{seed}.mp4"


def main(argv: list[str] | None = None) -> int:
    import torch

    # no_grad as a context, not set_grad_enabled(False): main() is also called in-process
    # (pipeline.py), and must not switch autograd off for its caller.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the agent steps one frame at a time: one thread is fastest
    try:
        with torch.no_grad():
            return _main(argv)
    finally:
        torch.set_num_threads(threads)


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = resolve_run(args.run)
    if args.controller != "random":
        from worldmodels.run import CONTROLLER_KIND, checkpoint_path

        try:
            checkpoint_path(run, CONTROLLER_KIND)
        except DataError as e:
            raise WorldModelsError(f"{e}, or pass --controller random") from None
    save = Path(args.save) if args.save else None
    if save is not None and save.suffix.lower() not in (".mp4", ".gif"):
        raise WorldModelsError(f"--save {save}: the video must end in .mp4 or .gif")
    stills = Path(args.stills) if args.stills else None
    if stills is not None and stills.suffix.lower() != ".png":
        raise WorldModelsError(f"--stills {stills}: the picture must end in .png")


    from worldmodels.run import load_agent, make_dream_env
    from worldmodels.utils.parallel import set_numpy_blas_threads
    from worldmodels.utils.progress import progress_bar
    from worldmodels.utils.video import LiveWindow, VideoWriter, has_display

    # The agent runs here, one frame at a time: one torch thread and one NumPy BLAS thread
    # (NumPy's default threads spinning against torch's made a step ~7x slower).
    set_numpy_blas_threads(1)

    agent = load_agent(run, device=args.device,
                       controller=None if args.controller == "random" else args.controller)
    dream = None
    if args.env == "dream":
        dream = make_dream_env(run, temperature=args.tau, render_mode="rgb_array",
                               device=args.device, max_steps=args.max_steps)
    window_ok = save is None and has_display()
    if save is None and not window_ok:
        save = default_video(run, args.env, args.seed)
        print(f"no display: writing {save}", file=sys.stderr)

    writer = VideoWriter(save, args.fps) if save is not None else None
    window = None
    returns = []
    kept: list[tuple[int, Any]] = []  # (step, image) of the first episode, for --stills
    try:
        for k in range(args.episodes):
            seed = args.seed + k
            label = f"{args.env} {k + 1}/{args.episodes} seed {seed}"
            frames = (real_episode(agent, seed, args.max_steps, args.side_by_side, label)
                      if dream is None else dream_episode(agent, dream, seed, label))
            total = 0.0
            bar = progress_bar(None, total=args.max_steps + 1, desc=f"episode {k + 1}",
                               unit="step", leave=False)
            for i, (image, score) in enumerate(frames):
                total = score
                if stills is not None and k == 0 and i % STILLS_KEEP_EVERY == 0:
                    kept.append((i, image.copy()))
                bar.update(1)
                bar.set_postfix_str(f"score {score:.1f}", refresh=False)
                if writer is not None:
                    writer.append(image)
                if window_ok:
                    if window is None:
                        window = LiveWindow(f"World Models: {args.env}", image.shape[1],
                                            image.shape[0], fps=args.fps)
                    if not window.show(image):
                        raise KeyboardInterrupt
            bar.close()
            returns.append(total)
            print(f"episode {k + 1} (seed {seed}): return {total:.1f}")
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if window is not None:
            window.close()
        if dream is not None:
            dream.close()
    if writer is not None and writer.frames:
        path = writer.close()
        print(f"video: {path} ({writer.frames} frames at {args.fps:g} fps)")
    if stills is not None and kept:
        from worldmodels.utils.images import save_png

        print(f"stills: {save_png(stills_picture(kept), stills)}")
    if len(returns) > 1:
        import statistics

        print(f"mean return {statistics.mean(returns):.1f} ± {statistics.pstdev(returns):.1f} "
              f"over {len(returns)} episodes")
    return 0

