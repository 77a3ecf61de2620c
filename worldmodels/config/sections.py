"""The configuration's sections: one dataclass per pipeline stage (and per script that drives
an agent), the paper's values as defaults; every field carries its help text, which the scripts
turn into ``--help``.

Defaults follow Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, and the authors'
code (WorldModelsExperiments): 10,000 random-policy rollouts of CarRacing, frames cropped and
resized to 64x64x3, M as ``rnn.py``, C evolved by CMA-ES 64 x 16.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from worldmodels.seeds import COLLECT_SEED


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (shown by ``--help``)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class CollectConfig:
    """Rollout collection (``scripts/collect_rollouts.py``)."""

    episodes: int = _f(10_000, "number of episodes to collect; episode k uses track seed seed+k")
    seed: int = _f(COLLECT_SEED, "base seed: episode k is collected on track seed+k with policy "
                   "seed seed+k; the default starts the training tracks, disjoint from the "
                   "evaluation tracks 0..999,999,999 (worldmodels/seeds.py)")
    max_steps: int = _f(1000, "steps per episode at most (CarRacing-v3 truncates at 1000)")
    policy: str = _f(
        "brownian",
        "exploration policy: 'brownian' (persistent random actions, as ctallec/world-models), "
        "'random_weights' (a random linear controller per episode, as the original), "
        "'mixed' (alternate the two by episode) or 'uniform' (i.i.d. action_space samples)",
        choices=("brownian", "random_weights", "mixed", "uniform"),
    )
    brownian_dt: float = _f(
        1 / 50, "time step of the Brownian policy: a_{t+1} = clip(a_t + sqrt(dt) * N(0, I))"
    )
    env: str = _f(
        "fast",
        "'fast' (worldmodels/FastCarRacing-v3, bit-identical and faster) or 'stock' (CarRacing-v3)",
        choices=("fast", "stock"),
    )
    domain_randomize: bool = _f(False, "CarRacing domain randomisation (colours change per reset)")
    action_repeat: int = _f(
        1, "frames each action is held for; only every k-th frame is stored (with the summed "
        "reward): V, M and C then all work at one decision per k frames (1: the paper)")
    agent: str = _f(
        "", "a run directory whose agent (V, M and C) drives episodes agent_from, ... instead "
        "of the exploration policy: the paper's iterative training (collect with the current "
        "C, retrain M); its world model's action repeat must be action_repeat ('': none)")
    agent_from: int = _f(
        0, "first episode the agent drives; a dataset of the exploration policy with at most "
        "this many episodes is extended by the agent's episodes")
    agent_noise: float = _f(
        0.05, "exploration: std of the Gaussian added to C's parameters, drawn per episode "
        "from its seed")
    workers: int = _f(0, "worker processes; 0 means one per available CPU core")
    backend: str = _f(
        "local", "'local' (process pool) or 'ray' (a Ray cluster, see --address)",
        choices=("local", "ray"),
    )
    address: str = _f("", "Ray cluster address for --backend ray ('' starts a local cluster)")
    worker_timeout: float = _f(600.0, "seconds a worker may go without a decision (its "
                               "heartbeat) before it is taken as hung, killed and its episode "
                               "re-run; a slow one that keeps stepping is never killed")
    compression: str = _f(
        "gzip",
        "HDF5 compression of frames: 'gzip', 'lzf' or 'none'. gzip-6 in 10-frame chunks was "
        "measured best (scripts/benchmark.py collect): 12.5x smaller than raw (~0.98 KB per "
        "frame, ~10 GB for the paper's 10,000 x 1,000 frames), reads faster than lzf, and "
        "costs ~5% of a worker's time to write",
        choices=("gzip", "lzf", "none"),
    )
    compression_level: int = _f(6, "gzip level (1-9), used only with compression='gzip'")
    chunk_frames: int = _f(
        10, "frames per HDF5 chunk: reading one frame decompresses its chunk (10 x 12 KiB raw)"
    )


@dataclass
class VAEConfig:
    """Training V (``scripts/train_vae.py``): VAE, beta-VAE or VQ-VAE on rollout frames."""

    model: str = _f("vae", "'vae' (the paper's V), 'betavae' (KL weighted by beta) or 'vqvae'",
                    choices=("vae", "betavae", "vqvae"))
    latent_dim: int = _f(32, "z size of the VAE (the paper's 32)")
    beta: float = _f(4.0, "KL weight of the beta-VAE (model=betavae; model=vae uses 1)")
    kl_tolerance: float = _f(
        0.5, "free nats per latent dimension: the per-sample KL is floored at kl_tolerance * "
        "latent_dim (the authors' code: 0.5 * 32 = 16 nats); 0 turns it off")
    capacity_max: float = _f(
        0.0, "capacity-annealed beta-VAE (Burgess et al. 2018, model=betavae): the KL term "
        "becomes gamma * |KL - C| with C growing linearly to capacity_max nats, replacing "
        "beta and the kl_tolerance floor; 0 turns it off")
    capacity_steps: int = _f(100_000, "optimiser steps over which C grows to capacity_max")
    gamma: float = _f(1000.0, "weight of |KL - C| in the capacity-annealed objective")
    recon: str = _f("mse", "reconstruction term: 'mse' (squared error summed over pixels, as "
                    "the paper) or 'bernoulli' (binary cross-entropy summed)",
                    choices=("mse", "bernoulli"))
    codebook_size: int = _f(128, "VQ-VAE: number of codes K")
    code_dim: int = _f(4, "VQ-VAE: code dimension D")
    downsample: int = _f(3, "VQ-VAE: stride-2 stages; 3 gives an 8x8 code grid (64 codes)")
    commitment: float = _f(0.25, "VQ-VAE: commitment weight beta (van den Oord et al. 2017)")
    ema: bool = _f(True, "VQ-VAE: EMA codebook updates instead of the codebook loss")
    dead_code_steps: int = _f(100, "VQ-VAE: restart codes unused for this many steps (0: never)")
    prior_epochs: int = _f(10, "VQ-VAE: epochs of the autoregressive prior over code grids")
    prior_lr: float = _f(3e-4, "VQ-VAE: Adam learning rate of the code prior (a small "
                         "transformer; 3e-4 as minGPT)")
    epochs: int = _f(10, "passes over the training frames (the authors' code: 10)")
    batch_size: int = _f(100, "frames per batch (the authors' code: 100)")
    lr: float = _f(1e-4, "Adam learning rate (the authors' code: 1e-4)")
    grad_clip: float = _f(0.0, "clip the gradient norm to this value (0: no clipping)")
    val_episodes: float = _f(0.05, "fraction of episodes held out for validation (by episode)")
    seed: int = _f(0, "seed of initialisation, shuffling and sampling")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    compile: bool = _f(False, "torch.compile the model (fixed batch shape makes this pay off)")
    precision: str = _f("auto", "the network's arithmetic in training: 'auto' (bf16 autocast on "
                        "CUDA with bf16 and on CPUs with AMX-BF16, where "
                        "it measured faster; fp32 elsewhere), 'bf16' or 'fp32'; losses stay fp32",
                        choices=("auto", "bf16", "fp32"))
    in_memory: str = _f("auto", "hold all frames in (GPU) memory: 'auto' (when they fit), "
                        "'yes' or 'no' (stream from HDF5)", choices=("auto", "yes", "no"))
    log_every: int = _f(50, "optimiser steps between TensorBoard scalars")
    max_steps: int = _f(0, "stop after this many optimiser steps in total (0: no limit)")
    init: str = _f("", "fine-tune: start from the weights of a trained V of the same model, a "
                   "run directory (its <model>/best.pt, else last.pt) or a checkpoint (an fp16 "
                   "export too), instead of a fresh initialisation, the paper's iterative "
                   "training on old + new rollouts; only when the run starts ('' : fresh)")


@dataclass
class GANConfig:
    """Training the DCGAN baseline (``scripts/train_gan.py``) on rollout frames."""

    latent_dim: int = _f(100, "noise dimension of the generator (Radford et al. 2016: 100)")
    generator_channels: int = _f(64, "base width of the generator")
    discriminator_channels: int = _f(64, "base width of the discriminator")
    generator_loss: str = _f(
        "non_saturating", "'non_saturating' (minimise -log D(G(z))) or 'minimax' "
        "(minimise log(1 - D(G(z)))), as in the lecture notes",
        choices=("non_saturating", "minimax"))
    epochs: int = _f(10, "passes over the training frames")
    batch_size: int = _f(128, "frames per batch (Radford et al. 2016: 128)")
    lr: float = _f(2e-4, "Adam learning rate of both networks (Radford et al. 2016: 2e-4)")
    beta1: float = _f(0.5, "Adam beta1 (Radford et al. 2016: 0.5)")
    ema: float = _f(0.999, "decay of the exponential moving average of G's weights that "
                    "samples, the epoch grids and snapshots and the comparison use (Yazici et "
                    "al. 2019: it steadies a GAN's samples and FD across steps), warmed up as "
                    "min(ema, (1 + t) / (10 + t)) at step t; 0: the raw G")
    val_episodes: float = _f(0.05, "fraction of episodes held out (same split as V)")
    seed: int = _f(0, "seed of initialisation, shuffling and sampling")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    compile: bool = _f(False, "torch.compile both networks")
    precision: str = _f("auto", "both networks' arithmetic in training: 'auto' (bf16 autocast on "
                        "CUDA with bf16 and on CPUs with AMX-BF16, where "
                        "it measured faster; fp32 elsewhere), 'bf16' or 'fp32'; losses stay fp32",
                        choices=("auto", "bf16", "fp32"))
    in_memory: str = _f("auto", "hold all frames in (GPU) memory: 'auto', 'yes' or 'no'",
                        choices=("auto", "yes", "no"))
    log_every: int = _f(50, "optimiser steps between TensorBoard scalars")
    max_steps: int = _f(0, "stop after this many generator steps in total (0: no limit)")


@dataclass
class EncodeConfig:
    """Encoding the rollouts with V for M (``scripts/encode.py``)."""

    model: str = _f("vae", "which trained V encodes the frames: 'vae', 'betavae' or 'vqvae' "
                    "(<run>/<model>/best.pt, else last.pt); the latents go to "
                    "<run>/latents_<model>.h5", choices=("vae", "betavae", "vqvae"))
    batch_size: int = _f(1000, "frames per forward pass of V's encoder (one 1,000-step "
                         "episode per pass)")
    workers: int = _f(4, "DataLoader processes that read and decompress episodes while V "
                      "encodes (decompression, not V, bounds the speed on a GPU); 0 reads in "
                      "this process")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")


@dataclass
class MDNRNNConfig:
    """Training M, the MDN-RNN (``scripts/train_mdnrnn.py``), on the latents of
    ``scripts/encode.py``. Defaults: the authors' CarRacing code (``rnn.py``)."""

    hidden_dim: int = _f(256, "LSTM units (the paper's 256)")
    num_gaussians: int = _f(5, "Gaussians per latent dimension (the paper's 5); the VQ-VAE's "
                            "discrete M predicts a categorical over the codebook instead")
    code_embed_dim: int = _f(8, "discrete M (VQ-VAE latents): embedding size of one code")
    seq_len: int = _f(999, "transitions per training sequence (the authors' code: 999 of "
                      "each 1,000-step episode); an episode with fewer gives one sequence, "
                      "padded and masked out of the loss")
    batch_size: int = _f(100, "sequences per batch (the authors' code: 100)")
    lr: float = _f(1e-3, "Adam learning rate (the authors' code: 1e-3)")
    grad_clip: float = _f(1.0, "gradient clipping threshold (the authors' code: 1.0; 0: no "
                          "clipping); how it clips: grad_clip_mode")
    grad_clip_mode: str = _f("norm", "'value' clips each gradient element to [-grad_clip, "
                             "grad_clip] (the authors' tf.clip_by_value); 'norm' rescales the "
                             "whole gradient to norm <= grad_clip (chosen by measurement)",
                             choices=("norm", "value"))
    steps: int = _f(4000, "optimiser steps in total (the authors' code: 4,000)")
    init: str = _f("", "fine-tune: start from the weights of a trained M of the same shape, a "
                   "run directory (its mdnrnn/best.pt, else last.pt) or a checkpoint (an fp16 "
                   "export too), instead of a fresh initialisation, the paper's iterative "
                   "training; steps counts this run's steps; only when the run starts ('' : "
                   "fresh)")
    reward_weight: float = _f(1.0, "weight of the reward MSE in the loss (0: not trained)")
    done_weight: float = _f(1.0, "weight of the done BCE in the loss (0: not trained)")
    done_pos_weight: float = _f(10.0, "BCE weight of the done steps (about one in a thousand): "
                                "> 1 lifts the done head's probability where an episode ends, "
                                "so that the dream ends episodes")
    temperature: float = _f(1.0, "tau of M's open-loop samples in the prediction figure "
                            "(mixture logits / tau, sigma * sqrt(tau))")
    val_episodes: float = _f(0.05, "fraction of episodes held out for validation (by "
                             "episode, the same split as V's for the same seed)")
    eval_every: int = _f(0, "optimiser steps between validation, prediction figure and "
                         "checkpoint (0: at the end of each pass over the training sequences)")
    seed: int = _f(0, "seed of initialisation, data order and z sampling")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    compile: bool = _f(False, "torch.compile M (fixed batch shape)")
    compile_loss: str = _f("auto", "torch.compile the mixture NLL (forward and backward fused): "
                           "'auto' (when a batch has >= 2^22 mixture elements, where the "
                           "compile time pays back), 'yes' or 'no'",
                           choices=("auto", "yes", "no"))
    precision: str = _f("auto", "the LSTM's arithmetic in training: 'auto' (bf16 autocast on "
                        "CUDA with bf16 and on CPUs with AMX-BF16, where "
                        "it measured faster; fp32 elsewhere), 'bf16' or 'fp32'; heads and losses "
                        "stay fp32", choices=("auto", "bf16", "fp32"))
    in_memory: str = _f("auto", "hold all latents in (GPU) memory: 'auto' (when they fit), "
                        "'yes' or 'no' (read each batch from HDF5)", choices=("auto", "yes", "no"))
    log_every: int = _f(20, "optimiser steps between TensorBoard scalars (the authors' code: 20)")


