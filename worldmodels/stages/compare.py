"""VAE vs β-VAE vs VQ-VAE vs GAN on the same CarRacing frames, measured properly.

The lecture's "VAE vs GAN" question, answered with numbers: every model is trained (or
loaded, when its run is finished) on the training episodes of one ``rollouts.h5`` and
judged on the *held-out* episodes (the split of :func:`split_episodes`, the one V uses):

* **Reconstruction** (encoders only): MSE per pixel and PSNR of held-out frames through
  the encoder and decoder (the VAEs decode their posterior mean).
* **Likelihood** (VAEs): ELBO in nats per frame and bits per dimension, with the
  Gaussian decoder documented in :mod:`worldmodels.stages.train_vae`.
* **Codes** (VQ-VAE): perplexity and the fraction of the codebook used over the whole
  held-out set, not per batch.
* **Sample quality**, all at one fixed sample count: Fréchet distance (Heusel et al.
  2017), KID (Bińkowski et al. 2018) and precision/recall (Kynkäänniemi et al. 2019) of
  model samples against held-out frames, in two feature spaces that belong to none of
  the compared models: a CNN trained here to predict actions, reward and grass from
  frames, and the same CNN with random weights. No pretrained Inception network can be
  downloaded here, and features learnt by one of the compared models would favour it.
  A "real vs real" row (training frames against held-out frames) gives the floor.
* **Cost**: training wall time and images/s of each model.

Writes ``<run>/compare/report.md``, ``report.json`` and figures (samples,
reconstructions, interpolations, a β-VAE latent traversal, and the evolution of samples
across epochs for the VAE and the GAN side by side).

    python scripts/compare_generative.py --run runs/demo --preset smoke
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodels.config import Config, save_stage_config
from worldmodels.data.datasets import RolloutDataset, split_episodes
from worldmodels.errors import DataError
from worldmodels.metrics.generative import psnr
from worldmodels.utils.images import make_grid, save_png
from worldmodels.utils.io import atomic_path, atomic_write_text, ensure_dir
from worldmodels.utils.torch import resolve_device

VAE_MODELS = ("vae", "betavae", "vqvae")
SHOWN = 8  # frames per row in the figures
MODEL_TITLES = {"vae": "VAE", "betavae": "β-VAE", "vqvae": "VQ-VAE", "gan": "DCGAN"}


def _models(cfg: Config) -> list[str]:
    return [m.strip() for m in cfg.compare.models.split(",") if m.strip()]


def _pick_frames(rollouts: RolloutDataset, episodes: np.ndarray, n: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``n`` frames (or all, if fewer) drawn without replacement from ``episodes``:
    (n, 64, 64, 3) uint8, in a fixed order for a fixed ``rng``."""
    lengths = rollouts.lengths[episodes]
    total = int(lengths.sum())
    if total == 0:
        raise DataError("no frames in the held-out episodes: collect more episodes")
    picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out = []
    for j, k in enumerate(episodes):
        lo, hi = offsets[j], offsets[j + 1]
        sel = picks[(picks >= lo) & (picks < hi)] - lo
        if len(sel):
            out.append(rollouts.read(int(k), "frames")[sel])
    frames = np.concatenate(out)
    return frames[rng.permutation(len(frames))]


