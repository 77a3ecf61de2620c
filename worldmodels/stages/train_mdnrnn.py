"""Training M: the MDN-RNN of *World Models* on V's latents.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.2 and appendix A.2: an
LSTM of 256 units reads ``[z_t, a_t]`` and models ``P(z_{t+1} | a_t, z_t, h_t)`` as a mixture
of 5 Gaussians per latent dimension (a mixture density network, Bishop 1994, on an RNN as
in Graves 2013, arXiv:1308.0850), trained with teacher forcing on sequences of 999
transitions, batches of 100, Adam at 1e-3, gradients clipped at 1.0, 4,000 steps (the
authors' ``rnn.py``, which clips each element). As in their ``rnn_train.py`` the input
``z`` is drawn afresh from V's posterior ``N(mu, sigma^2)`` at every batch. Here M also predicts the reward and the end of
the episode (:mod:`worldmodels.memory.mdnrnn`); for a VQ-VAE V (van den Oord et al. 2017)
the discrete M predicts a categorical over the codebook per grid cell.

    python scripts/train_mdnrnn.py --run runs/demo           # after scripts/encode.py

Objective per batch (fp32, :func:`sequence_losses`), means over the real steps (an episode
shorter than ``seq_len`` is one padded sequence, its padding masked)::

    loss = nll + reward_weight * mean (r_hat - r)^2
               + done_weight * mean BCE_w(done_logit, done),  w = done_pos_weight
    nll  = mean over valid (b, t, j) of -log sum_k pi_k N(z_{t+1,j}; mu_k, sigma_k^2)
           (nats per latent dimension; discrete: cross-entropy in nats per grid cell)

Dones are about one step in a thousand: ``done_pos_weight`` (BCE weight of the done steps)
lifts the done head's probability where episodes end, so that the dream (which ends an
episode at ``P(done) > 0.5``) ends them. Gradient clipping at ``grad_clip`` is by global
norm or, as the authors' ``tf.clip_by_value``, per element (``grad_clip_mode``,
:func:`clip_gradients`). Speed on a CPU: the LSTM under bf16 autocast where the CPU has
native bf16 (``precision``), the mixture NLL compiled (``compile_loss``), fused Adam.

**Validation** (every ``eval_every`` steps, default each pass over the training sequences)
runs over every window of the held-out episodes with ``z`` drawn from a fixed generator (so
passes are comparable) and reports ``val/nll``, ``val/reward_mse``, ``val/done_bce``,
``val/done_accuracy`` and ``val/loss``, next to **baselines** on the same targets, fitted
on the training latents: ``baseline/nll``, a single Gaussian per dimension (the moments of
V's aggregate posterior: mean of ``mu``, mean of ``mu^2 + sigma^2`` minus the squared mean;
for codes the add-one-smoothed unigram code distribution); ``baseline/reward_mse``,
predicting the mean training reward; ``baseline/done_bce`` and ``baseline/done_accuracy``,
predicting the training base rate of ``done``. A strip of images (``images/predictions``)
shows, one column per step: the real frames, V's reconstructions, M's one-step predictions
(the mean of the most likely component, decoded by V) and M's open-loop predictions (after
``STRIP_CONTEXT`` real steps M is fed its own samples at ``temperature``; the context
columns are dimmed).

Writes ``<run>/mdnrnn/{last,best}.pt`` (best: lowest ``val/loss``), ``metrics.jsonl``,
``hparams.json``, ``images/images_predictions_<step>.png``; ``<run>/tb/mdnrnn/``;
``<run>/config.json``.

**Resume** as :mod:`worldmodels.stages.train_vae`: re-running continues from ``last.pt`` with the
same data order (epoch ``e``'s windows and order depend only on ``(seed, e)``, the noise of
step ``s`` only on ``(seed, s)``), so a resumed run equals an uninterrupted one; logs after
the checkpoint are dropped; a first Ctrl-C checkpoints the current step and stops.

**Fine-tuning** (``init``) as V's: a new run starts from a trained M's weights (its heads
included, so the baselines' initialisation is replaced) with a fresh optimiser at step 0,
on the latents of this run's V; the paper's iterative training retrains M on old + new
rollouts this way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.config import (
    Config,
    MDNRNNConfig,
    save_stage_config,
)
from worldmodels.data.datasets import ACTION_DIM, RolloutDataset, split_episodes
from worldmodels.data.latents import LatentDataset, latents_path
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.data.sequences import LatentSequences, fits_in_memory
from worldmodels.errors import ConfigError, DataError
from worldmodels.memory import (
    MDNRNN,
    CodeRNN,
    mixture_nll,
)
from worldmodels.memory.losses import (
    clip_gradients,
    sequence_losses,
)
from worldmodels.memory.mdnrnn import mdnrnn_model_config
from worldmodels.run import load_encoder
from worldmodels.stages.mdnrnn_eval import Baselines, evaluate, init_heads, prediction_strip
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
    count_parameters,
    derive_seed,
    fused_adam,
    resolve_device,
    seed_everything,
)

__all__ = [
    "STAGE",
    "model_from_latents",
    "mixture_loss_fn",
    "train_mdnrnn",
]

STAGE = "mdnrnn"  # <run>/mdnrnn/, <run>/tb/mdnrnn/, checkpoint kind
# Settings that fix the data order: changing them mid-run would repeat or skip data.
DATA_ORDER_KEYS = ("batch_size", "seq_len", "seed", "val_episodes")

# ----------------------------------------------------------------------------- models


def model_from_latents(m: MDNRNNConfig, data: LatentDataset) -> nn.Module:
    """A freshly initialised M for the latents of ``data`` (uses the global torch RNG):
    :class:`~worldmodels.memory.MDNRNN` for Gaussian latents,
    :class:`~worldmodels.memory.CodeRNN` for VQ-VAE codes."""
    if data.kind == "codes":
        return CodeRNN(codebook_size=data.codebook_size, grid_cells=data.latent_dim,
                              action_dim=ACTION_DIM, hidden_dim=m.hidden_dim,
                              code_embed_dim=m.code_embed_dim)
    return MDNRNN(latent_dim=data.latent_dim, action_dim=ACTION_DIM, hidden_dim=m.hidden_dim,
                  num_gaussians=m.num_gaussians)



# ----------------------------------------------------------------------------- losses



#: mixture elements (batch x seq_len x D x K) from which ``compile_loss="auto"`` compiles
COMPILE_LOSS_MIN_ELEMENTS = 2**22


def mixture_loss_fn(m: MDNRNNConfig, batch_size: int | None = None,
                    latent_dim: int = 32) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mixture NLL training uses: :func:`~worldmodels.memory.mixture_nll`, compiled
    (``torch.compile``, forward and backward fused by Inductor: 2.5x the eager pair on a
    CPU) when ``m.compile_loss`` says so, with the eager function as fallback where
    compiling fails (no C++ compiler, unsupported backend): the result is the same to float
    rounding either way.

    :param batch_size: sequences per batch (default ``m.batch_size``), for ``auto``.
    """
    elements = (batch_size or m.batch_size) * m.seq_len * latent_dim * m.num_gaussians
    if m.compile_loss == "no" or (m.compile_loss == "auto"
                                  and elements < COMPILE_LOSS_MIN_ELEMENTS):
        return mixture_nll
    compiled = torch.compile(mixture_nll, dynamic=False)
    state = {"fn": compiled}

    def fn(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        try:
            return state["fn"](params, x)
        except Exception as e:  # noqa: BLE001 - any compiler failure: run eagerly
            if state["fn"] is mixture_nll:
                raise
            warnings.warn(f"torch.compile of M's mixture NLL failed ({type(e).__name__}); "
                          "running it eagerly", stacklevel=2)
            state["fn"] = mixture_nll
            return mixture_nll(params, x)

    return fn




# ------------------------------------------------------------------------------ figure



# --------------------------------------------------------------------------- training


def _check_compatible(checkpoint: dict[str, Any], model_config: dict[str, Any],
                      m: MDNRNNConfig, data: LatentDataset, stage_dir: Path) -> None:
    """The run's M must be of the model, data order and latents asked for."""
    diff = settings_diff(checkpoint, model_config, m, DATA_ORDER_KEYS)
    if diff:
        was, now = describe_diff(diff)
        raise ConfigError(f"{stage_dir} holds an M trained with {was} but the config and "
                          f"{data.path.name} ask for {now}: pass the same settings, use "
                          f"another --run, or delete {stage_dir} to start over")
    vae = (checkpoint.get("extra") or {}).get("vae") or {}
    if vae.get("sha256") not in (None, data.vae.get("sha256")):
        raise ConfigError(f"{stage_dir} holds an M trained on the latents of another V "
                          f"({vae.get('model')} step {vae.get('step')}); {data.path.name} "
                          f"is from {data.vae.get('model')} step {data.vae.get('step')}: use "
                          f"another --run, or delete {stage_dir} to start over")


def _current_v(run_dir: Path, data: LatentDataset, device: torch.device) -> nn.Module | None:
    """The run's V (to decode the figure), checked to be the one that made ``data``;
    None when the run has no V any more."""
    model = data.vae.get("model", "vae")
    try:
        net, identity = load_encoder(run_dir, model, device)
    except DataError:
        return None
    if identity["sha256"] != data.vae.get("sha256"):
        raise DataError(f"{data.path} was encoded by {model} step {data.vae.get('step')} but "
                        f"{run_dir / model} now holds step {identity['step']}: run "
                        f"scripts/encode.py --run {run_dir} --model {model} --overwrite")
    return net


def train_mdnrnn(cfg: Config, run_dir: str | Path, *,
                 progress: bool | None = None) -> dict[str, Any]:
    """Train M on ``<run>/latents_<encode.model>.h5``, resuming if possible.

    :param cfg: the config; ``cfg.mdnrnn`` and ``cfg.encode.model`` (which V's latents)
        are read.
    :param run_dir: the run directory (gets ``mdnrnn/``, ``tb/mdnrnn/``).
    :param progress: tqdm bar (None: only on a terminal).
    :return: summary: ``model`` (``mdnrnn`` | ``discrete_mdnrnn``), ``vae_model``,
        ``params``, ``steps``, ``epochs``, the ``val/...`` and ``baseline/...`` metrics of
        the last validation, ``seq_steps_per_s`` (training throughput in sequence-steps,
        i.e. batch x seq_len per optimiser step, per second), ``wall_seconds`` (all
        invocations), ``train_sequences``, ``val_sequences``, ``skipped_episodes`` (no
        transition), ``checkpoint``, ``figure`` (the last prediction strip PNG).
    :raises DataError: no or foreign latents (names ``encode.py``), latents of a V that
        changed since, no episode with ``seq_len`` transitions, fewer training sequences
        than one batch.
    :raises ConfigError: the directory holds an M of other settings or latent dimension.
    :raises WorldModelsError: the loss became NaN/inf (the last checkpoint is intact).
    """
    m = cfg.mdnrnn
    run_dir = Path(run_dir)
    t_start = time.perf_counter()
    device = resolve_device(m.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one batch shape: pick the fastest kernels once
    with contextlib.ExitStack() as stack:
        # -- data: split by episode, sequences cut inside episodes
        data = stack.enter_context(LatentDataset(latents_path(run_dir, cfg.encode.model)))
        train_eps, val_eps = split_episodes(len(data), m.val_episodes, m.seed)
        in_memory = m.in_memory == "yes" or (
            m.in_memory == "auto" and fits_in_memory(data, np.arange(len(data)), device))
        train = LatentSequences(data, m.seq_len, train_eps, device, in_memory)
        try:
            val = LatentSequences(data, m.seq_len, val_eps, device, in_memory)
        except DataError:  # no held-out episode has a transition: train without validation
            val = LatentSequences(data, m.seq_len, [], device, in_memory)
        steps_per_epoch = len(train) // m.batch_size
        if steps_per_epoch == 0:
            raise DataError(f"{data.path} has {len(train)} training sequences of seq_len="
                            f"{m.seq_len} ({len(train.episodes)} episodes), fewer than one "
                            f"batch of {m.batch_size}: lower --batch-size or --seq-len, or "
                            "collect more episodes")
        eval_every = m.eval_every or steps_per_epoch
        target = m.steps

        # -- what validation compares with (fitted on the training latents)
        baselines = Baselines.fit(train)

        # -- model and optimiser (seeded: same seed, same initial weights)
        seed_everything(m.seed)
        model = model_from_latents(m, data).to(device)
        init_heads(model, baselines)
        model_config = mdnrnn_model_config(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=m.lr, fused=fused_adam(device))
        nll_fn = mixture_loss_fn(m, latent_dim=data.latent_dim)
        params = count_parameters(model)

        # -- resume from last.pt, or start fresh
        stage_dir = run_dir / STAGE
        manager = CheckpointManager(stage_dir, STAGE, metric="val/loss")
        checkpoint = manager.latest(map_location=device)
        step, metrics, extra = 0, {}, {}
        if checkpoint is not None:
            _check_compatible(checkpoint, model_config, m, data, stage_dir)
            model.load_state_dict(checkpoint["state_dict"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            for group in optimizer.param_groups:  # the config's lr wins over the stored one
                group["lr"] = m.lr
            step, metrics, extra = checkpoint["step"], checkpoint["metrics"], checkpoint["extra"]
            restore_rng(checkpoint)
        elif m.init:  # fine-tuning: a trained M's weights (heads included), a fresh optimiser
            extra["init"] = load_init_weights(model, m.init, kind=STAGE, stage=STAGE,
                                              model_config=model_config, key="mdnrnn.init")

        def summary(seq_steps_per_s: float | None) -> dict[str, Any]:
            path = manager.best_path if manager.best_path.exists() else manager.last_path
            return {
                "model": model_config["model"], "vae_model": data.vae.get("model"),
                "params": params, "steps": step, "epochs": round(step / steps_per_epoch, 3),
                **{k: v for k, v in metrics.items() if k.startswith(("val/", "baseline/"))},
                "seq_steps_per_s": round(seq_steps_per_s
                                         or float(extra.get("seq_steps_per_s", 0.0)), 1),
                "wall_seconds": round(float(extra.get("wall_seconds", 0.0)), 1),
                "train_sequences": len(train), "val_sequences": len(val),
                "skipped_episodes": train.skipped + val.skipped,
                "latents": str(data.path), "checkpoint": str(path),
                "figure": extra.get("figure"),
            }

        if step >= target:
            return summary(None)  # finished earlier: nothing to do
        wall_before = float(extra.get("wall_seconds", 0.0))

        # -- what decodes the figure
        vae = _current_v(run_dir, data, device)
        rollouts = None
        if (run_dir / DATASET_NAME).exists():
            with contextlib.suppress(DataError):
                rollouts = stack.enter_context(RolloutDataset(run_dir / DATASET_NAME))
        shown = val if len(val.episodes) else train

        # -- logging: drop whatever a killed run logged after its checkpoint
        logger = stack.enter_context(RunLogger(run_dir, STAGE, resume_step=step))
        logger.hparams({**dataclasses.asdict(m), "vae_model": data.vae.get("model")})
        save_stage_config(cfg, run_dir, "mdnrnn", {"encode": {"model": cfg.encode.model}})
        train_model = torch.compile(model) if m.compile else model
        val_seed = derive_seed(m.seed, "mdnrnn-val")
        strip_seed = derive_seed(m.seed, "mdnrnn-strip")
        noise = torch.Generator(device=device)
        bar = stack.enter_context(progress_bar(progress, total=target, initial=step,
                                               desc=STAGE, unit="step"))
        stop = stack.enter_context(GracefulStop())
        nonfinite = FirstNonFinite(device)
        sums: dict[str, torch.Tensor] = {}
        seq_steps = m.batch_size * m.seq_len
        t_log, last_log_step, train_seconds, trained_steps = time.perf_counter(), step, 0.0, 0
        batches: Iterator[np.ndarray] | None = None
        figure = extra.get("figure")
        model.train()

        while step < target:
            # -- batch: epoch e's windows and order depend only on (seed, e); the z noise
            # of step s only on (seed, s): a resumed run draws what the first would have
            epoch, index = divmod(step, steps_per_epoch)
            if batches is None or index == 0:
                batches = train.epoch(m.batch_size, derive_seed(m.seed, "mdnrnn-data", epoch),
                                      index)
            noise.manual_seed(derive_seed(m.seed, "mdnrnn-noise", step))
            batch = train.batch(next(batches), noise)

            # -- forward, losses (fp32), backward, clip, step
            losses = sequence_losses(train_model, batch, m.reward_weight, m.done_weight,
                                     m.done_pos_weight, m.precision, nll_fn)
            nonfinite.update(losses["loss"], step + 1)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = clip_gradients(model.parameters(), m.grad_clip, m.grad_clip_mode)
            if grad_norm is not None:
                losses["grad_norm"] = grad_norm
            optimizer.step()
            step += 1
            bar.update(1)
            for k, value in losses.items():
                sums[k] = sums.get(k, 0.0) + value.detach()

            # -- log the interval's mean losses (the only sync with the GPU)
            checkpoint_now = step % eval_every == 0 or step == target or stop.requested
            if step % m.log_every == 0 or checkpoint_now:
                nonfinite.check()
                n = step - last_log_step
                scalars = {(f"charts/{k}" if k == "grad_norm" else f"losses/{k}"): float(s) / n
                           for k, s in sums.items()}
                now = time.perf_counter()
                dt, t_log = now - t_log, now
                train_seconds += dt
                trained_steps += n
                scalars["charts/seq_steps_per_s"] = n * seq_steps / dt
                scalars["charts/lr"] = optimizer.param_groups[0]["lr"]
                scalars["charts/epoch"] = step / steps_per_epoch
                logger.log(step, scalars)
                bar.set_postfix_str(f"loss {scalars['losses/loss']:.4g} nll "
                                    f"{scalars['losses/nll']:.4g} "
                                    f"{scalars['charts/seq_steps_per_s']:.0f} seq-steps/s")
                sums, last_log_step = {}, step

            # -- validation, figure, checkpoint
            if checkpoint_now:
                if not stop.requested or step == target:  # on Ctrl-C: stop fast
                    generator = torch.Generator(device=device).manual_seed(val_seed)
                    metrics = evaluate(model, val, m.batch_size, baselines, generator,
                                       m.reward_weight, m.done_weight, m.done_pos_weight)
                    if metrics:
                        logger.log(step, metrics)
                    if vae is not None:
                        generator = torch.Generator(device=device).manual_seed(strip_seed)
                        strip = prediction_strip(model, vae, shown, rollouts, m.temperature,
                                                 generator)
                        if strip is not None:
                            path = logger.images("images/predictions", step,
                                                 strip.flatten(0, 1), ncols=strip.shape[1])
                            figure = str(path)
                else:
                    metrics = {}
                rate = trained_steps * seq_steps / max(train_seconds, 1e-9)
                extra = {
                    "train": dataclasses.asdict(m), "vae": data.vae,
                    "init": extra.get("init"),  # the fine-tuned M's origin (None: fresh)
                    "latents": str(data.path), "steps_per_epoch": steps_per_epoch,
                    "baselines": {"reward_mean": baselines.reward_mean,
                                  "done_rate": baselines.done_rate},
                    "data": "memory" if in_memory else "stream",
                    "seq_steps_per_s": rate, "figure": figure,
                    "wall_seconds": wall_before + time.perf_counter() - t_start,
                }
                manager.save(model=model, model_config=model_config, optimizer=optimizer,
                             step=step, epoch=epoch + int(step % steps_per_epoch == 0),
                             metrics=metrics, extra=extra)
                logger.flush()
                if stop.requested:
                    raise KeyboardInterrupt
                t_log = time.perf_counter()  # evaluation is not training time

        return summary(trained_steps * seq_steps / train_seconds if train_seconds > 0 else None)


# ----------------------------------------------------------------------------- loading



