"""V: the convolutional variational autoencoder of *World Models* and its loss.

Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, appendix A.1: a frame
``x`` (3, 64, 64) in [0, 1] is encoded to a diagonal Gaussian ``q(z|x) = N(mu, sigma^2 I)``
with ``z`` in R^32, and decoded back to a frame. The objective is the negative ELBO
(Kingma & Welling, *Auto-Encoding Variational Bayes*, 2014, arXiv:1312.6114):

    -ELBO(x) = E_{z~q(z|x)}[-log p(x|z)] + KL(q(z|x) || N(0, I))

with one reparameterised sample ``z = mu + exp(0.5 logvar) * eps``, ``eps ~ N(0, I)``, and the
analytic KL of a diagonal Gaussian against the standard normal (in nats):

    KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)

Weighting the KL by ``beta > 1`` gives the β-VAE (Higgins et al., *β-VAE: Learning Basic
Visual Concepts with a Constrained Variational Framework*, ICLR 2017); replacing it by
``gamma * |KL - C|`` with a growing capacity ``C`` gives the capacity-annealed β-VAE
(Burgess et al., *Understanding disentangling in β-VAE*, 2018, arXiv:1804.03599).

Shapes: ``B`` batch, ``D = latent_dim``. Pixels are float in [0, 1], layout (B, 3, 64, 64).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.utils.torch import draw_noise

__all__ = ["ConvVAE", "gaussian_kl", "vae_loss", "reparameterize"]


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least fp32 (bf16/fp16 are promoted, fp64 is kept)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``z = mu + exp(0.5 * logvar) * eps``, ``eps ~ N(0, I)``: a sample of ``N(mu, sigma^2)``
    that is a differentiable function of ``mu`` and ``logvar`` (the reparameterisation trick).

    :param mu: (..., D) posterior mean.
    :param logvar: (..., D) posterior log-variance ``log sigma^2``.
    :param generator: optional ``torch.Generator`` for the noise (on any device).
    :return: z (..., D), same dtype and device as ``mu``.
    """
    eps = draw_noise("normal", mu.shape, generator, mu.device, mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, in nats.

    ``KL = 0.5 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)``

    Computed in fp32 (fp64 inputs stay fp64) with autocast disabled, so a bf16/fp16
    encoder under AMP does not lose the small differences ``exp(lv) - 1 - lv``.

    :param mu: (B, D).
    :param logvar: (B, D).
    :return: (B,) fp32.
    """
    with torch.autocast(device_type=mu.device.type, enabled=False):
        mu, logvar = _fp32(mu), _fp32(logvar)
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def vae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float = 1.0,
    kl_tolerance: float = 0.0,
    recon: str = "mse",
    capacity: float | torch.Tensor | None = None,
    gamma: float = 1000.0,
) -> dict[str, torch.Tensor]:
    """The (β-)VAE objective, averaged over the batch; all terms fp32 scalars.

    ``loss = recon + beta_kl`` where, per sample ``i`` (then averaged over ``B``):

    * ``recon='mse'`` (the paper's V): ``sum_pixels (x - x_hat)^2``, the Gaussian negative
      log-likelihood ``-log N(x; x_hat, 1/2 I)`` up to an additive constant;
      ``recon='bernoulli'``: ``-sum_pixels [x log x_hat + (1 - x) log(1 - x_hat)]`` (BCE,
      log clamped at -100 as in ``F.binary_cross_entropy``).
    * ``beta_kl = beta * max(KL_i, kl_tolerance * D)``: the free-nats floor of the original
      code (``tf.maximum(kl_loss, kl_tolerance * z_size)`` taken per sample *before* the batch
      mean, with ``kl_tolerance = 0.5`` and ``z_size = 32``, i.e. 16 nats). ``kl_tolerance`` is
      therefore in nats *per latent dimension*; while ``KL_i`` is under the floor it receives
      no gradient. ``kl_tolerance = 0`` (default) is the plain ELBO; ``beta > 1`` the β-VAE.
    * If ``capacity`` (``C``, nats, scheduled by the caller) is given, the capacity-annealed
      β-VAE of Burgess et al. replaces the term: ``beta_kl = gamma * |mean_i KL_i - C|``
      (``beta`` and the floor are then not used; combining the floor with it is an error).
      ``gamma = 1000`` is the value of Burgess et al.'s dSprites experiments.

    :param x: (B, 3, 64, 64) targets in [0, 1].
    :param x_hat: (B, 3, 64, 64) reconstructions in [0, 1] (the decoder's sigmoid output).
    :param mu: (B, D) posterior means.
    :param logvar: (B, D) posterior log-variances.
    :return: dict with ``loss``, ``recon``, ``kl`` (the raw batch-mean KL, nats/sample),
        ``kl_floored`` (batch-mean of the floored KL) and ``beta_kl`` (the term added to ``recon``).
    """
    if recon not in ("mse", "bernoulli"):
        raise ValueError(f"recon must be 'mse' or 'bernoulli', got {recon!r}")
    if beta < 0 or kl_tolerance < 0:
        raise ValueError(f"beta and kl_tolerance must be >= 0, got {beta} and {kl_tolerance}")
    if capacity is not None and kl_tolerance > 0:
        raise ValueError(
            "use either kl_tolerance (free nats) or capacity (Burgess et al.), not both"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, x_hat = _fp32(x), _fp32(x_hat)
        if recon == "mse":
            per_pixel = (x_hat - x).pow(2)
        else:
            # BCE on probabilities: autocast refuses it, so it must run in this fp32 region.
            per_pixel = F.binary_cross_entropy(x_hat, x, reduction="none")
        recon_term = per_pixel.flatten(1).sum(1).mean()
        kl = gaussian_kl(mu, logvar)  # (B,)
        floor = kl_tolerance * mu.shape[-1]
        kl_floored = kl.clamp(min=floor) if floor > 0 else kl
        if capacity is None:
            beta_kl = beta * kl_floored.mean()
        else:
            beta_kl = gamma * (kl.mean() - capacity).abs()
        return {
            "loss": recon_term + beta_kl,
            "recon": recon_term,
            "kl": kl.mean(),
            "kl_floored": kl_floored.mean(),
            "beta_kl": beta_kl,
        }


class ConvVAE(nn.Module):
    """The *World Models* V for 64x64x3 frames (4,348,547 parameters at ``latent_dim=32``).

    Encoder (no padding, ReLU after each conv)::

        (B,3,64,64) -conv32 k4 s2-> (B,32,31,31) -conv64 k4 s2-> (B,64,14,14)
        -conv128 k4 s2-> (B,128,6,6) -conv256 k4 s2-> (B,256,2,2) -flatten-> (B,1024)
        -> linear mu (B,D), linear logvar (B,D)

    Decoder (ReLU between deconvs, sigmoid at the end)::

        (B,D) -linear-> (B,1024,1,1) -deconv128 k5 s2-> (B,128,5,5) -deconv64 k5 s2->
        (B,64,13,13) -deconv32 k6 s2-> (B,32,30,30) -deconv3 k6 s2-> (B,3,64,64) in [0,1]

    :param latent_dim: size ``D`` of z (32 in the paper).
    """

    def __init__(self, latent_dim: int = 32) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim
        #: constructor arguments (plain types), enough to rebuild the module from a checkpoint
        self.hparams: dict[str, Any] = {"latent_dim": latent_dim}
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 128, 4, stride=2), nn.ReLU(),
            nn.Conv2d(128, 256, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        self.fc_mu = nn.Linear(1024, latent_dim)
        self.fc_logvar = nn.Linear(1024, latent_dim)
        self.fc_decode = nn.Linear(latent_dim, 1024)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(1024, 128, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 5, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 6, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 6, stride=2), nn.Sigmoid(),
        )  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 64, 64) in [0, 1] -> ``(mu, logvar)``, each (B, D)."""
        h = self.encoder(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) -> x_hat (B, 3, 64, 64) in [0, 1].

        The first deconvolution reads a 1x1 map, so it is a matrix product:
        ``y[b, c, i, j] = sum_m h[b, m] W[m, c, i, j] + bias[c]`` with ``W`` (1024, 128, 5, 5)
        seen as (1024, 3200). Computed so (same parameters, same result to float rounding):
        oneDNN's transposed convolution of a 1x1 input took over half of V's CPU training
        step, the product a few milliseconds.
        """
        h = self.fc_decode(z)
        first = self.decoder[0]
        k = first.kernel_size
        bias = first.bias.repeat_interleave(k[0] * k[1])
        y = F.linear(h, first.weight.flatten(1).t(), bias).view(-1, first.out_channels, *k)
        if first.weight.is_contiguous(memory_format=torch.channels_last) and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)  # as the next convs' weights
        return self.decoder[1:](y)

    def reparameterize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``z = mu + exp(0.5 logvar) * eps``; see :func:`reparameterize`."""
        return reparameterize(mu, logvar, generator)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, 64, 64) -> ``(x_hat, mu, logvar, z)``.

        In training mode ``z`` is one reparameterised sample of ``q(z|x)`` (the ELBO's
        Monte-Carlo estimate); in eval mode ``z = mu`` (the posterior mean), so evaluation
        and reconstructions are deterministic. To encode with noise in eval mode, as the
        original does when it builds M's training data, call :meth:`reparameterize` on
        ``encode(x)``.
        """
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z), mu, logvar, z

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode ``n`` draws of the prior ``z ~ N(0, I)``: (n, 3, 64, 64) in [0, 1], no grad."""
        p = self.fc_decode.weight
        return self.decode(draw_noise("normal", (n, self.latent_dim), generator, p.device,
                                      p.dtype))
