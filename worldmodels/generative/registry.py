"""The registry of V models: rebuild a V from the ``model_config`` its checkpoint stores.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.1: V is a convolutional
VAE (Kingma & Welling 2014, arXiv:1312.6114); the β-VAE (Higgins et al., ICLR 2017) is the
same network with another objective, and the VQ-VAE (van den Oord et al. 2017,
arXiv:1711.00937) is the discrete variant. Pure torch, no I/O: loading from a run directory
is :mod:`worldmodels.run`'s.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from worldmodels.errors import DataError
from worldmodels.generative.vae import ConvVAE
from worldmodels.generative.vqvae import VQVAE

__all__ = ["MODELS", "KINDS", "build_model", "model_config"]

#: the V models, by the name of their stage directory in a run
MODELS = ("vae", "betavae", "vqvae")
#: checkpoint kind per model: the VAE and the β-VAE are the same network
KINDS = {"vae": "vae", "betavae": "vae", "vqvae": "vqvae"}


def model_config(model: nn.Module, name: str) -> dict[str, Any]:
    """What a checkpoint stores to rebuild ``model``: ``{"model": name, **model.hparams}``."""
    return {"model": name, **model.hparams}


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild V from a checkpoint's ``model_config``: ``{"model": name, **constructor kwargs}``."""
    kwargs = dict(model_config)
    name = kwargs.pop("model", None)
    if name in ("vae", "betavae"):
        return ConvVAE(**kwargs)
    if name == "vqvae":
        return VQVAE(**kwargs)
    raise DataError(f"unknown V model {name!r} in a checkpoint's model_config (expected one "
                    f"of {', '.join(MODELS)})")
