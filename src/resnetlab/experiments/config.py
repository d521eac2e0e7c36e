"""Experiment configs are frozen dataclasses with named presets; their CLI flags come from the fields.

`add_config_args` turns every field into a `--field-name` flag whose default is "keep the preset's
value", `config_from_args` applies the flags a user gave on top of the chosen preset, and
`command_for` writes the one command line that rebuilds a config, which every report quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from typing import Any, TypeVar

from resnetlab.errors import Error

C = TypeVar("C")


def _field_kind(annotation: Any) -> tuple[type, bool, bool]:
    """(scalar type, is a tuple, may be None) for the annotations experiment configs use."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


def _parse(text: str, scalar: type, is_tuple: bool, optional: bool) -> Any:
    if optional and text.lower() == "none":
        return None
    if is_tuple:
        return tuple(scalar(part) for part in text.split(",") if part.strip())
    return scalar(text)


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        "config fields (default: the preset's value)" if presets else "settings"
    )
    for field in dataclasses.fields(cls):
        scalar, is_tuple, optional = _field_kind(hints[field.name])
        help_text = field.metadata.get("help", "")
        if presets:
            shown = ", ".join(f"{name}: {_format(getattr(p, field.name))}" for name, p in presets.items())
            help_text += f" [{shown}]"
        if scalar is bool:
            group.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        metavar = ("A,B,..." if is_tuple else scalar.__name__.upper()) + ("|none" if optional else "")

        def convert(
            text: str, s: type = scalar, t: bool = is_tuple, o: bool = optional, m: str = metavar
        ) -> Any:
            try:
                return _parse(text, s, t, o)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {m}, got {text!r}") from None

        group.add_argument(
            _flag(field.name),
            dest=field.name,
            type=convert,
            default=argparse.SUPPRESS,  # absent from the namespace unless given: None is a value
            metavar=metavar,
            help=help_text,
        )


def config_from_args(base: C, args: argparse.Namespace) -> C:
    """`base` (a preset) with every flag the user gave applied, checked."""
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(base) if hasattr(args, f.name)}  # type: ignore[arg-type]
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
            parts.append(_flag(field.name) if value else "--no-" + field.name.replace("_", "-"))
        else:
            parts += [_flag(field.name), _format(value)]
    return shlex.join(parts)


def require(condition: bool, message: str) -> None:
    """Raise the user-facing `Error(message)` unless `condition` holds (config checks)."""
    if not condition:
        raise Error(message)
