"""A residual MLP on flattened images, and its plain twin: the shortcut without convolutions.

    image (N, C, H, W) -> flatten -> embed: Linear(C*H*W, width)
        -> depth x PreNormUnit(norm -> Linear(width, hidden) -> GELU -> Linear(hidden, width))
        -> final norm -> fc: Linear(width, num_classes)

The twins share every layer and parameter; the plain one never adds the shortcut [He15 §4.2].
Init: He-normal for the first linear of a branch (GELU is ReLU-like), LeCun-normal (std
1/sqrt(fan_in)) elsewhere, biases zero, so a plain unit without norm keeps the signal's scale
to within GELU's loss and the comparison is not lost to a bad init.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.models.prenorm import FeedForward, PreNormUnit
from resnetlab.models.registry import register_model


class ResidualMLP(nn.Module):
    """`depth` pre-norm MLP units over a `width`-wide stream; `shortcut=False` is the plain twin."""

    family = "mlp"

    def __init__(
        self,
        *,
        depth: int = 16,
        width: int = 256,
        hidden: int | None = None,
        norm: str = "ln",
        branch_scale: str = "one",
        shortcut: bool = True,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: int = 28,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("depth", depth),
            ("width", width),
            ("in_chans", in_chans),
            ("image_size", image_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Error(f"{name} must be an integer >= 1; got {value!r}")
        self.depth, self.width, self.in_chans, self.image_size = depth, width, in_chans, image_size
        self.hidden = hidden or 2 * width
        self.has_shortcut, self.norm_type, self.branch_scale = shortcut, norm, branch_scale
        self.embed = nn.Linear(in_chans * image_size * image_size, width)
        self.layers = nn.ModuleList(
            PreNormUnit(
                width,
                FeedForward(width, self.hidden),
                norm=norm,
                branch_scale=branch_scale,
                shortcut=shortcut,
            )
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(width) if norm == "ln" else nn.Identity()
        self.num_features = width
        self.reset_classifier(num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                gain = "relu" if name.endswith("fc1") else "linear"
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity=gain)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for unit in self.blocks():
                unit.zero_init_last()

    def blocks(self) -> list[nn.Module]:
        """Every unit, in forward order."""
        return list(self.layers)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the FC with a fresh one of `num_classes` outputs (0 = features)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise Error(f"num_classes must be an integer >= 0; got {num_classes!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def first_layer(self) -> nn.Linear:
        """The layer that reads the input."""
        return self.embed

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """[embedding, output of unit 1, ..., output of unit depth], each (N, width)."""
        expected = (self.in_chans, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise Error(f"this MLP reads images of shape {expected}; got {tuple(x.shape[1:])}")
        feats = [self.embed(x.flatten(1))]
        for unit in self.layers:
            feats.append(unit(feats[-1]))
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, width), after the final norm."""
        return self.final_norm(self.forward_intermediates(x)[-1])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def residual_mlp(**kwargs: Any) -> ResidualMLP:
    """Residual MLP on flattened images: 16 pre-LN units, 256 wide, Fashion-MNIST input by default."""
    return ResidualMLP(**{"shortcut": True, **kwargs})


@register_model
def plain_mlp(**kwargs: Any) -> ResidualMLP:
    """The residual MLP's plain twin: the same units applied in sequence, no additions."""
    return ResidualMLP(**{**kwargs, "shortcut": False})
