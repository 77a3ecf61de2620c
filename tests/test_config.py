import dataclasses
import json

import pytest
import tomllib
from helpers import run_script

from worldmodels.config import (
    PRESET_DIR,
    SECTIONS,
    CollectConfig,
    Config,
    config_from_dict,
    load_config,
    parse_override,
    save_resolved,
)
from worldmodels.errors import ConfigError


def test_defaults_are_the_papers():
    c = Config().collect
    assert (c.episodes, c.max_steps) == (10_000, 1000)


def test_every_field_documented():
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name} has no help"


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
def test_presets_load_and_hold_only_differences(preset):
    cfg = load_config(preset)
    data = tomllib.loads((PRESET_DIR / f"{preset}.toml").read_text())
    defaults = Config().to_dict()
    for section, values in data.items():
        for key, value in values.items():
            if preset != "carracing":  # the paper preset may restate defaults for clarity
                assert defaults[section][key] != value, f"{preset}: {section}.{key} repeats the default"
            assert getattr(getattr(cfg, section), key) == value


def test_overrides_parse_toml_values():
    assert parse_override("collect.episodes=5") == ("collect", "episodes", 5)
    assert parse_override("collect.policy=mixed") == ("collect", "policy", "mixed")
    assert parse_override("collect.domain_randomize=true")[2] is True
    cfg = load_config("smoke", ["collect.episodes=3", "collect.brownian_dt=0.1"])
    assert cfg.collect.episodes == 3 and cfg.collect.brownian_dt == 0.1


@pytest.mark.parametrize(
    "override,message",
    [
        ("collect.episodez=3", "unknown key collect.episodez"),
        ("colect.episodes=3", "unknown config section [colect]"),
        ("collect.episodes=-1", "collect.episodes must be >= 1"),
        ("collect.episodes=2.5", "collect.episodes must be an integer"),
        ("collect.workers=-2", "collect.workers must be >= 0"),
        ("collect.policy=greedy", "collect.policy must be one of"),
        ("collect.domain_randomize=3", "must be true or false"),
        ("episodes=3", "must look like section.key=value"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


def test_unknown_preset_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="known presets: .*smoke"):
        load_config("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[collect]\nepisodes = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[collect]\nfoo = 1\n")
    with pytest.raises(ConfigError, match=f"unknown key collect.foo in {unknown}"):
        load_config(unknown)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config("smoke", ["collect.seed=11"])
    path = save_resolved(cfg, tmp_path)
    assert config_from_dict(json.loads(path.read_text())) == cfg
    assert not list(tmp_path.glob("*.tmp-*"))


def test_cli_flags_override_preset_and_unknown_flag_fails(tmp_path):
    from worldmodels.cli import build_parser, config_from_args

    parser = build_parser("x", ["collect"])
    args = parser.parse_args(["--run", str(tmp_path), "--preset", "smoke",
                              "--set", "collect.seed=4", "--episodes", "2"])
    cfg = config_from_args(args)
    assert (cfg.collect.episodes, cfg.collect.seed, cfg.collect.max_steps) == (2, 4, 300)
    assert cfg.collect == dataclasses.replace(CollectConfig(), episodes=2, seed=4, max_steps=300)
    r = run_script("collect_rollouts.py", "--run", tmp_path, "--set", "collect.bogus=1")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown key collect.bogus" in r.stderr


def test_preset_help_lists_every_preset_in_configs():
    from worldmodels.cli import build_parser

    text = " ".join(build_parser("x", []).format_help().split())
    names = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))
    assert "carracing-cpu" in names
    # argparse may wrap a line after a hyphen ("carracing-" / "cpu")
    assert f"a name in configs/ ({', '.join(names)})" in text.replace("- ", "-")


def test_summary_is_the_first_paragraph_on_one_line():
    from worldmodels.cli import summary

    assert summary("Ship a run as a small\ndirectory (for watch.py).\n\n    usage") == (
        "Ship a run as a small directory (for watch.py).")
    assert summary(None) == ""
