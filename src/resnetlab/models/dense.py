"""Dense prediction on a ResNet backbone: a segmentation head and a detection head ("Objects as
Points" [Zhou19], CenterNet), each on the backbone's last stage (single scale) or on the finest
level of a feature pyramid over its stages (`models/fpn.py`, [Lin17]).

`TaskModel` holds the three parts: backbone (any registered model with `features_only`), an
optional FPN, and a head. The head reads one feature map, at stride `TaskModel.stride`:

  single scale  the last stage (stride 4 for the CIFAR-style nets, 32 for the ImageNet ones)
  FPN           the pyramid's finest level over the stages of stride >= 2 (2 for CIFAR-style,
                4 for ImageNet-style nets, the stride CenterNet uses)

>>> model = task_model("resnet20", "segment", num_classes=10, in_chans=1, fpn=True)
>>> model(torch.zeros(2, 1, 96, 96)).shape  # per-pixel logits, class 0 = background
torch.Size([2, 11, 96, 96])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.models.factory import create_model
from resnetlab.models.fpn import FPN
from resnetlab.models.layers import conv3x3

TASKS = ("segment", "detect")
MIN_PYRAMID_STRIDE = 2  # the FPN covers the stages of this stride and coarser
HEATMAP_PRIOR = 0.1  # initial centre probability of the heatmap's bias [Zhou19, after RetinaNet]


def _branch(in_chs: int, hidden: int, out_chs: int) -> nn.Sequential:
    """3x3 conv, BN, ReLU, 1x1 conv: one output map of a head. The BN is not in [Zhou19], which
    trains with Adam at lr 1.25e-4; it keeps the head stable under resnetlab's SGD recipes (without
    it the heatmap logits reach 1e5 by the second step at lr 0.05)."""
    return nn.Sequential(
        conv3x3(in_chs, hidden), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_chs, 1)
    )


class SegmentationHead(nn.Module):
    """(N, C, h, w) features -> (N, K + 1, H, W) per-pixel logits at the input size (class 0:
    background), upsampled bilinearly from the features' stride."""

    def __init__(self, in_chs: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.logits = _branch(in_chs, hidden, num_classes + 1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.logits(features), size=size, mode="bilinear", align_corners=False)


class CenterNetHead(nn.Module):
    """Objects as Points [Zhou19]: at each location of the features (stride R), one centre
    logit per class, the box's width and height and the centre's sub-cell offset, both in cells.
    Out: {"heatmap": (N, K, h, w) logits, "size": (N, 2, h, w), "offset": (N, 2, h, w)}."""

    def __init__(self, in_chs: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.heatmap = _branch(in_chs, hidden, num_classes)
        self.size = _branch(in_chs, hidden, 2)
        self.offset = _branch(in_chs, hidden, 2)
        # Every location starts as a centre with probability 0.1, not 0.5: the loss is not swamped
        # by the background at the first steps [Zhou19 §4, after RetinaNet].
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {
            "heatmap": self.heatmap(features),
            "size": self.size(features),
            "offset": self.offset(features),
        }


class TaskModel(nn.Module):
    """A backbone's features through an optional FPN into a segmentation or detection head."""

    def __init__(
        self, backbone: nn.Module, task: str, num_classes: int, *, fpn: bool, channels: int = 64
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise Error(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
        if not getattr(backbone, "features_only", False) or not hasattr(backbone, "feature_info"):
            name = getattr(backbone, "name", type(backbone).__name__)
            raise Error(f"{name} has no features_only interface; a task needs a ResNet backbone")
        info = backbone.feature_info
        if fpn:
            used = [
                i
                for i, f in enumerate(info)
                if f["reduction"] >= MIN_PYRAMID_STRIDE and f["module"] != "stem"
            ]
        else:
            used = [len(info) - 1]
        self.backbone, self.task, self.num_classes = backbone, task, num_classes
        self.used = used  # indices into the backbone's outputs that the neck or head reads
        # The head reads the finest level only: the FPN makes no other.
        self.fpn = FPN([info[i]["num_chs"] for i in used], channels, levels=1) if fpn else None
        in_chs = channels if fpn else info[used[0]]["num_chs"]
        self.stride = info[used[0]]["reduction"]  # px of input per cell of the map the head reads
        self.head = (
            SegmentationHead(in_chs, num_classes) if task == "segment" else CenterNetHead(in_chs, num_classes)
        )
        self.in_chans = backbone.in_chans

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        features = self.backbone(x)
        picked = [features[i] for i in self.used]
        level = self.fpn(picked)[0] if self.fpn is not None else picked[0]
        if self.task == "segment":
            return self.head(level, x.shape[-2:])
        return self.head(level)


def task_model(
    backbone: str | nn.Module,
    task: str,
    *,
    num_classes: int,
    fpn: bool,
    in_chans: int = 3,
    channels: int = 64,
    **backbone_kwargs: object,
) -> TaskModel:
    """A `TaskModel` on `backbone`: a registered model name (built with `features_only`, random
    weights) or a module already built with it (pretrained weights: `resnetlab.weights.load(...,
    features_only=True)`)."""
    if isinstance(backbone, str):
        backbone = create_model(backbone, features_only=True, in_chans=in_chans, **backbone_kwargs)
    return TaskModel(backbone, task, num_classes, fpn=fpn, channels=channels)


def decode_centers(outputs: dict[str, Tensor], stride: int, *, top_k: int = 100) -> list[dict[str, Tensor]]:
    """Boxes from a CenterNet head's outputs: per image, the `top_k` highest centre scores that are
    peaks of their 3x3 neighbourhood (the max-pool test that stands in for non-maximum
    suppression [Zhou19 §4]), each with its box. Out per image: {"boxes": (k, 4) [x0, y0, x1, y1)
    px, "scores": (k,), "labels": (k,)}."""
    heat = outputs["heatmap"].detach().float().sigmoid()
    n, k, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    scores, flat = peaks.reshape(n, -1).topk(min(top_k, k * h * w), dim=1)
    labels, cell = flat // (h * w), flat % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    size = outputs["size"].detach().float().reshape(n, 2, -1)
    offset = outputs["offset"].detach().float().reshape(n, 2, -1)
    out = []
    for i in range(n):
        bw, bh = size[i, 0, cell[i]], size[i, 1, cell[i]]
        cx, cy = xs[i] + offset[i, 0, cell[i]], ys[i] + offset[i, 1, cell[i]]
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1) * stride
        keep = scores[i] > 0
        out.append({"boxes": boxes[keep], "scores": scores[i][keep], "labels": labels[i][keep]})
    return out
