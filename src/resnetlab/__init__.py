"""resnetlab: build, train, analyse and deploy residual networks [He15, He16]."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from resnetlab.errors import Error

__version__ = "0.1.0"
__all__ = ["Error", "create_model", "list_models", "__version__"]

if TYPE_CHECKING:
    from resnetlab.models import create_model, list_models


def __getattr__(name: str) -> Any:
    # The models load torch (seconds) on first use, not at `import resnetlab` (PEP 562).
    if name in ("create_model", "list_models"):
        from resnetlab.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
