"""VQ-VAE: a discrete-latent V, its vector quantiser and code statistics.

van den Oord, Vinyals & Kavukcuoglu, *Neural Discrete Representation Learning* (2017),
arXiv:1711.00937. The encoder output ``z_e`` (B, D, h, w) is replaced, position by
position, by its nearest codebook vector ``e_k``, ``k = argmin_j ||z_e - e_j||^2``; the
decoder sees the quantised grid. With ``sg`` the stop-gradient (``detach``):

    L = ||x - x_hat||^2 + ||sg[z_e] - e||^2 + beta * ||z_e - sg[e]||^2
        (reconstruction)  (codebook)          (commitment, beta = 0.25)

and the straight-through estimator ``z_q = z_e + sg[e - z_e]`` copies the decoder's gradient
onto ``z_e``. As in the authors' reference implementation every ``||.||^2`` is a mean over
elements, and the reconstruction term is divided by the data variance (1 by default).

Optional refinements:

* EMA codebook (the paper's appendix A.1; Razavi et al., *Generating Diverse High-Fidelity
  Images with VQ-VAE-2*, 2019, arXiv:1906.00446): no codebook loss; with ``n_k`` the number of
  vectors assigned to code ``k`` in the batch and ``gamma`` the decay,
  ``N_k <- gamma N_k + (1 - gamma) n_k``, ``m_k <- gamma m_k + (1 - gamma) sum_{i->k} z_e,i``,
  Laplace smoothing ``N_k <- (N_k + eps) / (n + K eps) * n`` (``n = sum_k N_k``) and
  ``e_k = m_k / N_k``.
* Dead-code restarts (as in Dhariwal et al., *Jukebox*, 2020, arXiv:2005.00341): a code unused
  for ``dead_code_steps`` consecutive training batches is re-initialised to a random encoder
  output of the current batch.

Distances, argmin, losses of the quantiser and EMA statistics are computed in fp32 with
autocast disabled. Under DDP (``torch.distributed`` initialised) the EMA statistics and the
usage counts are summed over processes and restarted codes are taken from rank 0, so every
replica keeps the same codebook.

Default configuration (``downsample=3``): 64x64 frames -> an **8x8 grid** of codes from a
codebook of **K = 128** vectors of **D = 4** dimensions; the flattened quantised latent
(``VQVAE.latent_dim``) has 4 * 8 * 8 = **256** dimensions (small enough for a CMA-ES
controller) and the discrete code has 64 tokens of 7 bits. ``downsample=4`` gives a 4x4 grid.

Its code prior (:class:`~worldmodels.generative.prior.CodePrior`, re-exported here) is in
:mod:`worldmodels.generative.prior`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from worldmodels.generative.prior import CodePrior, prior_loss

__all__ = [
    "VQOutput",
    "VectorQuantizer",
    "VQVAE",
    "vqvae_loss",
    "perplexity",
    "CodeUsage",
    "CodePrior",
    "prior_loss",
]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` with ``p_k = counts_k / sum(counts)`` and ``0 log 0 = 0``.

    Equals K for uniform usage of K codes and 1 when a single code is used.

    :param counts: (K,) usage counts (any numeric dtype).
    :return: scalar, fp64 if ``counts`` is fp64 else fp32.
    """
    c = counts.to(torch.promote_types(counts.dtype, torch.float32))
    p = c / c.sum().clamp(min=1)
    entropy = -torch.where(p > 0, p * torch.log(p.clamp(min=1e-30)), torch.zeros_like(p)).sum()
    return entropy.exp()


class VQOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns (``S`` = spatial dims, e.g. ``h, w``).

    :ivar quantized: (B, D, *S) straight-through quantised vectors ``z_e + sg[e - z_e]``,
        dtype of the input.
    :ivar codes: (B, *S) int64 code indices.
    :ivar codebook_loss: scalar fp32 ``mean ||sg[z_e] - e||^2`` (zero with an EMA codebook).
    :ivar commitment_loss: scalar fp32 ``mean ||z_e - sg[e]||^2`` (not yet weighted by beta).
    :ivar perplexity: scalar fp32 perplexity of this batch's code usage.
    :ivar counts: (K,) int64 usage counts of this batch.
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    counts: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantisation with a straight-through gradient.

    :param codebook_size: number of codes ``K``.
    :param code_dim: dimension ``D`` of each code (the channel dim of the input).
    :param ema: update the codebook by exponential moving averages instead of the codebook
        loss; the codebook is then a buffer, not a parameter (no optimiser touches it).
    :param decay: EMA decay ``gamma`` (0.99 in the paper).
    :param epsilon: Laplace smoothing ``eps`` of the EMA counts.
    :param dead_code_steps: restart a code unused for this many consecutive training
        batches (0 disables restarts).

    Buffers ``ema_count`` (K,), ``ema_sum`` (K, D) and ``steps_unused`` (K,) are always
    registered so state dicts have the same keys in both modes. EMA updates and restarts
    happen only in training mode.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        ema: bool = False,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_steps: int = 0,
    ) -> None:
        super().__init__()
        if codebook_size < 2 or code_dim < 1:
            raise ValueError(
                f"need codebook_size >= 2 and code_dim >= 1, got {codebook_size} and {code_dim}"
            )
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if dead_code_steps < 0:
            raise ValueError(f"dead_code_steps must be >= 0, got {dead_code_steps}")
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.ema, self.decay, self.epsilon = ema, decay, epsilon
        self.dead_code_steps = dead_code_steps
        # Small uniform init as in the common ports of the paper's code; dead-code restarts
        # re-seed codes the encoder never reaches.
        init = torch.empty(codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        if ema:
            self.register_buffer("codebook", init)
        else:
            self.codebook = nn.Parameter(init)
        # EMA state starts as "each code seen once at its initial value", so e = m / N equals
        # the initial codebook and unused codes stay put instead of being divided by ~0.
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", init.clone())
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) int64 index of the nearest code (squared Euclidean), in fp32."""
        with torch.autocast(device_type=flat.device.type, enabled=False):
            f = flat.float()
            cb = self.codebook.float()
            # ||f||^2 - 2 f.e + ||e||^2 without materialising (N, K, D). (On CUDA the matmul
            # is true fp32 unless the caller enabled TF32 globally.)
            d = f.pow(2).sum(1, keepdim=True) - 2.0 * (f @ cb.t()) + cb.pow(2).sum(1)[None, :]
            return d.argmin(dim=1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, *S) int64 -> (B, D, *S) codebook vectors."""
        return F.embedding(codes, self.codebook).movedim(-1, 1)

    def forward(self, z_e: torch.Tensor) -> VQOutput:
        """Quantise ``z_e`` (B, D, *S); see :class:`VQOutput` for what comes back."""
        if z_e.dim() < 2 or z_e.shape[1] != self.code_dim:
            raise ValueError(f"expected (B, {self.code_dim}, ...) input, got {tuple(z_e.shape)}")
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float().movedim(1, -1)  # (B, *S, D)
            flat = z.reshape(-1, self.code_dim)
            codes = self.nearest(flat)
            e = F.embedding(codes, self.codebook.float())  # (N, D)
            commitment = F.mse_loss(flat, e.detach())
            if self.ema:
                codebook_loss = flat.new_zeros(())
            else:
                codebook_loss = F.mse_loss(e, flat.detach())
            quantized = flat + (e - flat).detach()  # straight-through
            counts = torch.bincount(codes, minlength=self.codebook_size)
            if self.training:
                self._update(flat.detach(), codes, counts)
        return VQOutput(
            quantized=quantized.reshape(z.shape).movedim(-1, 1).to(z_e.dtype),
            codes=codes.reshape(z.shape[:-1]),
            codebook_loss=codebook_loss,
            commitment_loss=commitment,
            perplexity=perplexity(counts),
            counts=counts,
        )

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA step and dead-code restarts from one training batch (fp32, in place)."""
        counts = counts.clone()
        if self.ema:
            sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, flat)
            if _distributed():
                dist.all_reduce(counts)
                dist.all_reduce(sums)
            self.ema_count.mul_(self.decay).add_(counts.float(), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
        elif _distributed() and self.dead_code_steps > 0:
            dist.all_reduce(counts)
        if self.dead_code_steps == 0:
            return
        used = counts > 0
        self.steps_unused.add_(1).masked_fill_(used, 0)
        dead = (self.steps_unused >= self.dead_code_steps).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        if flat.shape[0] >= dead.numel():
            pick = torch.randperm(flat.shape[0], device=flat.device)[: dead.numel()]
        else:
            pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        new = flat[pick].to(self.codebook.dtype)
        if _distributed():
            dist.broadcast(new, src=0)
        self.codebook[dead] = new
        self.ema_sum[dead] = new.float()
        self.ema_count[dead] = 1.0
        self.steps_unused[dead] = 0


class _ResidualStack(nn.Module):
    """``num_layers`` blocks ``x + conv1x1(relu(conv3x3(relu(x))))``, then ReLU (paper sec. 4.1)."""

    def __init__(self, channels: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(channels, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, channels, 1),
            )
            for _ in range(num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return F.relu(x)


class VQVAE(nn.Module):
    """VQ-VAE for (B, 3, 64, 64) frames in [0, 1] (the paper's image model, scaled down).

    Encoder: ``downsample`` convs k4 s2 (ReLU) -> conv3x3 -> residual stack -> conv1x1 to D
    channels, giving ``z_e`` (B, D, h, w) with ``h = w = 64 / 2**downsample``. Decoder: the
    mirror image with transposed convs k4 s2, sigmoid output in [0, 1] (same pixel range as
    :class:`~worldmodels.generative.vae.ConvVAE`).

    :param codebook_size: K (128).
    :param code_dim: D (4).
    :param hidden_channels: channels of the conv trunk (128).
    :param residual_channels: bottleneck channels of each residual block (32).
    :param num_residual_layers: residual blocks in encoder and decoder (2).
    :param downsample: stride-2 stages; 3 -> 8x8 grid (default), 4 -> 4x4 grid.
    :param ema, decay, epsilon, dead_code_steps: see :class:`VectorQuantizer`.
    """

    def __init__(
        self,
        codebook_size: int = 128,
        code_dim: int = 4,
        hidden_channels: int = 128,
        residual_channels: int = 32,
        num_residual_layers: int = 2,
        downsample: int = 3,
        ema: bool = False,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        dead_code_steps: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= downsample <= 6:
            raise ValueError(f"downsample must be in 1..6 for 64x64 frames, got {downsample}")
        self.hparams: dict[str, Any] = {
            "codebook_size": codebook_size, "code_dim": code_dim,
            "hidden_channels": hidden_channels, "residual_channels": residual_channels,
            "num_residual_layers": num_residual_layers, "downsample": downsample,
            "ema": ema, "decay": decay, "epsilon": epsilon, "dead_code_steps": dead_code_steps,
        }  # fmt: skip
        side = 64 // 2**downsample
        self.grid_size: tuple[int, int] = (side, side)
        self.codebook_size, self.code_dim = codebook_size, code_dim

        enc: list[nn.Module] = []
        ch_in = 3
        for i in range(downsample):
            ch_out = hidden_channels // 2 if i < downsample - 1 else hidden_channels
            enc += [nn.Conv2d(ch_in, ch_out, 4, stride=2, padding=1), nn.ReLU()]
            ch_in = ch_out
        enc += [
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1),
            _ResidualStack(hidden_channels, residual_channels, num_residual_layers),
            nn.Conv2d(hidden_channels, code_dim, 1),
        ]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = VectorQuantizer(
            codebook_size, code_dim, ema, decay, epsilon, dead_code_steps
        )
        dec: list[nn.Module] = [
            nn.Conv2d(code_dim, hidden_channels, 3, padding=1),
            _ResidualStack(hidden_channels, residual_channels, num_residual_layers),
        ]
        ch_in = hidden_channels
        for i in range(downsample):
            last = i == downsample - 1
            ch_out = 3 if last else hidden_channels // 2
            dec.append(nn.ConvTranspose2d(ch_in, ch_out, 4, stride=2, padding=1))
            dec.append(nn.Sigmoid() if last else nn.ReLU())
            ch_in = ch_out
        self.decoder = nn.Sequential(*dec)

    @property
    def latent_dim(self) -> int:
        """Size of the flattened quantised latent ``D * h * w`` (256 by default)."""
        return self.code_dim * self.grid_size[0] * self.grid_size[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) -> z_e (B, D, h, w), continuous (before quantisation)."""
        return self.encoder(x)

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) -> codes (B, h, w) int64 (no EMA/restart side effects)."""
        z_e = self.encode(x)
        flat = z_e.movedim(1, -1).reshape(-1, self.code_dim)
        return self.quantizer.nearest(flat).reshape(z_e.shape[0], *z_e.shape[2:])

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) quantised latent -> x_hat (B, 3, 64, 64) in [0, 1]."""
        return self.decoder(z_q)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 -> x_hat (B, 3, 64, 64) in [0, 1]."""
        return self.decode(self.quantizer.embed(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, VQOutput]:
        """(B, 3, 64, 64) -> ``(x_hat, vq)``; in training mode the quantiser may update its
        codebook (EMA) and restart dead codes."""
        vq = self.quantizer(self.encode(x))
        return self.decode(vq.quantized), vq


def vqvae_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    vq: VQOutput,
    beta: float = 0.25,
    data_variance: float = 1.0,
) -> dict[str, torch.Tensor]:
    """``loss = mean (x - x_hat)^2 / data_variance + codebook + beta * commitment`` (fp32).

    :param x: (B, 3, 64, 64) targets in [0, 1].
    :param x_hat: (B, 3, 64, 64) reconstructions.
    :param vq: the quantiser's output for this batch.
    :param beta: commitment weight (0.25 in the paper).
    :param data_variance: variance of the training pixels (the reference code divides by it).
    :return: dict of scalars ``loss``, ``recon``, ``codebook``, ``commitment``, ``perplexity``.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        recon = F.mse_loss(x_hat.float(), x.float()) / data_variance
        loss = recon + vq.codebook_loss + beta * vq.commitment_loss
    return {
        "loss": loss,
        "recon": recon,
        "codebook": vq.codebook_loss,
        "commitment": vq.commitment_loss,
        "perplexity": vq.perplexity,
    }


class CodeUsage:
    """Code counts accumulated over many batches (a whole evaluation set).

    >>> usage = CodeUsage(128)
    >>> for x in loader: usage.update(model.encode_codes(x))   # doctest: +SKIP
    >>> usage.perplexity(), usage.fraction_used()              # doctest: +SKIP
    """

    def __init__(self, codebook_size: int) -> None:
        self.codebook_size = codebook_size
        self.counts = torch.zeros(codebook_size, dtype=torch.float64)

    def reset(self) -> None:
        self.counts.zero_()

    def update(self, codes: torch.Tensor) -> None:
        """Add the codes (any shape, int64) of one batch."""
        c = torch.bincount(codes.reshape(-1), minlength=self.codebook_size)
        self.counts += c.detach().to("cpu", torch.float64)

    def perplexity(self) -> float:
        """``exp(entropy)`` of the accumulated usage distribution (K when uniform)."""
        return float(perplexity(self.counts))

    def fraction_used(self) -> float:
        """Fraction of the K codes used at least once."""
        return float((self.counts > 0).double().mean())
