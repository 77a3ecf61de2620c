"""The VQ-VAE's code prior, trained after V by ``train_vae.py --model vqvae``.

A VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937) has no prior of its own to sample
from: as in the paper, an autoregressive model (:class:`~worldmodels.generative.CodePrior`)
is fitted to the code grids of the training frames, encoded by the best V, after V has
trained. ``<run>/vqvae/prior.pt`` is written after each epoch (resumable) and names the V
step whose codes it models, so a V trained further retrains it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldmodels.config import VAEConfig
from worldmodels.data.frames import FrameSource
from worldmodels.generative import CodePrior, prior_loss
from worldmodels.generative.objective import to_float
from worldmodels.generative.registry import build_model
from worldmodels.run import PRIOR_FILE, PRIOR_KIND
from worldmodels.utils.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from worldmodels.utils.logs import RunLogger
from worldmodels.utils.progress import progress_bar
from worldmodels.utils.torch import (
    GracefulStop,
    autocast,
    channels_last,
    check_finite,
    derive_seed,
    eval_mode,
)

__all__ = ["train_prior", "current_prior"]

NUM_SAMPLES = 16  # samples in the grid of prior samples (the same draws at every epoch)

def _prior_source(manager: CheckpointManager, final_step: int) -> int:
    """The V step whose codes the prior models: best.pt's (what later stages load)."""
    return manager.best_step if manager.best_step is not None else final_step


def current_prior(v: VAEConfig, stage_dir: Path, manager: CheckpointManager,
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


def train_prior(v: VAEConfig, stage_dir: Path, manager: CheckpointManager,
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
