"""worldmodels.generative: shapes, losses against independent references, gradients,
codebook mechanics, save/load, and that a few optimiser steps lower each loss."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Normal, kl_divergence

from worldmodels.generative import (
    DCGAN,
    VQVAE,
    CodePrior,
    CodeUsage,
    ConvVAE,
    Discriminator,
    Generator,
    VectorQuantizer,
    discriminator_loss,
    from_gan_range,
    gaussian_kl,
    generator_loss,
    perplexity,
    prior_loss,
    to_gan_range,
    vae_loss,
    vqvae_loss,
)


def _images(n: int = 8, seed: int = 0) -> torch.Tensor:
    """Random smooth frames (B, 3, 64, 64) in [0, 1]: 8x8 uniform noise upsampled, so a few
    steps can learn something (i.i.d. pixel noise is best fitted by the constant 0.5 that an
    untrained sigmoid decoder already outputs)."""
    low = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(low, size=64, mode="bilinear", align_corners=False)


def _roundtrip(model: torch.nn.Module, factory) -> torch.nn.Module:
    """state_dict -> bytes -> (weights_only) -> a fresh model."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = factory()
    clone.load_state_dict(torch.load(buf, weights_only=True))
    return clone


def _steps_lower(loss_fn, params, steps: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, loss_fn().item()


# ----------------------------------------------------------------------------- VAE


def test_vae_parameter_count_matches_paper():
    assert sum(p.numel() for p in ConvVAE(32).parameters()) == 4_348_547


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("latent_dim", [32, 8])
def test_vae_shapes_and_range(batch, latent_dim):
    torch.manual_seed(0)
    vae = ConvVAE(latent_dim)
    x = _images(batch)
    x_hat, mu, logvar, z = vae(x)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == z.shape == (batch, latent_dim)
    assert 0 <= x_hat.min() and x_hat.max() <= 1
    assert vae.decode(z).shape == (batch, 3, 64, 64)
    s = vae.sample(2, generator=torch.Generator().manual_seed(1))
    assert s.shape == (2, 3, 64, 64) and not s.requires_grad
    assert torch.equal(s, vae.sample(2, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_vae_decode_equals_the_transposed_convolutions(layout):
    # decode() runs the first deconvolution (a 1x1 input) as a matrix product: the same
    # function of the same parameters as the plain nn.Sequential, to float rounding
    torch.manual_seed(0)
    vae = ConvVAE().to(memory_format=layout)
    z = torch.randn(5, 32, requires_grad=True)
    plain = vae.decoder(vae.fc_decode(z).view(5, 1024, 1, 1))
    fast = vae.decode(z)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(plain)
    grads = torch.autograd.grad((fast * g).sum(), [z, *vae.decoder[0].parameters()])
    ref = torch.autograd.grad((plain * g).sum(), [z, *vae.decoder[0].parameters()])
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_vae_eval_mode_uses_the_mean():
    vae = ConvVAE().eval()
    x = _images(2)
    _, mu, _, z = vae(x)
    assert torch.equal(z, mu)
    vae.train()
    _, mu, _, z = vae(x)
    assert not torch.allclose(z, mu)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 16, generator=g, dtype=torch.float64) * 3
    logvar = torch.randn(64, 16, generator=g, dtype=torch.float64) * 4
    logvar[0, :4] = torch.tensor([-30.0, 30.0, -60.0, 60.0], dtype=torch.float64)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(gaussian_kl(mu, logvar), ref, rtol=1e-10)
    kl32 = gaussian_kl(mu.float(), logvar.float())
    assert kl32.dtype == torch.float32 and kl32.shape == (64,)
    assert torch.allclose(kl32.double(), ref, rtol=1e-5)
    assert torch.all(gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)) == 0)


