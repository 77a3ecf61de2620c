"""Training the DCGAN baseline on rollout frames (``scripts/train_gan.py``).

Goodfellow et al., *Generative Adversarial Nets* (2014), arXiv:1406.2661: D and G play

    min_G max_D  V(D, G) = E_x[log D(x)] + E_z[log(1 - D(G(z)))],

trained by alternating one step of D (minimise ``-log D(x) - log(1 - D(G(z)))`` on a real
batch and a detached fake batch) with one step of G (the ``non_saturating`` loss
``-log D(G(z))`` by default, or the ``minimax`` loss ``log(1 - D(G(z)))``, see
:mod:`worldmodels.generative.gan`). Radford, Metz & Chintala, *DCGAN* (2016),
arXiv:1511.06434: Adam with lr 2e-4 and beta1 0.5 for both networks, batch 128, images in
[-1, 1].

The generator that is sampled (the epoch grids and snapshots, :func:`load_gan`, the
comparison) is, with ``gan.ema > 0``, an exponential moving average of G's weights
(Yazıcı et al., *The Unusual Effectiveness of Averaging in GAN Training*, ICLR 2019,
arXiv:1806.04498): after step ``t``, ``G_ema <- d G_ema + (1 - d) G`` with
``d = min(ema, (1 + t) / (10 + t))`` (short runs average over their own length), BatchNorm's
running statistics copied from G. G's oscillation around the equilibrium averages out, so
samples and FD move with the trend rather than with the last step; G itself trains as before.

Data: the frames of the training episodes of ``<run>/rollouts.h5`` (the episode split of
:func:`~worldmodels.data.datasets.split_episodes`, the same as V's), held as one uint8
tensor on the device when they fit (shuffled by an index permutation there, nothing read
during training), else streamed through :meth:`FrameDataset.sample_batches`. Batches have
a fixed shape (the last partial batch of an epoch is dropped), so ``torch.compile`` builds
one graph.

Outputs::

    <run>/gan/last.pt            both nets, both optimisers, step, epoch, RNG (every epoch);
                                 extra["ema_generator"]: the averaged G (None: ema = 0)
    <run>/gan/metrics.jsonl      losses, D(x), D(G(z)), images/s every log_every steps
    <run>/gan/images/            samples_<step>.png: G(fixed noise) at every epoch's end
    <run>/gan/epochs/            generator_<epoch>.pt: the sampled G (the average when ema
                                 > 0) alone at every epoch's end (what
                                 compare_generative.py scores epoch by epoch: FD by epoch)
    <run>/tb/gan/                the same in TensorBoard
    <run>/config.json            the resolved config

Determinism and resume: the data order of epoch ``e`` and the noise of step ``s`` are
derived from ``(gan.seed, e)`` and ``(gan.seed, s)`` alone, so re-running the command
after a kill continues from ``last.pt`` and reproduces the uninterrupted run exactly
(on CPU; CUDA kernels are not bitwise deterministic). A kill loses at most the steps
since the last epoch's checkpoint; their log lines are dropped on resume.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.config import Config, save_stage_config
from worldmodels.data.datasets import FrameDataset, RolloutDataset, split_episodes
from worldmodels.data.frames import fits_in_memory, load_frames
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.errors import ConfigError, DataError
from worldmodels.generative.gan import (
    DCGAN,
    Generator,
    discriminator_loss,
    from_gan_range,
    generator_loss,
    to_gan_range,
)
from worldmodels.utils.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from worldmodels.utils.logs import RunLogger, to_uint8_images
from worldmodels.utils.progress import progress_bar
from worldmodels.utils.torch import (
    channels_last,
    check_finite,
    count_parameters,
    derive_seed,
    eval_mode,
    resolve_device,
    seed_everything,
    training_autocast,
    use_bf16,
)

__all__ = ["train_gan", "gan_step", "ema_update", "load_gan", "sample_gan", "real_batch", "gan_snapshots",
           "load_generator_snapshot", "sample_generator", "KIND", "SNAPSHOT_KIND", "STAGE"]

KIND = "gan"  # checkpoint kind
SNAPSHOT_KIND = "gan-generator"  # checkpoint kind of the per-epoch generator snapshots
STAGE = "gan"  # <run>/gan/ and <run>/tb/gan/
SNAPSHOTS = "epochs"  # <run>/gan/epochs/generator_<epoch>.pt
NUM_FIXED_SAMPLES = 64  # images in the per-epoch grid (8 x 8)


class _OptimizerPair:
    """G's and D's Adam as one ``state_dict`` (the checkpoint's ``optimizer`` entry)."""

    def __init__(self, generator: torch.optim.Optimizer, discriminator: torch.optim.Optimizer):
        self.generator = generator
        self.discriminator = discriminator

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(),
                "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])


def real_batch(frames: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 frames (B, 3, 64, 64) -> float (B, 3, 64, 64) in [-1, 1] on ``device``
    (channels_last on CUDA, where the convolutions use it; contiguous NCHW elsewhere)."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = frames.to(device, non_blocking=True).to(dtype=torch.float32, memory_format=fmt)
    return to_gan_range(x.div_(255.0))


def gan_step(generator: nn.Module, discriminator: nn.Module,
             opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             real: torch.Tensor, z: torch.Tensor, mode: str = "non_saturating",
             precision: str = "auto") -> torch.Tensor:
    """One D step then one G step (Goodfellow et al. 2014, Algorithm 1 with k = 1).

    :param generator: G (possibly compiled), z (B, Z) -> (B, 3, 64, 64) in [-1, 1].
    :param discriminator: D (possibly compiled), (B, 3, 64, 64) -> logits (B,).
    :param real: (B, 3, 64, 64) real frames in [-1, 1].
    :param z: (B, Z) noise for this step.
    :param mode: G's loss, ``'non_saturating'`` or ``'minimax'``.
    :param precision: the networks' arithmetic, as ``GANConfig.precision``: ``auto`` (bf16
        autocast on CUDA with bf16 and on CPUs with native bf16, fp32 elsewhere), ``bf16``
        or ``fp32``; the losses are computed in fp32 either way.
    :return: detached fp32 (4,) ``[loss_D, loss_G, D(x), D(G(z))]`` (D's outputs as
        probabilities, batch means, before D's update), still on the device: reading it
        synchronises, so the caller does that only when it logs.
    """
    device = real.device
    with training_autocast(device, precision):
        fake = generator(z)
        real_logits = discriminator(real)
        # detached: D's loss must not move G
        fake_logits = discriminator(fake.detach())
    loss_d = discriminator_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # G's step against the updated D, through the same fake batch. D's weights get no
    # gradient here (saves a third of D's backward); its BatchNorm still sees the fakes.
    discriminator.requires_grad_(False)
    with training_autocast(device, precision):
        logits = discriminator(fake)
    loss_g = generator_loss(logits, mode)
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    discriminator.requires_grad_(True)

    with torch.no_grad():
        return torch.stack([loss_d.detach(), loss_g.detach(),
                            torch.sigmoid(real_logits.float()).mean(),
                            torch.sigmoid(fake_logits.float()).mean()])


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """One step of the weight average (Yazıcı et al. 2019): every parameter of ``average``
    becomes ``d * average + (1 - d) * model`` with ``d = min(decay, (1 + step) / (10 +
    step))``; buffers (BatchNorm's running statistics) are copied from ``model``."""
    d = min(decay, (1 + step) / (10 + step))
    for avg, p in zip(average.parameters(), model.parameters(), strict=True):
        avg.lerp_(p.detach(), 1.0 - d)
    for avg, b in zip(average.buffers(), model.buffers(), strict=True):
        avg.copy_(b)


def _batches(frames: torch.Tensor | None, dataset: FrameDataset, batch_size: int,
             steps_per_epoch: int, seed: int, start_step: int, device: torch.device
             ) -> Iterator[torch.Tensor]:
    """Endless uint8 batches (B, 3, 64, 64) from step ``start_step`` on.

    Epoch ``e``'s order depends on ``(seed, e)`` only, so a resumed run skips the batches
    its checkpoint has already seen and continues with the same ones as an uninterrupted
    run. ``frames``: the whole training set on the device (an index permutation there per
    epoch); ``None``: stream chunk-aligned shuffled batches from HDF5.
    """
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        epoch_seed = derive_seed(seed, "gan-epoch", epoch)
        if frames is not None:
            gen = torch.Generator(device=frames.device).manual_seed(epoch_seed)
            perm = torch.randperm(len(frames), generator=gen, device=frames.device)
            for j in range(skip, steps_per_epoch):
                yield frames[perm[j * batch_size:(j + 1) * batch_size]]
        else:
            stream = dataset.sample_batches(batch_size, rng=epoch_seed, drop_last=True, epochs=1,
                                            channels_last=device.type == "cuda")
            yield from islice(stream, skip, steps_per_epoch)
        epoch, skip = epoch + 1, 0


def _check_losses(first_bad: torch.Tensor) -> None:
    """Raise the one-line error for the first non-finite loss recorded on the device.

    The losses are tested on the device every step without a synchronisation; this reads
    the record (a sync) at log and checkpoint time, always before a checkpoint is written.
    """
    bad = [(step, what) for step, what in zip(first_bad.tolist(), ("discriminator loss",
                                                                  "generator loss")) if step >= 0]
    if bad:  # the earliest; at a tie D's, computed first within the step
        step, what = min(bad)
        check_finite(float("nan"), int(step), what)


def _summary(model: DCGAN, step: int, epochs: float, last: list[float], images_per_s: float,
             seconds: float, checkpoint: Path, device: torch.device, in_memory: bool,
             precision: str) -> dict[str, Any]:
    return {
        "generator_params": count_parameters(model.generator),
        "discriminator_params": count_parameters(model.discriminator),
        "steps": step,
        "epochs": round(epochs, 3),
        "loss_d": last[0],
        "loss_g": last[1],
        "d_real": last[2],
        "d_fake": last[3],
        "images_per_s": images_per_s,
        "seconds": round(seconds, 2),
        "device": str(device),
        "precision": precision,
        "in_memory": in_memory,
        "checkpoint": str(checkpoint),
    }


def train_gan(cfg: Config, run_dir: str | os.PathLike[str], *,
              progress: bool | None = None) -> dict[str, Any]:
    """Train (or resume, or return the finished) DCGAN of ``run_dir``.

    :param cfg: the config; ``cfg.gan`` is used.
    :param run_dir: the run directory holding ``rollouts.h5``.
    :param progress: show a progress bar (``None``: when stderr is a terminal).
    :return: summary dict: ``generator_params``, ``discriminator_params``, ``steps``,
        ``epochs``, final ``loss_d``, ``loss_g``, ``d_real`` (D(x)), ``d_fake``
        (D(G(z))), ``images_per_s`` (real images per second of training), ``seconds``
        (training wall time, summed over resumes), ``device``, ``precision`` (``bf16`` or
        ``fp32``: what ``gan.precision`` resolved to), ``in_memory``, ``checkpoint``.
    :raises DataError: no rollouts (run ``collect_rollouts.py``), too few frames.
    :raises WorldModelsError: a loss became NaN/inf (names the step).
    """
    run_dir = Path(run_dir)
    # checked first: a missing or foreign dataset fails before anything is written
    path = run_dir / DATASET_NAME
    if not path.is_file():
        raise DataError(f"no rollouts at {path}: run scripts/collect_rollouts.py --run "
                        f"{run_dir} first")
    with RolloutDataset(path) as rollouts:
        return _train(cfg, run_dir, rollouts, progress)


def _train(cfg: Config, run_dir: Path, rollouts: RolloutDataset,
           progress: bool | None) -> dict[str, Any]:
    g = cfg.gan

    # -- data: the training episodes ----------------------------------------------------
    train_episodes, _ = split_episodes(len(rollouts), g.val_episodes, g.seed)
    dataset = FrameDataset(rollouts, train_episodes)
    steps_per_epoch = len(dataset) // g.batch_size
    if steps_per_epoch < 1:
        raise DataError(
            f"{rollouts.path} has {len(dataset)} training frames, fewer than one batch of "
            f"gan.batch_size={g.batch_size}: lower --batch-size or collect more episodes")
    total_steps = g.epochs * steps_per_epoch
    if g.max_steps > 0:
        total_steps = min(total_steps, g.max_steps)

    # -- model, optimisers, resume ------------------------------------------------------
    device = resolve_device(g.device)
    if device.type == "cuda":
        # one batch shape throughout: let cuDNN time its convolution algorithms once
        torch.backends.cudnn.benchmark = True
    seed_everything(g.seed)
    model = DCGAN(g.latent_dim, g.generator_channels, g.discriminator_channels)
    model = channels_last(model.to(device), device).train()
    betas = (g.beta1, 0.999)
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=g.lr, betas=betas)
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=g.lr, betas=betas)
    optimizers = _OptimizerPair(opt_g, opt_d)
    manager = CheckpointManager(run_dir / STAGE, KIND)
    checkpoint = manager.latest()
    step, seconds, fixed_z, log_sums, log_from, ema_state = 0, 0.0, None, None, 0, None
    if checkpoint is not None:
        if checkpoint["model_config"] != model.hparams:
            raise ConfigError(
                f"{manager.last_path} holds a GAN with {checkpoint['model_config']}, but the "
                f"config asks for {model.hparams}: use another --run, or delete "
                f"{manager.directory} to start over")
        step = int(checkpoint["step"])
        extra = checkpoint["extra"]
        if step >= total_steps:  # finished: nothing to do
            return {**extra["summary"], "checkpoint": str(manager.last_path)}
        model.load_state_dict(checkpoint["state_dict"])
        optimizers.load_state_dict(checkpoint["optimizer"])
        restore_rng(checkpoint)
        seconds, fixed_z = float(extra["seconds"]), extra["fixed_noise"]
        ema_state = extra.get("ema_generator")
        # a checkpoint between two log steps carries the partial sums of its interval
        log_sums, log_from = extra["log_sums"], int(extra["log_from"])
    if fixed_z is None:
        # drawn on the CPU: the same grid noise whatever the device
        fixed_gen = torch.Generator().manual_seed(derive_seed(g.seed, "gan-fixed-noise"))
        fixed_z = torch.randn(NUM_FIXED_SAMPLES, g.latent_dim, generator=fixed_gen)
    fixed_z = fixed_z.to(device)
    # the sampled G: the weight average (from G's weights at a fresh start, or when a run
    # trained without it turns it on), else G itself
    average = None
    if g.ema > 0:
        average = copy.deepcopy(model.generator).requires_grad_(False).eval()
        if ema_state is not None:
            average.load_state_dict(ema_state)
    sampled = average if average is not None else model.generator
    generator, discriminator = model.generator, model.discriminator
    if g.compile:
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)

    in_memory = g.in_memory == "yes" or (
        g.in_memory == "auto" and fits_in_memory(rollouts, device, episodes=train_episodes))
    frames = load_frames(rollouts, train_episodes, device) if in_memory else None
    batches = _batches(frames, dataset, g.batch_size, steps_per_epoch, g.seed, step, device)
    noise_gen = torch.Generator(device=device)

    save_stage_config(cfg, run_dir, "gan")
    # resume_step=0 on a fresh start too: drops the logs of a run killed in its 1st epoch
    logger = RunLogger(run_dir, STAGE, resume_step=step)
    if checkpoint is None:
        logger.hparams(g)
    bar = progress_bar(progress, total=total_steps, initial=step, desc="gan", unit="step")
    # Per-interval sums of [loss_D, loss_G, D(x), D(G(z))] and the first step whose D / G
    # loss was not finite (-1: none), kept on the device: no sync between log steps.
    sums = torch.zeros(4, device=device) if log_sums is None else log_sums.to(device)
    first_bad = torch.full((2,), -1, dtype=torch.long, device=device)
    start_step, t_start = step, time.perf_counter()
    interval_start, t_interval = log_from, t_start
    try:
        while step < total_steps:
            real_u8 = next(batches)
            if step == 0:
                logger.images("real", 0, real_u8[:NUM_FIXED_SAMPLES])
            real = real_batch(real_u8, device)
            step += 1
            # the noise of step s depends on (seed, s) only: resumable on any device
            noise_gen.manual_seed(derive_seed(g.seed, "gan-noise", step))
            z = torch.randn(g.batch_size, g.latent_dim, generator=noise_gen, device=device)
            stats = gan_step(generator, discriminator, opt_g, opt_d, real, z, g.generator_loss,
                             g.precision)
            if average is not None:
                ema_update(average, model.generator, g.ema, step)
            sums += stats
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(stats[:2]), step, first_bad)
            bar.update()

            if step % g.log_every == 0:
                _check_losses(first_bad)
                now = time.perf_counter()
                loss_d, loss_g, d_real, d_fake = (sums / (step - interval_start)).tolist()
                images_per_s = (step - max(interval_start, start_step)) * g.batch_size / (
                    now - t_interval)
                logger.log(step, {"losses/discriminator": loss_d, "losses/generator": loss_g,
                                  "charts/D_real": d_real, "charts/D_fake": d_fake,
                                  "charts/images_per_s": images_per_s,
                                  "charts/epoch": step / steps_per_epoch})
                bar.set_postfix(D=f"{loss_d:.3f}", G=f"{loss_g:.3f}", Dx=f"{d_real:.2f}",
                                DGz=f"{d_fake:.2f}")
                sums.zero_()
                interval_start, t_interval = step, now

            if step % steps_per_epoch == 0 or step == total_steps:
                _check_losses(first_bad)
                epoch = math.ceil(step / steps_per_epoch)
                with torch.no_grad(), eval_mode(sampled):
                    samples = from_gan_range(sampled(fixed_z))
                logger.images("samples", step, samples)
                last = stats.tolist()
                elapsed = time.perf_counter() - t_start
                images_per_s = (step - start_step) * g.batch_size / max(elapsed, 1e-9)
                summary = _summary(model, step, step / steps_per_epoch, last, images_per_s,
                                   seconds + elapsed, manager.last_path, device, in_memory,
                                   "bf16" if use_bf16(device, g.precision) else "fp32")
                # G alone, kept per epoch (the last.pt below is overwritten): FD by epoch
                save_checkpoint(manager.directory / SNAPSHOTS / f"generator_{epoch:03d}.pt",
                                kind=SNAPSHOT_KIND, model=sampled,
                                model_config={"latent_dim": g.latent_dim,
                                              "base_channels": g.generator_channels},
                                step=step, epoch=epoch, rng=False,
                                extra={"ema": g.ema if average is not None else 0.0})
                manager.save(model=model, model_config=model.hparams, optimizer=optimizers,
                             step=step, epoch=epoch,
                             metrics={"loss_d": last[0], "loss_g": last[1], "d_real": last[2],
                                      "d_fake": last[3], "images_per_s": images_per_s},
                             extra={"seconds": seconds + elapsed, "fixed_noise": fixed_z.cpu(),
                                    "log_sums": sums.cpu(), "log_from": interval_start,
                                    "steps_per_epoch": steps_per_epoch,
                                    "ema_generator": (None if average is None
                                                      else average.state_dict()),
                                    "summary": summary})
    finally:
        bar.close()
        logger.close()
    return summary


