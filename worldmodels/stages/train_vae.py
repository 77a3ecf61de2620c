"""Training V: the VAE of *World Models*, a β-VAE, or a VQ-VAE with its code prior.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122): V is a convolutional VAE
(Kingma & Welling 2014, arXiv:1312.6114) trained on single 64x64x3 frames of random-policy
rollouts, Adam at 1e-4, batches of 100, 10 epochs, with the authors' free-nats floor of
0.5 nat per latent dimension. ``model='betavae'`` weights the KL by ``beta`` (Higgins et
al., ICLR 2017) or, with ``capacity_max > 0``, anneals a KL capacity (Burgess et al. 2018,
arXiv:1804.03599); ``model='vqvae'`` trains a VQ-VAE (van den Oord et al. 2017,
arXiv:1711.00937) and then an autoregressive prior over its code grids, so that it can
sample like the VAEs.

    python scripts/train_vae.py --run runs/demo --model vae

One loop that reads top to bottom, as nanoGPT's ``train.py``: data -> model -> resume ->
for each step: batch, forward (bf16 autocast on CUDA and on CPUs with native bf16,
``precision``; channels_last), losses in fp32, backward, fused Adam step, log; at each
epoch end (and when ``max_steps`` stops the run): validation, image grids, checkpoint.
Writes, for ``model = vae | betavae | vqvae``:

* ``<run>/<model>/last.pt`` (resume point), ``best.pt`` (lowest ``val/loss``),
  ``metrics.jsonl``, ``hparams.json``, ``images/{reconstructions,samples}_<step>.png``;
  VQ-VAE also ``prior.pt``;
* ``<run>/tb/<model>/``: the same scalars and grids for TensorBoard;
* ``<run>/config.json``: the resolved config.

**Likelihoods, ELBO and bits/dim** (reported per validation pass, ``D = 3*64*64`` pixels
in [0, 1]). With ``recon='mse'`` (the paper's) the decoder is a Gaussian
``p(x|z) = N(x; x_hat, sigma^2 I)`` with the ``sigma^2 = 1/2`` that makes the summed squared
error its negative log-density up to a constant:
``-log p(x|z) = sum (x - x_hat)^2 + (D/2) log(pi)``. With ``recon='bernoulli'``,
``-log p(x|z) = BCE(x_hat, x)`` summed over pixels (a proper likelihood only for binary
pixels). ``ELBO = -(-log p(x|z) + KL(q(z|x) || N(0, I)))`` with one ``z ~ q(z|x)`` drawn from
a fixed generator (so epochs are comparable), KL unweighted and unfloored, and
``bits/dim = -ELBO / (D ln 2)``. The Gaussian is a density over [0, 1]-scaled pixels: add
8 bits/dim to compare with likelihoods of the 0..255 integers.

**Resume.** Re-running the same command continues from ``last.pt``: model, optimiser,
step, RNG state and the data order (each epoch's order depends only on the seed and the
epoch number, so the resumed run skips the batches already seen). Logs after the
checkpoint's step are dropped, so nothing is duplicated; a finished run returns its
summary at once. A first Ctrl-C (or SIGTERM) finishes the current step, checkpoints and
stops (while the VQ-VAE's prior trains, it stops at once: ``prior.pt`` holds the last
finished prior epoch). The settings that fix the model or the data order must not change
between runs of one directory (one-line :class:`~worldmodels.errors.ConfigError`).

**Fine-tuning** (``init``, the paper's iterative training: V retrained on old + new
rollouts): a new run starts from a trained V's weights (a run directory or a checkpoint, an
fp16 export too; the model settings must match) with a fresh optimiser at step 0; the origin
is recorded in the checkpoint's ``extra["init"]``. A run that resumes ignores ``init``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.config import (
    Config,
    VAEConfig,
    save_stage_config,
)
from worldmodels.data.datasets import RolloutDataset, split_episodes
from worldmodels.data.frames import FrameSource, fits_in_memory
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.errors import ConfigError, DataError
from worldmodels.generative import (
    VQVAE,
    CodeUsage,
    ConvVAE,
    reparameterize,
    vae_loss,
    vqvae_loss,
)
from worldmodels.generative.objective import Objective, to_float, training_losses
from worldmodels.generative.registry import KINDS
from worldmodels.generative.registry import model_config as v_model_config
from worldmodels.stages.train_prior import current_prior, train_prior
from worldmodels.utils.checkpoint import (
    CheckpointManager,
    describe_diff,
    load_init_weights,
    restore_rng,
    settings_diff,
)
from worldmodels.utils.logs import RunLogger
from worldmodels.utils.progress import progress_bar
from worldmodels.utils.torch import (
    FirstNonFinite,
    GracefulStop,
    autocast,
    channels_last,
    count_parameters,
    derive_seed,
    eval_mode,
    fused_adam,
    resolve_device,
    seed_everything,
)

__all__ = [
    "model_from_config",
    "prepare_model",
    "evaluate",
    "train_vae",
]

PIXELS = 3 * 64 * 64  # D, the dimensions of one frame
# Settings that fix the data order (which frames make each batch): changing them in the
# middle of a run would repeat some frames and skip others.
DATA_ORDER_KEYS = ("batch_size", "seed", "val_episodes")
NUM_SHOWN = 8  # validation frames in the reconstruction grid (8 real over 8 reconstructed)
NUM_SAMPLES = 16  # samples in the sample grid (the same z / prior draws at every epoch)


# ----------------------------------------------------------------------------- models


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """V laid out for fast training on ``device``: channels_last on CUDA (cuDNN) and, for
    the VAEs, on the CPU too (oneDNN's NHWC convolutions: 1.4x V's CPU step, measured);
    the VQ-VAE keeps the default layout on the CPU (not measured)."""
    if device.type == "cpu" and isinstance(model, ConvVAE):
        return model.to(memory_format=torch.channels_last)
    return channels_last(model, device)


def model_from_config(v: VAEConfig) -> nn.Module:
    """A freshly initialised V for ``v.model`` (uses the global torch RNG)."""
    if v.model == "vqvae":
        return VQVAE(codebook_size=v.codebook_size, code_dim=v.code_dim,
                     downsample=v.downsample, ema=v.ema, dead_code_steps=v.dead_code_steps)
    return ConvVAE(latent_dim=v.latent_dim)




# ------------------------------------------------------------------------------- data



# ------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[torch.Tensor], objective: Objective,
             step: int, generator: torch.Generator | None = None) -> dict[str, float]:
    """Validation metrics over every batch of ``batches`` (frame-weighted means).

    :param model: the un-compiled V; put in eval mode here (and restored after).
    :param batches: (B, 3, 64, 64) uint8 batches, e.g. :meth:`FrameSource.all_batches`.
    :param step: the training step (schedules the capacity of the annealed β-VAE).
    :param generator: draws the VAEs' one ``z ~ q(z|x)`` per frame (fix it to compare
        epochs); the global RNG is not touched.
    :return: ``val/loss`` (the training objective), ``val/recon`` (its reconstruction
        term), ``val/mse`` (mean squared error per pixel, comparable across models); for
        VAEs ``val/kl`` (nats per frame), ``val/elbo`` (nats per frame) and
        ``val/bits_per_dim`` (see the module docstring); for the VQ-VAE
        ``val/commitment``, ``val/perplexity`` and ``val/codes_used`` (fraction of the K
        codes used) over the whole set. Empty when there are no batches.
    """
    vq = objective.model == "vqvae"
    usage = CodeUsage(model.codebook_size) if vq else None
    # Sums stay on the device (no sync per batch), in fp64: 10^5 batches of losses ~100.
    totals: dict[str, torch.Tensor] = {}
    count = 0
    with eval_mode(model):
        for frames in batches:
            x = to_float(frames)
            with autocast(x.device):
                if vq:
                    x_hat, out = model(x)
                else:
                    mu, logvar = model.encode(x)
                    x_hat = model.decode(reparameterize(mu, logvar, generator))
            if vq:
                losses = vqvae_loss(x, x_hat, out, beta=objective.commitment,
                                    data_variance=objective.data_variance)
                usage.update(out.codes)
                values = {"loss": losses["loss"], "recon": losses["recon"],
                          "commitment": losses["commitment"]}
            else:
                losses = vae_loss(x, x_hat, mu, logvar, beta=objective.beta,
                                  kl_tolerance=objective.kl_tolerance, recon=objective.recon,
                                  capacity=objective.capacity(step), gamma=objective.gamma)
                values = {"loss": losses["loss"], "recon": losses["recon"], "kl": losses["kl"]}
            values["mse"] = (x_hat.float() - x).pow(2).mean()
            B = x.shape[0]
            for k, value in values.items():
                totals[k] = totals.get(k, 0.0) + value.detach().double() * B
            count += B
    if count == 0:
        return {}
    metrics = {f"val/{k}": float(value) / count for k, value in totals.items()}
    if vq:
        metrics["val/perplexity"] = usage.perplexity()
        metrics["val/codes_used"] = usage.fraction_used()
    else:
        # -log p(x|z): the Gaussian with sigma^2 = 1/2 adds its normaliser (D/2) log(pi).
        nll = metrics["val/recon"] + (0.5 * PIXELS * math.log(math.pi)
                                      if objective.recon == "mse" else 0.0)
        metrics["val/elbo"] = -(nll + metrics["val/kl"])
        metrics["val/bits_per_dim"] = -metrics["val/elbo"] / (PIXELS * math.log(2))
    return metrics


@torch.no_grad()
def _log_reconstructions(logger: RunLogger, model: nn.Module, shown: torch.Tensor,
                         step: int) -> None:
    """Grid of real frames (top row) over their reconstructions (VAE: from the posterior
    mean; VQ-VAE: from the quantised code grid)."""
    with eval_mode(model), autocast(shown.device):
        recon = model(to_float(shown))[0]
    logger.images("images/reconstructions", step, torch.cat([to_float(shown), recon.float()]),
                  ncols=len(shown))


# --------------------------------------------------------------------------- training



def _check_compatible(checkpoint: dict[str, Any], model_config: dict[str, Any],
                      v: VAEConfig, stage_dir: Path) -> None:
    """The run directory's checkpoint must be of the model and data order asked for."""
    diff = settings_diff(checkpoint, model_config, v, DATA_ORDER_KEYS)
    if diff:
        was, now = describe_diff(diff)
        raise ConfigError(f"{stage_dir} holds a V trained with {was} but the config asks for "
                          f"{now}: pass the same settings, use another --run, or delete "
                          f"{stage_dir} to start over")


