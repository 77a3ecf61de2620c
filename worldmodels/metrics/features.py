"""Feature spaces for sample-quality metrics that belong to none of the compared models.

FID (Heusel et al., NeurIPS 2017, arXiv:1706.08500), KID (Bińkowski et al., ICLR 2018,
arXiv:1801.01401) and improved precision/recall (Kynkäänniemi et al., NeurIPS 2019,
arXiv:1904.06991) compare real and generated images in the feature space of a fixed
network, normally an ImageNet Inception-v3. Here:

* **No pretrained weights can be downloaded**, and ImageNet features are a poor fit for
  64x64 CarRacing frames anyway, so every feature network is built in-project.
* **No compared model supplies the features.** Measuring the VAE's samples in the VAE's
  own latent space (or the GAN's in its discriminator's) would favour that model: it
  scores well wherever its own encoder is blind.

Two feature spaces, each used on its own (a second opinion, not an average):

* :class:`FrameFeatureNet`: a small CNN trained on a supervised task that no generative
  model here solves: from one frame, predict the action taken (steer, gas, brake), the
  reward of that step, and how much grass surrounds the car (see :func:`frame_targets`).
  Its features must encode the road's shape and the car's position relative to it, which
  is what a good sample of CarRacing has to get right. Trained by
  :func:`train_feature_net` from ``rollouts.h5``.
* :class:`RandomFeatureNet`: the same architecture, fixed random initialisation. Random
  CNN features are a known cheap baseline for distribution distances; they measure
  low-level image statistics (colour, texture) with no task bias.

Features are the penultimate layer (global average pool of the last convolution, float32).
GroupNorm, not BatchNorm: a frame's features never depend on the other frames in its batch
(or on running statistics), in training and in eval mode alike, and the random network
is well scaled without any data.

:func:`sample_quality` computes FD, KID, precision and recall of a set of generated frames
against real frames in each feature space, at a fixed sample count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.data.datasets import RolloutDataset
from worldmodels.errors import DataError
from worldmodels.metrics.generative import (
    frechet_distance,
    kernel_distance,
    precision_recall,
)
from worldmodels.utils.checkpoint import load_checkpoint, save_checkpoint
from worldmodels.utils.torch import autocast, check_finite, resolve_device

__all__ = [
    "FrameFeatureNet",
    "RandomFeatureNet",
    "frame_targets",
    "grass_fraction",
    "feature_net_loss",
    "train_feature_net",
    "evaluate_feature_net",
    "extract_features",
    "sample_quality",
    "save_feature_net",
    "load_feature_net",
]

CHECKPOINT_KIND = "features"
NUM_TARGETS = 5  # steer, gas, brake, clipped reward, grass-fraction logit

# Where the car sits in a 64x64 frame once the start-of-episode zoom has settled (rows
# 51..58, columns 30..33), and the square around it whose green share is the grass
# target. During the first second of an episode the camera zooms in and the car is
# elsewhere; the target is then simply the greenness of that spot, still a well-defined
# function of the frame.
_AROUND_CAR = (slice(46, 62), slice(24, 40))  # 16 x 16 pixels
_CAR = (slice(50, 60), slice(29, 35))
_GREEN_MARGIN = 40  # grass is (102, 204..230, 102), road ~ (102, 102, 102), kerbs red/white


# ----------------------------------------------------------------------------- network


class FrameFeatureNet(nn.Module):
    """Frame (B, 3, 64, 64) in [0, 1] -> features (B, feature_dim) -> 5 task outputs.

    ``3 x 64x64 -> c x 32x32 -> 2c x 16x16 -> 4c x 8x8 -> feature_dim x 4x4 -> pool``: convs
    k4 s2 p1, each followed by GroupNorm(8) and ReLU; global average pooling gives the
    features; a linear head predicts ``(steer, gas, brake, reward, grass logit)``.

    :param feature_dim: F, size of the feature vector (128).
    :param base_channels: ``c`` (32).
    """

    def __init__(self, feature_dim: int = 128, base_channels: int = 32) -> None:
        super().__init__()
        if feature_dim % 8 or base_channels % 8 or feature_dim < 8 or base_channels < 8:
            raise ValueError(f"feature_dim and base_channels must be positive multiples of 8 "
                             f"(GroupNorm(8)), got {feature_dim} and {base_channels}")
        self.hparams: dict[str, Any] = {"feature_dim": feature_dim, "base_channels": base_channels}
        self.feature_dim = feature_dim
        c = base_channels

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU()]

        self.trunk = nn.Sequential(
            *down(3, c), *down(c, 2 * c), *down(2 * c, 4 * c), *down(4 * c, feature_dim)
        )
        self.head = nn.Linear(feature_dim, NUM_TARGETS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) float in [0, 1] -> (B, feature_dim)."""
        return self.trunk((x - 0.5) * 4.0).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) float in [0, 1] -> (B, 5) task outputs (see :func:`feature_net_loss`)."""
        return self.head(self.features(x))

    def save(self, path: str | os.PathLike[str], metrics: Mapping[str, Any] | None = None) -> Path:
        """:func:`save_feature_net` ``(self, path, metrics)``."""
        return save_feature_net(self, path, metrics)

    @staticmethod
    def load(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FrameFeatureNet:
        """:func:`load_feature_net` ``(path, device)`` (a :class:`RandomFeatureNet` stays one)."""
        return load_feature_net(path, device)


class RandomFeatureNet(FrameFeatureNet):
    """:class:`FrameFeatureNet` with a fixed random initialisation (never trained), in eval
    mode. The same ``seed`` gives the same weights on every machine; the global RNG is left
    untouched.

    :param seed: seed of the initialisation.
    """

    def __init__(self, seed: int = 0, feature_dim: int = 128, base_channels: int = 32) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            super().__init__(feature_dim, base_channels)
        self.hparams["seed"] = seed
        self.eval()


def _seeded_net(seed: int, feature_dim: int, base_channels: int) -> FrameFeatureNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FrameFeatureNet(feature_dim, base_channels)


# ------------------------------------------------------------------------------- targets


def grass_fraction(frames: np.ndarray) -> np.ndarray:
    """Share of green (grass) pixels in the 16x16 square around the car, car excluded.

    A pixel is grass when its green channel exceeds both red and blue by 40 (grass is
    ~(102, 204..230, 102); road, kerbs and the car are not green). 0 = on the road in a
    straight, 1 = deep in the grass. Computed from the pixels alone: cheap and exact.

    :param frames: (T, 64, 64, 3) uint8.
    :return: (T,) float32 in [0, 1].
    """
    patch = frames[:, _AROUND_CAR[0], _AROUND_CAR[1]].astype(np.int16)
    green = (patch[..., 1] - patch[..., 0] > _GREEN_MARGIN) & (patch[..., 1] - patch[..., 2] > _GREEN_MARGIN)
    mask = np.ones(green.shape[1:], dtype=bool)
    rows = slice(_CAR[0].start - _AROUND_CAR[0].start, _CAR[0].stop - _AROUND_CAR[0].start)
    cols = slice(_CAR[1].start - _AROUND_CAR[1].start, _CAR[1].stop - _AROUND_CAR[1].start)
    mask[rows, cols] = False
    return green[:, mask].mean(axis=1).astype(np.float32)


def frame_targets(frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """The supervised targets of one episode: (T, 5) float32 ``(steer, gas, brake, reward,
    grass)``.

    * ``steer, gas, brake``: the action taken at this frame (in [-1, 1], [0, 1], [0, 1]).
    * ``reward``: that step's reward clipped to [-1, 1]: about +1 when a new track tile
      was reached (+1000/N tiles, clipped), -0.1 otherwise (the time penalty), -1 for
      leaving the playfield (-100, clipped so it does not swamp the loss).
    * ``grass``: :func:`grass_fraction` of the frame.

    :param frames: (T, 64, 64, 3) uint8. :param actions: (T, 3). :param rewards: (T,).
    """
    return np.concatenate(
        [
            np.asarray(actions, np.float32).reshape(-1, 3),
            np.clip(np.asarray(rewards, np.float64), -1.0, 1.0).astype(np.float32)[:, None],
            grass_fraction(frames)[:, None],
        ],
        axis=1,
    )


def feature_net_loss(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss of the supervised task, fp32 scalars averaged over the batch.

    ``loss = action + reward + grass`` with ``action = sum_j (a_hat_j - a_j)^2`` (the three
    action components), ``reward = (r_hat - r)^2`` and ``grass`` the binary cross-entropy
    of the grass logit against the (soft) grass fraction.

    :param outputs: (B, 5) network outputs. :param targets: (B, 5) from :func:`frame_targets`.
    """
    with torch.autocast(device_type=outputs.device.type, enabled=False):
        outputs, targets = outputs.float(), targets.float()
        action = (outputs[:, :3] - targets[:, :3]).pow(2).sum(dim=1).mean()
        reward = (outputs[:, 3] - targets[:, 3]).pow(2).mean()
        grass = F.binary_cross_entropy_with_logits(outputs[:, 4], targets[:, 4])
        return {"loss": action + reward + grass, "action": action, "reward": reward, "grass": grass}


