"""Sample-quality and reconstruction metrics: pure numpy / torch functions.

Distribution distances between two sets of feature vectors (one row per image):

* :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to the two sets,
  ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``; in the features of an Inception
  network it is the FID of Heusel et al., *GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium* (NeurIPS 2017, arXiv:1706.08500).
* :func:`kernel_distance`: the unbiased squared MMD with the cubic polynomial
  kernel ``k(x, y) = (x . y / d + 1)^3``, averaged over random subsets; the KID of Bińkowski
  et al., *Demystifying MMD GANs* (ICLR 2018, arXiv:1801.01401). Unlike FD it has an unbiased
  estimator, so its value does not drift with the sample count.
* :func:`precision_recall`: improved precision and recall of Kynkäänniemi et al.,
  *Improved Precision and Recall Metric for Assessing Generative Models* (NeurIPS 2019,
  arXiv:1904.06991): each set's manifold is the union of balls reaching every point's k-th
  nearest neighbour; precision is the share of generated points inside the real manifold
  (fidelity), recall the share of real points inside the generated one (coverage).

FD is biased in the sample count (it grows as N shrinks), so compare models only at one
fixed N. The feature networks themselves live in :mod:`worldmodels.metrics.features`.

Per-image reconstruction metrics: :func:`mse`, :func:`psnr`; and :func:`bits_per_dim`.

Shapes: ``N``, ``M`` set sizes, ``F`` feature dimension, ``B`` batch. Distances are
computed in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "frechet_distance",
    "frechet_distance_gaussians",
    "gaussian_stats",
    "polynomial_kernel",
    "polynomial_mmd2",
    "kernel_distance",
    "knn_radii",
    "precision_recall",
    "mse",
    "psnr",
    "bits_per_dim",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_features(x: ArrayLike, name: str, min_rows: int = 1) -> np.ndarray:
    """(N, F) float64 numpy copy of ``x`` (numpy array or tensor on any device)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (N, F) array of feature vectors, got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} has NaN or inf values")
    return x


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# ------------------------------------------------------------------------------ Fréchet


