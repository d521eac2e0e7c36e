"""Experiment configs are frozen dataclasses with named presets; their CLI flags come from the fields.

`add_config_args` turns every field into a `--field-name` flag whose default is "keep the preset's
value", `config_from_args` applies the flags a user gave on top of the chosen preset, and
`command_for` writes the one command line that rebuilds a config, which every report quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from typing import Any, TypeVar

from resnetlab.errors import Error
from resnetlab.flags import add_field_flags, flag, format_value, given_fields

C = TypeVar("C")


def add_config_args(parser: argparse.ArgumentParser, cls: type, presets: dict[str, Any] | None) -> None:
    """One flag per dataclass field, plus `--preset NAME` when there are presets; a flag left out
    keeps the preset's (or the dataclass's) value."""
    if presets:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            default="quick",
            help="named starting point; the flags below override single fields (default: quick)",
        )
    group = parser.add_argument_group(
        "config fields (default: the preset's value)" if presets else "settings"
    )

    def help_for(field: dataclasses.Field) -> str:
        text = field.metadata.get("help", "")
        if not presets:
            return text
        shown = ", ".join(f"{name}: {format_value(getattr(p, field.name))}" for name, p in presets.items())
        return f"{text} [{shown}]"

    add_field_flags(group, cls, help_for)


def config_from_args(base: C, args: argparse.Namespace) -> C:
    """`base` (a preset) with every flag the user gave applied, checked."""
    changes = given_fields(type(base), args)
    return validated(dataclasses.replace(base, **changes))  # type: ignore[type-var]


def validated(cfg: C) -> C:
    """Run the config's own `check()` (field ranges that only the experiment knows) and return it."""
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


def command_for(experiment: str, preset: str, presets: dict[str, Any], cfg: Any) -> str:
    """The shortest `resnetlab experiment ...` line that rebuilds `cfg` from `preset`."""
    base = presets[preset]
    parts = ["resnetlab", "experiment", experiment, "--preset", preset]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if value == getattr(base, field.name):
            continue
        if isinstance(value, bool):
            parts.append(flag(field.name) if value else "--no-" + field.name.replace("_", "-"))
        else:
            parts += [flag(field.name), format_value(value)]
    return shlex.join(parts)


def require(condition: bool, message: str) -> None:
    """Raise the user-facing `Error(message)` unless `condition` holds (config checks)."""
    if not condition:
        raise Error(message)