@dataclass
class CompareConfig:
    """The generative comparison (``scripts/compare_generative.py``)."""

    models: str = _f("vae,betavae,vqvae,gan", "comma-separated models to train (or load) and compare")
    num_samples: int = _f(2000, "samples and held-out frames per metric (a fixed count, so "
                          "FD/KID/precision/recall are comparable across models)")
    feature_epochs: int = _f(5, "epochs of the in-project feature CNN (trained to predict "
                             "actions and rewards from frames, a task none of the models has)")
    pr_neighbours: int = _f(3, "k of the k-NN manifolds of precision/recall (Kynkaanniemi 2019)")
    seed: int = _f(0, "seed of sampling and metric subsets")
    device: str = _f("auto", "'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")


@dataclass
class ControllerConfig:
    """Training C by CMA-ES (``scripts/train_controller.py``), in the real environment or
    inside M's dream.

    Defaults: the paper's CarRacing setup (population 64, 16 rollouts per candidate, fitness
    the mean return, sigma0 0.1) and the authors' training loop (estool). ``env="dream"``
    is the paper's DoomTakeCover experiment (section 4.4): the fitness comes from M's dream
    at temperature ``tau``, the held-out score from the real environment."""

    population: int = _f(64, "candidates per CMA-ES generation (the paper: 64)")
    trials: int = _f(16, "episodes per candidate, on the same track seeds for every candidate of "
                     "a generation (fresh seeds each generation); fitness = their mean return "
                     "(the paper: 16)")
    sigma0: float = _f(0.1, "initial CMA-ES step size around the all-zero controller "
                       "(the paper: 0.1)")
    generations: int = _f(2000, "generations in total; re-running with a larger value continues "
                          "the same run")
    env: str = _f("real", "where the population's fitness comes from: 'real' (CarRacing-v3) "
                  "or 'dream' (M's dream, worldmodels.envs.dream: the paper's DoomTakeCover "
                  "experiment, C trained entirely inside M's dream, then evaluated in the real "
                  "environment); the held-out score is always real", choices=("real", "dream"))
    temperature: float = _f(1.0, "env='dream': tau of M's sampled dream (mixture logits / tau, "
                            "sigma * sqrt(tau)); the paper found tau > 1 harder to exploit "
                            "(1.15 transferred best in DoomTakeCover)")
    dream_precision: str = _f("auto", "env='dream': M's two matrix products in 'fp32' or 'bf16' "
                              "(fp32 accumulation; ~2.3x faster on CPUs with AVX512-BF16); "
                              "'auto': bf16 on CUDA, fp32 on CPU",
                              choices=("auto", "fp32", "bf16"))
    init: str = _f("", "start CMA-ES's mean at a trained C instead of the zero controller: a "
                   "run directory (its controller/best.pt, else last.pt) or a controller "
                   "checkpoint of the same shape, e.g. a C evolved in M's dream, fine-tuned "
                   "here in the real environment ('' : zero)")
    seed: int = _f(0, "seed of CMA-ES sampling, of each generation's track seeds and of the "
                   "held-out tracks (all in the training tracks, from 1,000,000,000: never "
                   "an evaluation track; worldmodels/seeds.py)")
    hidden_layer: int = _f(0, "C with one tanh hidden layer of this many units (the paper's "
                           "ablation used 40); 0 is the paper's linear C")
    use_hidden_state: bool = _f(True, "C reads [z, h] (the paper's full model); false: z only "
                                "(the paper's 'Z only' ablation)")
    vae_model: str = _f("auto", "V whose mu (or, for 'vqvae', code embeddings z_q) C reads: "
                        "'auto' (the V that M was trained on, as M's checkpoint records; "
                        "'vae' if unknown), 'vae', 'betavae' or 'vqvae'",
                        choices=("auto", "vae", "betavae", "vqvae"))
    max_steps: int = _f(1000, "steps per training episode at most (CarRacing-v3 ends at 1000)")
    early_stop_steps: int = _f(
        0, "end a training episode early after this many frames by the rule early_stop, "
        "scoring it as if it never reached another tile (return so far - 0.1 per remaining "
        "frame); 0: off. Never used for the held-out score or evaluate.py")
    early_stop: str = _f(
        "tiles", "early-termination rule: 'tiles' (no new track tile for early_stop_steps "
        "frames) or 'negative' (early_stop_steps consecutive frames of negative reward after "
        "the zoom-in, the attention agent's and the GA world model's rule, N = 20)",
        choices=("tiles", "negative"))
    action_repeat: int = _f(
        0, "frames each decision of C is held for: 0 takes the world model's (what collection "
        "used, recorded in the rollouts and M; 1 when not recorded); a C trained with another "
        "k than M is refused")
    precision: str = _f(
        "auto", "V's encoder in the workers: 'fp32', 'bf16' (about 4x faster on CPUs with "
        "AMX-BF16, about the same with AVX512-BF16 alone, slower without) or 'auto' (bf16 "
        "on CUDA and with AMX-BF16, fp32 elsewhere)",
        choices=("auto", "fp32", "bf16"))
    renderer: str = _f(
        "exact", "what the population's episodes draw for V: 'exact' (CarRacing-v3's "
        "observation) or 'approx' (V's 64x64 frame drawn straight into a small surface, ~3x "
        "cheaper, mean squared pixel error ~5e-5, far below V's reconstruction error); the "
        "held-out score and evaluate.py always use 'exact'; 'coarse': the same drawn at half "
        "that scale (192x134), a coarser approximation (error ~2e-4; its speed is not yet in "
        "benchmark.py fitness)", choices=("exact", "approx", "coarse"))
    latent_shift: str = _f(
        "fit", "with an approximate renderer: 'fit' shifts V's z of its frames by the mean "
        "difference to the exact frames' z, fitted once at the start on 4 training tracks "
        "(both frames of each state; C otherwise drives ~7% faster on approximate frames "
        "than on the exact ones it is scored on; a VAE's z only, a VQ-VAE's codes are not "
        "shifted); 'none': no shift",
        choices=("fit", "none"))
    z: str = _f(
        "mu", "what C and M read of V: 'mu' (the posterior mean) or 'sample' (mu + sigma * "
        "eps, as the authors' encode_obs and as M was trained)", choices=("mu", "sample"))
    eval_every: int = _f(25, "generations between scores of the distribution's mean on the "
                         "held-out tracks (also done after the last generation); best.pt keeps "
                         "the best; 0: never")
    eval_episodes: int = _f(1024, "held-out tracks (fixed for the run) the mean is scored on "
                            "(the authors' loop: 1024 rollouts every 25 generations)")
    workers: int = _f(0, "evaluation worker processes (or Ray actors); 0: one per CPU core "
                      "(all the cluster's CPUs with --backend ray)")
    envs_per_worker: int = _f(0, "environments one worker steps in lockstep (V and M run batched "
                              "over them); 0: equal tasks of at most 32, a multiple of the workers")
    backend: str = _f("local", "'local' (process pool) or 'ray' (a Ray cluster, see --address)",
                      choices=("local", "ray"))
    address: str = _f("", "Ray cluster address for --backend ray ('' starts a local cluster)")
    worker_timeout: float = _f(600.0, "seconds a worker may spend on one task (up to "
                               "envs_per_worker episodes) before it is taken as hung, killed "
                               "and its episodes re-run")
    batch_invariant: bool = _f(True, "compute every matrix product of V's head and C one row at "
                               "a time, so an episode's return does not depend on which "
                               "episodes share its batch (exact on CPU); false: fully batched")
    device: str = _f("cpu", "device of V and M in the workers: 'cpu', 'cuda', 'cuda:N' or "
                     "'auto' (the environments, not the networks, dominate the time on CPU)")


