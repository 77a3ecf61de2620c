"""Generative models for V, and their losses: pure ``nn.Module``s and pure functions.

* :class:`ConvVAE`, :func:`gaussian_kl`, :func:`vae_loss`: the V of Ha & Schmidhuber,
  *World Models* (2018, arXiv:1803.10122), a VAE (Kingma & Welling 2014, arXiv:1312.6114);
  ``beta > 1`` gives the β-VAE (Higgins et al., ICLR 2017), ``capacity`` the
  capacity-annealed β-VAE (Burgess et al. 2018, arXiv:1804.03599).
* :class:`VQVAE`, :class:`VectorQuantizer`, :func:`vqvae_loss`, :class:`CodeUsage`,
  :class:`CodePrior`: VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937; EMA codebook as in
  Razavi et al. 2019, arXiv:1906.00446) with an autoregressive prior over its code grid.
* :class:`DCGAN`, :class:`Generator`, :class:`Discriminator`, :func:`discriminator_loss`,
  :func:`generator_loss`: GAN (Goodfellow et al. 2014, arXiv:1406.2661) with the DCGAN
  architecture (Radford et al. 2016, arXiv:1511.06434).

Pixels are float (B, 3, 64, 64) in [0, 1] everywhere except inside the GAN ([-1, 1], see
:func:`to_gan_range` / :func:`from_gan_range`). Losses are computed in fp32 under autocast.
"""

from worldmodels.generative.gan import (
    DCGAN,
    Discriminator,
    Generator,
    dcgan_init_,
    discriminator_loss,
    from_gan_range,
    generator_loss,
    to_gan_range,
)
from worldmodels.generative.vae import ConvVAE, gaussian_kl, reparameterize, vae_loss
from worldmodels.generative.vqvae import (
    VQVAE,
    CodePrior,
    CodeUsage,
    VectorQuantizer,
    VQOutput,
    perplexity,
    prior_loss,
    vqvae_loss,
)

__all__ = [
    "ConvVAE",
    "gaussian_kl",
    "reparameterize",
    "vae_loss",
    "VQVAE",
    "VectorQuantizer",
    "VQOutput",
    "CodeUsage",
    "CodePrior",
    "perplexity",
    "prior_loss",
    "vqvae_loss",
    "DCGAN",
    "Generator",
    "Discriminator",
    "dcgan_init_",
    "discriminator_loss",
    "generator_loss",
    "to_gan_range",
    "from_gan_range",
]
