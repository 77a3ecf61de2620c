"""Configuration: one dataclass per pipeline stage, the paper's values as defaults.

Every field carries its help text in ``metadata["help"]``; the scripts turn those into
``--help``. A preset (``configs/*.toml``) holds only the differences from these defaults,
section by section (``[collect]``, ...); command-line flags and ``--set section.key=value``
override the preset. Unknown sections or keys, wrong types and impossible values raise
:class:`~worldmodels.errors.ConfigError` with a one-line message. The resolved config is
written to ``<run>/config.json`` by every stage (see :func:`save_resolved`).

Defaults follow Ha & Schmidhuber, *World Models* (2018), arXiv:1803.10122, and the
authors' code: 10,000 random-policy rollouts of CarRacing, frames cropped and resized
to 64x64x3.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldmodels.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (shown by ``--help``)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class CollectConfig:
    """Rollout collection (``scripts/collect_rollouts.py``)."""

    episodes: int = _f(10_000, "number of episodes to collect; episode k uses track seed seed+k")
    seed: int = _f(0, "base seed: episode k is collected on track seed+k with policy seed seed+k")
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
    workers: int = _f(0, "worker processes; 0 means one per available CPU core")
    backend: str = _f(
        "local", "'local' (process pool) or 'ray' (a Ray cluster, see --address)",
        choices=("local", "ray"),
    )
    address: str = _f("", "Ray cluster address for --backend ray ('' starts a local cluster)")
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


SECTIONS: dict[str, type] = {"collect": CollectConfig}


@dataclass
class Config:
    """The whole configuration: one attribute per stage section."""

    collect: CollectConfig = field(default_factory=CollectConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def validate(cfg: Config) -> Config:
    c = cfg.collect
    for name in ("episodes", "max_steps", "chunk_frames"):
        if getattr(c, name) < 1:
            raise ConfigError(f"collect.{name} must be >= 1, got {getattr(c, name)}")
    if c.workers < 0:
        raise ConfigError(f"collect.workers must be >= 0 (0 = all cores), got {c.workers}")
    if c.seed < 0:
        raise ConfigError(f"collect.seed must be >= 0, got {c.seed}")
    if not 0 < c.brownian_dt <= 1:
        raise ConfigError(f"collect.brownian_dt must be in (0, 1], got {c.brownian_dt}")
    if not 1 <= c.compression_level <= 9:
        raise ConfigError(f"collect.compression_level must be in 1..9, got {c.compression_level}")
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
