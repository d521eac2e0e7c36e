"""The model registry: a dict filled by an explicit decorator, as in torchvision's `_api.py`."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch takes seconds to import; `resnetlab models` only needs the names
    from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name."""
    if fn.__name__ in _MODELS:
        raise RuntimeError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _load_builtins() -> None:
    """Import the built-in builders, which register themselves; deferred to the first lookup."""
    import resnetlab.models.gpt  # noqa: F401
    import resnetlab.models.mlp  # noqa: F401
    import resnetlab.models.resnet  # noqa: F401


def registered_names() -> list[str]:
    """Names registered so far, without loading the built-in builders (and torch)."""
    return list(_MODELS)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in natural order (resnet20 < resnet110)."""
    _load_builtins()
    return match_names(pattern, _MODELS)


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


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as `name`; unknown names raise ValueError with close matches."""
    _load_builtins()
    try:
        return _MODELS[name]
    except KeyError:
        raise unknown_model(name, _MODELS) from None


def create_model(name: str, *, pretrained: object = None, **kwargs: object) -> nn.Module:
    """Build a registered model: `create_model("resnet56", num_classes=10, in_chans=1)`.

    `pretrained`: None/False for random weights; True (the model's default weights), a tag
    ("tv2_in1k", "resnet50.tv2_in1k"), a checkpoint file, a URL or a resnetlab run directory
    loads them (see resnetlab.weights) and sets `model.pretrained_cfg`.
    """
    if name.startswith(("hf-hub:", "local-dir:")):  # timm's spelling: the repository names the model
        if pretrained is not True:
            raise ValueError(f"create_model({name!r}) loads that repository's weights: give pretrained=True")
        from resnetlab.weights import load_pretrained

        return load_pretrained(None, name, **kwargs)
    if pretrained is None or pretrained is False:
        return get_builder(name)(**kwargs)
    get_builder(name)  # an unknown name fails before any download
    # Imported here: resnetlab.weights builds models through this registry.
    from resnetlab.weights import load_pretrained

    return load_pretrained(name, pretrained, **kwargs)
