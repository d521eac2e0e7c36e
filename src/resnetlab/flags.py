"""Command-line flags derived from config dataclasses: one `--field-name` flag per field.

The field's type gives the parser: bools are --x/--no-x, tuples are comma-separated, dicts are
KEY=VALUE pairs, and `none` clears an optional field. The field's metadata gives the help and
may restrict the values (`choices`). Every flag defaults to argparse.SUPPRESS, so the namespace
holds exactly the fields the user typed and a preset's values hold for the rest. `resnetlab
train` (TrainConfig and its recipes) and `resnetlab experiment` (each experiment's presets) both
build their flags here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any


def flag(name: str) -> str:
    """The flag of a field: model_kwargs -> --model-kwargs."""
    return "--" + name.replace("_", "-")


def format_value(value: Any, *, short: bool = False) -> str:
    """A field value as its flag takes it (`none`, `a,b`, `k=v,...`); short: floats to 6 digits, for help."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(f"{v:.6g}" if short and isinstance(v, float) else str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"
    return str(value)


def parse_scalar(text: str) -> Any:
    """A free-form value (a model kwarg): int, float, true/false, else the string (norm=none stays "none")."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def finite_float(text: str) -> float:
    """A float flag's value; inf and nan are refused here, before they reach a step (an lr
    multiplier of inf only shows up as a diverged loss several steps in)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _without_none(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def value_parser(annotation: Any) -> tuple[Callable[[str], Any], str]:
    """(text -> value, metavar) for a non-bool field type; a bad value is argparse's one-line error."""
    kind, optional = _without_none(annotation)
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]

        def parse(text: str) -> Any:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())

        metavar = "A,B,..."
    elif typing.get_origin(kind) is dict:

        def parse(text: str) -> Any:
            pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(text)
            return {key.strip(): parse_scalar(value.strip()) for key, value in pairs}

        metavar = "KEY=VALUE,..."
    elif kind is float:
        parse, metavar = finite_float, "FLOAT"
    else:
        parse, metavar = kind, kind.__name__.upper()
    metavar += "|none" if optional else ""

    def convert(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {metavar}, got {text!r}") from None

    return convert, metavar


def add_field_flags(
    group: argparse._ActionsContainer, cls: type, help_for: Callable[[dataclasses.Field], str]
) -> None:
    """One flag per field of dataclass `cls`; `help_for(field)` writes its help line."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if hints[field.name] is bool:
            group.add_argument(
                flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_for(field),
            )
            continue
        convert, metavar = value_parser(hints[field.name])
        choices = field.metadata.get("choices")
        group.add_argument(
            flag(field.name),
            dest=field.name,
            type=convert,
            metavar="{" + ",".join(choices) + "}" if choices else metavar,
            choices=choices,
            default=argparse.SUPPRESS,  # absent from the namespace unless given: None is a value
            help=help_for(field),
        )


def given_fields(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} for the fields of `cls` the user gave on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
