"""Mixed precision: which autocast a run uses, decided in one place for training and evaluation."""

from __future__ import annotations

import contextlib

import torch

from resnetlab.errors import Error


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (CPU or CUDA), fp16 autocast (CUDA only; pair it with a GradScaler), or none."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16" and device.type != "cuda":
        raise Error("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    if amp == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    raise Error(f"unknown --amp {amp!r}; use none, bf16 or fp16")


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """Loss scaling keeps small fp16 gradients from flushing to zero; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