def test_gaussian_kl_is_fp32_under_autocast():
    mu, logvar = torch.randn(4, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl = gaussian_kl(mu.bfloat16(), logvar.bfloat16())
    assert kl.dtype == torch.float32
    assert torch.allclose(kl, gaussian_kl(mu.bfloat16().float(), logvar.bfloat16().float()))


@pytest.mark.parametrize("recon", ["mse", "bernoulli"])
def test_vae_loss_is_fp32_under_autocast(recon):
    torch.manual_seed(0)
    vae = ConvVAE(8)
    x = _images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat, mu, logvar, _ = vae(x)
        out = vae_loss(x, x_hat, mu, logvar, recon=recon)
    assert x_hat.dtype == torch.bfloat16  # the network did run in bf16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()


def test_reparameterisation_moments_and_gradients():
    vae = ConvVAE(4)
    n = 200_000
    mu = torch.tensor([0.5, -2.0, 3.0, 0.0]).repeat(n, 1).requires_grad_()
    logvar = torch.tensor([0.0, 1.0, -2.0, 2.0]).repeat(n, 1).requires_grad_()
    z = vae.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), mu[0], atol=0.02)
    assert torch.allclose(z.var(0), logvar[0].exp(), rtol=0.02)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones_like(mu))  # dz/dmu = 1
    assert logvar.grad.abs().sum() > 0 and torch.isfinite(logvar.grad).all()


def test_vae_loss_terms_match_independent_formulas():
    g = torch.Generator().manual_seed(0)
    B = 4
    x = torch.rand(B, 3, 64, 64, generator=g)
    x_hat = torch.rand(B, 3, 64, 64, generator=g).clamp(0.01, 0.99)
    mu, logvar = torch.randn(B, 32, generator=g), torch.randn(B, 32, generator=g)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1).mean()

    out = vae_loss(x, x_hat, mu, logvar, beta=4.0)
    mse = F.mse_loss(x_hat, x, reduction="sum") / B
    assert torch.allclose(out["recon"], mse, rtol=1e-5)
    assert torch.allclose(out["kl"], kl, rtol=1e-5)
    assert torch.allclose(out["beta_kl"], 4.0 * kl, rtol=1e-5)
    assert torch.allclose(out["loss"], mse + 4.0 * kl, rtol=1e-5)

    out = vae_loss(x, x_hat, mu, logvar, recon="bernoulli")
    bce = F.binary_cross_entropy(x_hat, x, reduction="sum") / B
    by_hand = -(x * x_hat.log() + (1 - x) * (1 - x_hat).log()).sum() / B
    assert torch.allclose(out["recon"], bce, rtol=1e-5)
    assert torch.allclose(out["recon"], by_hand, rtol=1e-4)
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in out.values())

    cap = vae_loss(x, x_hat, mu, logvar, capacity=5.0, gamma=100.0)
    assert torch.allclose(cap["beta_kl"], 100.0 * (kl - 5.0).abs(), rtol=1e-5)
    with pytest.raises(ValueError):
        vae_loss(x, x_hat, mu, logvar, capacity=5.0, kl_tolerance=0.5)
    with pytest.raises(ValueError):
        vae_loss(x, x_hat, mu, logvar, recon="l1")


def test_vae_loss_free_nats_floor():
    D = 32
    x = torch.rand(2, 3, 64, 64)
    # sample 0: KL 0.5 * 32 * 0.25 = 4 nats (under the 16-nat floor); sample 1: 0.5 * 32 * 4 = 64
    mu = torch.stack([torch.full((D,), 0.5), torch.full((D,), 2.0)]).requires_grad_()
    logvar = torch.zeros(2, D, requires_grad=True)
    out = vae_loss(x, x, mu, logvar, kl_tolerance=0.5)
    assert torch.allclose(out["kl"], torch.tensor((4.0 + 64.0) / 2))
    assert torch.allclose(out["kl_floored"], torch.tensor((16.0 + 64.0) / 2))
    assert torch.allclose(out["loss"], torch.tensor(40.0))
    out["loss"].backward()
    assert torch.all(mu.grad[0] == 0)  # under the floor: no gradient
    assert torch.allclose(mu.grad[1], mu[1].detach() / 2)  # d(mean KL)/dmu = mu / B
    assert torch.allclose(vae_loss(x, x, mu, logvar)["loss"], out["kl"])


# ----------------------------------------------------------------------------- VQ-VAE


