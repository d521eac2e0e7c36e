"""One row per registered model: structure, size and cost, measured on a meta-device build, plus
the figure the paper reports for it (`resnetlab models`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.models.registry import create_model
from resnetlab.models.resnet import ResNet

# The paper's own figure for a model: test error (%) or, where the paper gives no error for that
# exact model, its cost ([He15]'s "FLOPs" are multiply-adds of the v1 nets: compare the MACs of
# `stride_in_1x1=True`). CIFAR-10 errors are single-crop, ImageNet top-1 errors 10-crop.
PAPER_FIGURES: dict[str, str] = {
    "resnet20": "CIFAR-10 err 8.75% [He15 Tab.6]",
    "resnet32": "CIFAR-10 err 7.51% [He15 Tab.6]",
    "resnet44": "CIFAR-10 err 7.17% [He15 Tab.6]",
    "resnet56": "CIFAR-10 err 6.97% [He15 Tab.6]",
    "resnet110": "CIFAR-10 err 6.43% [He15 Tab.6]",
    "resnet1202": "CIFAR-10 err 7.93% [He15 Tab.6]",
    "plain20": "CIFAR-10 err ~9.5% [He15 Fig.6]",
    "plain32": "CIFAR-10 err ~10% [He15 Fig.6]",
    "plain44": "CIFAR-10 err ~12% [He15 Fig.6]",
    "plain56": "CIFAR-10 err ~13.5% [He15 Fig.6]",
    "plain110": "CIFAR-10 err >60% [He15 §4.2]",
    "preact_resnet110": "CIFAR-10 err 6.37% [He16 Tab.3]",
    "preact_resnet164": "CIFAR-10 err 5.46% [He16 Tab.3]",
    "preact_resnet1001": "CIFAR-10 err 4.92% [He16 Tab.3]",
    "wrn28_10": "F-MNIST acc 95.9% [zalando README]",
    "wrn40_4": "F-MNIST acc 96.7% [zalando README]",
    "resnet18": "top-1 err 27.88% (A) [He15 Tab.2]",
    "resnet34": "top-1 err 24.52% (B) [He15 Tab.3]",
    "plain18": "top-1 err 27.94% [He15 Tab.2]",
    "plain34": "top-1 err 28.54% [He15 Tab.2]",
    "resnet50": "3.8G mult-adds (v1) [He15 Tab.1]",
    "resnet101": "7.6G mult-adds (v1) [He15 Tab.1]",
    "resnet152": "11.3G mult-adds (v1) [He15 Tab.1]",
}

# WRN-d-k counts its convolutions, the three 1x1 projections included and the FC not
# [Zagoruyko16]; every other depth here is [He15]'s count of weighted layers on the main path.
_NAMED_DEPTH = {"wrn28_10": 28, "wrn40_4": 40}

NATIVE_SIZE = {"cifar": 32, "imagenet": 224}  # input height = width, in pixels


@dataclass(frozen=True)
class ModelSummary:
    name: str
    family: str  # "cifar" or "imagenet"
    depth: int
    block: str  # "basic", "bottleneck", "preact-basic" or "preact-bottleneck"
    shortcut: str  # "A", "B", "C" or "none"
    params: int
    macs: int  # multiply-accumulates of one image at the native input size
    input_size: int  # pixels
    paper: str  # the paper's figure, "" where there is none


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass (convs and FC; norms and adds are not counted,
    as in torchvision's tables): torch's FLOP counter halved, since it counts 2 per MAC."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device))
    return counter.get_total_flops() // 2


def weighted_depth(model: ResNet) -> int:
    """Weighted layers on the main path [He15]: the stem conv, every branch conv, and the FC."""
    convs = sum(
        isinstance(m, nn.Conv2d)
        for block in model.blocks()
        for name, m in block.named_modules()
        if not name.startswith("downsample")
    )
    return 1 + convs + 1


def summarize(name: str) -> ModelSummary:
    """Build `name` with default arguments on the meta device (no memory, no init) and measure it."""
    with torch.device("meta"):
        model = create_model(name)
        # MACs on the norm-free twin: the counter skips norms anyway, and meta-device BN is slow.
        bare = create_model(name, norm="none").eval()
    assert isinstance(model, ResNet)
    size = NATIVE_SIZE[model.family]
    kind = "bottleneck" if model.blocks()[0].expansion > 1 else "basic"
    return ModelSummary(
        name=name,
        family=model.family,
        depth=_NAMED_DEPTH.get(name, weighted_depth(model)),
        block=f"preact-{kind}" if model.preact else kind,
        shortcut=model.shortcut_type,
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(bare, (1, model.in_chans, size, size)),
        input_size=size,
        paper=PAPER_FIGURES.get(name, ""),
    )
