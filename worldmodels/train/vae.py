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
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from worldmodels.data.datasets import (
    FrameDataset,
    RolloutDataset,
    fits_in_memory,
    load_frames,
    split_episodes,
)
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.errors import ConfigError, DataError
from worldmodels.generative import (
    VQVAE,
    CodePrior,
    CodeUsage,
    ConvVAE,
    prior_loss,
    reparameterize,
    vae_loss,
    vqvae_loss,
)
from worldmodels.utils.checkpoint import (
    CheckpointManager,
    describe_diff,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    settings_diff,
)
from worldmodels.utils.logs import RunLogger
from worldmodels.utils.progress import progress_bar
from worldmodels.utils.torch import (
    FirstNonFinite,
    GracefulStop,
    auto_precision,
    autocast,
    channels_last,
    check_finite,
    count_parameters,
    derive_seed,
    eval_mode,
    resolve_device,
    seed_everything,
)

__all__ = [
    "MODELS",
    "Objective",
    "FrameSource",
    "build_model",
    "model_from_config",
    "training_losses",
    "use_bf16",
    "training_autocast",
    "prepare_model",
    "fused_adam",
    "evaluate",
    "train_vae",
    "load_vae",
    "load_code_prior",
]

MODELS = ("vae", "betavae", "vqvae")
#: checkpoint kind per model: the VAE and the β-VAE are the same network
KINDS = {"vae": "vae", "betavae": "vae", "vqvae": "vqvae"}
PRIOR_KIND = "code_prior"
PRIOR_FILE = "prior.pt"
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


