"""Residual networks and their plain twins [He15], pre-activation [He16], wide [Zagoruyko16],
ResNeXt [Xie17] and ResNet-D [He19].

One `ResNet` class covers both families of the paper:
- CIFAR [He15 §4.2]: 3x3 stem with 16 filters, three stages of 16/32/64 x width on 32/16/8 px;
- ImageNet [He15 Table 1]: 7x7/2 stem with 64 filters and a 3x3/2 max-pool, four stages of
  64/128/256/512 on 56/28/14/7 px.
The builders at the bottom are registered by name; their defaults are the papers' settings.
A plain twin's name is its ResNet's with `resnet` or `resnext` replaced by `plain`
(resnet50 -> plain50, resnext50_32x4d -> plain50_32x4d, wide_resnet50_2 -> wide_plain50_2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from resnetlab.models.layers import conv3x3, make_norm
from resnetlab.models.options import ResNetOptions
from resnetlab.models.registry import register_model

Block = type[BasicBlock] | type[Bottleneck] | type[PreActBasicBlock] | type[PreActBottleneck]

_STEMS = {"cifar": (16, 1), "imagenet": (64, 4)}  # family: stem (output channels, reduction)


class ResNet(nn.Module):
    """A residual network or its plain twin: stem, stages `layer1..layerN`, average pool, FC.

    Input (N, in_chans, H, W); output logits (N, num_classes), or with `features_only` the list
    of maps selected by `out_indices` from `forward_intermediates`.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        widths: Sequence[int],
        family: str,
        options: ResNetOptions,
    ) -> None:
        super().__init__()
        o = options
        bottleneck = block.expansion > 1
        if not bottleneck and o.stride_in_1x1:
            raise Error("stride_in_1x1 applies to bottleneck blocks only (it moves the stride to the 1x1)")
        if not bottleneck and (o.groups, o.base_width) != (1, 64):
            raise Error(
                "groups and base_width apply to bottleneck blocks only (ResNeXt, Wide ResNet): "
                "a basic block has no inner 3x3 to group or widen"
            )
        if o.stem == "deep" and family != "imagenet":
            raise Error(
                "stem='deep' replaces the 7x7 ImageNet stem [He19]; a CIFAR net's stem is one 3x3 conv"
            )
        stem_width, stem_reduction = _STEMS[family]
        self.family, self.preact, self.shortcut_type, self.norm = family, block.preact, o.shortcut, o.norm
        self.stem_type, self.avg_down, self.in_chans = o.stem, o.avg_down, o.in_chans
        self.groups, self.base_width = o.groups, o.base_width

        if family == "cifar":
            self.conv1: nn.Module = nn.Conv2d(o.in_chans, stem_width, 3, padding=1, bias=False)
        elif o.stem == "deep":
            self.conv1 = _deep_stem(o.in_chans, stem_width, o.norm)
        else:
            self.conv1 = nn.Conv2d(o.in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        # A pre-activation net starts with a bare conv: the first unit normalises its input [He16].
        self.bn1 = nn.Identity() if self.preact else make_norm(o.norm, stem_width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if family == "imagenet" else nn.Identity()

        # Stochastic depth: block l of L is dropped with probability rate * l / L [Huang16].
        total = sum(layers)
        drop_rates = [o.drop_path_rate * (i + 1) / total for i in range(total)]
        geometry = _stage_geometry(len(layers), stem_reduction, o.output_stride)

        extra: dict[str, Any] = {"avg_down": o.avg_down}
        if bottleneck:
            extra |= {"stride_in_1x1": o.stride_in_1x1, "groups": o.groups, "base_width": o.base_width}
        inplanes = stem_width
        self.feature_info = [
            {"index": 0, "module": "stem", "num_chs": stem_width, "reduction": stem_reduction}
        ]
        self.stage_names = []
        for i, (num_blocks, planes, (stride, dilations, reduction)) in enumerate(
            zip(layers, widths, geometry, strict=True)
        ):
            stage = []
            for j in range(num_blocks):
                unit = block(
                    inplanes,
                    planes,
                    stride if j == 0 else 1,
                    dilation=dilations[j > 0],
                    shortcut=o.shortcut,
                    norm=o.norm,
                    drop_path=drop_rates.pop(0),
                    **extra,
                )
                stage.append(unit)
                inplanes = planes * block.expansion
            name = f"layer{i + 1}"
            setattr(self, name, nn.Sequential(*stage))
            self.stage_names.append(name)
            self.feature_info.append(
                {"index": i + 1, "module": name, "num_chs": inplanes, "reduction": reduction}
            )
        self.num_features = inplanes
        # Pre-activation units end with an addition, so the net ends with the last BN-ReLU [He16].
        self.final_norm = make_norm(o.norm, inplanes) if self.preact else nn.Identity()

        self.features_only = o.features_only
        self.out_indices = o.out_indices or tuple(range(len(layers) + 1))
        if any(not 0 <= i <= len(layers) for i in self.out_indices):
            raise Error(f"out_indices must lie in 0..{len(layers)} (0 = stem, k = layer{{k}})")
        if self.features_only:
            self.feature_info = [self.feature_info[i] for i in self.out_indices]
        self.reset_classifier(0 if o.features_only else o.num_classes)
        self._init_weights(o.zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He initialisation [He15 ref. 13] over fan-out, as torchvision does.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for b in self.blocks():
                b.zero_init_last()

    def blocks(self) -> list[nn.Module]:
        """Every residual (or plain) block, in forward order."""
        return [b for name in self.stage_names for b in getattr(self, name)]

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the FC with a fresh one of `num_classes` outputs (0 = pooled features)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise Error(f"num_classes must be an integer >= 0; got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def first_conv(self) -> nn.Conv2d:
        """The conv that reads the input: `conv1`, or `conv1.0` of the deep stem."""
        return self.conv1 if isinstance(self.conv1, nn.Conv2d) else self.conv1[0]

    def stem(self, x: Tensor) -> Tensor:
        """(N, in_chans, H, W) -> (N, stem width, H / r, W / r); r = 1 (CIFAR) or 4 (ImageNet)."""
        x = self.conv1(x)
        if not self.preact:
            x = F.relu(self.bn1(x))
        return self.maxpool(x)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """[stem output, layer1 output, ..., layerN output]; see `feature_info` for their shapes."""
        feats = [self.stem(x)]
        for name in self.stage_names:
            feats.append(getattr(self, name)(feats[-1]))
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, in_chans, H, W) -> the last stage's map (N, num_features, H / 32, W / 32) on ImageNet."""
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return F.relu(self.final_norm(x)) if self.preact else x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling (N, C, H, W) -> (N, C), then the FC unless `pre_logits`."""
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        if self.features_only:
            feats = self.forward_intermediates(x)
            return [feats[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))


def _deep_stem(in_chans: int, width: int, norm: str) -> nn.Sequential:
    """The deep stem of ResNet-C, kept by ResNet-D [He19 Fig. 2(b)]: three 3x3 convs 32/2, 32, 64 in
    place of the 7x7/2 (0.24G MACs more at 224 px: 64 channels at 112 px cost more than 3). The
    first two carry their norm and ReLU; the last one's are the net's `bn1`, so the indices are
    timm's: `conv1.0` conv, `.1` norm, `.3`, `.4`, `.6`."""
    mid = width // 2
    return nn.Sequential(
        nn.Conv2d(in_chans, mid, 3, stride=2, padding=1, bias=False),
        make_norm(norm, mid),
        nn.ReLU(inplace=True),
        conv3x3(mid, mid),
        make_norm(norm, mid),
        nn.ReLU(inplace=True),
        conv3x3(mid, width),
    )


def _stage_geometry(
    num_stages: int, stem_reduction: int, output_stride: int | None
) -> list[tuple[int, tuple[int, int], int]]:
    """Per stage: (stride of its first block, (dilation of its first block, of the others),
    input size / output size after it). Stages that would go past `output_stride` trade their
    stride for dilation, keeping the receptive field with larger maps (DeepLab); the first block
    keeps the previous dilation, as in torchvision, which refuses this for BasicBlock."""
    native = stem_reduction * 2 ** (num_stages - 1)
    valid = [native // 2**k for k in range(num_stages)]
    output_stride = native if output_stride is None else output_stride
    if output_stride not in valid:
        choices = ", ".join(map(str, valid))
        raise Error(f"output_stride for this network must be one of {choices}; got {output_stride}")
    geometry, reduction, dilation = [], stem_reduction, 1
    for i in range(num_stages):
        stride, first_dilation = (1 if i == 0 else 2), dilation
        if reduction * stride > output_stride:
            dilation, stride = dilation * stride, 1
        reduction *= stride
        geometry.append((stride, (first_dilation, dilation), reduction))
    return geometry


# ---------------------------------------------------------------- builders: CIFAR [He15 §4.2]


def _cifar(block: Block, n: int, width: int, kwargs: dict[str, Any], **defaults: Any) -> ResNet:
    options = ResNetOptions.parse(kwargs, **{"num_classes": 10, "shortcut": "A", **defaults})
    widths = [16 * width, 32 * width, 64 * width]
    return ResNet(block, [n, n, n], widths=widths, family="cifar", options=options)


def _cifar_depth(depth: object, per_block: int) -> int:
    """Blocks per stage n from the depth per_block * 3n + 2 (stem conv + FC) [He15 §4.2, He16]."""
    step = 3 * per_block
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < step + 2 or (depth - 2) % step:
        kind, papers = ("basic", "110, 1202") if per_block == 2 else ("bottleneck", "164, 1001")
        first = ", ".join(str(step * n + 2) for n in range(1, 8))
        raise Error(
            f"CIFAR depth with {kind} blocks must be {step}n+2 ({first}, ..., {papers}); got {depth!r}"
        )
    return (depth - 2) // step


@register_model
def cifar_resnet(
    *, depth: int = 20, width: int = 1, preact: bool = False, bottleneck: bool = False, **kwargs: Any
) -> ResNet:
    """Any CIFAR ResNet: depth 6n+2 (basic) or 9n+2 (bottleneck), stage widths 16/32/64 x width.

    `cifar_resnet(depth=8)`, `cifar_resnet(depth=26, width=10, preact=True, shortcut="B")` is
    WRN-28-10 (the WRN paper also counts its three 1x1 projections, not the FC).
    """
    for name, flag in (("preact", preact), ("bottleneck", bottleneck)):
        if not isinstance(flag, bool):
            raise Error(f"{name} must be True or False; got {flag!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise Error(f"width must be an integer >= 1 (the WRN factor k); got {width!r}")
    if preact:
        block: Block = PreActBottleneck if bottleneck else PreActBasicBlock
    else:
        block = Bottleneck if bottleneck else BasicBlock
    return _cifar(block, _cifar_depth(depth, 3 if bottleneck else 2), width, kwargs)


@register_model
def resnet20(**kwargs: Any) -> ResNet:
    """ResNet-20 [He15 §4.2]: n = 3, option A, 0.27M parameters."""
    return _cifar(BasicBlock, 3, 1, kwargs)


@register_model
def resnet32(**kwargs: Any) -> ResNet:
    """ResNet-32 [He15 §4.2]: n = 5, option A, 0.46M parameters."""
    return _cifar(BasicBlock, 5, 1, kwargs)


@register_model
def resnet44(**kwargs: Any) -> ResNet:
    """ResNet-44 [He15 §4.2]: n = 7, option A, 0.66M parameters."""
    return _cifar(BasicBlock, 7, 1, kwargs)


@register_model
def resnet56(**kwargs: Any) -> ResNet:
    """ResNet-56 [He15 §4.2]: n = 9, option A, 0.85M parameters."""
    return _cifar(BasicBlock, 9, 1, kwargs)


@register_model
def resnet110(**kwargs: Any) -> ResNet:
    """ResNet-110 [He15 §4.2]: n = 18, option A, 1.7M parameters."""
    return _cifar(BasicBlock, 18, 1, kwargs)


@register_model
def resnet1202(**kwargs: Any) -> ResNet:
    """ResNet-1202 [He15 §4.2]: n = 200, option A, 19.4M parameters."""
    return _cifar(BasicBlock, 200, 1, kwargs)


@register_model
def plain20(**kwargs: Any) -> ResNet:
    """Plain-20 [He15 §4.2]: ResNet-20's layers without shortcuts."""
    return _cifar(BasicBlock, 3, 1, kwargs, shortcut="none")


@register_model
def plain32(**kwargs: Any) -> ResNet:
    """Plain-32 [He15 §4.2]: ResNet-32's layers without shortcuts."""
    return _cifar(BasicBlock, 5, 1, kwargs, shortcut="none")


@register_model
def plain44(**kwargs: Any) -> ResNet:
    """Plain-44 [He15 §4.2]: ResNet-44's layers without shortcuts."""
    return _cifar(BasicBlock, 7, 1, kwargs, shortcut="none")


@register_model
def plain56(**kwargs: Any) -> ResNet:
    """Plain-56 [He15 §4.2]: ResNet-56's layers without shortcuts."""
    return _cifar(BasicBlock, 9, 1, kwargs, shortcut="none")


@register_model
def plain110(**kwargs: Any) -> ResNet:
    """Plain-110 [He15 §4.2]: ResNet-110's layers without shortcuts; fails to train (>60% error)."""
    return _cifar(BasicBlock, 18, 1, kwargs, shortcut="none")


@register_model
def preact_resnet110(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-110 [He16 Table 3]: basic units, n = 18, option A, 1.7M parameters."""
    return _cifar(PreActBasicBlock, 18, 1, kwargs)


@register_model
def preact_resnet164(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-164 [He16 Table 3]: bottleneck units, n = 18, stage outputs 64/128/256.

    Projection shortcuts (option B) where the shape changes, as in the authors' code."""
    return _cifar(PreActBottleneck, 18, 1, kwargs, shortcut="B")


@register_model
def preact_resnet1001(**kwargs: Any) -> ResNet:
    """Pre-activation ResNet-1001 [He16 Table 3]: bottleneck units, n = 111, 10.2M parameters."""
    return _cifar(PreActBottleneck, 111, 1, kwargs, shortcut="B")


@register_model
def wrn28_10(**kwargs: Any) -> ResNet:
    """WRN-28-10 [Zagoruyko16]: pre-activation basic blocks, N = (28-4)/6 = 4, width x10, 36.5M."""
    return _cifar(PreActBasicBlock, 4, 10, kwargs, shortcut="B")


@register_model
def wrn40_4(**kwargs: Any) -> ResNet:
    """WRN-40-4 [Zagoruyko16]: pre-activation basic blocks, N = (40-4)/6 = 6, width x4, 8.9M."""
    return _cifar(PreActBasicBlock, 6, 4, kwargs, shortcut="B")


# ---------------------------------------------------------------- builders: ImageNet [He15 Table 1]


def _imagenet(block: Block, layers: Sequence[int], kwargs: dict[str, Any], **defaults: Any) -> ResNet:
    # Option B by default, like torchvision: its checkpoints then load with strict=True.
    options = ResNetOptions.parse(kwargs, **{"num_classes": 1000, "shortcut": "B", **defaults})
    return ResNet(block, layers, widths=[64, 128, 256, 512], family="imagenet", options=options)


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 [He15 Table 1]: basic blocks 2-2-2-2, 11.7M parameters, 1.8 GMACs."""
    return _imagenet(BasicBlock, [2, 2, 2, 2], kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 [He15 Table 1]: basic blocks 3-4-6-3, 21.8M parameters, 3.6 GMACs."""
    return _imagenet(BasicBlock, [3, 4, 6, 3], kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 [He15 Table 1]: bottlenecks 3-4-6-3, 25.6M parameters, 4.1 GMACs."""
    return _imagenet(Bottleneck, [3, 4, 6, 3], kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 [He15 Table 1]: bottlenecks 3-4-23-3, 44.5M parameters, 7.8 GMACs."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs)


@register_model
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 [He15 Table 1]: bottlenecks 3-8-36-3, 60.2M parameters, 11.5 GMACs."""
    return _imagenet(Bottleneck, [3, 8, 36, 3], kwargs)


@register_model
def plain18(**kwargs: Any) -> ResNet:
    """Plain-18 [He15 Table 2]: ResNet-18's layers without shortcuts."""
    return _imagenet(BasicBlock, [2, 2, 2, 2], kwargs, shortcut="none")


@register_model
def plain34(**kwargs: Any) -> ResNet:
    """Plain-34 [He15 Table 2]: ResNet-34's layers without shortcuts."""
    return _imagenet(BasicBlock, [3, 4, 6, 3], kwargs, shortcut="none")


@register_model
def plain50(**kwargs: Any) -> ResNet:
    """Plain-50: ResNet-50's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 6, 3], kwargs, shortcut="none")


@register_model
def plain101(**kwargs: Any) -> ResNet:
    """Plain-101: ResNet-101's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, shortcut="none")


@register_model
def plain152(**kwargs: Any) -> ResNet:
    """Plain-152: ResNet-152's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 8, 36, 3], kwargs, shortcut="none")


# ------------------------------------------------ builders: ResNeXt [Xie17] and Wide ResNet-50/101-2


@register_model
def resnext50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d [Xie17 Table 1]: bottlenecks 3-4-6-3, 3x3 in 32 groups of 4 at planes 64."""
    return _imagenet(Bottleneck, [3, 4, 6, 3], kwargs, groups=32, base_width=4)


@register_model
def resnext101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d [Xie17]: bottlenecks 3-4-23-3, 3x3 in 32 groups of 8 at planes 64."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, groups=32, base_width=8)


@register_model
def resnext101_64x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d [Xie17 Table 5]: bottlenecks 3-4-23-3, 3x3 in 64 groups of 4 at planes 64."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, groups=64, base_width=4)


@register_model
def wide_resnet50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2 [Zagoruyko16]: ResNet-50 with every bottleneck's inner width doubled."""
    return _imagenet(Bottleneck, [3, 4, 6, 3], kwargs, base_width=128)


@register_model
def wide_resnet101_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-101-2 [Zagoruyko16]: ResNet-101 with every bottleneck's inner width doubled."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, base_width=128)


@register_model
def plain50_32x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-50 32x4d's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 6, 3], kwargs, groups=32, base_width=4, shortcut="none")


@register_model
def plain101_32x8d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 32x8d's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, groups=32, base_width=8, shortcut="none")


@register_model
def plain101_64x4d(**kwargs: Any) -> ResNet:
    """ResNeXt-101 64x4d's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, groups=64, base_width=4, shortcut="none")


@register_model
def wide_plain50_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-50-2's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 6, 3], kwargs, base_width=128, shortcut="none")


@register_model
def wide_plain101_2(**kwargs: Any) -> ResNet:
    """Wide ResNet-101-2's layers without shortcuts."""
    return _imagenet(Bottleneck, [3, 4, 23, 3], kwargs, base_width=128, shortcut="none")


# ------------------------------------------------ builders: ResNet-D [He19]


def _resnet_d(block: Block, layers: Sequence[int], kwargs: dict[str, Any], **defaults: Any) -> ResNet:
    # The deep stem and average-pool projections [He19 Fig. 2(b, c)]; the stride is already on
    # the 3x3 (ResNet-B = v1.5). A plain twin has no projection, so nothing to average.
    avg_down = defaults.get("shortcut", "B") != "none"
    return _imagenet(block, layers, kwargs, stem="deep", avg_down=avg_down, **defaults)


@register_model
def resnet18d(**kwargs: Any) -> ResNet:
    """ResNet-18-D [He19]: ResNet-18 with the deep 3x3 stem and average-pool projections."""
    return _resnet_d(BasicBlock, [2, 2, 2, 2], kwargs)


@register_model
def resnet34d(**kwargs: Any) -> ResNet:
    """ResNet-34-D [He19]: ResNet-34 with the deep 3x3 stem and average-pool projections."""
    return _resnet_d(BasicBlock, [3, 4, 6, 3], kwargs)


@register_model
def resnet50d(**kwargs: Any) -> ResNet:
    """ResNet-50-D [He19 Table 5]: ResNet-50 with the deep 3x3 stem and average-pool projections."""
    return _resnet_d(Bottleneck, [3, 4, 6, 3], kwargs)


@register_model
def resnet101d(**kwargs: Any) -> ResNet:
    """ResNet-101-D [He19]: ResNet-101 with the deep 3x3 stem and average-pool projections."""
    return _resnet_d(Bottleneck, [3, 4, 23, 3], kwargs)


@register_model
def resnet152d(**kwargs: Any) -> ResNet:
    """ResNet-152-D [He19]: ResNet-152 with the deep 3x3 stem and average-pool projections."""
    return _resnet_d(Bottleneck, [3, 8, 36, 3], kwargs)


@register_model
def plain18d(**kwargs: Any) -> ResNet:
    """ResNet-18-D's layers without shortcuts: the deep stem and the plain blocks."""
    return _resnet_d(BasicBlock, [2, 2, 2, 2], kwargs, shortcut="none")


@register_model
def plain34d(**kwargs: Any) -> ResNet:
    """ResNet-34-D's layers without shortcuts."""
    return _resnet_d(BasicBlock, [3, 4, 6, 3], kwargs, shortcut="none")


@register_model
def plain50d(**kwargs: Any) -> ResNet:
    """ResNet-50-D's layers without shortcuts."""
    return _resnet_d(Bottleneck, [3, 4, 6, 3], kwargs, shortcut="none")


@register_model
def plain101d(**kwargs: Any) -> ResNet:
    """ResNet-101-D's layers without shortcuts."""
    return _resnet_d(Bottleneck, [3, 4, 23, 3], kwargs, shortcut="none")


@register_model
def plain152d(**kwargs: Any) -> ResNet:
    """ResNet-152-D's layers without shortcuts."""
    return _resnet_d(Bottleneck, [3, 8, 36, 3], kwargs, shortcut="none")