@dataclass
class EvaluateConfig:
    """Scoring a run's C on CarRacing-v3 tracks (``scripts/evaluate.py``): the paper's protocol
    is 100 tracks, mean +- std, no early termination."""

    episodes: int = _f(100, "number of tracks (the paper's protocol: 100)")
    seed: int = _f(0, "first track seed: tracks S .. S+N-1 (evaluation tracks are "
                   "0 .. 999,999,999, training tracks lie above)")
    workers: int = _f(0, "worker processes (0: one per CPU core; 1: in this process)")
    backend: str = _f("local", "'local' process pool or 'ray' cluster", choices=("local", "ray"))
    address: str = _f("", "Ray cluster address ('' starts one)")
    device: str = _f("cpu", "device of V and M: 'cpu', 'cuda', 'cuda:N' or 'auto'")
    max_steps: int = _f(1000, "steps per episode at most (1000, CarRacing-v3's episode; fewer "
                        "gives returns that are not CarRacing-v3 scores)")
    checkpoint: str = _f("best", "controller/best.pt (held-out best; last.pt if none) or "
                         "last.pt", choices=("best", "last"))


@dataclass
class WatchConfig:
    """Watching a run's agent drive (``scripts/watch.py``), in the real env or M's dream."""

    env: str = _f("real", "drive in the real CarRacing-v3 or in M's dream",
                  choices=("real", "dream"))
    episodes: int = _f(1, "episodes to show")
    seed: int = _f(0, "first seed: S, S+1, ... (track seeds in the real env, episode seeds "
                   "in the dream)")
    tau: float = _f(-1.0, "dream temperature; negative: the one M's training recorded, else 1")
    max_steps: int = _f(1000, "steps per episode at most (CarRacing-v3's 1000)")
    fps: float = _f(50.0, "frames per second of the window or video")
    device: str = _f("cpu", "device of V and M: 'cpu', 'cuda', 'cuda:N' or 'auto'")
    controller: str = _f("best", "controller/best.pt (else last.pt), last.pt, or an untrained "
                         "C", choices=("best", "last", "random"))
    side_by_side: bool = _f(True, "env real: real frame | V's reconstruction | M's prediction")


