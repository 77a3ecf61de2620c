"""What V minimises in training: the objective of each V model, and one training pass.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), appendix A.1: V is trained as a
VAE (Kingma & Welling 2014, arXiv:1312.6114) on the reconstruction error plus the KL term,
floored at ``kl_tolerance * D_z`` nats (the authors' ``vae.py``); the β-VAE weights the KL
(Higgins et al., ICLR 2017) or anneals a capacity (Burgess et al. 2018, arXiv:1804.03599);
the VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) minimises reconstruction, codebook
and commitment terms. The losses themselves are :func:`~worldmodels.generative.vae_loss` and
:func:`~worldmodels.generative.vqvae_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from worldmodels.generative.vae import vae_loss
from worldmodels.generative.vqvae import vqvae_loss
from worldmodels.utils.torch import training_autocast

__all__ = ["Objective", "to_float", "training_losses"]


@dataclass(frozen=True)
class Objective:
    """What V minimises, derived from the config.

    * ``vae``: ``recon + max(KL, kl_tolerance * D_z)`` (beta = 1, the paper's V);
    * ``betavae``: ``recon + beta * max(KL, floor)``, or with ``capacity_max > 0``
      ``recon + gamma * |KL - C(step)|``, ``C`` growing linearly from 0 to ``capacity_max``
      nats over ``capacity_steps`` steps (the floor is then not used);
    * ``vqvae``: ``mean (x - x_hat)^2 / data_variance + codebook + commitment * commit``.
    """

    model: str
    beta: float = 1.0
    kl_tolerance: float = 0.0
    recon: str = "mse"
    capacity_max: float = 0.0
    capacity_steps: int = 1
    gamma: float = 1000.0
    commitment: float = 0.25
    data_variance: float = 1.0

    @classmethod
    def from_config(cls, v: Any, data_variance: float = 1.0) -> Objective:
        """The objective of a :class:`~worldmodels.config.VAEConfig`."""
        if v.model == "vqvae":
            return cls("vqvae", commitment=v.commitment, data_variance=data_variance)
        annealed = v.model == "betavae" and v.capacity_max > 0
        return cls(
            v.model,
            beta=1.0 if v.model == "vae" else v.beta,
            kl_tolerance=0.0 if annealed else v.kl_tolerance,
            recon=v.recon,
            capacity_max=v.capacity_max if annealed else 0.0,
            capacity_steps=v.capacity_steps,
            gamma=v.gamma,
        )

    def capacity(self, step: int) -> float | None:
        """``C`` in nats after ``step`` optimiser steps; None without capacity annealing."""
        if self.capacity_max <= 0:
            return None
        return self.capacity_max * min(1.0, step / self.capacity_steps)


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) uint8 -> float32 in [0, 1] (on the frames' device)."""
    return frames.float().div_(255.0)


def training_losses(model: nn.Module, x: torch.Tensor, objective: Objective,
                    step: int, precision: str = "auto") -> dict[str, torch.Tensor]:
    """One training forward pass and its losses (fp32 scalars); the network under
    :func:`training_autocast` (``precision``).

    :param model: V in training mode, possibly ``torch.compile``-d (only ``model(x)`` is
        called, so the compiled graph is used): the VAE draws one ``z ~ q(z|x)`` from the
        global torch RNG; the VQ-VAE updates its EMA codebook.
    :param x: (B, 3, 64, 64) float in [0, 1].
    :param step: optimiser steps done so far (schedules the capacity ``C``).
    :return: ``loss``, ``recon``, ``kl``, ``kl_floored``, ``beta_kl`` (VAEs) or ``loss``,
        ``recon``, ``codebook``, ``commitment``, ``perplexity`` (VQ-VAE).
    """
    with training_autocast(x.device, precision):
        out = model(x)
    # The losses leave autocast and compute in fp32 themselves.
    if objective.model == "vqvae":
        x_hat, vq = out
        return vqvae_loss(x, x_hat, vq, beta=objective.commitment,
                          data_variance=objective.data_variance)
    x_hat, mu, logvar, _z = out
    return vae_loss(x, x_hat, mu, logvar, beta=objective.beta,
                    kl_tolerance=objective.kl_tolerance, recon=objective.recon,
                    capacity=objective.capacity(step), gamma=objective.gamma)
