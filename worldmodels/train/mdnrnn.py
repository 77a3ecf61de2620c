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

**Resume** as :mod:`worldmodels.train.vae`: re-running continues from ``last.pt`` with the
same data order (epoch ``e``'s windows and order depend only on ``(seed, e)``, the noise of
step ``s`` only on ``(seed, s)``), so a resumed run equals an uninterrupted one; logs after
the checkpoint are dropped; a first Ctrl-C checkpoints the current step and stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.config import (
    Config,
    MDNRNNConfig,
    save_stage_config,
)
from worldmodels.data.datasets import ACTION_DIM, RolloutDataset, split_episodes
from worldmodels.data.latents import (
    LatentDataset,
    LatentSequences,
    fits_in_memory,
    latents_path,
    load_encoder,
)
from worldmodels.data.rollouts import DATASET_NAME
from worldmodels.errors import ConfigError, DataError
from worldmodels.memory import (
    MDNRNN,
    DiscreteMDNRNN,
    gmm_nll,
    mixture_nll,
    sample_next,
    sample_next_codes,
)
from worldmodels.train.vae import fused_adam, training_autocast
from worldmodels.utils.checkpoint import (
    CheckpointManager,
    describe_diff,
    load_checkpoint,
    restore_rng,
    settings_diff,
)
from worldmodels.utils.logs import RunLogger
from worldmodels.utils.progress import progress_bar
from worldmodels.utils.torch import (
    FirstNonFinite,
    GracefulStop,
    autocast,
    count_parameters,
    derive_seed,
    eval_mode,
    resolve_device,
    seed_everything,
)

__all__ = [
    "STAGE",
    "Baselines",
    "build_mdnrnn",
    "model_from_latents",
    "sequence_losses",
    "mixture_loss_fn",
    "clip_gradients",
    "init_heads",
    "evaluate",
    "prediction_strip",
    "train_mdnrnn",
    "load_mdnrnn",
    "mdnrnn_info",
]

STAGE = "mdnrnn"  # <run>/mdnrnn/, <run>/tb/mdnrnn/, checkpoint kind
# Settings that fix the data order: changing them mid-run would repeat or skip data.
DATA_ORDER_KEYS = ("batch_size", "seq_len", "seed", "val_episodes")
STRIP_STEPS = 16  # columns of the prediction strip
STRIP_CONTEXT = 4  # real inputs before M is fed its own samples
_MIN_PROB = 1e-6  # the done baseline's rate is clamped here: log(0) would be -inf


# ----------------------------------------------------------------------------- models


def model_from_latents(m: MDNRNNConfig, data: LatentDataset) -> nn.Module:
    """A freshly initialised M for the latents of ``data`` (uses the global torch RNG):
    :class:`~worldmodels.memory.MDNRNN` for Gaussian latents,
    :class:`~worldmodels.memory.DiscreteMDNRNN` for VQ-VAE codes."""
    if data.kind == "codes":
        return DiscreteMDNRNN(codebook_size=data.codebook_size, grid_cells=data.latent_dim,
                              action_dim=ACTION_DIM, hidden_dim=m.hidden_dim,
                              code_embed_dim=m.code_embed_dim)
    return MDNRNN(latent_dim=data.latent_dim, action_dim=ACTION_DIM, hidden_dim=m.hidden_dim,
                  num_gaussians=m.num_gaussians)


def _model_config(model: nn.Module) -> dict[str, Any]:
    name = "discrete_mdnrnn" if isinstance(model, DiscreteMDNRNN) else "mdnrnn"
    return {"model": name, **model.hparams}