def load_gan(run_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> DCGAN:
    """The trained DCGAN of ``run_dir`` (``<run>/gan/last.pt``), in eval mode, its
    generator the weight average when the run kept one (``gan.ema > 0``): what is sampled.

    Rebuilt from the checkpoint's ``model_config`` alone (no config file needed).

    :raises DataError: no GAN checkpoint in ``run_dir`` (run ``train_gan.py``), or an
        unreadable one.
    """
    path = Path(run_dir) / STAGE / CheckpointManager.LAST
    if not path.exists():
        raise DataError(f"no GAN at {path}: run scripts/train_gan.py --run {run_dir} first")
    device = resolve_device(device)
    checkpoint = load_checkpoint(path, kind=KIND)
    model = DCGAN(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["state_dict"])
    average = (checkpoint.get("extra") or {}).get("ema_generator")
    if average is not None:
        model.generator.load_state_dict(average)
    return model.to(device).eval()


def sample_gan(run_dir: str | os.PathLike[str], n: int, seed: int = 0,
               device: str | torch.device = "cpu", batch_size: int = 256) -> np.ndarray:
    """``n`` frames from the trained GAN of ``run_dir``, as uint8 (n, 64, 64, 3).

    The noise is drawn on the CPU from ``seed``, so the same seed gives the same frames
    on any device (up to kernel rounding). Runs in fp32, in batches of ``batch_size``.
    """
    return sample_generator(load_gan(run_dir, device).generator, n, seed, batch_size)


@torch.no_grad()
def sample_generator(generator: Generator, n: int, seed: int = 0, batch_size: int = 256
                     ) -> np.ndarray:
    """``n`` frames (n, 64, 64, 3) uint8 from a generator in eval mode, on its device: the
    noise of :func:`sample_gan` (drawn on the CPU from ``seed``), so the epoch snapshots of
    one run draw the same ``z`` as its final GAN."""
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    out = np.empty((n, 64, 64, 3), dtype=np.uint8)
    for i in range(0, n, batch_size):
        images = from_gan_range(generator(z[i:i + batch_size].to(device)))
        out[i:i + batch_size] = to_uint8_images(images)
    return out


def gan_snapshots(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of the run's per-epoch generator snapshots
    (``<run>/gan/epochs/generator_<epoch>.pt``), by epoch; empty when there are none."""
    found = []
    for path in (Path(run_dir) / STAGE / SNAPSHOTS).glob("generator_*.pt"):
        try:
            found.append((int(path.stem.split("_", 1)[1]), path))
        except ValueError:
            continue  # not one of ours
    return sorted(found)


def load_generator_snapshot(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                            ) -> tuple[Generator, int]:
    """An epoch snapshot's generator in eval mode on ``device``, and its optimiser step.

    :raises DataError: missing, unreadable or not a generator snapshot.
    """
    checkpoint = load_checkpoint(path, kind=SNAPSHOT_KIND)
    generator = Generator(**checkpoint["model_config"])
    generator.load_state_dict(checkpoint["state_dict"])
    return generator.to(resolve_device(device)).eval(), int(checkpoint["step"])
