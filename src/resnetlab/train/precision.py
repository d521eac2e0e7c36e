"""Mixed precision: which autocast a run uses, decided in one place for training and evaluation."""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import torch

from resnetlab.errors import Error


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (CPU or CUDA), fp16 autocast (CUDA only; pair it with a GradScaler), or none."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "bf16":
        if device.type == "cuda":
            _warn_if_bf16_is_emulated(torch.cuda.current_device() if device.index is None else device.index)
        elif device.type == "cpu" and not cpu_has_native_bf16():
            _warn_once_cpu_bf16_is_emulated()
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16" and device.type != "cuda":
        raise Error("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    if amp == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    raise Error(f"unknown --amp {amp!r}; use none, bf16 or fp16")


def resolve_amp(device: torch.device, amp: str) -> str:
    """ "auto" -> "bf16" where bf16 runs natively (a GPU of compute capability 8.0 or newer, a CPU
    with AVX512-BF16 or AMX), else "none"; any other value as it is. The experiments default to
    it, so a quick preset runs at its fastest on any machine."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return "bf16" if torch.cuda.get_device_capability(index) >= (8, 0) else "none"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "none"


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling keeps small fp16 gradients from flushing to zero; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convs and matmuls natively here (AVX512-BF16 or AMX); without
    them bf16 autocast is emulated: 7.6x slower than fp32 for a small ResNet on a 2-core AMD EPYC
    with AVX2 only (109.6 s against 14.4 s). True where the check itself is not available."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


@functools.cache
def _warn_once_cpu_bf16_is_emulated() -> None:
    if os.environ.get("RANK", "0") == "0":
        print(
            "resnetlab: warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so --amp bf16 runs "
            "emulated, several times slower than --amp none",
            file=sys.stderr,
        )


@functools.cache
def _warn_if_bf16_is_emulated(index: int) -> None:
    """Once per GPU (and on rank 0 only): bf16 matmuls and convs need Ampere (compute capability 8.0)
    or newer; on a V100 or T4 they are emulated, slower than fp32, and fp16 is the fast choice."""
    major, minor = torch.cuda.get_device_capability(index)
    if major < 8 and os.environ.get("RANK", "0") == "0":
        print(
            f"resnetlab: warning: {torch.cuda.get_device_name(index)} (compute capability {major}.{minor}) "
            "has no native bf16, so --amp bf16 runs emulated and slow; use --amp fp16",
            file=sys.stderr,
        )