def train_vae(cfg: Config, run_dir: str | Path, *, progress: bool | None = None) -> dict[str, Any]:
    """Train V (``cfg.vae.model``) on ``<run_dir>/rollouts.h5``, resuming if possible.

    :param cfg: the config; only ``cfg.vae`` is read.
    :param run_dir: the run directory (holds ``rollouts.h5``; gets ``<model>/``, ``tb/``).
    :param progress: tqdm bar (None: only on a terminal).
    :return: summary: ``model``, ``params``, ``epochs`` (done, fractional), ``steps``,
        ``val/...`` metrics of the last validation, ``images_per_s`` (training throughput
        of this invocation, or the stored one), ``wall_seconds`` (all invocations),
        ``checkpoint`` (best.pt, else last.pt), and for the VQ-VAE ``prior/...``.
    :raises DataError: no or unreadable rollouts (points to ``collect_rollouts.py``), or
        fewer training frames than one batch.
    :raises ConfigError: the directory holds a V of other settings.
    :raises WorldModelsError: the loss became NaN/inf (the last checkpoint is intact).
    """
    v = cfg.vae
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    device = resolve_device(v.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    with contextlib.ExitStack() as stack:
        # -- data: split by episode (frames of one episode are correlated)
        rollouts = stack.enter_context(RolloutDataset(run_dir / DATASET_NAME))
        train_eps, val_eps = split_episodes(len(rollouts), v.val_episodes, v.seed)
        num_train = int(rollouts.lengths[train_eps].sum())
        steps_per_epoch = num_train // v.batch_size
        if steps_per_epoch == 0:
            raise DataError(f"{rollouts.path} has {num_train} training frames "
                            f"({len(train_eps)} episodes), fewer than one batch of "
                            f"{v.batch_size}: lower --batch-size or collect more episodes")
        target = v.epochs * steps_per_epoch
        if v.max_steps > 0:
            target = min(target, v.max_steps)

        # -- model and optimiser (seeded: same seed, same initial weights)
        seed_everything(v.seed)
        model = prepare_model(model_from_config(v), device).to(device)
        model_config = v_model_config(model, v.model)
        optimizer = torch.optim.Adam(model.parameters(), lr=v.lr, fused=fused_adam(device))
        params = count_parameters(model)

        # -- resume from last.pt, or start fresh
        stage_dir = run_dir / v.model
        manager = CheckpointManager(stage_dir, KINDS[v.model], metric="val/loss")
        checkpoint = manager.latest(map_location=device)
        step, metrics, extra = 0, {}, {}
        if checkpoint is not None:
            _check_compatible(checkpoint, model_config, v, stage_dir)
            model.load_state_dict(checkpoint["state_dict"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            for group in optimizer.param_groups:  # the config's lr wins over the stored one
                group["lr"] = v.lr
            step, metrics, extra = checkpoint["step"], checkpoint["metrics"], checkpoint["extra"]
            restore_rng(checkpoint)
        elif v.init:  # fine-tuning: a trained V's weights, a fresh optimiser, step 0
            extra["init"] = load_init_weights(model, v.init, kind=KINDS[v.model], stage=v.model,
                                              model_config=model_config, key="vae.init")
        wall_before = float(extra.get("wall_seconds", 0.0))

        def summary(images_per_s: float | None, prior: dict[str, Any] | None) -> dict[str, Any]:
            path = manager.best_path if manager.best_path.exists() else manager.last_path
            # V's time as of its last checkpoint (all invocations), plus the prior's
            wall = (float(extra.get("wall_seconds", 0.0))
                    + (prior or {}).get("prior_wall_seconds", 0.0))
            return {
                "model": v.model, "params": params, "epochs": round(step / steps_per_epoch, 3),
                "steps": step, **{k: val for k, val in metrics.items() if k.startswith("val/")},
                "images_per_s": round(images_per_s or float(extra.get("images_per_s", 0.0)), 1),
                "wall_seconds": round(wall, 1), "checkpoint": str(path), **(prior or {}),
            }

        vq_prior = v.model == "vqvae" and v.prior_epochs > 0
        if step >= target and not vq_prior:
            return summary(None, None)  # finished earlier: nothing to do
        # A prior is resumed only once V is done (V's further steps would make it stale).
        prior_state = (current_prior(v, stage_dir, manager, step)
                       if vq_prior and step >= target else None)
        if step >= target and prior_state is not None and prior_state["done"]:
            return summary(None, prior_state["summary"])

        # -- frames: one uint8 tensor on the device when they fit, else streamed
        in_memory = v.in_memory == "yes" or (
            v.in_memory == "auto" and fits_in_memory(rollouts, device))
        train = FrameSource(rollouts, train_eps, device, in_memory)
        val = FrameSource(rollouts, val_eps, device, in_memory)
        data_variance = float(extra.get("data_variance") or (
            train.variance() if v.model == "vqvae" else 1.0))
        objective = Objective.from_config(v, data_variance)

        # -- logging: drop whatever a killed run logged after its checkpoint
        resume_step = step + (prior_state["step"] if prior_state else 0)
        logger = stack.enter_context(RunLogger(run_dir, v.model, resume_step=resume_step))
        logger.hparams(dataclasses.asdict(v))
        save_stage_config(cfg, run_dir, "vae", {"collect": rollouts.config})
        train_model = torch.compile(model) if v.compile else model
        val_generator_seed = derive_seed(v.seed, "vae-val")
        shown_from = val if len(val) else train
        shown = shown_from.take(np.linspace(0, len(shown_from) - 1, NUM_SHOWN).round().astype(int))
        sample_z_seed = derive_seed(v.seed, "vae-samples")
        bar = stack.enter_context(progress_bar(progress, total=target, initial=min(step, target),
                                               desc=v.model, unit="step"))
        stop = stack.enter_context(GracefulStop())
        nonfinite = FirstNonFinite(device)
        sums: dict[str, torch.Tensor] = {}
        t_log, last_log_step, train_seconds, trained_images = time.perf_counter(), step, 0.0, 0
        batches: Iterator[torch.Tensor] | None = None
        model.train()

        while step < target:
            # -- batch: each epoch's order depends only on (seed, epoch), so resuming
            # mid-epoch skips exactly the batches already seen
            epoch, index = divmod(step, steps_per_epoch)
            if batches is None or index == 0:
                batches = train.epoch(v.batch_size, derive_seed(v.seed, "vae-data", epoch), index)
            x = to_float(next(batches))

            # -- forward, losses (fp32), backward, step
            losses = training_losses(train_model, x, objective, step, v.precision)
            nonfinite.update(losses["loss"], step + 1)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if v.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), v.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            for k, value in losses.items():
                sums[k] = sums.get(k, 0.0) + value.detach()

            # -- log the interval's mean losses (the only sync with the GPU)
            end_of_epoch = step % steps_per_epoch == 0
            checkpoint_now = end_of_epoch or step == target or stop.requested
            if step % v.log_every == 0 or checkpoint_now:
                nonfinite.check()
                n = step - last_log_step
                scalars = {(f"charts/{k}" if k == "perplexity" else f"losses/{k}"): float(s) / n
                           for k, s in sums.items()}
                now = time.perf_counter()
                dt, t_log = now - t_log, now
                train_seconds += dt
                trained_images += n * v.batch_size
                scalars["charts/images_per_s"] = n * v.batch_size / dt
                scalars["charts/lr"] = optimizer.param_groups[0]["lr"]
                scalars["charts/epoch"] = step / steps_per_epoch
                if objective.capacity(step) is not None:
                    scalars["charts/capacity"] = objective.capacity(step)
                logger.log(step, scalars)
                bar.set_postfix_str(f"loss {scalars['losses/loss']:.4g} "
                                    f"{scalars['charts/images_per_s']:.0f} img/s")
                sums, last_log_step = {}, step

            # -- validation, grids, checkpoint: at each epoch end and when stopping
            if checkpoint_now:
                if end_of_epoch or step == target:  # not on Ctrl-C: stop fast
                    generator = torch.Generator().manual_seed(val_generator_seed)
                    metrics = evaluate(model, val.all_batches(v.batch_size), objective, step,
                                       generator)
                    if metrics:
                        logger.log(step, metrics)
                    _log_reconstructions(logger, model, shown, step)
                    if v.model != "vqvae":
                        with eval_mode(model), autocast(device):
                            generator = torch.Generator().manual_seed(sample_z_seed)
                            logger.images("images/samples", step,
                                          model.sample(NUM_SAMPLES, generator).float())
                else:
                    metrics = {}
                extra = {
                    "train": dataclasses.asdict(v), "data_variance": data_variance,
                    "init": extra.get("init"),  # the fine-tuned V's origin (None: fresh)
                    "steps_per_epoch": steps_per_epoch,
                    "data": "memory" if in_memory else "stream",
                    "images_per_s": trained_images / max(train_seconds, 1e-9),
                    "wall_seconds": wall_before + time.perf_counter() - t_start,
                }
                manager.save(model=model, model_config=model_config, optimizer=optimizer,
                             step=step, epoch=epoch + int(end_of_epoch), metrics=metrics,
                             extra=extra)
                logger.flush()
                if stop.requested:
                    raise KeyboardInterrupt
                t_log = time.perf_counter()  # evaluation is not training time

        images_per_s = trained_images / train_seconds if train_seconds > 0 else None
        prior_summary = None
        if vq_prior:
            prior_summary = train_prior(v, stage_dir, manager, model, train, val,
                                         step, logger, device, prior_state, progress, stop)
        return summary(images_per_s, prior_summary)


# ---------------------------------------------------------------------- VQ-VAE prior



# ---------------------------------------------------------------------------- loading