def _nchw(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).to(device)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8."""
    x = x.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def _reconstruct(name: str, model: torch.nn.Module, frames: torch.Tensor,
                 batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(frames), batch):
        x = frames[i:i + batch].float() / 255.0
        if name == "vqvae":
            x_hat, _ = model(x)
        else:
            mu, _ = model.encode(x)
            x_hat = model.decode(mu)
        out.append(x_hat.float().clamp(0, 1))
    return torch.cat(out)


@torch.no_grad()
def _sample(name: str, run_dir: Path, model: torch.nn.Module | None, n: int, seed: int,
            device: torch.device) -> np.ndarray:
    """``n`` samples (n, 64, 64, 3) uint8 from a model."""
    if name == "gan":
        from worldmodels.stages.train_gan import sample_gan

        return sample_gan(run_dir, n, seed=seed, device=device)
    gen = torch.Generator().manual_seed(seed)
    prior_gen = None
    out = []
    for i in range(0, n, 256):
        m = min(256, n - i)
        if name == "vqvae":
            from worldmodels.run import load_code_prior

            prior = load_code_prior(run_dir, device)
            if prior_gen is None:  # the prior samples on its device: a generator there
                prior_gen = torch.Generator(device=device).manual_seed(seed)
            codes = prior.sample(m, temperature=1.0, generator=prior_gen)
            out.append(_to_uint8(model.decode_codes(codes.to(device))))
        else:
            out.append(_to_uint8(model.sample(m, generator=gen)))
    return np.concatenate(out)


@torch.no_grad()
def _interpolations(name: str, run_dir: Path, model: torch.nn.Module | None,
                    pair: torch.Tensor, seed: int, device: torch.device) -> np.ndarray:
    """SHOWN frames along a straight line in latent space: between the codes of two
    held-out frames (encoders; the VQ-VAE interpolates before quantising) or two noise
    vectors (GAN)."""
    t = torch.linspace(0, 1, SHOWN, device=device)[:, None]
    if name == "gan":
        from worldmodels.generative.gan import from_gan_range
        from worldmodels.stages.train_gan import load_gan

        gan = load_gan(run_dir, device)
        z = gan.sample_latent(2, generator=torch.Generator().manual_seed(seed))  # (2, L)
        return _to_uint8(from_gan_range(gan((1 - t) * z[:1] + t * z[1:])))
    x = pair.float() / 255.0
    if name == "vqvae":
        z_e = model.encode(x)
        zs = (1 - t.view(-1, 1, 1, 1)) * z_e[:1] + t.view(-1, 1, 1, 1) * z_e[1:]
        return _to_uint8(model.decode(model.quantizer(zs).quantized))
    mu, _ = model.encode(x)
    return _to_uint8(model.decode((1 - t) * mu[:1] + t * mu[1:]))


@torch.no_grad()
def _traversal(model: torch.nn.Module, frames: torch.Tensor, dims: int = 8) -> np.ndarray:
    """β-VAE latent traversal: from one held-out frame's posterior mean, each of the
    ``dims`` most informative latent dimensions (largest mean KL over the held-out set)
    swept over [-3, 3]; one row per dimension."""
    x = frames.float() / 255.0
    mu, logvar = model.encode(x)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean(0)
    order = torch.argsort(kl, descending=True)[:dims]
    base = mu[:1]
    values = torch.linspace(-3, 3, SHOWN, device=x.device)
    rows = []
    for d in order.tolist():
        z = base.repeat(SHOWN, 1)
        z[:, d] = values
        rows.append(model.decode(z))
    return _to_uint8(torch.cat(rows))


def _sample_grids(run_dir: Path, name: str) -> list[tuple[int, int | None, np.ndarray]]:
    """A model's logged fixed-noise sample grids (``<run>/<name>/images/*samples_<step>.png``,
    the grid each training loop saves at every epoch's end) in step order, as
    ``(step, images seen, first row of the grid)``; images seen is step x the run's
    ``batch_size`` (``hparams.json``), None without it."""
    import imageio.v3 as iio

    steps = sorted((int(f.stem.rsplit("_", 1)[1]), f)
                   for f in (run_dir / name / "images").glob("*samples_*.png"))
    hparams = run_dir / name / "hparams.json"
    batch = json.loads(hparams.read_text()).get("batch_size") if hparams.exists() else None
    # the first row of each grid: 8 samples of 64 px with make_grid's 2 px padding
    return [(step, step * batch if batch else None, iio.imread(f)[:68, :, :3])
            for step, f in steps]


def _evolution(run_dir: Path, names: list[str], out: Path) -> Path | None:
    """Samples across training, the models side by side: a column per model, a row per
    logged grid (the same fixed noise each time), each row labelled with the step and the
    images the model had seen, so that unequal budgets stay visible (a model that logged
    fewer grids leaves its lower cells empty). None unless two models logged grids."""
    columns = {name: grids for name in names if (grids := _sample_grids(run_dir, name))}
    if len(columns) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(g) for g in columns.values())
    width = max(img.shape[1] for g in columns.values() for _, _, img in g)
    fig, axes = plt.subplots(rows, len(columns), squeeze=False,
                             figsize=(len(columns) * width / 90, rows * 0.85 + 0.4))
    for j, (name, grids) in enumerate(columns.items()):
        for i in range(rows):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if i == 0:
                ax.set_title(MODEL_TITLES.get(name, name), fontsize=9)
            if i >= len(grids):
                continue
            step, seen, img = grids[i]
            ax.imshow(img, interpolation="nearest")
            label = f"step {step:,}" + (f"\n{seen / 1000:,.0f}k images" if seen else "")
            ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    ensure_dir(out.parent)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return out


def _gan_by_epoch(run_dir: Path, n: int, seed: int, device: torch.device,
                  nets: dict[str, Any], quality_kw: dict[str, Any]) -> list[dict[str, Any]]:
    """The GAN's sample quality at every epoch's snapshot (``<run>/gan/epochs/``), with the
    epoch's mean D(x) and D(G(z)) from its training log: how it was judged converged."""
    from worldmodels.metrics.features import sample_quality
    from worldmodels.stages.train_gan import (
        gan_snapshots,
        load_generator_snapshot,
        sample_generator,
    )

    log = _gan_log(run_dir)
    rows = []
    for epoch, path in gan_snapshots(run_dir):
        generator, step = load_generator_snapshot(path, device)
        quality = sample_quality(None, sample_generator(generator, n, seed), nets, **quality_kw)
        previous = rows[-1]["step"] if rows else 0
        window = [r for r in log if previous < r["step"] <= step]
        rows.append({
            "epoch": epoch, "step": step, "quality": quality,
            "d_real": float(np.mean([r["charts/D_real"] for r in window])) if window else None,
            "d_fake": float(np.mean([r["charts/D_fake"] for r in window])) if window else None,
        })
    return rows


