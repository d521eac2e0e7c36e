"""The four residual units: BasicBlock and Bottleneck [He15 Fig. 5], and their pre-activation
versions [He16 Fig. 1(b)].

Every block splits its forward into `residual(x)` (the branch F(x)) and `shortcut(x)`, so
analyses can take them apart without hooks. With shortcut="none" a block is the plain twin:
the same layers, and the forward never adds the shortcut.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.models.layers import DropPath, conv1x1, conv3x3, make_norm, make_shortcut, zero_init_


def bottleneck_width(planes: int, groups: int, base_width: int) -> int:
    """Channels of a bottleneck's 3x3: planes * base_width / 64 per group, times groups [Xie17];
    planes for ResNet's own (1, 64), 4 * 32 = 128 in ResNeXt-50 32x4d's first stage."""
    width = planes * base_width // 64 * groups
    if width < 1:
        raise Error(
            f"base_width {base_width} leaves no channel per group at {planes} planes: "
            f"use base_width >= {-(-64 // planes)}"
        )
    return width


class _Unit(nn.Module):
    """What all four blocks share: the shortcut path."""

    expansion = 1  # output channels / planes
    preact = False  # BN-ReLU before each conv [He16] instead of after
    downsample: nn.Module | None
    has_shortcut: bool

    def shortcut(self, x: Tensor) -> Tensor:
        """The shortcut path: identity, option-A zero-pad, or projection `downsample`."""
        return x if self.downsample is None else self.downsample(x)


class BasicBlock(_Unit):
    """Two 3x3 convs [He15 Fig. 2]: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        dilation: int = 1,
        shortcut: str = "B",
        norm: str = "bn",
        drop_path: float = 0.0,
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = make_norm(norm, planes)
        self.downsample = make_shortcut(shortcut, inplanes, planes, stride, norm, avg_down=avg_down)
        self.has_shortcut = shortcut != "none"
        self.drop_path = DropPath(drop_path)

    def residual(self, x: Tensor) -> Tensor:
        """F(x), before the addition and the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.residual(x))
        if self.has_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)

    def zero_init_last(self) -> None:
        zero_init_(self.bn2, self.conv2)

    def response_layers(self) -> list[nn.Module]:
        """Modules whose outputs are the 3x3 responses after BN, before ReLU/addition [He15 Fig. 7]."""
        if isinstance(self.bn1, nn.Identity):
            return [self.conv1, self.conv2]
        return [self.bn1, self.bn2]


class Bottleneck(_Unit):
    """1x1 reduce, 3x3, 1x1 expand (x4) [He15 Fig. 5 right].

    The stride sits on the 3x3 conv as in torchvision ("v1.5"); `stride_in_1x1=True` puts it on
    the first 1x1 as in the paper ("v1"). `groups` and `base_width` set the inner width: ResNeXt
    "32x4d" is a 3x3 of 32 groups of 4 channels at planes 64 [Xie17 Fig. 3(c)], Wide ResNet-50-2
    is base_width 128 [Zagoruyko16]; the defaults (1, 64) are ResNet's own bottleneck.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        dilation: int = 1,
        shortcut: str = "B",
        norm: str = "bn",
        drop_path: float = 0.0,
        avg_down: bool = False,
        stride_in_1x1: bool = False,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        width = bottleneck_width(planes, groups, base_width)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn1 = make_norm(norm, width)
        self.conv2 = conv3x3(width, width, stride_3x3, dilation, groups)
        self.bn2 = make_norm(norm, width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = make_norm(norm, planes * self.expansion)
        self.downsample = make_shortcut(
            shortcut, inplanes, planes * self.expansion, stride, norm, avg_down=avg_down
        )
        self.has_shortcut = shortcut != "none"
        self.drop_path = DropPath(drop_path)

    def residual(self, x: Tensor) -> Tensor:
        """F(x), before the addition and the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.residual(x))
        if self.has_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)

    def zero_init_last(self) -> None:
        zero_init_(self.bn3, self.conv3)

    def response_layers(self) -> list[nn.Module]:
        """The module whose output is the 3x3 response after BN, before ReLU [He15 Fig. 7]."""
        return [self.conv2 if isinstance(self.bn2, nn.Identity) else self.bn2]


class PreActBasicBlock(_Unit):
    """Pre-activation basic unit [He16 Fig. 1(b)]: x + conv2(relu(bn2(conv1(relu(bn1(x)))))).

    No ReLU after the addition, so the shortcut path is a clean identity. Projections read the
    block input x; the authors' Torch code feeds them the pre-activated input instead, which has
    the same parameters.
    """

    preact = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        dilation: int = 1,
        shortcut: str = "B",
        norm: str = "bn",
        drop_path: float = 0.0,
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        self.bn1 = make_norm(norm, inplanes)
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn2 = make_norm(norm, planes)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.downsample = make_shortcut(
            shortcut, inplanes, planes, stride, norm, preact=True, avg_down=avg_down
        )
        self.has_shortcut = shortcut != "none"
        self.drop_path = DropPath(drop_path)

    def residual(self, x: Tensor) -> Tensor:
        """F(x), before the addition."""
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.residual(x))
        return out + self.shortcut(x) if self.has_shortcut else out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)  # no norm follows the last conv of a pre-act branch

    def response_layers(self) -> list[nn.Module]:
        """The 3x3 convs: a pre-activation branch has no BN between a conv and the addition."""
        return [self.conv1, self.conv2]


class PreActBottleneck(_Unit):
    """Pre-activation bottleneck unit [He16]: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (x4), plus x.

    The stride sits on the 3x3 conv, as in the authors' code; `stride_in_1x1=True` moves it.
    `groups` and `base_width` set the inner width as in `Bottleneck`.
    """

    expansion = 4
    preact = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        dilation: int = 1,
        shortcut: str = "B",
        norm: str = "bn",
        drop_path: float = 0.0,
        avg_down: bool = False,
        stride_in_1x1: bool = False,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        width = bottleneck_width(planes, groups, base_width)
        self.bn1 = make_norm(norm, inplanes)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn2 = make_norm(norm, width)
        self.conv2 = conv3x3(width, width, stride_3x3, dilation, groups)
        self.bn3 = make_norm(norm, width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.downsample = make_shortcut(
            shortcut, inplanes, planes * self.expansion, stride, norm, preact=True, avg_down=avg_down
        )
        self.has_shortcut = shortcut != "none"
        self.drop_path = DropPath(drop_path)

    def residual(self, x: Tensor) -> Tensor:
        """F(x), before the addition."""
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return self.conv3(F.relu(self.bn3(out)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.drop_path(self.residual(x))
        return out + self.shortcut(x) if self.has_shortcut else out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3.weight)  # no norm follows the last conv of a pre-act branch

    def response_layers(self) -> list[nn.Module]:
        """The 3x3 conv: a pre-activation branch has no BN right after it."""
        return [self.conv2]
