"""resnetlab: build, train, analyse and deploy residual networks [He15, He16]."""

import os
import sys

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

from resnetlab.errors import Error  # noqa: E402
from resnetlab.models import create_model, list_models  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Error", "create_model", "list_models", "__version__"]