def _gan_log(run_dir: Path) -> list[dict[str, Any]]:
    """The GAN's logged steps with D(x) and D(G(z)) (:func:`read_metrics`), [] without a log."""
    from worldmodels.utils.logs import read_metrics

    path = run_dir / "gan" / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in read_metrics(path)
            if r.get("charts/D_real") is not None and r.get("charts/D_fake") is not None]


def _gan_training_figure(run_dir: Path, by_epoch: list[dict[str, Any]],
                         report: dict[str, Any], space: str, out: Path) -> Path:
    """D(x) and D(G(z)) over training (the log, per step) above the GAN's FD by epoch,
    with the real floor and the other models' FD as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = _gan_log(run_dir)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    if log:
        epochs = [r["charts/epoch"] for r in log]
        top.plot(epochs, [r["charts/D_real"] for r in log], label="D(x), real frames")
        top.plot(epochs, [r["charts/D_fake"] for r in log], label="D(G(z)), before D's step")
    top.axhline(0.5, color="grey", lw=0.8, ls=":")
    top.set_ylabel("D's output (batch mean)")
    top.set_ylim(0, 1)
    top.legend(loc="best")
    top.set_title("DCGAN training")
    xs = [r["epoch"] for r in by_epoch]
    bottom.plot(xs, [r["quality"][space]["fd"] for r in by_epoch], "o-", color="C3",
                label="DCGAN, each epoch's G")
    bottom.axhline(report["real_floor"][space]["fd"], color="k", ls="--", lw=1,
                   label="real frames (floor)")
    for i, (name, r) in enumerate(report["models"].items()):
        if name != "gan":
            bottom.axhline(r["quality"][space]["fd"], color=f"C{i}", ls=":", lw=1.2,
                           label=f"{name} (final)")
    bottom.set_yscale("log")
    bottom.set_xlabel("epoch")
    bottom.set_ylabel(f"FD ({space} features) ↓")
    bottom.legend(loc="best", fontsize=8)
    fig.tight_layout()
    ensure_dir(out.parent)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.{digits}g}"
    return str(v)


def _report_md(report: dict[str, Any]) -> str:
    spaces = report["feature_spaces"]
    lines = [
        "# Generative models compared on CarRacing frames",
        "",
        f"Dataset: {report['dataset']['episodes']} episodes ({report['dataset']['train_episodes']} "
        f"train / {report['dataset']['val_episodes']} held out), "
        f"{report['num_samples']} held-out frames and {report['num_samples']} samples per "
        f"metric. Device: {report['device']}.",
        "",
        "## Reconstruction, likelihood, codes, cost",
        "",
        "| model | params | train s | images/s | recon MSE | PSNR dB | ELBO nats | bits/dim "
        "| perplexity | codes used |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        lines.append("| " + " | ".join([
            name, _fmt(r.get("params")), _fmt(r.get("train_seconds")),
            _fmt(r.get("images_per_s")), _fmt(r.get("recon_mse"), 4), _fmt(r.get("psnr")),
            _fmt(r.get("elbo")), _fmt(r.get("bits_per_dim")), _fmt(r.get("perplexity")),
            _fmt(r.get("codes_used")),
        ]) + " |")
    for space in spaces:
        lines += ["", f"## Sample quality in the {space} feature space", "",
                  "| samples from | FD ↓ | KID ↓ | precision ↑ | recall ↑ |", "|---|---|---|---|---|"]
        rows = {"real (training frames)": report["real_floor"][space]}
        rows.update({name: r["quality"][space] for name, r in report["models"].items()})
        for name, q in rows.items():
            lines.append(f"| {name} | {_fmt(q['fd'])} | {_fmt(q['kid'], 3)} ± {_fmt(q['kid_std'], 2)} "
                         f"| {_fmt(q['precision'])} | {_fmt(q['recall'])} |")
    gan_epochs = report["models"].get("gan", {}).get("by_epoch")
    if gan_epochs:
        lines += ["", "## The DCGAN epoch by epoch", "",
                  "| epoch | step | D(x) | D(G(z)) | " + " | ".join(
                      f"FD {space} | recall {space}" for space in spaces) + " |",
                  "|---|---|---|---|" + "---|---|" * len(spaces)]
        for row in gan_epochs:
            lines.append(f"| {row['epoch']} | {row['step']} | {_fmt(row['d_real'])} | "
                         f"{_fmt(row['d_fake'])} | " + " | ".join(
                             f"{_fmt(row['quality'][sp]['fd'])} | "
                             f"{_fmt(row['quality'][sp]['recall'])}" for sp in spaces) + " |")
    lines += ["", "## Figures", ""]
    for title, path in report["figures"].items():
        lines.append(f"**{title}**\n\n![{title}]({Path(path).name})\n")
    return "\n".join(lines) + "\n"


def compare_generative(cfg: Config, run_dir: str | Path, *, progress: bool | None = None
                       ) -> dict[str, Any]:
    """Train (or load) every model of ``cfg.compare.models`` and write the report.

    :return: the report dict (also written as ``<run>/compare/report.json``).
    """
    from worldmodels.generative.objective import Objective
    from worldmodels.metrics.features import (
        RandomFeatureNet,
        extract_features,
        load_feature_net,
        sample_quality,
        save_feature_net,
        train_feature_net,
    )
    from worldmodels.run import load_vae
    from worldmodels.stages.train_gan import train_gan
    from worldmodels.stages.train_vae import evaluate, train_vae

    c = cfg.compare
    run_dir = Path(run_dir)
    RolloutDataset(run_dir).close()  # a missing or corrupt dataset fails before any output
    out = ensure_dir(run_dir / "compare")
    device = resolve_device(c.device)
    names = _models(cfg)
    t_start = time.perf_counter()

    # 1. train (or load: a finished run returns at once) every model
    summaries: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "gan":
            summaries[name] = train_gan(cfg, run_dir, progress=progress)
        else:
            sub = copy.deepcopy(cfg)
            sub.vae.model = name
            summaries[name] = train_vae(sub, run_dir, progress=progress)
    save_stage_config(cfg, run_dir, "compare")

    # 2. held-out frames (the V split) and the real floor's training frames
    rollouts = RolloutDataset(run_dir)
    train_eps, val_eps = split_episodes(len(rollouts), cfg.vae.val_episodes, cfg.vae.seed)
    if len(val_eps) == 0:
        raise DataError("compare needs held-out episodes: collect at least 2 episodes "
                        "and keep vae.val_episodes > 0")
    rng = np.random.default_rng(c.seed)
    held_out = _pick_frames(rollouts, val_eps, c.num_samples, rng)
    n = len(held_out)
    train_frames = _pick_frames(rollouts, train_eps, n, rng)
    n = min(n, len(train_frames))
    held_out, train_frames = held_out[:n], train_frames[:n]
    held = _nchw(held_out, device)

    # 3. feature spaces that belong to none of the models
    feat_path = out / "features.pt"
    if feat_path.exists():
        trained = load_feature_net(feat_path, device)
    else:
        trained = train_feature_net(rollouts.path, episodes=train_eps, epochs=c.feature_epochs,
                                    seed=c.seed, device=device)
        save_feature_net(trained, feat_path)
    nets = {"trained-CNN": trained, "random-CNN": RandomFeatureNet(seed=c.seed).to(device)}
    real_features = {k: extract_features(net, held_out, device=device) for k, net in nets.items()}
    quality_kw = {"k": c.pr_neighbours, "seed": c.seed, "num_samples": n,
                  "kid_subset_size": min(1000, max(2, n // 2)), "real_features": real_features}
    report: dict[str, Any] = {
        "dataset": {"episodes": len(rollouts), "train_episodes": len(train_eps),
                    "val_episodes": len(val_eps)},
        "num_samples": n, "device": str(device), "feature_spaces": list(nets),
        "real_floor": sample_quality(held_out, train_frames, nets, **quality_kw),
        "models": {}, "figures": {},
    }

    # 4. each model: reconstructions, likelihood, codes, samples, sample quality
    recon_rows = [held_out[:SHOWN]]
    sample_rows = []
    interp_rows = []
    for name in names:
        s = summaries[name]
        r: dict[str, Any] = {
            "params": s.get("params") or (s.get("generator_params", 0)
                                          + s.get("discriminator_params", 0)) or None,
            "train_seconds": s.get("wall_seconds", s.get("seconds")),
            "images_per_s": s.get("images_per_s"),
        }
        model = None
        if name in VAE_MODELS:
            model = load_vae(run_dir, name, device)
            sub = copy.deepcopy(cfg.vae)
            sub.model = name
            gen = torch.Generator().manual_seed(c.seed)
            batches = (held[i:i + 256] for i in range(0, n, 256))
            metrics = evaluate(model, batches, Objective.from_config(sub), step=10**9,
                               generator=gen)
            x_hat = _reconstruct(name, model, held)
            x = held.float() / 255.0
            r.update({
                "recon_mse": float((x_hat - x).pow(2).mean()),
                "psnr": float(psnr(x_hat.cpu(), x.cpu()).mean()),
                "elbo": metrics.get("val/elbo"), "bits_per_dim": metrics.get("val/bits_per_dim"),
                "perplexity": metrics.get("val/perplexity"),
                "codes_used": metrics.get("val/codes_used"),
            })
            recon_rows.append(_to_uint8(x_hat[:SHOWN]))
        samples = _sample(name, run_dir, model, n, c.seed, device)
        r["quality"] = sample_quality(held_out, samples, nets, **quality_kw)
        if name == "gan":
            by_epoch = _gan_by_epoch(run_dir, n, c.seed, device, nets, quality_kw)
            if by_epoch:
                r["by_epoch"] = by_epoch
        sample_rows.append(samples[:SHOWN])
        interp_rows.append(_interpolations(name, run_dir, model, held[:2], c.seed, device))
        if name == "betavae":
            report["figures"]["β-VAE latent traversal (rows: the 8 most used dimensions, "
                              "values -3 … 3)"] = str(save_png(
                make_grid(_traversal(model, held), ncols=SHOWN), out / "traversal_betavae.png",
                scale=2))
        report["models"][name] = r

    figures = report["figures"]
    figures[f"Samples (rows: {', '.join(names)})"] = str(save_png(
        make_grid(np.concatenate(sample_rows), ncols=SHOWN), out / "samples.png", scale=2))
    encoders = [m for m in names if m in VAE_MODELS]
    if encoders:
        figures[f"Reconstructions of held-out frames (rows: real, {', '.join(encoders)})"] = str(
            save_png(make_grid(np.concatenate(recon_rows), ncols=SHOWN),
                     out / "reconstructions.png", scale=2))
    figures[f"Latent interpolations (rows: {', '.join(names)})"] = str(save_png(
        make_grid(np.concatenate(interp_rows), ncols=SHOWN), out / "interpolations.png", scale=2))
    gan_epochs = report["models"].get("gan", {}).get("by_epoch")
    if gan_epochs:
        figures["DCGAN: D(x) and D(G(z)) in training, FD of each epoch's G"] = str(
            _gan_training_figure(run_dir, gan_epochs, report, "trained-CNN",
                                 out / "gan_training.png"))
    evo = _evolution(run_dir, [m for m in ("vae", "gan") if m in names], out / "evolution.png")
    if evo is not None:
        figures["Samples across training, VAE (left) and DCGAN (right), fixed noise; "
                "rows labelled with the step and the images seen"] = str(evo)
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)

    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float) + "\n")
    atomic_write_text(out / "report.md", _report_md(report))
    return report
