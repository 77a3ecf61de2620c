"""How well M predicts: validation losses beside baselines that ignore the past, the heads'
initial biases, and the prediction strip logged while ``train_mdnrnn.py`` trains.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122), section 2.2: M predicts
``P(z_{t+1} | a_t, z_t, h_t)``, the reward and the done flag. An M that has learnt nothing
about dynamics still reaches the NLL of one Gaussian per latent dimension, the mean reward
and the done rate; :class:`Baselines` measures those on the training latents, so that the
validation figures (:func:`evaluate`) say how much M's memory adds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from worldmodels.data.datasets import RolloutDataset
from worldmodels.data.sequences import LatentSequences
from worldmodels.memory import sample_next, sample_next_codes
from worldmodels.memory.losses import done_bce, model_inputs, next_latent_nll
from worldmodels.utils.torch import autocast, eval_mode

__all__ = ["Baselines", "init_heads", "evaluate", "prediction_strip"]

STRIP_STEPS = 16  # columns of the prediction strip


STRIP_CONTEXT = 4  # real inputs before M is fed its own samples


_MIN_PROB = 1e-6  # the done baseline's rate is clamped here: log(0) would be -inf


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
            x = model_inputs(batch)
            with autocast(x.device):
                out = model(x[:, :-1], batch["actions"])
            reward, done = batch["rewards"], batch["dones"]
            real = batch.get("mask", torch.ones_like(batch["next_valid"]))
            valid = batch["next_valid"] & real

            def real_sum(key: str, value: torch.Tensor, where: torch.Tensor = real) -> None:
                add(key, torch.where(where, value, 0.0))

            add("valid", valid)
            add("steps", real)
            real_sum("nll", next_latent_nll(out, x[:, 1:]), valid)
            real_sum("base_nll", base.nll(x[:, 1:]), valid)
            real_sum("reward_se", (out.reward - reward).square())
            real_sum("base_reward_se", (base.reward_mean - reward).square())
            real_sum("done_bce", done_bce(out.done_logit, done, done_pos_weight))
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
