"""Test-time augmentation: each image scored by the averaged logits of a few views of it.

none        the image alone;
flip        the image and its mirror, averaged (for nets trained with flips);
flip-shift  also that pair shifted one pixel down-right and one up-left (reflected border),
            weighted 1/2 for the unshifted pair and 1/4 for each shifted one, as airbench does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import Error

TTA_MODES = ("none", "flip", "flip-shift")


def check_tta(mode: str) -> None:
    if mode not in TTA_MODES:
        raise Error(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits under `mode`, logits of the plain view), both float32 (B, K); x is (B, C, H, W)."""
    check_tta(mode)
    single = model(x).float()
    if mode == "none":
        return single, single
    pair = (single + _mirror_logits(model, x)) / 2  # x.flip(-1) mirrors W in any memory layout
    if mode == "flip":
        return pair, single
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]  # content moved 1 px down-right, up-left
    pairs = [(model(v).float() + _mirror_logits(model, v)) / 2 for v in shifted]
    return pair / 2 + (pairs[0] + pairs[1]) / 4, single


def _mirror_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x.flip(-1)).float()