def gaussian_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) (``ddof = 1``) of ``feats`` (N, F), float64."""
    x = _as_features(feats, "feats", min_rows=2)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root of a symmetric matrix (negative eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(0.5 * (s + s.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(
    mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray
) -> float:
    """Fréchet (2-Wasserstein squared) distance between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``.

    ``||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^{1/2})``

    ``S_a S_b`` is not symmetric, but it is similar to the PSD matrix
    ``S_a^{1/2} S_b S_a^{1/2}``, so ``Tr((S_a S_b)^{1/2})`` is the sum of the square roots of
    that matrix's eigenvalues: two symmetric eigendecompositions (``eigh``), tiny negative
    eigenvalues from round-off clipped to 0. No complex parts to discard, no ``sqrtm``
    iteration that can fail on singular covariances (N < F).

    :param mu_a: (F,) mean. :param cov_a: (F, F) covariance (likewise ``mu_b``, ``cov_b``).
    :return: the distance (>= 0 up to round-off), a Python float.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != mu_a.shape * 2:
        raise ValueError(
            f"inconsistent shapes: mu {mu_a.shape}, {mu_b.shape}; cov {cov_a.shape}, {cov_b.shape}"
        )
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    tr_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID in Inception
    features; Heusel et al. 2017).

    ``FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with the sample means and
    unbiased sample covariances; see :func:`frechet_distance_gaussians`. Symmetric;
    ``FD(x, x) = 0``. Biased in N: compare only at equal sample counts.

    :param feats_a: (N, F), N >= 2. :param feats_b: (M, F), M >= 2.
    :return: a Python float.
    """
    a = _as_features(feats_a, "feats_a", min_rows=2)
    b = _as_features(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    return frechet_distance_gaussians(*gaussian_stats(a), *gaussian_stats(b))


# ---------------------------------------------------------------------------------- KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3,
                      coef0: float = 1.0) -> np.ndarray:
    """``k(x, y) = (x . y / F + coef0)^degree`` for every pair: (N, F), (M, F) -> (N, M)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def polynomial_mmd2(feats_a: ArrayLike, feats_b: ArrayLike, degree: int = 3,
                    coef0: float = 1.0) -> float:
    """Unbiased estimate of the squared MMD between two samples, polynomial kernel.

    ``MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(a_i, a_j) + 1/(n(n-1)) sum_{i!=j} k(b_i, b_j)
    - 2/(mn) sum_{i,j} k(a_i, b_j)``

    (Gretton et al., *A Kernel Two-Sample Test*, JMLR 2012, eq. 3). Can be slightly
    negative when the distributions are equal.

    :param feats_a: (m, F), m >= 2. :param feats_b: (n, F), n >= 2.
    """
    a = _as_features(feats_a, "feats_a", min_rows=2)
    b = _as_features(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    m, n = len(a), len(b)
    k_aa = polynomial_kernel(a, a, degree, coef0)
    k_bb = polynomial_kernel(b, b, degree, coef0)
    k_ab = polynomial_kernel(a, b, degree, coef0)
    sum_aa = k_aa.sum() - np.trace(k_aa)
    sum_bb = k_bb.sum() - np.trace(k_bb)
    return float(sum_aa / (m * (m - 1)) + sum_bb / (n * (n - 1)) - 2.0 * k_ab.sum() / (m * n))


def kernel_distance(
    feats_a: ArrayLike,
    feats_b: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """The kernel distance of KID (Bińkowski et al. 2018, arXiv:1801.01401), in whatever
    feature space ``feats_a`` / ``feats_b`` come from (here the in-project feature nets, not
    an Inception network): unbiased MMD^2, cubic polynomial kernel
    ``k(x, y) = (x . y / F + 1)^3``, averaged over random subsets.

    Each of ``num_subsets`` rounds draws ``subset_size`` rows of each set without
    replacement (the reference implementation's block estimator; defaults 100 x 1000) and
    computes :func:`polynomial_mmd2`; ``subset_size`` is capped at the smaller set size.

    :param feats_a: (N, F). :param feats_b: (M, F).
    :param seed: seed of the subset draws (same seed, same result).
    :return: ``(mean, std)`` over subsets (``std`` with ``ddof = 0``; 0 for one subset).
    """
    a = _as_features(feats_a, "feats_a", min_rows=2)
    b = _as_features(feats_b, "feats_b", min_rows=2)
    _same_dim(a, b)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        ia = rng.choice(len(a), size, replace=False)
        ib = rng.choice(len(b), size, replace=False)
        values[s] = polynomial_mmd2(a[ia], b[ib])
    return float(values.mean()), float(values.std())


# --------------------------------------------------------------------- precision / recall


def _as_tensor(x: ArrayLike, name: str, device: torch.device | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        if x.dim() != 2:
            raise ValueError(f"{name} must be a (N, F) array of feature vectors, got shape {tuple(x.shape)}")
        return x.detach().to(device or x.device, torch.float64)
    return torch.from_numpy(_as_features(x, name)).to(device or "cpu")


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(c, F), (N, F) float64 -> (c, N) squared Euclidean distances (clamped at 0)."""
    d = x.pow(2).sum(1, keepdim=True) - 2.0 * (x @ y.T) + y.pow(2).sum(1)[None, :]
    return d.clamp_min_(0.0)


def _chunk_rows(n_cols: int, max_elements: int) -> int:
    return max(1, max_elements // max(1, n_cols))


def knn_radii(feats: torch.Tensor, k: int = 3, max_elements: int = 2**24) -> torch.Tensor:
    """Squared distance from each row to its k-th nearest *other* row: (N, F) -> (N,).

    The (k+1)-th smallest distance of a row to all rows (its own distance, 0, is the
    first). Rows are processed in chunks so at most ``max_elements`` distances are held.
    """
    n = feats.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, N-1] for a set of N={n} points, got k={k}")
    radii = torch.empty(n, dtype=feats.dtype, device=feats.device)
    step = _chunk_rows(n, max_elements)
    for start in range(0, n, step):
        d = _sq_dists(feats[start:start + step], feats)
        radii[start:start + step] = d.kthvalue(k + 1, dim=1).values
    return radii


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor,
            max_elements: int) -> torch.Tensor:
    """(P,) bool: whether each point lies in some ball ``||p - c_i||^2 <= r_i``."""
    out = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    step = _chunk_rows(centres.shape[0], max_elements)
    for start in range(0, points.shape[0], step):
        d = _sq_dists(points[start:start + step], centres)
        out[start:start + step] = (d <= radii[None, :]).any(dim=1)
    return out


def precision_recall(
    real: ArrayLike,
    fake: ArrayLike,
    k: int = 3,
    device: str | torch.device | None = None,
    max_elements: int = 2**24,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    ``manifold(X) = union_i B(x_i, ||x_i - NN_k(x_i)||)`` (``NN_k``: the k-th nearest other
    point of X);

    * precision = ``mean_j [fake_j in manifold(real)]`` (are the samples realistic?),
    * recall = ``mean_i [real_i in manifold(fake)]`` (is the data covered?).

    Balls are closed (a point on the boundary is inside), so identical sets give (1, 1).
    Pairwise distances are float64, computed in chunks of at most ``max_elements``.

    :param real: (N, F), N > k. :param fake: (M, F), M > k.
    :param k: neighbourhood size (3 in the paper).
    :param device: where to compute (default: the tensors' device, CPU for numpy).
    :return: ``(precision, recall)`` as Python floats in [0, 1].
    """
    device = torch.device(device) if device is not None else None
    r = _as_tensor(real, "real", device)
    f = _as_tensor(fake, "fake", device or r.device)
    r = r.to(f.device)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dimensions differ: {r.shape[1]} vs {f.shape[1]}")
    radii_real = knn_radii(r, k, max_elements)
    radii_fake = knn_radii(f, k, max_elements)
    precision = _inside(f, r, radii_real, max_elements).double().mean().item()
    recall = _inside(r, f, radii_fake, max_elements).double().mean().item()
    return float(precision), float(recall)


# --------------------------------------------------------------------- per-image metrics


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B, ...) x2 -> (B,) float64 (mean over all but dim 0).

    Inputs of any dtype (uint8 included) are compared in float64, on their own scale.
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape or x.dim() < 1:
        raise ValueError(f"x and y must have the same (B, ...) shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    diff = x.to(torch.float64) - y.to(device=x.device, dtype=torch.float64)
    return diff.pow(2).reshape(x.shape[0], -1).mean(dim=1)


def psnr(x: torch.Tensor, y: torch.Tensor, max_value: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB: ``10 log10(max_value^2 / MSE)``.

    :param x: (B, ...) images. :param y: (B, ...) images on the same scale.
    :param max_value: the largest pixel value (1.0 for [0, 1] floats, 255 for uint8).
    :return: (B,) float64; ``inf`` where the images are identical.
    """
    return 10.0 * torch.log10(max_value**2 / mse(x, y))


def bits_per_dim(nll_nats: float | torch.Tensor | np.ndarray,
                 num_dims: int) -> float | torch.Tensor | np.ndarray:
    """``nll / (num_dims * ln 2)``: a negative log-likelihood in nats -> bits per dimension.

    For a continuous density over pixels scaled to [0, 1] (rather than a discrete
    likelihood over 256 levels), add ``num_dims * ln 256`` nats to the NLL first so the
    number is comparable with discrete models (the change of variables to [0, 256)).

    :param nll_nats: NLL per example, in nats (scalar or any shape).
    :param num_dims: dimensions per example (12,288 for a 64x64x3 frame).
    """
    if num_dims < 1:
        raise ValueError(f"num_dims must be >= 1, got {num_dims}")
    return nll_nats / (num_dims * math.log(2.0))
