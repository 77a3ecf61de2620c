"""worldmodels.memory: gmm_nll and mixture_nll against torch.distributions (extreme sigmas,
far points, gradients), MDN-RNN shapes and parameter count, step == sequence, the loss
training uses (worldmodels.stages.train_mdnrnn.sequence_losses) against an independent reference
(MixtureSameFamily, MSE, weighted BCE) with its padding mask, temperature sampling
statistics, and the discrete (VQ) variant."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, MixtureSameFamily, Normal

from worldmodels.memory import (
    MDNRNN,
    CodeRNN,
    MDNOutput,
    gmm_nll,
    mixture_nll,
    sample_next,
    sample_next_codes,
)
from worldmodels.memory.losses import sequence_losses


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_nll(x, logpi, mu, logsigma):
    """-log p(x) under MixtureSameFamily(Categorical(logpi), Normal(mu, exp(logsigma))), fp64."""
    x, logpi, mu, logsigma = (t.double() for t in (x, logpi, mu, logsigma))
    mix = MixtureSameFamily(Categorical(logits=logpi), Normal(mu, logsigma.exp()))
    return -mix.log_prob(x)


def _mixture(shape, K, logsigma_range=(-2.0, 1.0), x_scale=1.0, seed=0):
    g = _gen(seed)
    logpi = F.log_softmax(torch.randn(*shape, K, generator=g) * 2, dim=-1)
    mu = torch.randn(*shape, K, generator=g)
    lo, hi = logsigma_range
    logsigma = lo + (hi - lo) * torch.rand(*shape, K, generator=g)
    x = torch.randn(*shape, generator=g) * x_scale
    return x, logpi, mu, logsigma


# ---------------------------------------------------------------------------- gmm_nll


@pytest.mark.parametrize(
    "logsigma_range,x_scale",
    [((-2.0, 1.0), 1.0), ((-10.0, 5.0), 1.0), ((-10.0, 5.0), 1e3), ((-10.0, -9.0), 50.0)],
    ids=["typical", "extreme-sigma", "far-x", "all-narrow-far"],
)
def test_gmm_nll_matches_mixture_same_family(logsigma_range, x_scale):
    x, logpi, mu, logsigma = _mixture(
        (4, 3, 6), K=5, logsigma_range=logsigma_range, x_scale=x_scale
    )
    nll = gmm_nll(x, logpi, mu, logsigma)
    assert nll.shape == (4, 3, 6) and nll.dtype == torch.float32
    ref = _reference_nll(x, logpi, mu, logsigma)
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-4)
    # fp64 inputs stay fp64 and agree to rounding (logpi renormalised in fp64 first: the
    # reference's Categorical renormalises, and fp32 log_softmax sums to 1 only within 1e-7).
    x64, mu64, logsigma64 = x.double(), mu.double(), logsigma.double()
    logpi64 = F.log_softmax(logpi.double(), dim=-1)
    nll64 = gmm_nll(x64, logpi64, mu64, logsigma64)
    assert nll64.dtype == torch.float64
    ref64 = _reference_nll(x64, logpi64, mu64, logsigma64)
    torch.testing.assert_close(nll64, ref64, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("logsigma_range,x_scale", [((-10.0, 5.0), 1.0), ((-10.0, 5.0), 1e3)])
def test_gmm_nll_gradients_are_finite_at_extremes(logsigma_range, x_scale):
    x, logits, mu, logsigma = _mixture((2, 8), K=5, logsigma_range=logsigma_range, x_scale=x_scale)
    x, logits, mu, logsigma = (t.requires_grad_() for t in (x, logits, mu, logsigma))
    gmm_nll(x, F.log_softmax(logits, -1), mu, logsigma).sum().backward()
    for t in (x, logits, mu, logsigma):
        assert torch.isfinite(t.grad).all()
    # And they are the gradients of the reference log-likelihood.
    ref = [t.detach().double().requires_grad_() for t in (x, logits, mu, logsigma)]
    _reference_nll(ref[0], F.log_softmax(ref[1], -1), ref[2], ref[3]).sum().backward()
    for t, r in zip((x, logits, mu, logsigma), ref):
        torch.testing.assert_close(t.grad.double(), r.grad, rtol=1e-4, atol=1e-4)


def test_gmm_nll_is_fp32_under_autocast():
    x, logpi, mu, logsigma = (t.bfloat16() for t in _mixture((3, 4), K=5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = gmm_nll(x, logpi, mu, logsigma)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, gmm_nll(x.float(), logpi.float(), mu.float(), logsigma.float()))


def test_gmm_nll_rejects_mismatched_shapes():
    x, logpi, mu, logsigma = _mixture((3, 4), K=5)
    with pytest.raises(ValueError, match="x must have shape"):
        gmm_nll(x[:, :2], logpi, mu, logsigma)
    with pytest.raises(ValueError, match="same shape"):
        gmm_nll(x, logpi[..., :3], mu, logsigma)


# ---------------------------------------------------------------------------- MDNRNN


def _mdnrnn_param_formula(D, A, H, K, heads):
    return 4 * H * (D + A + H) + 8 * H + (H + 1) * 3 * D * K + (H + 1) * heads


def test_mdnrnn_default_parameter_count():
    model = MDNRNN()
    n = sum(p.numel() for p in model.parameters())
    assert n == _mdnrnn_param_formula(32, 3, 256, 5, 2) == 423_906


@pytest.mark.parametrize("reward_head,done_head", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("K", [1, 3])
def test_mdnrnn_shapes(reward_head, done_head, K):
    B, T, D, A, H = 2, 4, 5, 3, 16
    model = MDNRNN(D, A, H, K, reward_head=reward_head, done_head=done_head)
    assert sum(p.numel() for p in model.parameters()) == _mdnrnn_param_formula(
        D, A, H, K, reward_head + done_head
    )
    out = model(torch.randn(B, T, D), torch.rand(B, T, A))
    for t in (out.logpi, out.mu, out.logsigma):
        assert t.shape == (B, T, D, K) and t.dtype == torch.float32
    torch.testing.assert_close(out.logpi.logsumexp(-1), torch.zeros(B, T, D))
    assert (out.reward is None) != reward_head and (out.done_logit is None) != done_head
    if reward_head:
        assert out.reward.shape == (B, T)
    if done_head:
        assert out.done_logit.shape == (B, T)
    h, c = out.state
    assert h.shape == c.shape == (B, H)


def test_mdnrnn_rejects_bad_shapes():
    model = MDNRNN(4, 3, 8, 2)
    with pytest.raises(ValueError, match=r"z must have shape \(B, T, 4\)"):
        model(torch.randn(2, 3, 5), torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="actions must have shape"):
        model(torch.randn(2, 3, 4), torch.randn(2, 3, 2))


def test_step_equals_sequence_forward():
    torch.manual_seed(0)
    B, T, D, A, H, K = 3, 6, 4, 3, 12, 3
    model = MDNRNN(D, A, H, K)
    z, a = torch.randn(B, T, D), torch.rand(B, T, A)
    state0 = model.initial_state(B)
    seq = model(z, a)
    state, steps = state0, []
    for t in range(T):
        out, state = model.step(z[:, t], a[:, t], state)
        assert out.logpi.shape == (B, D, K) and out.reward.shape == (B,)
        assert out.state is state
        steps.append(out)
    for name in ("logpi", "mu", "logsigma", "reward", "done_logit"):
        stacked = torch.stack([getattr(o, name) for o in steps], dim=1)
        torch.testing.assert_close(stacked, getattr(seq, name), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, seq.state, rtol=1e-5, atol=1e-6)
    # Continuing a sequence from a state: forward(first half) + forward(second half, state).
    first = model(z[:, :2], a[:, :2])
    rest = model(z[:, 2:], a[:, 2:], first.state)
    torch.testing.assert_close(rest.mu, seq.mu[:, 2:], rtol=1e-5, atol=1e-6)


def test_mdnrnn_outputs_fp32_under_autocast_and_from_fp64_actions():
    model = MDNRNN(4, 3, 8, 2)
    z, a = torch.randn(2, 3, 4), torch.rand(2, 3, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, a)
    assert all(t.dtype == torch.float32 for t in (out.logpi, out.mu, out.reward, out.done_logit))
    batch = {"z": torch.randn(2, 4, 4), "actions": a, "rewards": torch.randn(2, 3),
             "dones": torch.zeros(2, 3), "next_valid": torch.ones(2, 3, dtype=torch.bool)}
    losses = sequence_losses(model, batch, precision="bf16")
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_mdnrnn_save_load_from_hparams():
    model = MDNRNN(4, 3, 8, 2, reward_head=False)
    buf = io.BytesIO()
    torch.save({"hparams": model.hparams, "state": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = MDNRNN(**ckpt["hparams"])
    clone.load_state_dict(ckpt["state"])
    z, a = torch.randn(1, 3, 4), torch.rand(1, 3, 3)
    torch.testing.assert_close(clone(z, a).mu, model(z, a).mu, rtol=0, atol=0)


# ---------------------------------------------------------------------------- loss


def _batch(B=2, T=5, D=4, A=3, seed=0):
    """A batch as :class:`~worldmodels.data.latents.LatentSequences` gives it."""
    g = _gen(seed)
    return {"z": torch.randn(B, T + 1, D, generator=g), "actions": torch.rand(B, T, A, generator=g),
            "rewards": torch.randn(B, T, generator=g),
            "dones": (torch.rand(B, T, generator=g) < 0.3).float(),
            "next_valid": torch.rand(B, T, generator=g) < 0.8,
            "mask": torch.ones(B, T, dtype=torch.bool)}


def _reference_losses(model, batch, reward_weight, done_weight, pos_weight):
    """The objective written independently: fp64 MixtureSameFamily over the real steps with a
    next frame, mean squared error and positive-weighted BCE over the real steps."""
    out = model(batch["z"][:, :-1], batch["actions"])
    mask, valid = batch["mask"], batch["mask"] & batch["next_valid"]
    nll = _reference_nll(batch["z"][:, 1:], out.logpi, out.mu, out.logsigma).mean(-1)[valid].mean()
    mse = (out.reward - batch["rewards"])[mask].double().square().mean()
    p = torch.sigmoid(out.done_logit.double())[mask]
    d = batch["dones"][mask].double()
    bce = -(pos_weight * d * p.log() + (1 - d) * (1 - p).log()).mean()
    return {"nll": nll, "reward": mse, "done": bce,
            "loss": nll + reward_weight * mse + done_weight * bce}


@pytest.mark.parametrize("pos_weight", [1.0, 7.0])
def test_sequence_losses_match_independent_reference(pos_weight):
    torch.manual_seed(0)
    model = MDNRNN(4, 3, 8, 3)
    batch = _batch()
    losses = sequence_losses(model, batch, 0.5, 2.0, pos_weight, precision="fp32")
    ref = _reference_losses(model, batch, 0.5, 2.0, pos_weight)
    for k, value in ref.items():
        torch.testing.assert_close(losses[k].double(), value, rtol=1e-5, atol=1e-6, msg=k)
    # its gradient is the reference's
    grads = torch.autograd.grad(losses["loss"], list(model.parameters()))
    ref_grads = torch.autograd.grad(ref["loss"], list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-6)


def test_sequence_losses_under_bf16_stay_close_to_fp32():
    # bf16 autocast (the CPU default where bf16 is native) touches only the LSTM; the loss
    # is fp32 and within bf16's rounding of the LSTM of the fp32 one
    torch.manual_seed(0)
    model = MDNRNN(32, 3, 64, 5)
    batch = _batch(B=4, T=20, D=32)
    fp32 = sequence_losses(model, batch, precision="fp32")
    bf16 = sequence_losses(model, batch, precision="bf16")
    for k in fp32:
        assert bf16[k].dtype == torch.float32
        torch.testing.assert_close(bf16[k], fp32[k], rtol=2e-2, atol=2e-3, msg=k)


def test_sequence_losses_mask_ignores_padding():
    torch.manual_seed(0)
    model = MDNRNN(4, 3, 8, 3)
    batch = _batch(B=1, T=6)
    short = {k: v[:, :5] if k == "z" else v[:, :4] for k, v in batch.items()}
    padded = {k: v.clone() for k, v in batch.items()}
    padded["mask"][:, 4:] = False
    padded["z"][:, 5:] = padded["z"][:, 4:5]  # steps past the end repeat the last one
    padded["rewards"][:, 4:] = 1e6
    padded["dones"][:, 4:] = 1.0
    a, b = sequence_losses(model, short, done_pos_weight=3.0), sequence_losses(
        model, padded, done_pos_weight=3.0)
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)
    b["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_sequence_losses_without_heads():
    model = MDNRNN(4, 3, 8, 2, reward_head=False, done_head=False)
    losses = sequence_losses(model, _batch())
    assert losses["reward"] == 0 and losses["done"] == 0
    torch.testing.assert_close(losses["loss"], losses["nll"])


def test_mixture_nll_is_gmm_nll_of_the_normalised_weights():
    g = _gen(2)
    params = torch.randn(3, 4, 3, 6, 5, generator=g, dtype=torch.float64)
    params[..., 2, :, :] = params[..., 2, :, :] * 3  # log-sigmas from -9 to 9
    x = torch.randn(3, 4, 6, generator=g, dtype=torch.float64) * 3
    logits, mu, logsigma = params.unbind(-3)
    torch.testing.assert_close(mixture_nll(params, x), _reference_nll(
        x, logits.log_softmax(-1), mu, logsigma), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, D, K\)"):
        mixture_nll(params[..., :2, :, :], x)


def test_a_few_steps_lower_the_mdnrnn_loss():
    torch.manual_seed(0)
    model = MDNRNN(4, 3, 16, 3)
    # A learnable transition: z_{t+1} = 0.9 z_t + a_t[0], reward = z_t[0].
    g = _gen(1)
    a = torch.rand(8, 10, 3, generator=g)
    z = [torch.randn(8, 4, generator=g)]
    for t in range(10):
        z.append(0.9 * z[-1] + a[:, t, :1])
    z = torch.stack(z, 1)
    batch = {"z": z, "actions": a, "rewards": z[:, :-1, 0], "dones": torch.zeros(8, 10),
             "next_valid": torch.ones(8, 10, dtype=torch.bool)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = sequence_losses(model, batch)["loss"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


# ---------------------------------------------------------------------------- sampling


def _fixed_mixture(n, logpi, mu, logsigma):
    """An MDNOutput with the same (D, K) mixtures repeated over n rows."""
    t = [torch.tensor(v).expand(n, *torch.tensor(v).shape) for v in (logpi, mu, logsigma)]
    return MDNOutput(*t, None, None, (torch.zeros(n, 1), torch.zeros(n, 1)))


PI = [[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]]
MU = [[-2.0, 0.5, 3.0], [1.0, -1.0, 0.0]]
LOGSIGMA = [[-1.0, 0.0, -0.5], [0.2, -2.0, -1.0]]


def test_sample_next_matches_the_mixture_moments_at_tau_1():
    n = 200_000
    out = _fixed_mixture(n, torch.tensor(PI).log().tolist(), MU, LOGSIGMA)
    z = sample_next(out, 1.0, generator=_gen(0))
    assert z.shape == (n, 2) and z.dtype == torch.float32
    pi, mu, sigma = torch.tensor(PI), torch.tensor(MU), torch.tensor(LOGSIGMA).exp()
    mean = (pi * mu).sum(-1)
    var = (pi * (sigma**2 + mu**2)).sum(-1) - mean**2
    # Standard errors: ~sqrt(var / n) ~ 0.004 for the mean; a few percent for the variance.
    torch.testing.assert_close(z.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), var, rtol=0.02, atol=0)
    # Same generator seed, same draws.
    torch.testing.assert_close(sample_next(out, 1.0, generator=_gen(0)), z, rtol=0, atol=0)


def test_sample_next_temperature_reweights_components_and_scales_sigma():
    # Far-apart narrow components: the chosen component is identifiable from z.
    n, tau = 100_000, 0.5
    pi = torch.tensor([[0.2, 0.5, 0.3]])
    out = _fixed_mixture(n, pi.log().tolist(), [[-100.0, 0.0, 100.0]], [[0.0, 0.0, 0.0]])
    z = sample_next(out, tau, generator=_gen(1))[:, 0]
    chosen = torch.bucketize(z, torch.tensor([-50.0, 50.0]))
    freq = torch.bincount(chosen, minlength=3).double() / n
    tempered = pi[0].double() ** (1 / tau)
    torch.testing.assert_close(freq, tempered / tempered.sum(), atol=0.01, rtol=0)
    centre = z - torch.tensor([-100.0, 0.0, 100.0])[chosen]
    torch.testing.assert_close(centre.std().item(), tau**0.5, rtol=0.02, atol=0)


def test_sample_next_concentrates_as_tau_goes_to_zero():
    n = 1000
    out = _fixed_mixture(n, torch.tensor(PI).log().tolist(), MU, LOGSIGMA)
    best_mean = torch.tensor([0.5, 1.0])  # mean of each dimension's most likely component
    torch.testing.assert_close(sample_next(out, 0.0), best_mean.expand(n, 2), rtol=0, atol=0)
    z = sample_next(out, 1e-4, generator=_gen(2))
    assert (z - best_mean).abs().max() < 0.1
    with pytest.raises(ValueError, match="temperature"):
        sample_next(out, -1.0)


# ---------------------------------------------------------------------------- discrete


def test_discrete_parameter_count():
    K, cells, A, H, E = 128, 64, 3, 256, 8
    model = CodeRNN(K, cells, A, H, E)
    formula = K * E + 4 * H * (cells * E + A + H) + 8 * H + (H + 1) * cells * K + 2 * (H + 1)
    assert sum(p.numel() for p in model.parameters()) == formula == 2_898_434


@pytest.mark.parametrize("grid", [(6,), (2, 3)], ids=["flat", "grid"])
def test_discrete_shapes_loss_and_step(grid):
    torch.manual_seed(0)
    B, T, K, A, H = 2, 4, 7, 3, 10
    cells = 6
    model = CodeRNN(K, cells, A, H, code_embed_dim=3)
    codes = torch.randint(0, K, (B, T + 1, *grid), generator=_gen(0))
    a, reward = torch.rand(B, T, A), torch.randn(B, T)
    done = torch.zeros(B, T, dtype=torch.bool)
    out = model(codes[:, :-1], a)
    assert out.logits.shape == (B, T, cells, K) and out.logits.dtype == torch.float32
    assert out.reward.shape == out.done_logit.shape == (B, T)
    batch = {"codes": codes, "actions": a, "rewards": reward, "dones": done.float(),
             "next_valid": torch.ones(B, T, dtype=torch.bool)}
    losses = sequence_losses(model, batch, precision="fp32")
    ce = F.cross_entropy(out.logits.reshape(-1, K), codes[:, 1:].reshape(-1))
    torch.testing.assert_close(losses["nll"], ce)
    torch.testing.assert_close(
        losses["loss"],
        ce
        + F.mse_loss(out.reward, reward)
        + F.binary_cross_entropy_with_logits(out.done_logit, done.float()),
    )
    state, logits = None, []
    for t in range(T):
        step, state = model.step(codes[:, t], a[:, t], state)
        assert step.logits.shape == (B, cells, K)
        logits.append(step.logits)
    torch.testing.assert_close(torch.stack(logits, 1), out.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, out.state, rtol=1e-5, atol=1e-6)


def test_discrete_loss_mask_ignores_padded_steps():
    torch.manual_seed(0)
    model = CodeRNN(5, 4, hidden_dim=8, code_embed_dim=2, reward_head=False, done_head=False)
    codes = torch.randint(0, 5, (1, 5, 4), generator=_gen(0))
    out = model(codes[:, :-1], torch.rand(1, 4, 3, generator=_gen(1)))
    batch = {"codes": codes, "actions": torch.rand(1, 4, 3, generator=_gen(1)),
             "rewards": torch.zeros(1, 4), "dones": torch.zeros(1, 4),
             "next_valid": torch.ones(1, 4, dtype=torch.bool),
             "mask": torch.tensor([[True, True, True, False]])}
    masked = sequence_losses(model, batch, precision="fp32")
    ref = F.cross_entropy(out.logits[:, :3].reshape(-1, 5), codes[:, 1:4].reshape(-1))
    torch.testing.assert_close(masked["nll"], ref)


def test_sample_next_codes_temperature():
    n = 50_000
    logits = torch.tensor([0.0, 1.0, -1.0, 0.5]).log_softmax(-1)
    out = type("Step", (), {"logits": logits.expand(n, 1, 4)})()
    torch.testing.assert_close(sample_next_codes(out, 0.0), torch.ones(n, 1, dtype=torch.long))
    for tau in (1.0, 2.0):
        codes = sample_next_codes(out, tau, generator=_gen(3))
        assert codes.shape == (n, 1) and codes.dtype == torch.int64
        freq = torch.bincount(codes[:, 0], minlength=4).double() / n
        torch.testing.assert_close(freq, (logits.double() / tau).softmax(-1), atol=0.01, rtol=0)


def test_predict_reads_the_heads_of_a_hidden_state_as_forward_does():
    torch.manual_seed(3)
    m = MDNRNN(latent_dim=4, hidden_dim=16, num_gaussians=3).eval()
    z, a = torch.randn(2, 5, 4), torch.rand(2, 5, 3)
    with torch.no_grad():
        out = m(z, a)
        hs, _ = m.lstm(torch.cat([z, a], -1))  # the LSTM's hidden states, independently
        pred = m.predict(hs)
    for name in ("logpi", "mu", "logsigma", "reward", "done_logit"):
        torch.testing.assert_close(getattr(pred, name), getattr(out, name), rtol=1e-5,
                                   atol=1e-6)
    # and one step's new state gives the same prediction as step's output
    with torch.no_grad():
        step_out, (h, _) = m.step(z[:, 0], a[:, 0])
        torch.testing.assert_close(m.predict(h).mu, step_out.mu)
