"""The model registry: a dict filled by an explicit decorator, as in torchvision's `_api.py`.

The builder modules import this one to register themselves; looking names up (which first
imports the built-in builders) is `models.factory`'s, so no import runs in a circle.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch takes seconds to import; `resnetlab models` only needs the names
    from torch import nn

BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name."""
    if fn.__name__ in BUILDERS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    BUILDERS[fn.__name__] = fn
    return fn


def registered_names() -> list[str]:
    """Names registered so far, without loading the built-in builders (and torch)."""
    return list(BUILDERS)


def match_names(pattern: str, names: Iterable[str]) -> list[str]:
    """The names matching a shell-style pattern, in natural order."""
    return sorted((name for name in names if fnmatch.fnmatchcase(name, pattern)), key=_natural_key)


def _natural_key(name: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def unknown_model(name: str, names: Iterable[str]) -> ValueError:
    """The error for a name that is not among `names`, with the closest ones as suggestions."""
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnetlab models`"
    return ValueError(f"unknown model {name!r}{hint}")
