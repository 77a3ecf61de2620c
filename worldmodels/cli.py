"""Command-line plumbing shared by the scripts: flags generated from the config
dataclasses (their help texts become ``--help``), presets, ``--set`` overrides, and one-line
errors with a non-zero exit status.

Scripts stay thin: ``parse`` the command line into a :class:`~worldmodels.config.Config`,
then call the package's ``main``; tests call the same code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

from worldmodels.config import PRESET_DIR, SECTIONS, Config, load_config
from worldmodels.errors import WorldModelsError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def summary(doc: str | None) -> str:
    """A script's ``--help`` description: the first paragraph of its docstring as one line
    (a first sentence may wrap onto the next line; its first line alone would be cut)."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(description: str, sections: Sequence[str], run_required: bool = True,
                 epilog: str | None = None, run_default: str | None = None,
                 run_help: str | None = None) -> argparse.ArgumentParser:
    """A parser with ``--run``, ``--preset``, ``--set`` and one flag per field of each
    config section in ``sections`` (``--episodes`` sets ``collect.episodes``). With
    ``run_default`` (the scripts that only read a run: evaluate, watch) ``--run`` is optional."""
    parser = argparse.ArgumentParser(
        description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run", required=run_required and run_default is None, default=run_default,
        metavar="DIR",
        help=run_help or "run directory (created if needed); every stage reads and writes here")
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.toml"))) or "none found"
    parser.add_argument("--preset", metavar="NAME|FILE",
                        help=f"config preset: a name in configs/ ({presets}) or a .toml path")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override any config value (repeatable)")
    for section in sections:
        cls = SECTIONS[section]
        group = parser.add_argument_group(f"[{section}] settings")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            typ = hints[f.name]
            kw: dict[str, Any] = {"dest": f"{section}.{f.name}", "default": None,
                                  "help": f"{f.metadata.get('help', '')} (default: {f.default!r})".replace("%", "%%")}
            if typ is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = typ
                kw["metavar"] = f.name.upper()
                if "choices" in f.metadata:
                    kw["choices"] = f.metadata["choices"]
            group.add_argument(_flag(f.name), **kw)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults < preset < ``--set`` < dedicated flags."""
    overrides = list(args.overrides)
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, key = dest.split(".", 1)
            overrides.append((section, key, value))
    text = [o for o in overrides if isinstance(o, str)]
    flags: dict[str, dict[str, Any]] = {}
    for o in overrides:
        if not isinstance(o, str):
            flags.setdefault(o[0], {})[o[1]] = o[2]
    cfg = load_config(args.preset, text)
    if flags:
        from worldmodels.config import apply_dict, validate

        cfg = validate(apply_dict(cfg, flags, "command line"))
    return cfg


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a :class:`WorldModelsError` prints ``error: ...`` and exits 2,
    Ctrl-C prints how to resume and exits 130."""
    try:
        code = main()
    except WorldModelsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; re-run the same command to resume",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)
