"""Counter-based noise for the dream: every random number of an episode is a hash of
``(episode seed, step, slot)``, so an episode depends only on its seed, whatever else shares
its batch and on whichever device (Ha & Schmidhuber 2018, arXiv:1803.10122, sample M's mixture
in the dream; here the samples are made reproducible per episode).

The hash is Chris Wellons' ``lowbias32`` (a bijection on 32 bits with near-ideal avalanche),
computed with int64 tensor operations so that CPU and CUDA give the same bits; the scheme is
that of counter-based generators (Salmon et al., *Parallel random numbers: as easy as 1, 2,
3*, SC 2011).
"""

from __future__ import annotations

from typing import Any

import torch

from worldmodels.errors import ConfigError

__all__ = ["keyed_uniform"]

_M32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` (int or int64 tensor) without int64
    overflow: a constant ``c >= 2**31`` is used as ``c - 2**32`` (same residue), so the
    product's magnitude stays below ``2**63``; ``& 0xFFFFFFFF`` takes the two's-complement
    low word."""
    if c >= 2**31:
        c -= 2**32
    return (x * c) & _M32


def _hash32(x: Any) -> Any:
    """Wellons' ``lowbias32`` integer hash of ``0 <= x < 2**32`` (a Python int or an int64
    tensor): a bijection on 32 bits with near-ideal avalanche. ``_hash32(0) == 0``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _seed_key(seed: int) -> int:
    """The 32-bit key of an episode seed (any int in ``[0, 2**64)``)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ConfigError(f"dream seeds must be integers in [0, 2**64), got {seed}")
    lo, hi = seed & _M32, seed >> 32
    return _hash32(_hash32(lo ^ 0x9E3779B9) ^ _hash32(hi ^ 0x85EBCA6B))


def keyed_uniform(keys: torch.Tensor, counter: int, slots: torch.Tensor) -> torch.Tensor:
    """Uniform noise that depends only on ``(key, counter, slot)``: (B,) x (S,) -> (B, S).

    ``u = (2 m + 1) / 2**24`` with ``m`` the top 23 bits of
    ``hash(hash(key ^ hash(counter + c1)) ^ slot_code)``: values in ``[2**-24, 1 - 2**-24]``,
    exact in float32, never 0 or 1 (safe for ``log`` and the normal quantile).

    :param keys: (B,) int64 episode keys in ``[0, 2**32)``.
    :param counter: the step (0 for the start state).
    :param slots: (S,) int64 slot codes (hashed slot indices, :func:`_slot_codes`).
    :return: (B, S) float32 on ``keys``' device.
    """
    base = _hash32(keys ^ _hash32((int(counter) + 0x632BE5AB) & _M32))  # (B,)
    bits = _hash32(base[:, None] ^ slots[None, :])  # (B, S)
    return ((bits >> 9) * 2 + 1).to(torch.float32) * (2.0**-24)


def _slot_codes(n: int, device: torch.device) -> torch.Tensor:
    """(n,) distinct non-zero 32-bit codes of the slots ``0 .. n-1``."""
    return _hash32(torch.arange(n, dtype=torch.int64, device=device) + 0x68E31DA4)
