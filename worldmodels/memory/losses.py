"""M's training objective: the teacher-forced losses of the MDN-RNN, and its gradient clip.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.2 and appendix A.2:
M is trained to predict ``P(z_{t+1} | a_t, z_t, h_t)`` as a mixture of Gaussians per latent
dimension (Bishop 1994; Graves 2013, arXiv:1308.0850), plus the reward and the done flag for
the dream (section 4). The authors' ``rnn.py`` minimises the mixture NLL and clips gradients;
this module is the loss training uses (checked against an independent reference in
``tests/test_mdnrnn.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worldmodels.errors import ConfigError
from worldmodels.memory.mdnrnn import MDNRNN, gmm_nll, mixture_nll
from worldmodels.utils.torch import training_autocast

__all__ = ["sequence_losses", "clip_gradients", "next_latent_nll", "masked_mean", "done_bce",
           "model_inputs"]


def model_inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["codes"] if "codes" in batch else batch["z"]


def next_latent_nll(out: Any, target: torch.Tensor) -> torch.Tensor:
    """(B, L) NLL of ``target`` (B, L, D) or codes (B, L, cells): nats per latent dimension
    (Gaussian mixtures, :func:`~worldmodels.memory.gmm_nll`) or per grid cell (categorical)."""
    if hasattr(out, "logits"):
        B, L, cells, K = out.logits.shape
        ce = F.cross_entropy(out.logits.reshape(-1, K).float(), target.reshape(-1),
                             reduction="none")
        return ce.view(B, L, cells).mean(-1)
    return gmm_nll(target, out.logpi, out.mu, out.logsigma).mean(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # where, not a product: a masked position's value must not reach the gradient
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


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

    The recurrent core runs under :func:`~worldmodels.stages.train_vae.training_autocast`
    (``precision``: bf16 on CUDA and on CPUs with native bf16); the heads and the losses
    in fp32. For :class:`MDNRNN` the mixture term is ``nll_fn`` (default
    :func:`~worldmodels.memory.mixture_nll`, or the compiled one of :func:`mixture_loss_fn`)
    on the head's raw output; a compiled or discrete M goes through its ``forward``.

    :param model: M (:class:`MDNRNN` or :class:`CodeRNN`, possibly compiled).
    :param batch: ``z`` (B, L+1, D) or ``codes`` (B, L+1, cells), ``actions`` (B, L, 3),
        ``rewards``, ``dones`` (B, L) float, ``next_valid`` (B, L) bool and optionally
        ``mask`` (B, L) bool (default: every step real).
    """
    x = model_inputs(batch)
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
            per_step = next_latent_nll(out, x[:, 1:])
        nll = masked_mean(per_step, batch["next_valid"] & mask)
        zero = nll.new_zeros(())
        reward = zero if reward_hat is None else masked_mean(
            (reward_hat - batch["rewards"]).square(), mask)
        done = zero if done_logit is None else masked_mean(
            done_bce(done_logit, batch["dones"], done_pos_weight), mask)
        loss = nll + reward_weight * reward + done_weight * done
    return {"loss": loss, "nll": nll, "reward": reward, "done": done}


def done_bce(logit: torch.Tensor, done: torch.Tensor, pos_weight: float) -> torch.Tensor:
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
