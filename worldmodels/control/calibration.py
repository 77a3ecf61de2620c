"""The approximate renderer's latent shift: V's z of approximate frames, moved to the exact one.

World Models (Ha & Schmidhuber 2018, section 4.4; arXiv:1803.10122) scores each CMA-ES
candidate by its return in the real environment, and V reads the real observation. The
population's episodes may instead draw V's 64x64 frame directly
(:class:`~worldmodels.envs.car_racing.ApproxFrameRenderer`, several times cheaper a frame);
the held-out score and ``evaluate.py`` always read the exact one. The two frames differ by a
fraction of a pixel at edges (pixel MSE ~7e-5), and V maps that to a small, *systematic* shift
of z: from the same states, C (a linear map of ``[z, h]``) gives ~7% more gas on approximate
frames (docs/campaign.md, "Where the points go"), so a search on approximate frames trains a
driver for a slightly easier track than the one it is scored on.

The shift is close to a constant: ``z_exact ~ z_approx + s``, with ``s`` the mean of
``z_exact - z_approx`` over frames of the same states. Fitted on some tracks and tested on
others, it removes the gas gap (0.0105 -> 0.0005 of gas) and two thirds of the squared
difference (a per-dimension affine map or a full linear one removes little more). This
module fits ``s`` by driving a controller in the exact environment and drawing both frames of
every state; :func:`~worldmodels.control.evaluation.run_episodes` adds it to V's ``mu`` (so to
what C and M read) when the approximate renderer draws the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from worldmodels.control.agent import WorldModelAgent
from worldmodels.control.controller import Controller
from worldmodels.control.evaluation import RENDER_SCALES, ZOOM_FRAMES, make_env
from worldmodels.errors import ConfigError

__all__ = ["fit_latent_shift"]


@torch.no_grad()
def fit_latent_shift(
    vae: torch.nn.Module,
    mdnrnn: torch.nn.Module,
    controller: Controller,
    seeds: Sequence[int],
    *,
    renderer: str = "approx",
    precision: str = "fp32",
    max_steps: int = 1000,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The mean ``z_exact - z_approx`` (V's ``mu``) over the states ``controller`` visits on
    ``seeds`` in the exact environment, past the opening zoom (from the first frame when
    ``max_steps`` leaves fewer than twice the zoom's frames after it).

    At each frame both observations are drawn from the same state (the exact one
    preprocessed, and ``renderer``'s), both are encoded, and C acts on the exact one.

    :param renderer: ``approx`` or ``coarse`` (the frames being corrected).
    :param precision: V's encoder precision, as the agent that will use the shift runs it.
    :return: ``shift`` (list of D floats), ``renderer``, ``scale``, ``frames`` (the frames
        averaged), ``env_steps`` (the frames the fit stepped, the zoom's included), ``seeds``, and C's mean action gap on those frames (approximate minus exact,
        per action dimension) ``action_gap`` without the shift and ``action_gap_shifted``
        with it (in-sample: a check that the shift acts where it should, not a test).
    :raises ConfigError: an unknown renderer, no seeds, or a discrete (VQ-VAE) V.
    """
    from worldmodels.envs.car_racing import ApproxFrameRenderer
    from worldmodels.envs.preprocess import preprocess_frame
    from worldmodels.generative import VQVAE

    if renderer not in RENDER_SCALES:
        raise ConfigError(f"a latent shift corrects an approximate renderer "
                          f"({', '.join(RENDER_SCALES)}), got {renderer!r}")
    if isinstance(vae, VQVAE):
        raise ConfigError("the latent shift needs a continuous V (a VAE); this V is a VQ-VAE")
    if not seeds:
        raise ConfigError("fitting a latent shift needs at least one track seed")
    agent = WorldModelAgent(vae, mdnrnn, controller, device=device, precision=precision)
    approx = ApproxFrameRenderer(RENDER_SCALES[renderer])
    z_exact: list[torch.Tensor] = []
    z_approx: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    start = ZOOM_FRAMES if max_steps > 2 * ZOOM_FRAMES else 0
    steps = 0
    env = make_env()
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=int(seed))
            agent.reset(1)
            for t in range(max_steps):
                exact = preprocess_frame(obs)[None]
                if t >= start:
                    z_exact.append(agent.encode(exact)[0])
                    z_approx.append(agent.encode(approx.frame(env.unwrapped)[None])[0])
                    hidden.append(agent.state[0][0].clone())
                action = agent.act(exact)[0]
                obs, _, terminated, truncated, _ = env.step(action)
                steps += 1
                if terminated or truncated:
                    break
    finally:
        env.close()
    if not z_exact:
        raise ConfigError(f"no frames to fit a latent shift on: max_steps={max_steps}")
    ze, za, h = torch.stack(z_exact), torch.stack(z_approx), torch.stack(hidden)
    shift = (ze - za).mean(0)

    def act(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([agent.controller(z[i:i + 1], h[i:i + 1]) for i in range(len(z))])

    exact_actions = act(ze)
    return {
        "shift": [float(x) for x in shift.cpu()],
        "renderer": renderer,
        "scale": RENDER_SCALES[renderer],
        "frames": len(ze),
        "env_steps": steps,
        "seeds": [int(s) for s in seeds],
        "action_gap": [float(x) for x in (act(za) - exact_actions).mean(0).cpu()],
        "action_gap_shifted": [float(x) for x in (act(za + shift) - exact_actions).mean(0).cpu()],
    }
