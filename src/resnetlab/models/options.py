"""The options every model accepts, `create_model(name, **options)`, checked in one place."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from resnetlab.errors import Error
from resnetlab.models.layers import NORMS, SHORTCUTS

STEMS = ("default", "deep")


@dataclass(frozen=True)
class ResNetOptions:
    """Options shared by every network; builders set their own defaults (CIFAR: 10 classes, "A")."""

    num_classes: int = 1000  # outputs of the final FC; 0 = no classifier (pooled features)
    in_chans: int = 3  # input channels: 1 for (Fashion-)MNIST
    shortcut: str = "B"  # "A" zero-pad, "B" project if the shape changes, "C" always [He15 §3.3]; "none"
    norm: str = "bn"  # "bn", "frozen_bn", "gn" (GroupNorm, small batches) or "none"
    zero_init_residual: bool = False  # every block starts as the identity [Goyal17]
    drop_path_rate: float = 0.0  # stochastic depth: drop probability of the last block [Huang16]
    stride_in_1x1: bool = False  # bottleneck stride on the first 1x1 (paper, "v1"), not the 3x3 ("v1.5")
    groups: int = 1  # groups of the bottleneck 3x3, ResNeXt's cardinality C: 32 in "32x4d" [Xie17]
    base_width: int = 64  # bottleneck 3x3 channels per group at planes 64: 4 in "32x4d"; 128 = wide
    stem: str = "default"  # "default" (7x7/2 ImageNet, 3x3 CIFAR) or "deep": 3x3 convs 32/2-32-64 [He19]
    avg_down: bool = False  # projections: 2x2/2 average pool, then 1x1/1 conv + norm (ResNet-D) [He19]
    output_stride: int | None = None  # input size / final feature size; None = native (ImageNet 32, CIFAR 4)
    features_only: bool = False  # forward returns the stage maps listed by out_indices, no classifier
    out_indices: tuple[int, ...] | None = None  # indices into forward_intermediates(); None = all

    @classmethod
    def parse(cls, kwargs: Mapping[str, object], **defaults: object) -> ResNetOptions:
        """Options from user keyword arguments over a builder's defaults; unknown names are errors."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise Error(f"unknown model option {unknown[0]!r}; valid options: {', '.join(names)}")
        return cls(**{**defaults, **kwargs})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        _check_int("num_classes", self.num_classes, 0)
        _check_int("in_chans", self.in_chans, 1)
        _check_choice("shortcut", self.shortcut, SHORTCUTS)
        _check_choice("norm", self.norm, NORMS)
        _check_int("groups", self.groups, 1)
        _check_int("base_width", self.base_width, 1)
        _check_choice("stem", self.stem, STEMS)
        for name in ("zero_init_residual", "stride_in_1x1", "avg_down", "features_only"):
            if not isinstance(getattr(self, name), bool):
                raise Error(f"{name} must be True or False; got {getattr(self, name)!r}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise Error(f"drop_path_rate must be a number in [0, 1), e.g. 0.5 [Huang16]; got {rate!r}")
        if self.shortcut == "none" and self.zero_init_residual:
            raise Error("zero_init_residual needs a shortcut: a plain block with a zeroed branch outputs 0")
        if self.shortcut == "none" and rate > 0:
            raise Error("drop_path_rate needs a shortcut: a plain block has no identity path to fall back on")
        if self.avg_down and self.shortcut not in ("B", "C"):
            raise Error(
                f"avg_down changes projection shortcuts (B or C) and shortcut {self.shortcut!r} has none; "
                "pass avg_down=False"
            )
        if self.output_stride is not None:
            _check_choice("output_stride", self.output_stride, (1, 2, 4, 8, 16, 32))
        if self.out_indices is not None:
            if not self.features_only:
                raise Error("out_indices applies only with features_only=True")
            indices = tuple(self.out_indices)
            if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
                raise Error(f"out_indices must be a non-empty tuple of ints; got {self.out_indices!r}")
            object.__setattr__(self, "out_indices", indices)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Error(f"{name} must be an integer >= {minimum}; got {value!r}")


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if isinstance(value, bool) or value not in choices:
        raise Error(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