# ------------------------------------------------------------------------------ training


def _load_task_data(
    rollouts_path: str | os.PathLike[str] | RolloutDataset,
    episodes: Sequence[int] | None,
    max_frames: int | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (N, 3, 64, 64) uint8 and targets (N, 5) float32 of the chosen episodes.

    With ``max_frames``, episodes are taken in a seeded random order until the budget is
    filled (the last one cut short), so memory stays bounded on a large dataset.
    """
    rollouts = rollouts_path if isinstance(rollouts_path, RolloutDataset) else RolloutDataset(rollouts_path)
    chosen = np.arange(len(rollouts)) if episodes is None else np.asarray(
        [rollouts.check_index(k) for k in episodes], dtype=np.int64)
    if len(chosen) == 0:
        raise DataError(f"no episodes chosen from {rollouts.path} for the feature network")
    if max_frames is not None:
        chosen = np.random.default_rng([seed, 0xFEA7]).permutation(chosen)
    lengths = rollouts.lengths[chosen]
    total = int(lengths.sum()) if max_frames is None else min(int(lengths.sum()), max_frames)
    frames = np.empty((total, 64, 64, 3), dtype=np.uint8)
    targets = np.empty((total, NUM_TARGETS), dtype=np.float32)
    pos = 0
    for k, length in zip(chosen, lengths):
        n = min(int(length), total - pos)
        if n <= 0:
            break
        rollouts.read(int(k), "frames", 0, n, out=frames[pos:pos + n])
        targets[pos:pos + n] = frame_targets(
            frames[pos:pos + n], rollouts.read(int(k), "actions", 0, n),
            rollouts.read(int(k), "rewards", 0, n))
        pos += n
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(targets)


def train_feature_net(
    rollouts_path: str | os.PathLike[str] | RolloutDataset,
    episodes: Sequence[int] | None = None,
    epochs: int = 5,
    seed: int = 0,
    device: str | torch.device = "auto",
    batch_size: int = 128,
    lr: float = 1e-3,
    feature_dim: int = 128,
    base_channels: int = 32,
    max_frames: int | None = 30_000,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> FrameFeatureNet:
    """Train a :class:`FrameFeatureNet` on the frames of ``rollouts.h5`` (Adam, shuffled
    minibatches, :func:`feature_net_loss`).

    The frames (at most ``max_frames``, ~12 KiB each: 30,000 by default, ~370 MB) are
    loaded once and kept on ``device``. bf16 autocast on CUDA, losses in fp32. A few epochs
    take seconds to minutes, so there is no resume: rerun it, or :func:`save_feature_net`
    the result. Same seed, same data, same device: same network.

    :param rollouts_path: a run directory, its ``rollouts.h5``, or an open dataset.
    :param episodes: episode indices to train on (e.g. the train split); default all.
    :param epochs: passes over the frames (0 returns the seeded initialisation).
    :param on_epoch: called as ``on_epoch(epoch, {"loss": ..., "action": ..., ...})`` with
        the epoch's mean training losses (for logging).
    :return: the network in eval mode, on ``device``.
    """
    device = resolve_device(device)
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    frames, targets = _load_task_data(rollouts_path, episodes, max_frames, seed)
    frames, targets = frames.to(device), targets.to(device)
    net = _seeded_net(seed, feature_dim, base_channels).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n, step = len(frames), 0
    net.train()
    for epoch in range(epochs):
        totals: dict[str, float] = {}
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            x = frames[idx].float().div_(255.0)
            with autocast(device):
                outputs = net(x)
            losses = feature_net_loss(outputs, targets[idx])
            check_finite(losses["loss"], step, "feature network loss")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            step += 1
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value.detach()) * len(idx)
        if on_epoch is not None:
            on_epoch(epoch, {name: value / n for name, value in totals.items()})
    return net.eval()


@torch.no_grad()
def evaluate_feature_net(
    net: FrameFeatureNet,
    rollouts_path: str | os.PathLike[str] | RolloutDataset,
    episodes: Sequence[int] | None = None,
    batch_size: int = 256,
    max_frames: int | None = 30_000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean :func:`feature_net_loss` terms of ``net`` (in eval mode) over the chosen
    episodes (e.g. the validation split), on the net's device."""
    frames, targets = _load_task_data(rollouts_path, episodes, max_frames, seed)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    totals: dict[str, float] = {}
    for start in range(0, len(frames), batch_size):
        x = frames[start:start + batch_size].to(device).float().div_(255.0)
        losses = feature_net_loss(net(x), targets[start:start + batch_size].to(device))
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + float(value) * len(x)
    net.train(was_training)
    return {name: value / len(frames) for name, value in totals.items()}


# ---------------------------------------------------------------------------- features


def _frames_nchw(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 64, 64, 3) or (N, 3, 64, 64), numpy or tensor, uint8 or float in [0, 1] ->
    (N, 3, 64, 64) uint8 tensor (floats quantised: ``round(255 x)``)."""
    x = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames.detach()
    if x.dim() != 4 or 3 not in (x.shape[1], x.shape[3]):
        raise ValueError(f"frames must be (N, 64, 64, 3) or (N, 3, 64, 64), got {tuple(x.shape)}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"frames must be uint8, or float in [0, 1]; got {x.dtype}")
        x = (x.float().clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    return x


@torch.no_grad()
def extract_features(
    net: FrameFeatureNet,
    frames: np.ndarray | torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Features of a set of frames: (N, F) float32 numpy.

    Frames: uint8 (N, 64, 64, 3) (as stored) or (N, 3, 64, 64) (as loaded), numpy or tensor.
    Float frames in [0, 1] (a model's output) are first quantised to uint8, as real frames
    are, so real and generated frames take exactly the same path (as clean-fid does; Parmar
    et al., CVPR 2022, arXiv:2104.11222). Runs in eval mode and in fp32 (no autocast: the
    metrics compare small differences), without changing the net's mode.

    :param device: where to run; default the net's device (given, the net is moved there).
    """
    x = _frames_nchw(frames)
    if device is not None:
        net.to(resolve_device(device))
    where = next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = np.empty((len(x), net.feature_dim), dtype=np.float32)
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size].to(where).float().div_(255.0)
        out[start:start + len(batch)] = net.features(batch).float().cpu().numpy()
    net.train(was_training)
    return out