def build_mdnrnn(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild M from a checkpoint's ``model_config``: ``{"model": name, **kwargs}``."""
    kwargs = dict(model_config)
    name = kwargs.pop("model", None)
    if name == "mdnrnn":
        return MDNRNN(**kwargs)
    if name == "discrete_mdnrnn":
        return DiscreteMDNRNN(**kwargs)
    raise DataError(f"unknown M model {name!r} in a checkpoint's model_config")


# ----------------------------------------------------------------------------- losses


def _inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["codes"] if "codes" in batch else batch["z"]


def _next_latent_nll(out: Any, target: torch.Tensor) -> torch.Tensor:
    """(B, L) NLL of ``target`` (B, L, D) or codes (B, L, cells): nats per latent dimension
    (Gaussian mixtures, :func:`~worldmodels.memory.gmm_nll`) or per grid cell (categorical)."""
    if hasattr(out, "logits"):
        B, L, cells, K = out.logits.shape
        ce = F.cross_entropy(out.logits.reshape(-1, K).float(), target.reshape(-1),
                             reduction="none")
        return ce.view(B, L, cells).mean(-1)
    return gmm_nll(target, out.logpi, out.mu, out.logsigma).mean(-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where, not a product: a masked position's value must not reach the gradient
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


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


def sequence_losses(model: nn.Module, batch: dict[str, torch.Tensor], reward_weight: float = 1.0,
                    done_weight: float = 1.0, done_pos_weight: float = 1.0,
                    precision: str = "auto",
                    nll_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = mixture_nll,
                    ) -> dict[str, torch.Tensor]:
    """One teacher-forced forward pass over a batch of :class:`LatentSequences` and its
    losses, fp32 scalars ``loss``, ``nll``, ``reward``, ``done``::

        loss   = nll + reward_weight * reward + done_weight * done
        nll    = mean over (b, t, j) with mask & next_valid of
                 -log sum_k pi_k N(z_{t+1,j}; mu_k, sigma_k^2)       (nats per latent dim;
                 discrete M: cross-entropy per grid cell)
        reward = mean over (b, t) with mask of (r_hat - r)^2
        done   = mean over (b, t) with mask of
                 -[w d log sigmoid(l) + (1 - d) log(1 - sigmoid(l))], w = done_pos_weight

    ``mask`` is false on the padding of episodes shorter than the sequence (whose values
    must be finite: :class:`LatentSequences` repeats the last step); ``next_valid``
    also drops the ``z`` term of a terminated episode's last transition (whose next frame
    does not exist) but keeps its reward and done: the done head's only positive examples.

    The recurrent core runs under :func:`~worldmodels.train.vae.training_autocast`
    (``precision``: bf16 on CUDA and on CPUs with native bf16); the heads and the losses
    in fp32. For :class:`MDNRNN` the mixture term is ``nll_fn`` (default
    :func:`~worldmodels.memory.mixture_nll`, or the compiled one of :func:`mixture_loss_fn`)
    on the head's raw output; a compiled or discrete M goes through its ``forward``.

    :param model: M (:class:`MDNRNN` or :class:`DiscreteMDNRNN`, possibly compiled).
    :param batch: ``z`` (B, L+1, D) or ``codes`` (B, L+1, cells), ``actions`` (B, L, 3),
        ``rewards``, ``dones`` (B, L) float, ``next_valid`` (B, L) bool and optionally
        ``mask`` (B, L) bool (default: every step real).
    """
    x = _inputs(batch)
    mask = batch.get("mask")
    if mask is None:
        mask = torch.ones_like(batch["next_valid"])
    with training_autocast(x.device, precision):
        if isinstance(model, MDNRNN):
            params, reward_hat, done_logit, _ = model.raw(x[:, :-1], batch["actions"])
        else:
            out = model(x[:, :-1], batch["actions"])
            reward_hat, done_logit = out.reward, out.done_logit
    with torch.autocast(device_type=x.device.type, enabled=False):
        if isinstance(model, MDNRNN):
            per_step = nll_fn(params, x[:, 1:]).mean(-1)
        else:
            per_step = _next_latent_nll(out, x[:, 1:])
        nll = _masked_mean(per_step, batch["next_valid"] & mask)
        zero = nll.new_zeros(())
        reward = zero if reward_hat is None else _masked_mean(
            (reward_hat - batch["rewards"]).square(), mask)
        done = zero if done_logit is None else _masked_mean(
            _done_bce(done_logit, batch["dones"], done_pos_weight), mask)
        loss = nll + reward_weight * reward + done_weight * done
    return {"loss": loss, "nll": nll, "reward": reward, "done": done}


def _done_bce(logit: torch.Tensor, done: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Per-step BCE of the done logit, positives weighted by ``pos_weight``."""
    weight = None if pos_weight == 1.0 else logit.new_tensor(pos_weight)
    return F.binary_cross_entropy_with_logits(logit, done, reduction="none", pos_weight=weight)


def clip_gradients(parameters: Iterable[torch.Tensor], grad_clip: float,
                   mode: str = "norm") -> torch.Tensor | None:
    """Clip M's gradient in place; returns its total 2-norm before clipping (None when
    ``grad_clip`` is 0: no clipping, nothing computed).

    * ``norm``: ``g <- g * min(1, grad_clip / ||g||_2)`` over all parameters together
      (``clip_grad_norm_``); the direction is kept.
    * ``value``: ``g_i <- clamp(g_i, -grad_clip, grad_clip)`` per element, the authors'
      ``tf.clip_by_value`` in WorldModelsExperiments ``carracing/rnn/rnn.py``.

    Measured (config ``grad_clip_mode``; 40 random-policy CarRacing episodes of 300 steps,
    a V of 200 steps, M at 256 units, 16 x 100 transitions, 300 steps, seeds 0 and 1):
    val NLL 0.9209 / 0.9139 nats per dim with ``norm``, 0.9209 / 0.9143 with ``value``. At
    the paper's 1.0 neither engages much (M's gradient norm stayed around 0.2 to 0.5), so
    they tie; ``norm`` stays the default (no worse, and what earlier M's trained with).
    """
    if grad_clip <= 0:
        return None
    params = [p for p in parameters if p.grad is not None]
    if mode == "norm":
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if mode == "value":
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        torch.nn.utils.clip_grad_value_(params, grad_clip)
        return norm
    raise ConfigError(f"grad_clip_mode must be 'norm' or 'value', got {mode!r}")


@dataclass
class Baselines:
    """Predictors that ignore the past, fitted on the training latents.

    ``z_mean``, ``z_var`` (D,): one Gaussian per latent dimension, the moments of V's
    aggregate posterior over the training steps (the maximum-likelihood Gaussian for ``z``
    resampled from ``N(mu, sigma^2)``); ``code_logprob`` (K,): the log of the add-one
    smoothed code frequencies (discrete latents); ``reward_mean``: mean reward;
    ``done_rate``: fraction of steps that ended an episode by termination.
    """

    reward_mean: float
    done_rate: float
    z_mean: torch.Tensor | None = None
    z_var: torch.Tensor | None = None
    code_logprob: torch.Tensor | None = None

    @classmethod
    def fit(cls, seqs: LatentSequences) -> Baselines:
        """Fit on every step of the (usable) episodes of ``seqs``; fp64 sums."""
        dev = seqs.device
        sums: dict[str, torch.Tensor] = {}
        codes = seqs.data.kind == "codes"

        def add(key: str, value: torch.Tensor) -> None:
            sums[key] = sums.get(key, torch.zeros((), dtype=torch.float64, device=dev)) + value

        for j in range(len(seqs.episodes)):
            ep = seqs.episode_tensors(j)
            add("steps", torch.tensor(float(len(ep["rewards"])), dtype=torch.float64, device=dev))
            add("reward", ep["rewards"].double().sum())
            add("done", ep["terminated"].double().sum())
            if codes:
                add("counts", torch.bincount(ep["codes"].reshape(-1).long(),
                                             minlength=seqs.data.codebook_size).double())
            else:
                mu, var = ep["mu"].double(), ep["logvar"].double().exp()
                add("mu", mu.sum(0))
                add("second", (mu.square() + var).sum(0))
        n = sums["steps"].clamp_min(1)
        out = cls(reward_mean=float(sums["reward"] / n), done_rate=float(sums["done"] / n))
        if codes:
            counts = sums["counts"] + 1.0
            out.code_logprob = (counts / counts.sum()).log().float()
        else:
            mean = sums["mu"] / n
            out.z_mean = mean.float()
            out.z_var = (sums["second"] / n - mean.square()).clamp_min(1e-8).float()
        return out

    def nll(self, target: torch.Tensor) -> torch.Tensor:
        """(B, L) NLL of ``target`` (B, L, D) z or (B, L, cells) codes, as
        :func:`_next_latent_nll` (nats per dimension / per cell)."""
        if self.code_logprob is not None:
            return -self.code_logprob[target].mean(-1)
        var = self.z_var
        return (0.5 * torch.log(2 * math.pi * var)
                + (target - self.z_mean).square() / (2 * var)).mean(-1)

    def done_prob(self) -> float:
        return min(max(self.done_rate, _MIN_PROB), 1 - _MIN_PROB)

    def to(self, device: torch.device) -> Baselines:
        return dataclasses.replace(self, **{
            k: getattr(self, k).to(device) for k in ("z_mean", "z_var", "code_logprob")
            if getattr(self, k) is not None})


@torch.no_grad()
def init_heads(model: nn.Module, baselines: Baselines) -> None:
    """Start the reward and done heads at the baselines: bias = mean reward and
    ``logit(done rate)`` (Karpathy's "init well" recipe). Dones are rare (at most one step
    per episode): from a bias of 0 (p = 0.5) the done head would spend its first hundreds of
    steps only learning the base rate, and its early loss would swamp the others."""
    if model.reward_head is not None:
        model.reward_head.bias.fill_(baselines.reward_mean)
    if model.done_head is not None:
        p = baselines.done_prob()
        model.done_head.bias.fill_(math.log(p / (1 - p)))


@torch.no_grad()
def evaluate(model: nn.Module, seqs: LatentSequences, batch_size: int, baselines: Baselines,
             generator: torch.Generator | None = None, reward_weight: float = 1.0,
             done_weight: float = 1.0, done_pos_weight: float = 1.0) -> dict[str, float]:
    """M and the baselines on every window of ``seqs`` (offset 0), same targets for both,
    means over the real (unpadded) steps; ``val/done_bce`` and ``val/loss`` weight the done
    steps by ``done_pos_weight`` as training does, the baseline's BCE is unweighted.

    :param model: the un-compiled M; put in eval mode here (and restored after).
    :param generator: draws the target and input ``z`` (fix its seed to compare passes).
    :return: ``val/nll`` (nats per latent dim or per cell), ``val/reward_mse``,
        ``val/done_bce``, ``val/done_accuracy``, ``val/loss`` (the training objective) and
        ``baseline/nll``, ``baseline/reward_mse``, ``baseline/done_bce``,
        ``baseline/done_accuracy``; empty when ``seqs`` has no window.
    """
    if len(seqs) == 0:
        return {}
    dev = seqs.device
    base = baselines.to(dev)
    p = base.done_prob()
    totals: dict[str, torch.Tensor] = {}

    def add(key: str, value: torch.Tensor) -> None:
        totals[key] = totals.get(key, 0.0) + value.double().sum()

    with eval_mode(model):
        for rows in seqs.in_order(batch_size):
            batch = seqs.batch(rows, generator)
            x = _inputs(batch)
            with autocast(x.device):
                out = model(x[:, :-1], batch["actions"])
            reward, done = batch["rewards"], batch["dones"]
            real = batch.get("mask", torch.ones_like(batch["next_valid"]))
            valid = batch["next_valid"] & real

            def real_sum(key: str, value: torch.Tensor, where: torch.Tensor = real) -> None:
                add(key, torch.where(where, value, 0.0))

            add("valid", valid)
            add("steps", real)
            real_sum("nll", _next_latent_nll(out, x[:, 1:]), valid)
            real_sum("base_nll", base.nll(x[:, 1:]), valid)
            real_sum("reward_se", (out.reward - reward).square())
            real_sum("base_reward_se", (base.reward_mean - reward).square())
            real_sum("done_bce", _done_bce(out.done_logit, done, done_pos_weight))
            real_sum("base_done_bce", -(done * math.log(p) + (1 - done) * math.log(1 - p)))
            real_sum("done_correct", ((out.done_logit > 0).float() == done).float())
            real_sum("base_done_correct",
                     (torch.full_like(done, float(p >= 0.5)) == done).float())
    valid, steps = float(totals["valid"]), max(float(totals["steps"]), 1.0)
    metrics = {
        "val/nll": float(totals["nll"]) / max(valid, 1),
        "val/reward_mse": float(totals["reward_se"]) / steps,
        "val/done_bce": float(totals["done_bce"]) / steps,
        "val/done_accuracy": float(totals["done_correct"]) / steps,
        "baseline/nll": float(totals["base_nll"]) / max(valid, 1),
        "baseline/reward_mse": float(totals["base_reward_se"]) / steps,
        "baseline/done_bce": float(totals["base_done_bce"]) / steps,
        "baseline/done_accuracy": float(totals["base_done_correct"]) / steps,
    }
    metrics["val/loss"] = (metrics["val/nll"] + reward_weight * metrics["val/reward_mse"]
                           + done_weight * metrics["val/done_bce"])
    return metrics


# ------------------------------------------------------------------------------ figure


def _decode(vae: nn.Module, latent: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(N, D) z or (N, cells) codes -> (N, 3, 64, 64) float in [0, 1]."""
    with autocast(latent.device):
        if hasattr(vae, "decode_codes"):
            return vae.decode_codes(latent.long().reshape(len(latent), *grid)).float()
        return vae.decode(latent).float()


@torch.no_grad()
def prediction_strip(model: nn.Module, vae: nn.Module, seqs: LatentSequences,
                     rollouts: RolloutDataset | None = None, temperature: float = 1.0,
                     generator: torch.Generator | None = None,
                     steps: int = STRIP_STEPS, context: int = STRIP_CONTEXT) -> torch.Tensor | None:
    """Rows of ``steps`` frames ``t = s+1 .. s+steps`` of the first episode of ``seqs``
    (``s`` a third into it): the real frames (when ``rollouts`` is given), V's
    reconstructions (of ``mu``, or of the codes), M's one-step predictions from the real
    inputs (mean of the most likely component / most likely code) and M's open-loop
    predictions: after ``context`` real inputs M is fed its own samples at
    ``temperature`` (columns predicted from real inputs are dimmed).

    :return: (rows, n, 3, 64, 64) float in [0, 1] (rows: 4, or 3 without ``rollouts``);
        None when ``seqs`` has no episode.
    """
    if len(seqs.episodes) == 0:
        return None
    j = 0
    T = int(seqs.lengths[j])
    if T < 2:  # one frame: nothing to predict
        return None
    n = min(steps, T - 1)
    s = min(T // 3, T - 1 - n)
    ep = seqs.episode_tensors(j)
    discrete = seqs.data.kind == "codes"
    latent = (ep["codes"].long() if discrete else ep["mu"])[s:s + n + 1]  # (n+1, D)
    actions = ep["actions"][s:s + n]  # (n, 3)
    grid = seqs.data.latent_shape
    sample = sample_next_codes if discrete else sample_next
    rows = []
    k = int(seqs.episodes[j])
    if rollouts is not None and k < len(rollouts) and rollouts.seeds[k] == seqs.data.seeds[k]:
        frames = torch.from_numpy(rollouts.read(k, "frames", s + 1, s + n + 1))
        rows.append(frames.to(latent.device).movedim(-1, -3).float() / 255.0)
    with eval_mode(model), eval_mode(vae):
        rows.append(_decode(vae, latent[1:], grid))
        with autocast(latent.device):
            out = model(latent[None, :n], actions[None])
        rows.append(_decode(vae, sample(out, 0.0)[0], grid))
        c = max(1, min(context, n))
        with autocast(latent.device):
            out = model(latent[None, :c], actions[None, :c])
        predicted = [sample(out, temperature, generator)[0]]  # (c, D): from real inputs
        z, state = predicted[0][-1:], out.state
        for t in range(c, n):
            with autocast(latent.device):
                o, state = model.step(z, actions[None, t], state)
            z = sample(o, temperature, generator)  # (1, D): fed back next step
            predicted.append(z)
        open_loop = _decode(vae, torch.cat(predicted), grid)
        open_loop[:c] *= 0.5
        rows.append(open_loop)
    return torch.stack(rows)


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
        model_config = _model_config(model)
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


def _checkpoint_path(run_dir: str | Path) -> Path:
    stage_dir = Path(run_dir) / STAGE
    for name in (CheckpointManager.BEST, CheckpointManager.LAST):
        if (stage_dir / name).exists():
            return stage_dir / name
    raise DataError(f"no trained M in {stage_dir}: run scripts/train_mdnrnn.py --run "
                    f"{run_dir} first")


def load_mdnrnn(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """M of a run, rebuilt from ``<run>/mdnrnn/best.pt`` (else ``last.pt``) alone.

    :return: :class:`~worldmodels.memory.MDNRNN` (or :class:`DiscreteMDNRNN` for VQ-VAE
        latents) in eval mode on ``device``.
    :raises DataError: no checkpoint, or an unreadable one.
    """
    device = resolve_device(device)
    checkpoint = load_checkpoint(_checkpoint_path(run_dir), kind=STAGE, map_location=device)
    net = build_mdnrnn(checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.to(device).eval()


def mdnrnn_info(run_dir: str | Path) -> dict[str, Any]:
    """What M of a run was trained on: ``vae_model`` (the V to decode its latents with,
    :func:`~worldmodels.train.vae.load_vae`), ``vae`` (that V's identity), ``temperature``,
    ``step`` and ``metrics`` of the loaded checkpoint (best.pt, else last.pt)."""
    checkpoint = load_checkpoint(_checkpoint_path(run_dir), kind=STAGE)
    extra = checkpoint.get("extra") or {}
    vae = extra.get("vae") or {}
    return {"vae_model": vae.get("model"), "vae": vae,
            "temperature": (extra.get("train") or {}).get("temperature"),
            "step": int(checkpoint["step"]), "metrics": checkpoint["metrics"]}
