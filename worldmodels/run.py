"""The run directory: where each stage's checkpoint lives, which one is loaded, and V, M, C,
the agent and the dream rebuilt from it.

Ha & Schmidhuber, *World Models* (2018, arXiv:1803.10122): the agent is V (a VAE), M (an
MDN-RNN) and C (a linear controller), trained in that order; each stage leaves its model in
the run directory and the next stage reads it from there. V may also be a VQ-VAE (van den
Oord et al. 2017, arXiv:1711.00937) with M a :class:`~worldmodels.memory.CodeRNN` over its
code grids: the same loaders give that agent and its dream
(:class:`~worldmodels.envs.code_dream.BatchedCodeDream`)::

    <run>/config.json                 the resolved settings of every stage run so far
    <run>/<vae|betavae|vqvae>/        V: best.pt (lowest validation loss), last.pt (resume)
    <run>/vqvae/prior.pt              the VQ-VAE's code prior
    <run>/mdnrnn/                     M
    <run>/controller/                 C (best.pt: best held-out score; last.pt: CMA-ES state)

"The checkpoint of a stage" is ``best.pt``, else ``last.pt`` (:func:`checkpoint_path`), for
every loader here. An exported run (``pretrained/carracing``) has the same layout plus
``MANIFEST.json``. The models themselves are pure torch (:mod:`worldmodels.generative`,
:mod:`worldmodels.memory`, :mod:`worldmodels.control`) and the dream env is built from
modules (:mod:`worldmodels.envs.dream`); this module is the only one that maps a directory
to them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from worldmodels.control.agent import WorldModelAgent, check_world_model, frames_to_tensor
from worldmodels.control.controller import Controller
from worldmodels.errors import ConfigError, DataError
from worldmodels.generative import VQVAE, CodePrior, ConvVAE
from worldmodels.generative.registry import KINDS, MODELS, build_model
from worldmodels.memory.mdnrnn import MDNRNN, CodeRNN, build_mdnrnn, mdnrnn_model_config
from worldmodels.utils.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from worldmodels.utils.torch import channels_last, resolve_device

__all__ = [
    "CONTROLLER_KIND",
    "MDNRNN_KIND",
    "MANIFEST",
    "checkpoint_path",
    "load_vae",
    "load_code_prior",
    "load_encoder",
    "load_mdnrnn",
    "mdnrnn_info",
    "load_world_model",
    "load_controller",
    "load_agent",
    "save_random_world_model",
    "save_random_vq_world_model",
    "world_action_repeat",
    "start_states",
    "start_codes",
    "load_dream",
    "make_dream_env",
]

#: checkpoint kind and stage directory of C
CONTROLLER_KIND = "controller"
#: checkpoint kind and stage directory of M
MDNRNN_KIND = "mdnrnn"
#: the VQ-VAE's code prior: file in <run>/vqvae/ and checkpoint kind
PRIOR_FILE = "prior.pt"
PRIOR_KIND = "code_prior"
#: the file list of an exported run
MANIFEST = "MANIFEST.json"

_FIX = {
    CONTROLLER_KIND: "scripts/train_controller.py --run {run}",
    MDNRNN_KIND: "scripts/train_mdnrnn.py --run {run}",
}


def checkpoint_path(run_dir: str | Path, stage: str, which: str = "best") -> Path:
    """``<run>/<stage>/best.pt``, else ``last.pt`` (``which="best"``), or ``last.pt`` only
    (``which="last"``).

    :raises DataError: none there (the message names the command that makes it).
    """
    if which not in ("best", "last"):
        raise ConfigError(f"which must be 'best' or 'last', got {which!r}")
    directory = Path(run_dir) / stage
    names = ([CheckpointManager.BEST, CheckpointManager.LAST] if which == "best"
             else [CheckpointManager.LAST])
    for name in names:
        if (directory / name).exists():
            return directory / name
    fix = _FIX.get(stage, "scripts/train_vae.py --run {run} --model " + stage)
    what = {CONTROLLER_KIND: "controller", MDNRNN_KIND: "M"}.get(stage, stage)
    raise DataError(f"no trained {what} in {directory}: run {fix.format(run=run_dir)} first")


# ------------------------------------------------------------------------------------- V


def _check_v_model(model: str) -> None:
    if model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}, got {model!r}")


def load_vae(run_dir: str | Path, model: str = "vae",
             device: str | torch.device = "cpu") -> nn.Module:
    """V of a run, rebuilt from its checkpoint alone.

    :param model: ``vae``, ``betavae`` or ``vqvae`` (the stage directory).
    :return: a :class:`~worldmodels.generative.ConvVAE` or
        :class:`~worldmodels.generative.VQVAE` in eval mode on ``device``.
    :raises DataError: no checkpoint, or an unreadable one.
    """
    net, _ = load_encoder(run_dir, model, device, layout=False)
    return net


def load_encoder(run_dir: str | Path, model: str = "vae", device: str | torch.device = "cpu",
                 layout: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """V of a run and its identity (what latents files store and are checked against).

    :param layout: channels_last where that is the fast layout on ``device`` (encoding).
    :return: ``(net, identity)``: the network in eval mode on ``device``, and the plain dict
        ``{"model", "kind", "step", "checkpoint", "sha256", "model_config"}``.
    :raises DataError: no trained V (names the ``train_vae.py`` command to run).
    """
    _check_v_model(model)
    path = checkpoint_path(run_dir, model)
    checkpoint = load_checkpoint(path, kind=KINDS[model], map_location="cpu")
    identity = {
        "model": model, "kind": KINDS[model], "step": int(checkpoint["step"]),
        "checkpoint": path.name, "sha256": weights_sha256(checkpoint["state_dict"]),
        "model_config": checkpoint["model_config"],
    }
    net = build_model(checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    device = resolve_device(device)
    if layout:
        net = channels_last(net, device)
    return net.to(device).eval(), identity


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


# ------------------------------------------------------------------------------------- M


def load_mdnrnn(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """M of a run, rebuilt from its checkpoint alone.

    :return: :class:`~worldmodels.memory.MDNRNN` (or :class:`CodeRNN` for VQ-VAE
        latents) in eval mode on ``device``.
    :raises DataError: no checkpoint, or an unreadable one.
    """
    device = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_path(run_dir, MDNRNN_KIND), kind=MDNRNN_KIND,
                                 map_location=device)
    return _mdnrnn_from(checkpoint, device)


def _mdnrnn_from(checkpoint: dict[str, Any], device: torch.device) -> nn.Module:
    net = build_mdnrnn(checkpoint["model_config"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.to(device).eval()


def mdnrnn_info(run_dir: str | Path) -> dict[str, Any]:
    """What M of a run was trained on: ``vae_model`` (the V to decode its latents with),
    ``vae`` (that V's identity), ``temperature``, ``action_repeat`` (None when not recorded),
    ``step`` and ``metrics`` of the loaded checkpoint."""
    return _info_of(load_checkpoint(checkpoint_path(run_dir, MDNRNN_KIND), kind=MDNRNN_KIND))


def _info_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    extra = checkpoint.get("extra") or {}
    vae = extra.get("vae") or {}
    return {"vae_model": vae.get("model"), "vae": vae,
            "temperature": (extra.get("train") or {}).get("temperature"),
            "action_repeat": extra.get("action_repeat"), "latents": extra.get("latents"),
            "step": int(checkpoint["step"]), "metrics": checkpoint["metrics"]}


def load_world_model(
    run_dir: str | Path, vae_model: str = "auto", device: str | torch.device = "cpu"
) -> tuple[ConvVAE | VQVAE, MDNRNN | CodeRNN, str]:
    """V and M of a run, in eval mode on ``device``: a VAE and its MDN-RNN, or a VQ-VAE and
    the :class:`~worldmodels.memory.CodeRNN` over its codes.

    :param vae_model: ``auto`` (the V that M was trained on, as M's checkpoint records it;
        ``vae`` when it does not), ``vae``, ``betavae`` or ``vqvae``.
    :return: ``(vae, mdnrnn, vae_model)``, the last the V actually loaded.
    :raises DataError: a missing stage, or a V and an M that do not fit together.
    """
    device = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_path(run_dir, MDNRNN_KIND), kind=MDNRNN_KIND,
                                 map_location=device)  # read once: M and what it was trained on
    trained_on = _info_of(checkpoint).get("vae_model")
    mdnrnn = _mdnrnn_from(checkpoint, device)
    if vae_model == "auto":
        vae_model = trained_on or "vae"
    elif trained_on is not None and trained_on != vae_model:
        raise DataError(f"M in {run_dir} was trained on the latents of {trained_on!r}, not "
                        f"{vae_model!r}: pass --vae-model {trained_on} (or auto)")
    vae = load_vae(run_dir, vae_model, device)
    if isinstance(vae, VQVAE) or isinstance(mdnrnn, CodeRNN):
        try:
            check_world_model(vae, mdnrnn)
        except DataError as e:
            raise DataError(f"M in {run_dir} does not read V's codes ({e}): retrain M on this "
                            f"V's latents (encode.py --model {vae_model}, then "
                            "train_mdnrnn.py)") from None
    elif not isinstance(mdnrnn, MDNRNN) or mdnrnn.latent_dim != vae.latent_dim:
        raise DataError(f"M in {run_dir} does not read V's z (latent_dim "
                        f"{getattr(mdnrnn, 'latent_dim', '?')} vs {vae.latent_dim}): retrain M "
                        "on this V's latents")
    return vae, mdnrnn, vae_model


def world_action_repeat(run_dir: str | Path) -> int:
    """The action repeat k the world model of ``run_dir`` was built with: what collection
    used for the data M learned from. Read from M's checkpoint (``extra.action_repeat``), else
    the latents it was trained on, else the run's ``rollouts.h5``, else ``config.json``'s
    ``[collect]``; 1 (the paper, and every run made before k existed) when none says."""
    import h5py

    run_dir = Path(run_dir)
    sources: list[Path] = []
    try:
        info = mdnrnn_info(run_dir)
    except DataError:
        info = None
    if info is not None:
        if info["action_repeat"] is not None:
            return int(info["action_repeat"])
        if info["latents"]:
            sources.append(Path(info["latents"]))
    sources.append(run_dir / "rollouts.h5")
    for source in sources:
        try:
            with h5py.File(source, "r") as f:
                if "rollouts" in f.attrs:  # latents: the rollouts they were encoded from
                    config = json.loads(f.attrs["rollouts"]).get("config") or {}
                else:  # rollouts.h5: its collection config
                    config = json.loads(f.attrs.get("config", "{}"))
            return int(config.get("action_repeat", 1))
        except (OSError, ValueError, TypeError):
            continue
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        return int(saved.get("collect", {}).get("action_repeat", 1))
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


# ------------------------------------------------------------------------------------- C


def load_controller(run_dir: str | Path, device: str | torch.device = "cpu",
                    which: str = "best") -> tuple[Controller, dict[str, Any]]:
    """C of a run from ``<run>/controller/best.pt`` (``which="best"``, falling back to
    ``last.pt``) or ``last.pt`` (``which="last"``).

    :return: ``(controller in eval mode, checkpoint)`` (the checkpoint's ``path`` added).
    :raises DataError: no controller checkpoint.
    """
    path = checkpoint_path(run_dir, CONTROLLER_KIND, which)
    checkpoint = load_checkpoint(path, kind=CONTROLLER_KIND, map_location="cpu")
    controller = Controller(**checkpoint["model_config"])
    controller.load_state_dict(checkpoint["state_dict"])
    checkpoint["path"] = str(path)
    return controller.to(device).eval(), checkpoint


def load_agent(run_dir: str | Path, *, device: str | torch.device = "cpu",
               vae_model: str = "auto", controller: str | None = "best",
               batch_invariant: bool = True, precision: str | None = None,
               z: str | None = None) -> WorldModelAgent:
    """The agent of a run: V and M (:func:`load_world_model`) and C from ``controller/best.pt``
    (``controller="best"``, else ``last.pt``), ``"last"``, or a fresh C (``None``).

    :param precision, z: V's arithmetic and what C reads of V (see
        :class:`~worldmodels.control.WorldModelAgent`); None: what C was trained with, as
        its checkpoint records it (fp32 and ``mu`` for a C from before they were recorded,
        and for a fresh C).
    """
    device = resolve_device(device)
    c, trained = None, {}
    if controller is not None:
        c, checkpoint = load_controller(run_dir, device, controller)
        extra = checkpoint.get("extra") or {}
        trained = extra.get("agent") or {}
        if vae_model == "auto":
            vae_model = extra.get("vae_model", "auto")
    vae, mdnrnn, _ = load_world_model(run_dir, vae_model, device)
    return WorldModelAgent(vae, mdnrnn, c, device=device, batch_invariant=batch_invariant,
                           precision=precision or trained.get("precision", "fp32"),
                           z=z or trained.get("z", "mu"))


def save_random_world_model(run_dir: str | Path, *, latent_dim: int = 32, hidden_dim: int = 256,
                            seed: int = 0) -> Path:
    """Write a randomly initialised V (``<run>/vae/best.pt``) and M (``<run>/mdnrnn/best.pt``)
    in the formats of their training stages: a run directory for tests and benchmarks of C
    that need no trained world model. Returns ``run_dir``."""
    run_dir = Path(run_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = ConvVAE(latent_dim=latent_dim)
        mdnrnn = MDNRNN(latent_dim=latent_dim, hidden_dim=hidden_dim)
    save_checkpoint(run_dir / "vae" / "best.pt", kind="vae", model=vae,
                    model_config={"model": "vae", **vae.hparams}, step=0)
    save_checkpoint(run_dir / MDNRNN_KIND / "best.pt", kind=MDNRNN_KIND, model=mdnrnn,
                    model_config={"model": "mdnrnn", **mdnrnn.hparams}, step=0,
                    extra={"vae": {"model": "vae"}})
    return run_dir


@torch.no_grad()
def save_random_vq_world_model(run_dir: str | Path, *, hidden_dim: int = 256, seed: int = 0,
                               code_embed_dim: int = 8, **vqvae_kwargs: Any) -> Path:
    """:func:`save_random_world_model` for the discrete world model: a randomly initialised
    VQ-VAE (``<run>/vqvae/best.pt``; ``vqvae_kwargs`` its constructor's, e.g. a small
    ``hidden_channels``) and a :class:`~worldmodels.memory.CodeRNN` over its codes
    (``<run>/mdnrnn/best.pt``, recording V's identity as ``train_mdnrnn`` does). The codebook
    is spread over what the random encoder gives (its outputs on smooth random images), so
    that frames map to many codes."""
    run_dir = Path(run_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = VQVAE(**vqvae_kwargs).eval()
        # smooth random images (8x8 noise upsampled): z_e of ~ codebook_size * 8 cells
        n = max(1, -(-vae.codebook_size * 8 // (vae.grid_size[0] * vae.grid_size[1])))
        x = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8), size=64, mode="bilinear")
        cells = vae.encode(x).movedim(1, -1).reshape(-1, vae.code_dim)
        pick = cells[torch.randperm(len(cells))[:vae.codebook_size]]
        vae.quantizer.codebook.copy_(pick)
        vae.quantizer.ema_sum.copy_(pick)
        grid = vae.grid_size[0] * vae.grid_size[1]
        mdnrnn = CodeRNN(vae.codebook_size, grid, hidden_dim=hidden_dim,
                         code_embed_dim=code_embed_dim)
    save_checkpoint(run_dir / "vqvae" / "best.pt", kind="vqvae", model=vae,
                    model_config={"model": "vqvae", **vae.hparams}, step=0)
    _, identity = load_encoder(run_dir, "vqvae", layout=False)  # as train_mdnrnn records it
    save_checkpoint(run_dir / MDNRNN_KIND / "best.pt", kind=MDNRNN_KIND, model=mdnrnn,
                    model_config=mdnrnn_model_config(mdnrnn), step=0,
                    extra={"vae": identity})
    return run_dir


# --------------------------------------------------------------------------------- dream


def _first_frames_from_latents(run_dir: Path, vae_model: str, latent_dim: int,
                               m_vae: dict[str, Any], max_episodes: int,
                               fields: tuple[str, ...] = ("mu", "logvar"),
                               kind: str = "gaussian") -> tuple[np.ndarray, ...] | str:
    """``fields`` of frame 0 of up to ``max_episodes`` episodes ((N, D) mu and logvar, or
    (N, h, w) codes with ``kind="codes"``), or the reason why the latents file cannot be
    used."""
    from worldmodels.data.latents import LatentDataset, latents_path

    path = latents_path(run_dir, vae_model)
    if not path.exists():
        return f"no {path.name}"
    with LatentDataset(path) as data:
        if data.kind != kind or data.latent_dim != latent_dim:
            return f"{path.name} holds {data.kind} latents of size {data.latent_dim}"
        sha = m_vae.get("sha256")
        if sha is not None and data.vae.get("sha256") not in (None, sha):
            return f"{path.name} was encoded by another V than the one M was trained on"
        if len(data) == 0:
            return f"{path.name} has no episode"
        chosen = np.unique(np.linspace(0, len(data) - 1, min(len(data), max_episodes))
                           .round().astype(np.int64))
        return tuple(np.stack([data.read(int(k), name, 0, 1)[0] for k in chosen])
                     .astype(np.int64 if kind == "codes" else np.float32) for name in fields)


@torch.no_grad()
def _first_frames_from_env(vae: nn.Module, tracks: int) -> tuple[np.ndarray, ...]:
    """(mu, logvar) (tracks, D), or a VQ-VAE's codes (tracks, h, w) as a 1-tuple: V applied
    to the reset frames of real tracks 0..tracks-1."""
    from worldmodels.envs.car_racing import FastCarRacing
    from worldmodels.envs.preprocess import preprocess_frame

    env = FastCarRacing()
    try:
        frames = np.stack([preprocess_frame(env.reset(seed=k)[0]) for k in range(tracks)])
    finally:
        env.close()
    p = next(vae.encoder.parameters())
    x = frames_to_tensor(frames, p.device).to(p.dtype)
    if isinstance(vae, VQVAE):
        return (vae.encode_codes(x).cpu().numpy(),)
    mu, logvar = vae.encode(x)
    return mu.float().cpu().numpy(), logvar.float().cpu().numpy()


def _first_frames(run_dir: str | Path, vae: nn.Module, vae_model: str,
                  m_vae: dict[str, Any] | None, start: str, start_episodes: int,
                  start_tracks: int) -> tuple[tuple[np.ndarray, ...], str]:
    """V's latents of real first frames, ``(mu, logvar)`` or a VQ-VAE's ``(codes,)``, and
    where they come from (the rule of :func:`start_states`)."""
    if start not in ("auto", "latents", "env"):
        raise ConfigError(f"start must be 'auto', 'latents' or 'env', got {start!r}")
    codes = isinstance(vae, VQVAE)
    if start != "env":
        size = vae.grid_size[0] * vae.grid_size[1] if codes else vae.latent_dim
        got = _first_frames_from_latents(Path(run_dir), vae_model, size, m_vae or {},
                                         max(1, int(start_episodes)),
                                         ("codes",) if codes else ("mu", "logvar"),
                                         "codes" if codes else "gaussian")
        if not isinstance(got, str):
            return got, f"latents_{vae_model}.h5 ({len(got[0])} first frames)"
        if start == "latents":
            raise DataError(f"cannot start the dream from the latents of {run_dir}: {got}; "
                            f"run scripts/encode.py --run {run_dir} --model {vae_model}, or "
                            "use start='env'")
    if start_tracks < 1:
        raise ConfigError(f"start_tracks must be >= 1, got {start_tracks}")
    return (_first_frames_from_env(vae, int(start_tracks)),
            f"V on the first frames of CarRacing tracks 0..{start_tracks - 1}")


def start_states(run_dir: str | Path, vae: nn.Module, vae_model: str = "vae",
                 m_vae: dict[str, Any] | None = None, start: str = "auto",
                 start_episodes: int = 1000, start_tracks: int = 8
                 ) -> tuple[np.ndarray, np.ndarray, str]:
    """The real first frames the dream starts from, as V's posteriors.

    :param vae: V (for the ``env`` source; its ``latent_dim`` is checked against the file).
    :param vae_model: which V's latents file (``latents_<vae_model>.h5``).
    :param m_vae: the V identity M's checkpoint records (``mdnrnn_info(run)["vae"]``); a
        latents file of another V is not used.
    :param start: ``auto`` (the latents file when usable, else real tracks), ``latents``
        (the file, or a :class:`DataError`), ``env`` (real tracks).
    :param start_episodes: at most this many episodes of the file (evenly spaced).
    :param start_tracks: real tracks ``0 .. start_tracks-1`` for the ``env`` source.
    :return: ``(mu, logvar, source)``: (N, D) float32 each, and a description.
    """
    if isinstance(vae, VQVAE):
        raise DataError("a VQ-VAE has no posterior to start from: use start_codes")
    (mu, logvar), source = _first_frames(run_dir, vae, vae_model, m_vae, start,
                                         start_episodes, start_tracks)
    return mu, logvar, source


def start_codes(run_dir: str | Path, vae: VQVAE, vae_model: str = "vqvae",
                m_vae: dict[str, Any] | None = None, start: str = "auto",
                start_episodes: int = 1000, start_tracks: int = 8
                ) -> tuple[np.ndarray, str]:
    """:func:`start_states` for a VQ-VAE: the code grids of real first frames, from
    ``latents_<vae_model>.h5`` (its frame 0 of up to ``start_episodes`` episodes) or V on the
    reset frames of real tracks ``0 .. start_tracks-1`` (same ``start`` rule).

    :return: ``(codes, source)``: (N, h, w) int64 and a description.
    """
    if not isinstance(vae, VQVAE):
        raise DataError(f"start_codes needs a VQ-VAE, got {type(vae).__name__}: use "
                        "start_states")
    (codes,), source = _first_frames(run_dir, vae, vae_model, m_vae, start, start_episodes,
                                     start_tracks)
    return codes, source


def load_dream(run_dir: str | Path, batch_size: int = 1, temperature: float | None = None,
               device: str | torch.device = "auto", *, start: str = "auto",
               vae_model: str = "auto", start_episodes: int = 1000, start_tracks: int = 8,
               **kwargs: Any):
    """The :class:`~worldmodels.envs.dream.BatchedDream` of a run's V and M (a
    :class:`~worldmodels.envs.code_dream.BatchedCodeDream` for a VQ-VAE and its CodeRNN).

    :param temperature: ``tau >= 0``; ``None`` takes the one M's training recorded, else 1.0.
    :param start: where ``z_0`` comes from (:func:`start_states`, :func:`start_codes`).
    :param kwargs: the dream's ``max_steps``, ``done``, ``precision``.
    """
    from worldmodels.envs.code_dream import BatchedCodeDream
    from worldmodels.envs.dream import BatchedDream

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"no run directory {run_dir}: pass a run with a trained V and M")
    device = resolve_device(device)
    vae, mdnrnn, vae_model = load_world_model(run_dir, vae_model, device)
    info = mdnrnn_info(run_dir)
    if temperature is None:
        temperature = float(info.get("temperature") or 1.0)
    if isinstance(mdnrnn, CodeRNN):
        codes, source = start_codes(run_dir, vae, vae_model, info.get("vae"), start,
                                    start_episodes, start_tracks)
        return BatchedCodeDream(mdnrnn, codes, vae=vae, batch_size=batch_size,
                                temperature=temperature, device=device, source=source,
                                **kwargs)
    mu, logvar, source = start_states(run_dir, vae, vae_model, info.get("vae"), start,
                                      start_episodes, start_tracks)
    return BatchedDream(mdnrnn, mu, logvar, vae=vae, batch_size=batch_size,
                        temperature=temperature, device=device, source=source, **kwargs)


def make_dream_env(run: str | Path, temperature: float | None = None,
                   render_mode: str | None = None, *, device: str | torch.device = "cpu",
                   max_steps: int = 1000, done: str = "threshold", observation: str = "zh",
                   start: str = "auto", vae_model: str = "auto", precision: str = "auto",
                   render_scale: int = 1):
    """``gymnasium.make("worldmodels/Dream-v0", run=DIR, ...)``: the
    :class:`~worldmodels.envs.DreamEnv` of a run's V and M (see there for the arguments)."""
    from worldmodels.envs.dream_env import DreamEnv

    dream = load_dream(run, 1, temperature, device, max_steps=max_steps, done=done,
                       precision=precision, start=start, vae_model=vae_model)
    return DreamEnv(dream, render_mode, observation=observation, render_scale=render_scale)
