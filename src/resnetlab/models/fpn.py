"""Feature Pyramid Network [Lin17]: every backbone stage, made as strong as the deepest.

Lateral 1x1 convs bring each stage's output (finest first, from `features_only`) to `channels`;
a top-down pass adds each coarser level, upsampled 2x by nearest neighbour, to the next finer
one; a 3x3 conv on each sum gives the level out (it smooths the upsampling's aliasing, as in the
paper). Levels keep their stage's stride: P_i has the reduction of stage i.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    """[C_1, ..., C_k] (finest first, channels `in_channels`) -> [P_1, ..., P_n], `channels` each:
    the finest `levels` levels (default all k). A head that reads fewer levels gets no 3x3 convs
    for the others: parameters that reach no loss would stop DDP at its second step."""

    def __init__(self, in_channels: list[int], channels: int = 64, *, levels: int | None = None) -> None:
        super().__init__()
        levels = len(in_channels) if levels is None else levels
        if not 1 <= levels <= len(in_channels):
            raise ValueError(f"levels must be 1..{len(in_channels)}, got {levels}")
        # No norm between them, so the convs keep their bias (as Detectron's FPN).
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels))
        for conv in [*self.lateral, *self.smooth]:
            nn.init.kaiming_uniform_(conv.weight, a=1)  # Detectron's "caffe2_xavier": unit gain
            nn.init.zeros_(conv.bias)
        self.channels = channels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        merged = [self.lateral[-1](features[-1])]
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1]), strict=True):
            top_down = F.interpolate(merged[0], size=feature.shape[-2:], mode="nearest")
            merged.insert(0, lateral(feature) + top_down)
        return [smooth(p) for smooth, p in zip(self.smooth, merged, strict=False)]  # the finest first