@pytest.mark.parametrize("downsample,grid", [(3, 8), (4, 4)])
def test_vqvae_shapes(downsample, grid):
    torch.manual_seed(0)
    model = VQVAE(codebook_size=16, code_dim=4, hidden_channels=32, downsample=downsample)
    x = _images(2)
    x_hat, vq = model(x)
    assert x_hat.shape == x.shape and 0 <= x_hat.min() and x_hat.max() <= 1
    assert vq.codes.shape == (2, grid, grid) and vq.codes.dtype == torch.long
    assert vq.quantized.shape == (2, 4, grid, grid)
    assert model.grid_size == (grid, grid) and model.latent_dim == 4 * grid * grid
    assert vq.counts.sum() == 2 * grid * grid
    assert torch.equal(model.encode_codes(x), vq.codes)
    assert torch.allclose(model.decode_codes(vq.codes), x_hat, atol=1e-6)
    assert VQVAE().latent_dim == 256


def test_quantizer_picks_nearest_code():
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 6).eval()
    with torch.no_grad():
        vq.codebook.normal_()
    z_e = torch.randn(5, 6, 3, 7)
    out = vq(z_e)
    flat = z_e.movedim(1, -1).reshape(-1, 6)
    dist = ((flat[:, None, :] - vq.codebook[None].detach()) ** 2).sum(-1)  # brute force
    ref = dist.argmin(1)
    assert torch.equal(out.codes.reshape(-1), ref)
    assert torch.allclose(out.quantized.movedim(1, -1).reshape(-1, 6), vq.codebook[ref], atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = vq(z_e)
    assert torch.equal(amp.codes, out.codes)  # argmin in fp32 whatever autocast says
    assert amp.commitment_loss.dtype == torch.float32


def test_straight_through_and_codebook_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3)
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(z_e)
    w = torch.randn_like(out.quantized)
    (out.quantized * w).sum().backward()
    assert torch.allclose(z_e.grad, w)  # straight-through: identity gradient
    assert vq.codebook.grad is None  # the decoder's gradient does not reach the codebook

    z_e.grad = None
    out = vq(z_e)
    before = vq.codebook.detach().clone()
    opt = torch.optim.SGD(vq.parameters(), lr=1.0)
    out.codebook_loss.backward()
    assert z_e.grad is None  # sg[z_e] in the codebook loss
    opt.step()
    used = out.counts > 0
    assert not torch.allclose(vq.codebook[used], before[used])
    assert torch.allclose(vq.codebook[~used], before[~used])

    vq.zero_grad()
    vq(z_e).commitment_loss.backward()
    assert vq.codebook.grad is None or torch.all(vq.codebook.grad == 0)  # sg[e]
    assert z_e.grad.abs().sum() > 0


def test_ema_codebook_update():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=True, decay=0.5, epsilon=0.0)
    assert "codebook" not in dict(vq.named_parameters())
    assert "codebook" in vq.state_dict()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]]))
        vq.ema_sum.copy_(vq.codebook)
    z_e = torch.tensor([[1.0, 1.0], [3.0, 1.0]]).t().reshape(1, 2, 2)  # both nearest to code 0
    vq.eval()
    vq(z_e)
    assert torch.equal(vq.codebook[0], torch.zeros(2))  # eval: no update
    vq.train()
    out = vq(z_e)
    assert out.codebook_loss == 0
    # N_0 = 0.5*1 + 0.5*2 = 1.5; m_0 = 0.5*0 + 0.5*(4, 2) = (2, 1); e_0 = m_0 / N_0
    assert torch.allclose(vq.codebook[0], torch.tensor([2.0, 1.0]) / 1.5)
    # unused codes decay count and sum alike, so they stay put (up to smoothing)
    kept = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0]])
    assert torch.allclose(vq.codebook[1:], kept)


@pytest.mark.parametrize("ema", [False, True])
def test_dead_code_restart(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=ema, dead_code_steps=2)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [1e3, 1e3]]))
        vq.ema_sum.copy_(vq.codebook)
    z_e = torch.randn(3, 2, 4, 4, requires_grad=True)
    flat = z_e.detach().movedim(1, -1).reshape(-1, 2)
    vq(z_e)
    assert vq.codebook[3, 0] > 900  # unused for 1 step only: kept
    assert vq.steps_unused[3] == 1
    out = vq(z_e)
    new = vq.codebook[3].detach()
    assert torch.isclose(((flat - new) ** 2).sum(1), torch.zeros(1), atol=1e-6).any()
    assert vq.steps_unused[3] == 0
    (out.quantized.sum() + out.codebook_loss + out.commitment_loss).backward()  # still valid


