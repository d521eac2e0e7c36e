"""Kernel settings for a run: deterministic kernels for --deterministic, autotuned cuDNN otherwise."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from resnetlab import CUBLAS_WORKSPACE
from resnetlab.errors import Error


@contextlib.contextmanager
def kernel_settings(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for --deterministic, autotuned cuDNN otherwise; restored afterwards."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if deterministic:
        if device.type == "cuda":
            _check_cublas_workspace()
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic  # autotuning may pick other kernels per run
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]


def _check_cublas_workspace() -> None:
    """Deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first use in the process (the
    package sets it on import); set it now if CUDA is still unused, else refuse with the fix."""
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config is None and not torch.cuda.is_initialized():
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    elif config not in (":4096:8", ":16:8"):
        now = "unset" if config is None else f"{config!r}"
        raise Error(
            f"--deterministic on CUDA needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} (it is {now}) "
            "before CUDA is first used: export it before starting Python, or import resnetlab first"
        )
