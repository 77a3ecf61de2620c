"""DCGAN for 64x64x3 frames and the GAN losses.

Goodfellow et al., *Generative Adversarial Nets* (2014), arXiv:1406.2661: ``D`` and ``G``
play the minimax game

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))].

``D`` maximises ``V``, i.e. minimises ``-log D(x) - log(1 - D(G(z)))``. ``G`` minimises
``log(1 - D(G(z)))`` (the *minimax* loss), whose gradient vanishes when ``D`` confidently
rejects the fakes (``D(G(z)) ~ 0``) early in training; the *non-saturating* heuristic of the
same paper has ``G`` minimise ``-log D(G(z))`` instead (same fixed point, strong gradients).

Architecture: Radford, Metz & Chintala, *Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks* (DCGAN, 2016), arXiv:1511.06434: strided
(transposed) convolutions, BatchNorm (not on G's output nor D's input layer), ReLU in G,
LeakyReLU(0.2) in D, tanh output, weights ~ N(0, 0.02) (BatchNorm scale ~ N(1, 0.02), bias 0).

Pixel range: **inside the GAN images live in [-1, 1]** (G's tanh output, D's input). The
rest of the package (data, VAE, VQ-VAE) uses [0, 1]; convert at the boundary with
:func:`to_gan_range` (data -> D) and :func:`from_gan_range` (G -> [0, 1]).
:meth:`DCGAN.sample` already returns [0, 1].

``D`` returns logits; the losses use ``F.binary_cross_entropy_with_logits``
(``-log sigmoid(l)`` and ``-log(1 - sigmoid(l)) = -log sigmoid(-l)`` without overflow, and
autocast-safe), in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Generator",
    "Discriminator",
    "DCGAN",
    "dcgan_init_",
    "discriminator_loss",
    "generator_loss",
    "to_gan_range",
    "from_gan_range",
]


def to_gan_range(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> [-1, 1]: ``2 x - 1``."""
    return x * 2.0 - 1.0


def from_gan_range(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> [0, 1]: ``(x + 1) / 2``, clamped against rounding."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN init for one module (use with ``model.apply``): conv weights ~ N(0, 0.02),
    BatchNorm weight ~ N(1, 0.02) and bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """z (B, latent_dim) -> image (B, 3, 64, 64) in [-1, 1].

    ``(B,Z,1,1) -> 8c x 4x4 -> 4c x 8x8 -> 2c x 16x16 -> c x 32x32 -> 3 x 64x64`` with
    transposed convs k4 (s1 p0 first, then s2 p1), BatchNorm + ReLU, tanh at the end.

    :param latent_dim: size of z (100 in the DCGAN paper).
    :param base_channels: ``c`` (64).
    """

    def __init__(self, latent_dim: int = 100, base_channels: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        c = base_channels

        def up(cin: int, cout: int, stride: int, padding: int) -> list[nn.Module]:
            # no conv bias: BatchNorm's shift replaces it
            return [
                nn.ConvTranspose2d(cin, cout, 4, stride, padding, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.net = nn.Sequential(
            *up(latent_dim, 8 * c, 1, 0),
            *up(8 * c, 4 * c, 2, 1),
            *up(4 * c, 2 * c, 2, 1),
            *up(2 * c, c, 2, 1),
            nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )
        self.apply(dcgan_init_)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 3, 64, 64) in [-1, 1]."""
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """image (B, 3, 64, 64) in [-1, 1] -> logits (B,) of "x is real".

    ``3 x 64x64 -> c x 32x32 -> 2c x 16x16 -> 4c x 8x8 -> 8c x 4x4 -> 1 x 1x1`` with convs k4
    s2 p1 (last: s1 p0), BatchNorm from the second layer on, LeakyReLU(0.2).

    :param base_channels: ``c`` (64).
    """

    def __init__(self, base_channels: int = 64) -> None:
        super().__init__()
        c = base_channels

        def down(cin: int, cout: int, norm: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, 2, 1, bias=not norm)]
            if norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2))
            return layers

        self.net = nn.Sequential(
            *down(3, c, norm=False),
            *down(c, 2 * c, norm=True),
            *down(2 * c, 4 * c, norm=True),
            *down(4 * c, 8 * c, norm=True),
            nn.Conv2d(8 * c, 1, 4, 1, 0, bias=False),
        )
        self.apply(dcgan_init_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B,) logits."""
        return self.net(x).flatten()


class DCGAN(nn.Module):
    """Holds ``generator`` and ``discriminator``; ``forward(z)`` is ``generator(z)`` in [-1, 1].

    :param latent_dim: size of z (100).
    :param generator_channels: base channels of G (64).
    :param discriminator_channels: base channels of D (64).
    """

    def __init__(
        self, latent_dim: int = 100, generator_channels: int = 64, discriminator_channels: int = 64
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "latent_dim": latent_dim,
            "generator_channels": generator_channels,
            "discriminator_channels": discriminator_channels,
        }
        self.latent_dim = latent_dim
        self.generator = Generator(latent_dim, generator_channels)
        self.discriminator = Discriminator(discriminator_channels)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``z ~ N(0, I)``, (n, latent_dim) on the model's device (``generator``: a
        ``torch.Generator``, on any device)."""
        p = next(self.generator.parameters())
        where = generator.device if generator is not None else p.device
        z = torch.randn(n, self.latent_dim, generator=generator, device=where, dtype=p.dtype)
        return z.to(p.device)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> fake images (B, 3, 64, 64) in [-1, 1]."""
        return self.generator(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` generated images (n, 3, 64, 64) **in [0, 1]** (like the VAE's), no grad."""
        return from_gan_range(self.generator(self.sample_latent(n, generator)))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-E[log D(x)] - E[log(1 - D(G(z)))]`` (minus the value ``V`` that D maximises), fp32.

    :param real_logits: (B,) D's logits on real images.
    :param fake_logits: (B',) D's logits on generated images (detach them for D's step).
    """
    with torch.autocast(device_type=real_logits.device.type, enabled=False):
        real, fake = real_logits.float(), fake_logits.float()
        return F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def generator_loss(fake_logits: torch.Tensor, mode: str = "non_saturating") -> torch.Tensor:
    """G's loss on D's logits for generated images, fp32 scalar.

    * ``'non_saturating'``: ``-E[log D(G(z))]`` (the heuristic of Goodfellow et al.).
    * ``'minimax'``: ``E[log(1 - D(G(z)))]``, the term of ``V`` that G minimises (it is
      ``<= 0``; it saturates when D rejects the fakes).
    """
    with torch.autocast(device_type=fake_logits.device.type, enabled=False):
        fake = fake_logits.float()
        if mode == "non_saturating":
            return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
        if mode == "minimax":
            # BCE(l, 0) = -log(1 - sigmoid(l)), so log(1 - D) = -BCE(l, 0)
            return -F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    raise ValueError(f"mode must be 'non_saturating' or 'minimax', got {mode!r}")