@dataclass
class DreamCheckConfig:
    """The same C in M's dream and in the real env, side by side
    (``scripts/dream_vs_real.py``)."""

    episodes: int = _f(32, "episodes on each side")
    seed: int = _f(-1, "first real track and the dream episodes' seed (negative: a training "
                   "track, never an evaluation one)")
    temperature: float = _f(-1.0, "the dream's tau (negative: the one M's training recorded, "
                            "else 1)")
    workers: int = _f(0, "worker processes for the real episodes (0: one per core)")
    checkpoint: str = _f("best", "controller/best.pt (else last.pt) or last.pt",
                         choices=("best", "last"))


SECTIONS: dict[str, type] = {
    "collect": CollectConfig,
    "vae": VAEConfig,
    "gan": GANConfig,
    "compare": CompareConfig,
    "encode": EncodeConfig,
    "mdnrnn": MDNRNNConfig,
    "controller": ControllerConfig,
    "evaluate": EvaluateConfig,
    "watch": WatchConfig,
    "dream_check": DreamCheckConfig,
}


@dataclass
class Config:
    """The whole configuration: one attribute per stage section."""

    collect: CollectConfig = field(default_factory=CollectConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    mdnrnn: MDNRNNConfig = field(default_factory=MDNRNNConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    dream_check: DreamCheckConfig = field(default_factory=DreamCheckConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


