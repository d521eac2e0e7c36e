"""Layers the blocks are made of: convs, the norm choice, the shortcut mappings and DropPath."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error

NORMS = ("bn", "frozen_bn", "gn", "none")
SHORTCUTS = ("A", "B", "C", "none")


def conv3x3(in_chans: int, out_chans: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 conv that keeps the spatial size at stride 1; `groups` > 1 is ResNeXt's grouped conv
    [Xie17]. No bias: a norm follows it (and with norm="none" the study is of the bare convs, as
    in the plain-net experiments)."""
    return nn.Conv2d(
        in_chans, out_chans, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups, bias=False
    )


def conv1x1(in_chans: int, out_chans: int, stride: int = 1) -> nn.Conv2d:
    """1x1 conv: the bottleneck's reduce/expand layers and the projection shortcut."""
    return nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms, all buffers: nothing trains and
    train() changes nothing. For fine-tuning and detection backbones at small batch sizes.

    The state-dict keys are BatchNorm2d's, so BN checkpoints load into it with strict=True.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # BatchNorm2d checkpoints carry a step counter that frozen statistics have no use for.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer after a conv: "bn", "frozen_bn", "gn" or "none" (identity)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "gn":
        # 32 groups as in Wu & He (2018); CIFAR's 16-channel stages get one channel per group.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise Error(f"norm must be one of {', '.join(NORMS)}; got {kind!r}")


def zero_init_(norm: nn.Module, conv: nn.Conv2d) -> None:
    """Make a residual branch output zero: zero the last norm's scale gamma [Goyal17], or the
    last conv itself where no affine norm follows it (norm="none", pre-activation branches)."""
    weight = getattr(norm, "weight", None)
    with torch.no_grad():
        (weight if weight is not None else conv.weight).zero_()


class ZeroPadShortcut(nn.Module):
    """Option A shortcut [He15 §3.3]: identity subsampled by `stride`, extra channels zero.

    Parameter-free; the new channels are appended after the old ones (the paper does not say
    where the zeros go, only that they add no parameters).
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.in_chans, self.out_chans, self.stride = in_chans, out_chans, stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C_in, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.out_chans - self.in_chans))  # (N, C_out, H/s, W/s)

    def extra_repr(self) -> str:
        return f"{self.in_chans}, {self.out_chans}, stride={self.stride}"


def make_shortcut(
    kind: str,
    in_chans: int,
    out_chans: int,
    stride: int,
    norm: str,
    *,
    preact: bool = False,
    avg_down: bool = False,
) -> nn.Module | None:
    """The shortcut module of one block, or None for the identity.

    "B" projects only where the shape changes, "C" everywhere [He15 §3.3]. Projections are
    1x1 conv + norm (torchvision's `downsample.0/.1`); pre-activation blocks use the bare conv,
    since the next block normalises the sum [He16]. `avg_down` is ResNet-D's projection [He19]:
    a strided 1x1 conv reads one pixel in four, so a 2x2 average pool (an identity at stride 1)
    comes first and the conv has stride 1 (timm's `downsample.0` pool, `.1` conv, `.2` norm).
    "A" and "none" (plain) get the option-A mapping where the shape changes: a plain block never
    adds it, but analyses can still ask for it through `block.shortcut(x)`.
    """
    if kind not in SHORTCUTS:
        raise Error(f"shortcut must be one of {', '.join(SHORTCUTS)}; got {kind!r}")
    reshapes = stride != 1 or in_chans != out_chans
    if kind == "C" or (kind == "B" and reshapes):
        if avg_down:
            # ceil_mode: an odd map keeps the size of the branch's 3x3/2 output (7 px -> 4).
            pool = (
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity()
            )
            layers = [pool, conv1x1(in_chans, out_chans)]
        else:
            layers = [conv1x1(in_chans, out_chans, stride)]
        if preact:
            return layers[0] if len(layers) == 1 else nn.Sequential(*layers)
        return nn.Sequential(*layers, make_norm(norm, out_chans))
    if reshapes:
        return ZeroPadShortcut(in_chans, out_chans, stride)
    return None


class DropPath(nn.Module):
    """Stochastic depth [Huang16]: drop the whole residual branch for a random subset of samples.

    Survivors are scaled by 1/(1-p) during training, so inference is the plain forward; the
    paper scales by the survival probability at test time instead, which is equivalent.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # one draw per sample
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.4g}"
