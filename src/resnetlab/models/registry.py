"""The model registry: a dict filled by an explicit decorator, as in torchvision's `_api.py`."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in natural order (resnet20 < resnet110)."""
    return sorted((name for name in _MODELS if fnmatch.fnmatchcase(name, pattern)), key=_natural_key)


def _natural_key(name: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as `name`; unknown names raise ValueError with close matches."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnetlab models`"
        raise ValueError(f"unknown model {name!r}{hint}") from None


def create_model(name: str, *, pretrained: object = None, **kwargs: object) -> nn.Module:
    """Build a registered model: `create_model("resnet56", num_classes=10, in_chans=1)`.

    `pretrained`: None/False for random weights; True (the model's default weights), a tag
    ("tv2_in1k", "resnet50.tv2_in1k"), a checkpoint file, a URL or a resnetlab run directory
    loads them (see resnetlab.weights) and sets `model.pretrained_cfg`.
    """
    if pretrained is None or pretrained is False:
        return get_builder(name)(**kwargs)
    get_builder(name)  # an unknown name fails before any download
    # Imported here: resnetlab.weights builds models through this registry.
    from resnetlab.weights import load_pretrained

    return load_pretrained(name, pretrained, **kwargs)
