"""A code prior for the VQ-VAE: a small causal transformer over the flattened code grid.

van den Oord, Vinyals & Kavukcuoglu, *Neural Discrete Representation Learning* (2017),
arXiv:1711.00937, fit an autoregressive prior (a PixelCNN) over the codes so that a VQ-VAE can
generate; here a GPT-2-style transformer (Radford et al. 2019) in raster order plays that role:
``prior.sample(n)`` -> codes -> ``vqvae.decode_codes(codes)``, trained by
:func:`prior_loss`, the mean cross-entropy of each code given the codes before it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CodePrior", "prior_loss"]


def _sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, K) probabilities -> (B,) int64 draws; a generator draws on its own device."""
    where = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(where), 1, generator=generator).squeeze(1).to(probs.device)


class _CausalBlock(nn.Module):
    """Pre-norm transformer block with causal self-attention (GPT-2 style)."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.reshape(B, T, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))
        return x + self.drop(self.mlp(self.ln2(x)))


class CodePrior(nn.Module):
    """Autoregressive prior ``p(c) = prod_t p(c_t | c_<t)`` over a flattened code grid.

    A small causal transformer (raster order, a start token ``K`` before the first code,
    learned position embeddings), the role PixelCNN plays in the VQ-VAE paper.

    :param codebook_size: K.
    :param grid_size: (h, w) of the code grid ((8, 8) for the default VQVAE).
    :param embed_dim: transformer width.
    :param num_layers: transformer blocks.
    :param num_heads: attention heads.
    :param dropout: dropout in attention and MLP.
    """

    def __init__(
        self,
        codebook_size: int,
        grid_size: tuple[int, int] = (8, 8),
        embed_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {
            "codebook_size": codebook_size, "grid_size": tuple(grid_size),
            "embed_dim": embed_dim, "num_layers": num_layers, "num_heads": num_heads,
            "dropout": dropout,
        }  # fmt: skip
        self.codebook_size = codebook_size
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.seq_len = self.grid_size[0] * self.grid_size[1]
        self.token = nn.Embedding(codebook_size + 1, embed_dim)  # +1: the start token
        self.position = nn.Parameter(torch.randn(1, self.seq_len, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            _CausalBlock(embed_dim, num_heads, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, codebook_size)

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.token(tokens) + self.position[:, : tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h, w) or (B, h*w) int64 -> logits (B, h*w, K) of ``p(c_t | c_<t)``."""
        c = codes.reshape(codes.shape[0], -1)
        if c.shape[1] != self.seq_len:
            raise ValueError(f"expected {self.seq_len} codes per sample, got {c.shape[1]}")
        start = c.new_full((c.shape[0], 1), self.codebook_size)
        return self._logits(torch.cat([start, c[:, :-1]], dim=1))

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """``log p(c) = sum_t log p(c_t | c_<t)`` in nats: (B, h, w) -> (B,) fp32."""
        logits = self(codes).float()
        c = codes.reshape(codes.shape[0], -1)
        return F.log_softmax(logits, dim=-1).gather(-1, c[..., None]).squeeze(-1).sum(1)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``n`` code grids (n, h, w) int64, one position at a time.

        ``temperature`` divides the logits (``< 1`` sharper, ``> 1`` more diverse);
        ``temperature = 0`` takes the most likely code at each step.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        device = self.head.weight.device
        tokens = torch.full((n, 1), self.codebook_size, dtype=torch.long, device=device)
        for _ in range(self.seq_len):
            logits = self._logits(tokens)[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = _sample_categorical(F.softmax(logits / temperature, dim=-1), generator)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        return tokens[:, 1:].reshape(n, *self.grid_size)


def prior_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood in nats per code: ``-mean_t log p(c_t | c_<t)`` (fp32).

    :param logits: (B, L, K) from :meth:`CodePrior.forward`.
    :param codes: (B, h, w) or (B, L) int64 targets.
    """
    K = logits.shape[-1]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.cross_entropy(logits.float().reshape(-1, K), codes.reshape(-1))