def test_perplexity_and_code_usage():
    K = 16
    assert math.isclose(float(perplexity(torch.full((K,), 7))), K, rel_tol=1e-6)
    counts = torch.tensor([5, 0, 1, 3, 0, 7.0])
    ref = Categorical(probs=counts / counts.sum()).entropy().exp()
    assert torch.allclose(perplexity(counts), ref)
    assert math.isclose(float(perplexity(torch.tensor([0, 9, 0]))), 1.0)

    usage = CodeUsage(K)
    usage.update(torch.arange(K // 2).reshape(2, 2, 2))
    usage.update(torch.arange(K // 2, K))
    assert math.isclose(usage.perplexity(), K, rel_tol=1e-9)
    assert usage.fraction_used() == 1.0
    usage.reset()
    usage.update(torch.tensor([[1, 1], [2, 2]]))
    assert math.isclose(usage.perplexity(), 2.0) and usage.fraction_used() == 2 / K


def test_vqvae_loss_formula():
    torch.manual_seed(0)
    model = VQVAE(codebook_size=16, hidden_channels=16, residual_channels=8)
    x = _images(2)
    x_hat, vq = model(x)
    out = vqvae_loss(x, x_hat, vq, beta=0.25, data_variance=0.5)
    ref = F.mse_loss(x_hat, x) / 0.5 + vq.codebook_loss + 0.25 * vq.commitment_loss
    assert torch.allclose(out["loss"], ref)


# ----------------------------------------------------------------------------- prior


def test_prior_log_prob_sampling_and_learning():
    torch.manual_seed(0)
    K, grid = 8, (4, 4)
    prior = CodePrior(K, grid, embed_dim=32, num_layers=1, num_heads=2)
    codes = prior.sample(6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert codes.shape == (6, 4, 4) and codes.min() >= 0 and codes.max() < K
    lp = prior.log_prob(codes)
    assert lp.shape == (6,) and torch.isfinite(lp).all() and (lp <= 0).all()
    assert torch.allclose(-lp.mean() / 16, prior_loss(prior(codes), codes), rtol=1e-5)
    assert prior.sample(2, temperature=0).shape == (2, 4, 4)

    # causality: changing the last code leaves the other positions' distributions unchanged
    other = codes.clone()
    other[:, -1, -1] = (other[:, -1, -1] + 1) % K
    assert torch.allclose(prior(codes)[:, :-1], prior(other)[:, :-1], atol=1e-6)

    toy = torch.randint(0, K, (4, 4, 4), generator=torch.Generator().manual_seed(1))
    first, last = _steps_lower(lambda: prior_loss(prior(toy), toy), prior.parameters(), 15, 3e-3)
    assert last < first - 0.2


# ----------------------------------------------------------------------------- GAN


@pytest.mark.parametrize("latent_dim", [100, 16])
def test_gan_shapes_and_ranges(latent_dim):
    torch.manual_seed(0)
    gan = DCGAN(latent_dim, generator_channels=8, discriminator_channels=8)
    z = gan.sample_latent(3)
    fake = gan(z)
    assert z.shape == (3, latent_dim) and fake.shape == (3, 3, 64, 64)
    assert -1 <= fake.min() and fake.max() <= 1
    assert gan.discriminator(fake).shape == (3,)
    s = gan.sample(2)
    assert 0 <= s.min() and s.max() <= 1 and not s.requires_grad
    x = _images(2)
    assert torch.allclose(from_gan_range(to_gan_range(x)), x, atol=1e-6)


def test_gan_losses_match_formulas():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(16, generator=g) * 3, torch.randn(16, generator=g) * 3
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    ref_d = -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean())
    assert torch.allclose(discriminator_loss(real, fake), ref_d, rtol=1e-5)
    assert torch.allclose(generator_loss(fake), -torch.log(d_fake).mean(), rtol=1e-5)
    assert torch.allclose(generator_loss(fake, "minimax"), torch.log(1 - d_fake).mean(), rtol=1e-5)
    # finite where sigmoid saturates
    big = torch.tensor([-200.0, 200.0])
    assert torch.isfinite(discriminator_loss(big, big)) and torch.isfinite(generator_loss(big))
    with pytest.raises(ValueError):
        generator_loss(fake, "wasserstein")


def test_minimax_saturates_non_saturating_does_not():
    # D confidently rejects the fakes: the minimax gradient vanishes, the heuristic's does not.
    logits = torch.full((4,), -10.0, requires_grad=True)
    generator_loss(logits, "minimax").backward()
    minimax_grad = logits.grad.abs().mean().item()
    logits.grad = None
    generator_loss(logits, "non_saturating").backward()
    assert logits.grad.abs().mean().item() > 1000 * minimax_grad


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    gen, disc = Generator(100), Discriminator()
    for net in (gen, disc):
        convs = torch.cat([
            m.weight.flatten() for m in net.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
        ])
        assert abs(convs.mean().item()) < 1e-3 and abs(convs.std().item() - 0.02) < 1e-3
        bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        w = torch.cat([m.weight for m in bns])
        assert abs(w.mean().item() - 1) < 3e-3 and abs(w.std().item() - 0.02) < 4e-3
        assert all(torch.all(m.bias == 0) for m in bns)


# ----------------------------------------------------------------------------- all models


def _models():
    torch.manual_seed(0)
    return {
        "vae": (ConvVAE(8), lambda: ConvVAE(8)),
        "vqvae": (
            VQVAE(codebook_size=16, hidden_channels=16, residual_channels=8, ema=True),
            lambda: VQVAE(codebook_size=16, hidden_channels=16, residual_channels=8, ema=True),
        ),
        "dcgan": (DCGAN(16, 8, 8), lambda: DCGAN(16, 8, 8)),
        "prior": (CodePrior(8, (4, 4), 16, 1, 2), lambda: CodePrior(8, (4, 4), 16, 1, 2)),
    }


@pytest.mark.parametrize("name", ["vae", "vqvae", "dcgan", "prior"])
def test_save_load_gives_identical_outputs(name):
    model, factory = _models()[name]
    x = _images(3)
    if name == "vqvae":
        model(x)  # a training step moves the EMA buffers: they must be saved too
    clone = _roundtrip(model, factory)
    model.eval()
    clone.eval()
    z = torch.randn(3, 16)
    codes = torch.randint(0, 8, (3, 4, 4))

    def outputs(m: torch.nn.Module) -> list[torch.Tensor]:
        if name == "vae":
            return [m(x)[0]]
        if name == "vqvae":
            x_hat, vq = m(x)
            return [x_hat, vq.codes, m.quantizer.codebook]
        if name == "dcgan":
            return [m(z), m.discriminator(to_gan_range(x))]
        return [m.log_prob(codes)]

    with torch.no_grad():
        for a, b in zip(outputs(model), outputs(clone), strict=True):
            assert torch.equal(a, b)


def test_a_few_steps_lower_the_vae_loss():
    torch.manual_seed(0)
    vae = ConvVAE()
    x = _images(8)
    vae.eval()  # z = mu: a deterministic objective, so "lower" is not noise

    def loss():
        x_hat, mu, logvar, _ = vae(x)
        return vae_loss(x, x_hat, mu, logvar)["loss"]

    first, last = _steps_lower(loss, vae.parameters(), 5, 1e-3)
    assert last < 0.99 * first


@pytest.mark.parametrize("ema", [False, True])
def test_a_few_steps_lower_the_vqvae_loss(ema):
    torch.manual_seed(0)
    model = VQVAE(
        codebook_size=32, hidden_channels=32, residual_channels=16, ema=ema, dead_code_steps=2
    )
    x = _images(8)

    def loss():
        x_hat, vq = model(x)
        return vqvae_loss(x, x_hat, vq)["loss"]

    first, last = _steps_lower(loss, model.parameters(), 8, 2e-3)
    assert last < 0.9 * first


def test_a_few_steps_lower_the_discriminator_loss():
    torch.manual_seed(0)
    gan = DCGAN(16, generator_channels=16, discriminator_channels=16)
    real = to_gan_range(_images(8))
    with torch.no_grad():
        fake = gan(gan.sample_latent(8, torch.Generator().manual_seed(0)))

    def loss():
        return discriminator_loss(gan.discriminator(real), gan.discriminator(fake))

    first, last = _steps_lower(loss, gan.discriminator.parameters(), 5, 2e-4)
    assert last < first
