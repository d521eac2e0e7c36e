"""BN folding: each conv -> BN pair becomes one conv with a bias, for inference.

A BN that reads a conv's output directly folds exactly: W' = W * g / s, b' = (b - mean) * g / s
+ beta, s = sqrt(var + eps) (`torch.nn.utils.fusion.fuse_conv_bn_weights`). The pre-activation
BN at the start of a pre-activation unit reads the sum of two paths and feeds a ReLU, so it
cannot fold and stays, as does the final BN of a pre-activation net.
"""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from resnetlab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from resnetlab.models.layers import FrozenBatchNorm2d

# (conv, the BN that reads its output) inside each block; a pre-activation unit's bn_k+1
# normalises conv_k's output, while its bn1 normalises the block input [He16].
_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    PreActBasicBlock: (("conv1", "bn2"),),
    PreActBottleneck: (("conv1", "bn2"), ("conv2", "bn3")),
}
_BN = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _fused(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    out = copy.deepcopy(conv)
    out.weight, out.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    return out


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str, bn_parent: nn.Module | None = None) -> None:
    """Fold `bn_parent.bn_name` (default: a sibling) into `parent.conv_name` if they are a conv and a BN."""
    bn_parent = parent if bn_parent is None else bn_parent
    conv, bn = getattr(parent, conv_name), getattr(bn_parent, bn_name)
    if isinstance(conv, nn.Conv2d) and isinstance(bn, _BN):
        setattr(parent, conv_name, _fused(conv, bn))
        setattr(bn_parent, bn_name, nn.Identity())


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode with every conv -> BN pair folded into the conv: the stem
    (ResNet-D's deep stem too), the blocks' main paths and the projection shortcuts (any
    `nn.Sequential` with a conv then a BN, ResNet-D's average-pool projections included).
    Its outputs equal the eval-mode original's within float rounding; `model` is unchanged."""
    folded = copy.deepcopy(model).eval()
    if getattr(folded, "preact", True) is False and hasattr(folded, "conv1") and hasattr(folded, "bn1"):
        stem = folded.conv1
        if isinstance(stem, nn.Sequential):  # ResNet-D's deep stem: its last conv feeds the net's bn1
            _fold_pair(stem, list(stem._modules)[-1], "bn1", bn_parent=folded)
        else:
            _fold_pair(folded, "conv1", "bn1")  # the stem: conv1 -> bn1 -> ReLU
    for module in folded.modules():
        for conv_name, bn_name in _PAIRS.get(type(module), ()):
            _fold_pair(module, conv_name, bn_name)
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                _fold_pair(module, a, b)
    return folded


def count_bn(model: nn.Module) -> int:
    """Batch-norm layers (trainable or frozen) left in `model`."""
    return sum(isinstance(m, _BN) for m in model.modules())
