"""worldmodels.metrics.generative and .features: each metric against an independent
reference (closed forms, brute-force loops), their defining properties, and the in-project
feature networks on a real tiny dataset (train, extract, save -> load, sample quality)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worldmodels.config import load_config
from worldmodels.data.datasets import RolloutDataset
from worldmodels.data.frames import load_frames
from worldmodels.errors import DataError
from worldmodels.metrics.features import (
    FrameFeatureNet,
    RandomFeatureNet,
    evaluate_feature_net,
    extract_features,
    frame_targets,
    grass_fraction,
    load_feature_net,
    sample_quality,
    save_feature_net,
    train_feature_net,
)
from worldmodels.metrics.generative import (
    bits_per_dim,
    frechet_distance,
    frechet_distance_gaussians,
    kernel_distance,
    mse,
    polynomial_mmd2,
    precision_recall,
    psnr,
)
from worldmodels.stages.collect import collect
from worldmodels.utils.checkpoint import save_checkpoint

SMALL = {"feature_dim": 32, "base_channels": 8}  # tiny nets: 2 shared CPU cores




def _with_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and unbiased sample covariance are exactly mean, cov."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    white = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)
    return white @ np.linalg.cholesky(cov).T + mean


# -------------------------------------------------------------------------------- FD


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    F = 6
    mu_a, mu_b = rng.normal(size=F), rng.normal(size=F)
    var_a, var_b = rng.uniform(0.1, 3.0, F), rng.uniform(0.1, 3.0, F)
    a = _with_moments(rng, 200, mu_a, np.diag(var_a))
    b = _with_moments(rng, 300, mu_b, np.diag(var_b))
    # W2^2 of diagonal Gaussians: ||dmu||^2 + sum_j (sigma_a_j - sigma_b_j)^2
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a).float(), b) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("rank_a", [8, 3])  # full rank, and singular (N < F in practice)
def test_frechet_distance_gaussians_full_covariances_against_eigvals(rank_a):
    # Independent reference: Tr((S_a S_b)^{1/2}) = sum sqrt(eigvals(S_a S_b)) (real, >= 0).
    rng = np.random.default_rng(rank_a)
    F = 8
    la, lb = rng.normal(size=(F, rank_a)), rng.normal(size=(F, F))
    cov_a, cov_b = la @ la.T, lb @ lb.T
    mu_a, mu_b = rng.normal(size=F), rng.normal(size=F)
    eig = np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(eig).sum()
    assert frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-7)


def test_frechet_distance_zero_for_same_set_and_symmetric():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 16)) * 10
    y = rng.normal(size=(40, 16)) + 0.5
    assert abs(frechet_distance(x, x)) < 1e-8 * np.trace(np.cov(x, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-10)
    assert frechet_distance(x, y) > 0
    with pytest.raises(ValueError, match="dimensions"):
        frechet_distance(x, y[:, :8])


# ------------------------------------------------------------------------------- KID


def _mmd2_loops(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    k = lambda x, y: (x @ y / d + 1.0) ** 3  # noqa: E731
    m, n = len(a), len(b)
    s_aa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j)
    s_bb = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j)
    s_ab = sum(k(a[i], b[j]) for i in range(m) for j in range(n))
    return s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2 * s_ab / (m * n)


def test_kid_matches_brute_force():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(9, 4)) + 0.3
    expected = _mmd2_loops(a, b)
    assert polynomial_mmd2(a, b) == pytest.approx(expected, rel=1e-10)
    # one subset holding every row: a permutation of the full sets, the same estimate
    mean, std = kernel_distance(a, b, num_subsets=1, subset_size=100)
    assert mean == pytest.approx(expected, rel=1e-10) and std == 0.0
    c = rng.normal(size=(7, 4))
    assert polynomial_mmd2(a, c) == pytest.approx(_mmd2_loops(a, c), rel=1e-10)


def test_kid_near_zero_for_same_distribution_positive_when_shifted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, same_std = kernel_distance(a, b, num_subsets=20, subset_size=100, seed=0)
    shifted, shifted_std = kernel_distance(a, b + 1.0, num_subsets=20, subset_size=100, seed=0)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * max(abs(same), shifted_std)
    assert kernel_distance(a, b, 5, 50, seed=7) == kernel_distance(a, b, 5, 50, seed=7)


# ------------------------------------------------------------------ precision / recall


def _pr_brute(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        return np.array([sorted(np.linalg.norm(x - x[i], axis=1))[k] for i in range(len(x))])

    def inside(points, centres, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(10 + k)
    real = rng.normal(size=(30, 6))
    fake = rng.normal(size=(25, 6)) + 0.8  # overlapping: neither 0 nor 1
    expected = _pr_brute(real, fake, k)
    assert precision_recall(real, fake, k=k) == pytest.approx(expected, abs=1e-12)
    # memory-bounded chunks (a few rows at a time) give the same answer
    assert precision_recall(real, fake, k=k, max_elements=64) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the test is not trivial


def test_precision_recall_extremes():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20, 8))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(torch.from_numpy(x), x + 1000.0, k=3) == (0.0, 0.0)
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(x[:3], x, k=3)


# ------------------------------------------------------------------------ per image


def test_mse_psnr_bits_per_dim():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = (x + 0.1 * torch.arange(4).view(4, 1, 1, 1)).clamp(0, 1)
    ref = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(mse(x, y), ref)
    p = psnr(x, y)
    assert p.shape == (4,) and math.isinf(p[0]) and p[0] > 0
    torch.testing.assert_close(p[1:], 10 * torch.log10(1.0 / ref[1:]))
    xu, yu = (x * 255).round().to(torch.uint8), (y * 255).round().to(torch.uint8)
    torch.testing.assert_close(psnr(xu, yu, max_value=255.0)[1:], psnr(xu / 255.0, yu / 255.0)[1:])
    assert bits_per_dim(12288 * math.log(2.0), 12288) == pytest.approx(1.0)
    torch.testing.assert_close(bits_per_dim(torch.tensor([math.log(2.0) * 6]), 3), torch.tensor([2.0]))


# ----------------------------------------------------------------------- feature nets


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("features")
    # Tracks 0-2, as when these tests were written: with 40 mostly-zoom frames each, the
    # tiny feature net is only checked on data known to train it (other tracks are fine for
    # FD/KID but may leave noise inside the real k-NN balls).
    cfg = load_config(overrides={"collect": {"episodes": 3, "max_steps": 40, "workers": 1,
                                             "seed": 0}})
    return collect(cfg, run_dir, progress=False)


@pytest.fixture(scope="module")
def frames(rollouts) -> np.ndarray:
    """(120, 64, 64, 3) uint8, all frames in episode order."""
    return load_frames(rollouts).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def trained(rollouts) -> tuple[FrameFeatureNet, list[dict]]:
    history: list[dict] = []
    net = train_feature_net(rollouts, epochs=6, seed=0, device="cpu", batch_size=16,
                            on_epoch=lambda epoch, losses: history.append(losses), **SMALL)
    return net, history


def test_targets():
    grass = np.zeros((2, 64, 64, 3), np.uint8)
    grass[0] = (102, 204, 102)
    grass[1] = (102, 102, 102)
    np.testing.assert_array_equal(grass_fraction(grass), [1.0, 0.0])
    t = frame_targets(grass, np.array([[0.5, 1.0, 0.0], [-1.0, 0.0, 0.2]]), np.array([3.2, -100.0]))
    assert t.dtype == np.float32
    np.testing.assert_allclose(t, [[0.5, 1.0, 0.0, 1.0, 1.0], [-1.0, 0.0, 0.2, -1.0, 0.0]], rtol=1e-6)


def test_feature_net_loss_falls(rollouts, trained):
    net, history = trained
    assert not net.training and len(history) == 6
    untrained = train_feature_net(rollouts, epochs=0, seed=0, device="cpu", **SMALL)
    before = evaluate_feature_net(untrained, rollouts)
    after = evaluate_feature_net(net, rollouts)
    assert after["loss"] < 0.7 * before["loss"], (before, after)
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(after) == {"loss", "action", "reward", "grass"}


def test_features_shape_deterministic_and_layout_free(trained, frames):
    net, _ = trained
    f = extract_features(net, frames[:20], batch_size=7)
    assert f.shape == (20, 32) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(f, extract_features(net, frames[:20], batch_size=7))
    nchw = torch.from_numpy(frames[:20]).permute(0, 3, 1, 2)
    np.testing.assert_allclose(extract_features(net, nchw, batch_size=20), f, rtol=1e-5, atol=1e-6)
    # float frames in [0, 1] are quantised to the same uint8 frames first
    np.testing.assert_allclose(extract_features(net, nchw.float() / 255.0), f, rtol=1e-5, atol=1e-6)
    assert not net.training


def test_random_feature_net_fixed_by_seed(frames):
    state = torch.get_rng_state()
    a, b, c = RandomFeatureNet(seed=1, **SMALL), RandomFeatureNet(seed=1, **SMALL), RandomFeatureNet(seed=2, **SMALL)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    fa = extract_features(a, frames[:8])
    np.testing.assert_array_equal(fa, extract_features(b, frames[:8]))
    assert not np.allclose(fa, extract_features(c, frames[:8]))
    assert fa.std(axis=0).mean() > 0  # the random features do vary with the frame


@pytest.mark.parametrize("which", ["trained", "random"])
def test_save_load_same_features(which, trained, frames, tmp_path):
    net = trained[0] if which == "trained" else RandomFeatureNet(seed=3, **SMALL)
    path = save_feature_net(net, tmp_path / "features.pt", metrics={"val/loss": 0.5})
    loaded = load_feature_net(path)
    assert type(loaded) is type(net) and not loaded.training
    np.testing.assert_array_equal(extract_features(loaded, frames[:10]), extract_features(net, frames[:10]))
    np.testing.assert_array_equal(
        extract_features(FrameFeatureNet.load(net.save(tmp_path / "again.pt")), frames[:10]),
        extract_features(net, frames[:10]))
    save_checkpoint(tmp_path / "other.pt", kind="vae", model=net, model_config=net.hparams, step=0)
    with pytest.raises(DataError, match="expected 'features'"):
        load_feature_net(tmp_path / "other.pt")


def test_sample_quality_real_halves_closer_than_noise(trained, frames, rollouts):
    net, _ = trained
    nets = {"trained": net, "random": RandomFeatureNet(seed=0, **SMALL)}
    order = np.random.default_rng(0).permutation(len(frames))
    half_a, half_b = frames[order[:60]], frames[order[60:120]]
    noise = np.random.default_rng(1).integers(0, 256, half_b.shape, dtype=np.uint8)
    kw = {"k": 3, "seed": 0, "kid_subsets": 10, "kid_subset_size": 50}
    real = sample_quality(half_a, half_b, nets, **kw)
    fake = sample_quality(half_a, noise, nets, **kw)
    for name in nets:
        r, f = real[name], fake[name]
        assert set(r) == {"fd", "kid", "kid_std", "precision", "recall", "num_samples"}
        assert r["num_samples"] == 60
        assert r["fd"] < f["fd"] and r["kid"] < f["kid"], name
        assert r["precision"] > f["precision"] and r["recall"] > f["recall"], name
    # precomputed real features give the same numbers
    cached = {name: extract_features(n, half_a) for name, n in nets.items()}
    assert sample_quality(None, noise, nets, real_features=cached, **kw) == fake
    with pytest.raises(ValueError, match="sample count"):
        sample_quality(half_a, noise[:50], nets, **kw)
    assert sample_quality(half_a, noise, nets, num_samples=40, **kw)["random"]["num_samples"] == 40
    assert RolloutDataset(rollouts).num_frames == len(frames)
