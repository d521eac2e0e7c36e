"""resnetlab: build, train, analyse and deploy residual networks [He15, He16]."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from resnetlab.errors import Error

# Deterministic cuBLAS (`train --deterministic` on CUDA) needs this workspace setting, and PyTorch
# reads it once, when cuBLAS is first used: so it is set here, before this package touches CUDA,
# unless the user set it. If CUDA was already in use when this package was imported (a notebook),
# it is left unset and `fit` refuses --deterministic on CUDA with a clear error instead.
CUBLAS_WORKSPACE = ":4096:8"  # 8 workspaces of 4096 KiB; ":16:8" is cuBLAS's other deterministic value


def _set_cublas_workspace() -> None:
    torch = sys.modules.get("torch")  # not imported yet: then CUDA cannot have been used
    if "CUBLAS_WORKSPACE_CONFIG" in os.environ or (torch is not None and torch.cuda.is_initialized()):
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE


_set_cublas_workspace()

__version__ = "0.1.0"
__all__ = ["Error", "create_model", "list_models", "__version__"]

if TYPE_CHECKING:
    from resnetlab.models.factory import list_models
    from resnetlab.weights.load import create_model


def __getattr__(name: str) -> Any:
    # The models load torch (seconds) on first use, not at `import resnetlab` (PEP 562).
    # `create_model` is the one that also loads weights (pretrained=...), so it is the weights'.
    if name == "create_model":
        from resnetlab.weights.load import create_model

        return create_model
    if name == "list_models":
        from resnetlab.models.factory import list_models

        return list_models
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