def build_model(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild V from a checkpoint's ``model_config``: ``{"model": name, **constructor kwargs}``."""
    kwargs = dict(model_config)
    name = kwargs.pop("model", None)
    if name in ("vae", "betavae"):
        return ConvVAE(**kwargs)
    if name == "vqvae":
        return VQVAE(**kwargs)
    raise DataError(f"unknown V model {name!r} in a checkpoint's model_config (expected one "
                    f"of {', '.join(MODELS)})")


@dataclass(frozen=True)
class Objective:
    """What V minimises, derived from the config.

    * ``vae``: ``recon + max(KL, kl_tolerance * D_z)`` (beta = 1, the paper's V);
    * ``betavae``: ``recon + beta * max(KL, floor)``, or with ``capacity_max > 0``
      ``recon + gamma * |KL - C(step)|``, ``C`` growing linearly from 0 to ``capacity_max``
      nats over ``capacity_steps`` steps (the floor is then not used);
    * ``vqvae``: ``mean (x - x_hat)^2 / data_variance + codebook + commitment * commit``.
    """

    model: str
    beta: float = 1.0
    kl_tolerance: float = 0.0
    recon: str = "mse"
    capacity_max: float = 0.0
    capacity_steps: int = 1
    gamma: float = 1000.0
    commitment: float = 0.25
    data_variance: float = 1.0

    @classmethod
    def from_config(cls, v: VAEConfig, data_variance: float = 1.0) -> Objective:
        if v.model == "vqvae":
            return cls("vqvae", commitment=v.commitment, data_variance=data_variance)
        annealed = v.model == "betavae" and v.capacity_max > 0
        return cls(
            v.model,
            beta=1.0 if v.model == "vae" else v.beta,
            kl_tolerance=0.0 if annealed else v.kl_tolerance,
            recon=v.recon,
            capacity_max=v.capacity_max if annealed else 0.0,
            capacity_steps=v.capacity_steps,
            gamma=v.gamma,
        )

    def capacity(self, step: int) -> float | None:
        """``C`` in nats after ``step`` optimiser steps; None without capacity annealing."""
        if self.capacity_max <= 0:
            return None
        return self.capacity_max * min(1.0, step / self.capacity_steps)


PRECISIONS = ("auto", "bf16", "fp32")


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether V's or M's network trains under bf16 autocast (``precision`` of
    :class:`~worldmodels.config.VAEConfig` / :class:`~worldmodels.config.MDNRNNConfig`).

    ``auto``: on CUDA with bf16 (as :func:`worldmodels.utils.torch.autocast`), and on a CPU
    with native bf16 (AVX512-BF16 / AMX), where ``scripts/benchmark.py vae|mdnrnn`` measured
    it faster than fp32 (a 2-core AMX Xeon: V's step 1.6x, M's LSTM about 2x; but when
    other processes oversubscribe the cores, oneDNN's bf16 kernels slow down more than
    fp32's); elsewhere CPU bf16 is emulated and slower, so fp32. ``bf16`` / ``fp32`` force it (``bf16`` on a GPU without
    bf16 runs fp32).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32" or device.type not in ("cpu", "cuda"):
        return False
    if precision == "bf16" and device.type == "cpu":
        return True
    return auto_precision(device) == "bf16"


def training_autocast(device: torch.device,
                      precision: str = "auto") -> contextlib.AbstractContextManager[None]:
    """bf16 autocast where :func:`use_bf16` says so, else a no-op. Losses, KL and mixture
    heads leave it and compute in fp32 themselves."""
    if use_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fused_adam(device: torch.device) -> bool:
    """Adam's fused kernel (one pass per parameter) on CUDA and CPU, where torch has it."""
    return device.type in ("cuda", "cpu")


def to_float(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, 64, 64) uint8 -> float32 in [0, 1] (on the frames' device)."""
    return frames.float().div_(255.0)


def training_losses(model: nn.Module, x: torch.Tensor, objective: Objective,
                    step: int, precision: str = "auto") -> dict[str, torch.Tensor]:
    """One training forward pass and its losses (fp32 scalars); the network under
    :func:`training_autocast` (``precision``).

    :param model: V in training mode, possibly ``torch.compile``-d (only ``model(x)`` is
        called, so the compiled graph is used): the VAE draws one ``z ~ q(z|x)`` from the
        global torch RNG; the VQ-VAE updates its EMA codebook.
    :param x: (B, 3, 64, 64) float in [0, 1].
    :param step: optimiser steps done so far (schedules the capacity ``C``).
    :return: ``loss``, ``recon``, ``kl``, ``kl_floored``, ``beta_kl`` (VAEs) or ``loss``,
        ``recon``, ``codebook``, ``commitment``, ``perplexity`` (VQ-VAE).
    """
    with training_autocast(x.device, precision):
        out = model(x)
    # The losses leave autocast and compute in fp32 themselves.
    if objective.model == "vqvae":
        x_hat, vq = out
        return vqvae_loss(x, x_hat, vq, beta=objective.commitment,
                          data_variance=objective.data_variance)
    x_hat, mu, logvar, _z = out
    return vae_loss(x, x_hat, mu, logvar, beta=objective.beta,
                    kl_tolerance=objective.kl_tolerance, recon=objective.recon,
                    capacity=objective.capacity(step), gamma=objective.gamma)


# ------------------------------------------------------------------------------- data


class FrameSource:
    """The frames of some episodes: one uint8 tensor on the device, or streamed from HDF5.

    :param rollouts: the open dataset.
    :param episodes: episode indices (a train or validation split).
    :param device: where batches are delivered.
    :param in_memory: hold every frame as one (N, 3, 64, 64) uint8 tensor on ``device``
        (:func:`~worldmodels.data.datasets.load_frames`) and draw batches by index;
        otherwise read chunk-aligned shuffled batches from the file
        (:meth:`~worldmodels.data.datasets.FrameDataset.sample_batches`).
    """

    def __init__(self, rollouts: RolloutDataset, episodes: Sequence[int],
                 device: torch.device, in_memory: bool) -> None:
        self.device = device
        self.dataset = FrameDataset(rollouts, episodes)
        self.frames: torch.Tensor | None = None
        if in_memory and len(self.dataset):
            try:
                self.frames = load_frames(rollouts, episodes, device)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if "memory" not in str(e).lower():
                    raise
                raise DataError(f"the frames of {rollouts.path} do not fit in {device} memory: "
                                "pass --in-memory no to stream them from the file") from None

    def __len__(self) -> int:
        return len(self.dataset)

    def epoch(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """The ``len // batch_size`` full batches (B, 3, 64, 64) uint8 of one shuffled pass
        (the last partial batch is dropped, so every batch has the same shape for
        ``torch.compile``), starting after the first ``skip``. The order depends only on
        ``seed`` (and on in-memory vs streamed)."""
        num_batches = len(self) // batch_size
        if self.frames is not None:
            g = torch.Generator().manual_seed(seed)
            perm = torch.randperm(len(self), generator=g).to(self.device)
            for i in range(skip, num_batches):
                yield self.frames[perm[i * batch_size:(i + 1) * batch_size]]
            return
        batches = self.dataset.sample_batches(batch_size, rng=np.random.default_rng(seed),
                                              drop_last=True, epochs=1)
        # Resuming mid-epoch re-reads the skipped batches: the shuffle buffer's state
        # depends on them.
        for x in _skip(batches, skip):
            yield x.to(self.device, non_blocking=True)

    def all_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Every frame once (the last batch may be smaller), in a fixed order."""
        if self.frames is not None:
            for i in range(0, len(self), batch_size):
                yield self.frames[i:i + batch_size]
            return
        for x in self.dataset.sample_batches(batch_size, rng=0, epochs=1):
            yield x.to(self.device, non_blocking=True)

    def take(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` as (len, 3, 64, 64) uint8 on the device."""
        if self.frames is not None:
            return self.frames[torch.as_tensor(list(indices), device=self.device)]
        return torch.stack([self.dataset[int(i)] for i in indices]).to(self.device)

    def variance(self, max_frames: int = 4096) -> float:
        """Pixel variance (in [0, 1] units) of up to ``max_frames`` evenly spaced frames."""
        idx = np.linspace(0, len(self) - 1, min(len(self), max_frames)).round().astype(np.int64)
        if self.frames is None:  # one shuffled read beats random access to each frame
            x = next(iter(self.dataset.sample_batches(len(idx), rng=0)))
        else:
            x = self.take(np.unique(idx))
        return float(to_float(x).var())


def _skip(it: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    for i, x in enumerate(it):
        if i >= n:
            yield x


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


def _model_config(model: nn.Module, name: str) -> dict[str, Any]:
    return {"model": name, **model.hparams}


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
        model_config = _model_config(model, v.model)
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
        prior_state = (_current_prior(v, stage_dir, manager, step)
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
            prior_summary = _train_prior(v, stage_dir, manager, model, train, val,
                                         step, logger, device, prior_state, progress, stop)
        return summary(images_per_s, prior_summary)


# ---------------------------------------------------------------------- VQ-VAE prior


def _prior_source(manager: CheckpointManager, final_step: int) -> int:
    """The V step whose codes the prior models: best.pt's (what later stages load)."""
    return manager.best_step if manager.best_step is not None else final_step


def _current_prior(v: VAEConfig, stage_dir: Path, manager: CheckpointManager,
                   final_step: int) -> dict[str, Any] | None:
    """prior.pt's progress if it models the current best V, else None (retrain it)."""
    path = stage_dir / PRIOR_FILE
    if not path.exists():
        return None
    prior = load_checkpoint(path, kind=PRIOR_KIND)
    if (prior.get("extra") or {}).get("vae_step") != _prior_source(manager, final_step):
        return None
    return {"checkpoint": prior, "step": int(prior["step"]),
            "done": int(prior["epoch"] or 0) >= v.prior_epochs,
            "summary": {"prior_checkpoint": str(path),
                        **{k: val for k, val in prior["metrics"].items()
                           if k.startswith("prior/")},
                        "prior_wall_seconds": float(prior["extra"].get("wall_seconds", 0.0))}}


@torch.no_grad()
def _encode_all(model: nn.Module, source: FrameSource, batch_size: int) -> torch.Tensor:
    """Code grids (N, h, w) of every frame of ``source``, as small ints on its device."""
    dtype = torch.uint8 if model.codebook_size <= 256 else torch.int32
    out = []
    with eval_mode(model):
        for frames in source.all_batches(batch_size):
            with autocast(frames.device):
                out.append(model.encode_codes(to_float(frames)).to(dtype))
    if not out:
        return torch.zeros((0, *model.grid_size), dtype=dtype, device=source.device)
    return torch.cat(out)


def _train_prior(v: VAEConfig, stage_dir: Path, manager: CheckpointManager,
                 model: nn.Module, train: FrameSource, val: FrameSource, final_step: int,
                 logger: RunLogger, device: torch.device, state: dict[str, Any] | None,
                 progress: bool | None, stop: GracefulStop) -> dict[str, Any]:
    """Fit :class:`~worldmodels.generative.CodePrior` to the code grids of the training
    frames, as encoded by the best V; ``prior.pt`` after each epoch (resumable). Logged on
    V's step axis after V's last step (``prior/loss`` in nats per code)."""
    t_start = time.perf_counter()
    source_step = _prior_source(manager, final_step)
    vqvae = model
    if manager.best_path.exists() and manager.best_step != final_step:
        best = load_checkpoint(manager.best_path, map_location=device)
        vqvae = channels_last(build_model(best["model_config"]), device).to(device)
        vqvae.load_state_dict(best["state_dict"])
    train_codes = _encode_all(vqvae, train, v.batch_size)
    val_codes = _encode_all(vqvae, val, v.batch_size)
    batch_size = min(v.batch_size, len(train_codes))
    steps_per_epoch = len(train_codes) // batch_size

    # Its own seeded RNG: training the prior must not change V's random stream.
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only its RNG is used
        torch.manual_seed(derive_seed(v.seed, "prior"))
        prior = CodePrior(vqvae.codebook_size, vqvae.grid_size).to(device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=v.prior_lr)
    pstep, start_epoch, metrics, wall_before = 0, 0, {}, 0.0
    if state is not None:
        prior.load_state_dict(state["checkpoint"]["state_dict"])
        optimizer.load_state_dict(state["checkpoint"]["optimizer"])
        pstep, start_epoch = state["step"], int(state["checkpoint"]["epoch"] or 0)
        metrics = state["checkpoint"]["metrics"]
        wall_before = state["summary"]["prior_wall_seconds"]
    wall = wall_before
    path = stage_dir / PRIOR_FILE
    bar = progress_bar(progress, total=v.prior_epochs * steps_per_epoch,
                       initial=pstep, desc="prior", unit="step")
    try:
        for epoch in range(start_epoch, v.prior_epochs):
            g = torch.Generator().manual_seed(derive_seed(v.seed, "prior-data", epoch))
            perm = torch.randperm(len(train_codes), generator=g).to(device)
            prior.train()
            total = torch.zeros((), device=device)
            for i in range(steps_per_epoch):
                if stop.requested:  # prior.pt keeps the last finished epoch
                    raise KeyboardInterrupt
                codes = train_codes[perm[i * batch_size:(i + 1) * batch_size]].long()
                with autocast(device):
                    logits = prior(codes)
                loss = prior_loss(logits, codes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                pstep += 1
                bar.update(1)
                total += loss.detach()
                if pstep % v.log_every == 0:
                    logger.log(final_step + pstep, {"prior/loss": loss})
            check_finite(total, pstep, "prior loss")
            metrics = {"prior/train_loss": float(total) / max(steps_per_epoch, 1)}
            if len(val_codes):
                metrics["prior/val_loss"] = _prior_nll(prior, val_codes, v.batch_size)
            logger.log(final_step + pstep, metrics)
            with eval_mode(prior), autocast(device):
                g = torch.Generator().manual_seed(derive_seed(v.seed, "prior-samples"))
                samples = vqvae.decode_codes(prior.sample(NUM_SAMPLES, generator=g))
            logger.images("images/samples", final_step + pstep, samples.float())
            wall = wall_before + time.perf_counter() - t_start
            save_checkpoint(path, kind=PRIOR_KIND, model=prior, model_config=prior.hparams,
                            optimizer=optimizer, step=pstep, epoch=epoch + 1, metrics=metrics,
                            extra={"vae_step": source_step, "wall_seconds": wall})
            logger.flush()
    finally:
        bar.close()
    return {"prior_checkpoint": str(path), **metrics, "prior_wall_seconds": wall}


@torch.no_grad()
def _prior_nll(prior: CodePrior, codes: torch.Tensor, batch_size: int) -> float:
    """Mean negative log-likelihood in nats per code of ``codes`` (N, h, w)."""
    total = 0.0
    with eval_mode(prior):
        for i in range(0, len(codes), batch_size):
            c = codes[i:i + batch_size].long()
            with autocast(c.device):
                logits = prior(c)
            total += float(prior_loss(logits, c)) * len(c)
    return total / len(codes)


# ---------------------------------------------------------------------------- loading


def _checkpoint_path(run_dir: str | Path, model: str) -> Path:
    stage_dir = Path(run_dir) / model
    for name in (CheckpointManager.BEST, CheckpointManager.LAST):
        if (stage_dir / name).exists():
            return stage_dir / name
    raise DataError(f"no trained {model} in {stage_dir}: run scripts/train_vae.py "
                    f"--run {run_dir} --model {model} first")


def load_vae(run_dir: str | Path, model: str = "vae",
             device: str | torch.device = "cpu") -> nn.Module:
    """V of a run, rebuilt from ``<run>/<model>/best.pt`` (else ``last.pt``) alone.

    :param model: ``vae``, ``betavae`` or ``vqvae`` (the stage directory).
    :param device: ``cpu``, ``cuda``, ``auto``...
    :return: a :class:`~worldmodels.generative.ConvVAE` or
        :class:`~worldmodels.generative.VQVAE` in eval mode.
    :raises DataError: no checkpoint, or an unreadable one.
    """
    if model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")
    device = resolve_device(device)
    path = _checkpoint_path(run_dir, model)
    checkpoint = load_checkpoint(path, kind=KINDS[model], map_location=device)
    net = build_model(checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.to(device).eval()


def load_code_prior(run_dir: str | Path, device: str | torch.device = "cpu") -> CodePrior:
    """The VQ-VAE's code prior of a run (``<run>/vqvae/prior.pt``), in eval mode: sample
    with ``load_vae(run, "vqvae").decode_codes(prior.sample(n))``."""
    device = resolve_device(device)
    path = Path(run_dir) / "vqvae" / PRIOR_FILE
    if not path.exists():
        raise DataError(f"no code prior at {path}: run scripts/train_vae.py --run {run_dir} "
                        "--model vqvae (with --prior-epochs > 0) first")
    checkpoint = load_checkpoint(path, kind=PRIOR_KIND, map_location=device)
    prior = CodePrior(**checkpoint["model_config"])
    prior.load_state_dict(checkpoint["state_dict"])
    return prior.to(device).eval()
