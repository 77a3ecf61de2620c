"""Configuration: one dataclass per pipeline stage, the paper's values as defaults.

Every field carries its help text in ``metadata["help"]``; the scripts turn those into
``--help``. A preset (``configs/*.toml``) holds only the differences from these defaults,
section by section (``[collect]``, ...); command-line flags and ``--set section.key=value``
override the preset. Unknown sections or keys, wrong types and impossible values raise
:class:`~worldmodels.errors.ConfigError` with a one-line message. The resolved config is
written to ``<run>/config.json`` by every stage, each its own section (see
:func:`save_stage_config`).

The sections themselves (the dataclasses and their defaults, which follow Ha & Schmidhuber,
*World Models* (2018), arXiv:1803.10122, and the authors' code) are in
:mod:`worldmodels.config.sections`; this module loads, validates and saves them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from worldmodels.config.sections import (
    SECTIONS,
    CollectConfig,
    CompareConfig,
    Config,
    ControllerConfig,
    DreamCheckConfig,
    EncodeConfig,
    EvaluateConfig,
    GANConfig,
    MDNRNNConfig,
    VAEConfig,
    WatchConfig,
)
from worldmodels.errors import ConfigError, WorldModelsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().parent.parent.parent / "configs"

__all__ = [
    "PRESET_DIR", "SECTIONS", "CollectConfig", "CompareConfig", "Config", "ControllerConfig",
    "DreamCheckConfig", "EncodeConfig", "EvaluateConfig", "GANConfig", "MDNRNNConfig", "VAEConfig", "WatchConfig",
    "apply_dict", "config_from_dict", "load_config", "parse_override", "resolve_preset",
    "save_resolved", "save_stage_config", "validate",
]


# --------------------------------------------------------------------------- validation


def _check_type(section: str, name: str, value: Any, typ: Any) -> Any:
    where = f"{section}.{name}"
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _positive(section: str, obj: Any, names: tuple[str, ...], minimum: float = 1) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise ConfigError(f"{section}.{name} must be >= {minimum:g}, got {value}")


def validate(cfg: Config) -> Config:
    """Impossible values and unknown choices are :class:`ConfigError`s."""
    c = cfg.collect
    _positive("collect", c, ("episodes", "max_steps", "chunk_frames", "action_repeat"))
    _positive("collect", c, ("workers", "seed"), 0)
    if not 0 < c.brownian_dt <= 1:
        raise ConfigError(f"collect.brownian_dt must be in (0, 1], got {c.brownian_dt}")
    if not c.worker_timeout > 0:
        raise ConfigError(f"collect.worker_timeout must be > 0, got {c.worker_timeout}")
    if not 1 <= c.compression_level <= 9:
        raise ConfigError(f"collect.compression_level must be in 1..9, got {c.compression_level}")
    v = cfg.vae
    _positive("vae", v, ("latent_dim", "codebook_size", "code_dim", "downsample", "epochs",
                         "batch_size", "log_every", "capacity_steps"))
    _positive("vae", v, ("kl_tolerance", "capacity_max", "gamma", "grad_clip", "seed",
                         "max_steps", "dead_code_steps", "prior_epochs", "beta", "commitment"), 0)
    if not 1 <= v.downsample <= 6:
        raise ConfigError(f"vae.downsample must be in 1..6 for 64x64 frames, got {v.downsample}")
    if v.codebook_size < 2:
        raise ConfigError(f"vae.codebook_size must be >= 2, got {v.codebook_size}")
    if not v.prior_lr > 0:
        raise ConfigError(f"vae.prior_lr must be > 0, got {v.prior_lr}")
    g = cfg.gan
    _positive("gan", g, ("latent_dim", "generator_channels", "discriminator_channels", "epochs",
                         "batch_size", "log_every"))
    _positive("gan", g, ("seed", "max_steps"), 0)
    for section, obj in (("vae", v), ("gan", g)):
        if not obj.lr > 0:
            raise ConfigError(f"{section}.lr must be > 0, got {obj.lr}")
        if not 0 <= obj.val_episodes < 1:
            raise ConfigError(f"{section}.val_episodes must be in [0, 1), got {obj.val_episodes}")
    if not 0 <= g.beta1 < 1:
        raise ConfigError(f"gan.beta1 must be in [0, 1), got {g.beta1}")
    if not 0 <= g.ema < 1:
        raise ConfigError(f"gan.ema must be in [0, 1), got {g.ema}")
    m = cfg.compare
    _positive("compare", m, ("num_samples", "feature_epochs", "pr_neighbours"))
    known = {"vae", "betavae", "vqvae", "gan"}
    models = [x.strip() for x in m.models.split(",") if x.strip()]
    if not models or set(models) - known:
        raise ConfigError(f"compare.models must be a comma-separated subset of "
                          f"{', '.join(sorted(known))}; got {m.models!r}")
    e = cfg.encode
    _positive("encode", e, ("batch_size",))
    _positive("encode", e, ("workers",), 0)
    r = cfg.mdnrnn
    _positive("mdnrnn", r, ("hidden_dim", "num_gaussians", "code_embed_dim", "seq_len",
                            "batch_size", "steps", "log_every"))
    _positive("mdnrnn", r, ("grad_clip", "reward_weight", "done_weight", "temperature",
                            "eval_every", "seed"), 0)
    if not r.done_pos_weight > 0:
        raise ConfigError(f"mdnrnn.done_pos_weight must be > 0, got {r.done_pos_weight}")
    if not r.lr > 0:
        raise ConfigError(f"mdnrnn.lr must be > 0, got {r.lr}")
    if not 0 <= r.val_episodes < 1:
        raise ConfigError(f"mdnrnn.val_episodes must be in [0, 1), got {r.val_episodes}")
    k = cfg.controller
    _positive("controller", k, ("population", "trials", "generations", "eval_episodes"))
    _positive("controller", k, ("seed", "hidden_layer", "early_stop_steps", "eval_every",
                                "workers", "envs_per_worker", "action_repeat"), 0)
    if k.population < 2:
        raise ConfigError(f"controller.population must be >= 2 for CMA-ES, got {k.population}")
    if not 1 <= k.max_steps <= 1000:
        raise ConfigError(f"controller.max_steps must be in 1..1000 (CarRacing-v3 ends at "
                          f"1000), got {k.max_steps}")
    for name in ("sigma0", "worker_timeout", "temperature"):
        if not getattr(k, name) > 0:
            raise ConfigError(f"controller.{name} must be > 0, got {getattr(k, name)}")
    _positive("evaluate", cfg.evaluate, ("episodes", "max_steps"))
    _positive("evaluate", cfg.evaluate, ("workers", "seed"), 0)
    w = cfg.watch
    _positive("watch", w, ("episodes", "max_steps"))
    _positive("watch", w, ("seed",), 0)
    if not w.fps > 0:
        raise ConfigError(f"watch.fps must be > 0, got {w.fps}")
    _positive("dream_check", cfg.dream_check, ("episodes",))
    _positive("dream_check", cfg.dream_check, ("workers",), 0)
    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            choices = f.metadata.get("choices")
            if choices and getattr(obj, f.name) not in choices:
                raise ConfigError(
                    f"{section}.{f.name} must be one of {', '.join(choices)}; "
                    f"got {getattr(obj, f.name)!r}"
                )
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_dict(cfg: Config, data: dict[str, Any], source: str) -> Config:
    """Overlay ``{section: {key: value}}`` on ``cfg``; unknown names are an error."""
    for section, values in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown config section [{section}] in {source}; "
                f"known sections: {', '.join(SECTIONS)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] in {source} must be a table of key = value")
        obj = getattr(cfg, section)
        types = _field_types(type(obj))
        for key, value in values.items():
            if key not in types:
                raise ConfigError(
                    f"unknown key {section}.{key} in {source}; "
                    f"known keys: {', '.join(sorted(types))}"
                )
            setattr(obj, key, _check_type(section, key, value, types[key]))
    return cfg


def resolve_preset(preset: str | os.PathLike[str]) -> Path:
    """A preset name (``smoke``) or a path to a TOML file."""
    p = Path(preset)
    if p.suffix != ".toml":
        p = PRESET_DIR / f"{preset}.toml"
    if not p.is_file():
        known = sorted(q.stem for q in PRESET_DIR.glob("*.toml"))
        raise ConfigError(f"preset {preset!r} not found ({p}); known presets: {', '.join(known)}")
    return p


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` with a TOML value (``5``, ``0.1``, ``true``, ``"x"``);
    a bare word that is not valid TOML is taken as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    lhs, rhs = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value


def load_config(
    preset: str | os.PathLike[str] | None = None,
    overrides: list[str] | dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Defaults, then the preset, then the overrides; validated."""
    cfg = Config()
    if preset:
        path = resolve_preset(preset)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        apply_dict(cfg, data, str(path))
    if isinstance(overrides, dict):
        apply_dict(cfg, overrides, "overrides")
    else:
        for text in overrides or []:
            section, key, value = parse_override(text)
            apply_dict(cfg, {section: {key: value}}, f"override {text!r}")
    return validate(cfg)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (strict)."""
    return validate(apply_dict(Config(), data, "saved config"))


def save_resolved(cfg: Config, run_dir: str | os.PathLike[str]) -> Path:
    """Write ``<run>/config.json`` atomically (temp file, then rename)."""
    from worldmodels.utils.io import atomic_write_text

    path = Path(run_dir) / "config.json"
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def save_stage_config(cfg: Config, run_dir: str | os.PathLike[str], section: str,
                      also: dict[str, Any] | None = None) -> Path:
    """``<run>/config.json`` after a stage ran: the sections other stages saved are kept,
    ``[section]`` is this run's, and ``also`` (partial sections, e.g. what the dataset was
    really collected with) is applied on top. An unreadable or invalid old file is replaced.
    """
    resolved = Config()
    path = Path(run_dir) / "config.json"
    with contextlib.suppress(OSError, ValueError, TypeError, WorldModelsError):
        apply_dict(resolved, json.loads(path.read_text()), "config.json")
    setattr(resolved, section, dataclasses.replace(getattr(cfg, section)))
    if also:
        with contextlib.suppress(WorldModelsError):
            apply_dict(resolved, also, "config.json")
    with contextlib.suppress(WorldModelsError):
        validate(resolved)
    return save_resolved(resolved, run_dir)
