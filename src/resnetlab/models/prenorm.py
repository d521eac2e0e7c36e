"""The pre-norm residual unit of MLPs and transformers, x + s * f(norm(x)), and its plain twin f(norm(x)).

The unit exposes `residual(x)` (the branch s * f(norm(x))) and `shortcut(x)` (the identity) as the
ResNet blocks do, so the gradient and lesion analyses take it apart without hooks. `branch_scale`
is "one" (s = 1, GPT-2 [Radford19]) or "zero": a learned scalar initialised at 0, so that every
unit starts as the identity, ReZero [Bachlechner20] and SkipInit [De20] (both drop the norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error

SEQ_NORMS = ("ln", "none")
BRANCH_SCALES = ("one", "zero")


def check_unit_options(norm: str, branch_scale: str, shortcut: bool) -> None:
    """Refuse option values the units do not have, in one line each."""
    if norm not in SEQ_NORMS:
        raise Error(f"norm must be one of {', '.join(SEQ_NORMS)} (layer norm or none); got {norm!r}")
    if branch_scale not in BRANCH_SCALES:
        raise Error(f"branch_scale must be one of {', '.join(BRANCH_SCALES)}; got {branch_scale!r}")
    if branch_scale == "zero" and not shortcut:
        # Without the addition a zero-scaled branch outputs zeros: the net would be constant.
        raise Error("branch_scale='zero' needs the shortcut: the plain twin would output zeros")


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, (..., width) -> (..., width) through `hidden` units."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))

    def last_layer(self) -> nn.Linear:
        return self.fc2


class PreNormUnit(nn.Module):
    """x + s * f(norm(x)) with the shortcut, s * f(norm(x)) without it (the plain twin)."""

    def __init__(self, width: int, fn: nn.Module, *, norm: str, branch_scale: str, shortcut: bool) -> None:
        super().__init__()
        check_unit_options(norm, branch_scale, shortcut)
        self.norm = nn.LayerNorm(width) if norm == "ln" else nn.Identity()
        self.fn = fn
        # A 0-d parameter only when learned, so s = 1 nets have exactly GPT-2's state dict keys.
        self.scale = nn.Parameter(torch.zeros(())) if branch_scale == "zero" else None
        self.has_shortcut = shortcut

    def residual(self, x: Tensor) -> Tensor:
        """The branch F(x) = s * f(norm(x)), before the addition."""
        out = self.fn(self.norm(x))
        return out if self.scale is None else out * self.scale

    def shortcut(self, x: Tensor) -> Tensor:
        """The identity: these units never change the width."""
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual(x)
        return out + x if self.has_shortcut else out

    def zero_init_last(self) -> None:
        """Make the branch output zero at init: the scale s if learned, else f's last layer."""
        with torch.no_grad():
            if self.scale is not None:
                self.scale.zero_()
            else:
                last = self.fn.last_layer()
                last.weight.zero_()
                if last.bias is not None:
                    last.bias.zero_()