def sample_quality(
    real_frames: np.ndarray | torch.Tensor | None,
    fake_frames: np.ndarray | torch.Tensor,
    nets: Mapping[str, FrameFeatureNet],
    k: int = 3,
    seed: int = 0,
    num_samples: int | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    real_features: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """FD, KID, precision and recall of ``fake_frames`` against ``real_frames`` in each
    feature space.

    FD is biased in the sample count, so every model must be measured at the same
    ``num_samples``: the first ``num_samples`` frames of each set are used (an error if
    either set has fewer); ``None`` uses all of both.

    :param real_frames: frames as :func:`extract_features` takes them (held-out data).
    :param fake_frames: generated frames, same forms (float in [0, 1] is fine).
    :param nets: ``{"trained": FrameFeatureNet, "random": RandomFeatureNet}``, say.
    :param k: neighbourhood size of precision/recall.
    :param seed: seed of the KID subsets.
    :param real_features: optional precomputed ``{name: (N, F)}`` features of the real
        frames (to reuse across models); ``real_frames`` is then not read for those nets.
    :return: ``{name: {"fd", "kid", "kid_std", "precision", "recall", "num_samples"}}``.
    """
    device = resolve_device(device) if device is not None else None
    real_features = real_features or {}
    n_fake = len(fake_frames)
    counts = [len(real_features[name]) for name in nets if name in real_features]
    if any(name not in real_features for name in nets):
        if real_frames is None:
            raise ValueError("real_frames is needed for the nets without real_features")
        counts.append(len(real_frames))
    if num_samples is None:
        if any(c != n_fake for c in counts):
            raise ValueError(f"{min(counts)} real and {n_fake} fake frames: FD depends on the "
                             "sample count, so pass sets of equal size or num_samples")
        n = n_fake
    else:
        n = num_samples
        if n < 2 or n_fake < n or any(c < n for c in counts):
            raise ValueError(f"num_samples={n} but only {min(counts, default=n_fake)} real and "
                             f"{n_fake} fake frames given (and at least 2 are needed)")
    results: dict[str, dict[str, float]] = {}
    for name, net in nets.items():
        if name in real_features:
            real = np.asarray(real_features[name])[:n]
        else:
            real = extract_features(net, real_frames[:n], batch_size, device)
        fake = extract_features(net, fake_frames[:n], batch_size, device)
        kid, kid_std = kernel_distance(real, fake, kid_subsets, kid_subset_size, seed)
        precision, recall = precision_recall(real, fake, k=k, device=device)
        results[name] = {
            "fd": frechet_distance(real, fake),
            "kid": kid,
            "kid_std": kid_std,
            "precision": precision,
            "recall": recall,
            "num_samples": n,
        }
    return results


# ------------------------------------------------------------------------- save / load


def save_feature_net(net: FrameFeatureNet, path: str | os.PathLike[str],
                     metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``net`` as a ``"features"`` checkpoint (atomic; loads with ``weights_only``)."""
    return save_checkpoint(path, kind=CHECKPOINT_KIND, model=net, model_config=net.hparams,
                           step=0, metrics=metrics, extra={"class": type(net).__name__})


def load_feature_net(path: str | os.PathLike[str],
                     device: str | torch.device = "cpu") -> FrameFeatureNet:
    """The network saved by :func:`save_feature_net`, in eval mode on ``device``.

    :raises DataError: missing, corrupt or foreign file, or not a ``"features"`` checkpoint.
    """
    checkpoint = load_checkpoint(path, kind=CHECKPOINT_KIND)
    classes = {"FrameFeatureNet": FrameFeatureNet, "RandomFeatureNet": RandomFeatureNet}
    name = (checkpoint.get("extra") or {}).get("class", "FrameFeatureNet")
    if name not in classes:
        raise DataError(f"{path} holds an unknown feature network class {name!r}")
    net = classes[name](**checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.to(resolve_device(device)).eval()

