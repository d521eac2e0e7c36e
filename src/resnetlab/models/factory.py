"""`create_model(name, **options)`: a registered architecture, randomly initialised.

Loading weights into it is `resnetlab.create_model(name, pretrained=...)` (resnetlab.weights),
one layer up: the models know nothing of files.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from resnetlab.models.registry import BUILDERS, match_names, unknown_model

if TYPE_CHECKING:  # torch takes seconds to import; `resnetlab models` only needs the names
    from torch import nn


def _load_builtins() -> None:
    """Import the built-in builders, which register themselves; deferred to the first lookup."""
    import resnetlab.models.gpt  # noqa: F401
    import resnetlab.models.mlp  # noqa: F401
    import resnetlab.models.resnet  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, in natural order (resnet20 < resnet110)."""
    _load_builtins()
    return match_names(pattern, BUILDERS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered as `name`; unknown names raise ValueError with close matches."""
    _load_builtins()
    try:
        return BUILDERS[name]
    except KeyError:
        raise unknown_model(name, BUILDERS) from None


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model with random weights: `create_model("resnet56", num_classes=10, in_chans=1)`.

    Weights are loaded by `resnetlab.create_model(name, pretrained=...)` (resnetlab.weights).
    """
    if "pretrained" in kwargs:
        raise ValueError(
            "resnetlab.models.create_model builds random weights; load weights with "
            f"resnetlab.create_model({name!r}, pretrained=...)"
        )
    return get_builder(name)(**kwargs)
