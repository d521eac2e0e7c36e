"""Freezing the early part of a network for fine-tuning, as in [Yosinski14, "How transferable are
features in deep neural networks?"]: the first stages hold the most general features.

`--freeze` names how far the frozen part reaches, in the model's own words:
  none       everything trains
  stem       conv1 and its BN
  layerK     the stem and stages layer1..layerK
  head-only  everything but the classifier `fc` (a linear probe)

A frozen parameter has requires_grad False, so it gets no gradient, stays out of the optimizer
and gets no weight decay. A frozen BN layer stays in eval mode even while the model trains: it
normalises with its stored statistics and never updates them, whoever calls `model.train()`.
"""

from __future__ import annotations

import types

from torch import nn

from resnetlab.errors import Error
from resnetlab.train.config import FREEZE_PATTERN

_STEM = ("conv1", "bn1", "maxpool")
_HEAD = "fc"


def frozen_module_names(model: nn.Module, spec: str) -> list[str]:
    """The top-level children of `model` that `spec` freezes, in forward order."""
    stages = list(getattr(model, "stage_names", ()))
    if not FREEZE_PATTERN.fullmatch(spec):
        last = f"layer{len(stages) or 'K'}"
        raise Error(f"--freeze takes none, stem, layer1..{last} or head-only, not {spec!r}")
    if spec == "none":
        return []
    names = [name for name, _ in model.named_children()]
    if not stages or not set(_STEM) & set(names) or _HEAD not in names:
        raise Error(f"--freeze needs a ResNet-style model (conv1, layer1.., fc), not {type(model).__name__}")
    if spec == "head-only":
        return [name for name in names if name != _HEAD]
    if spec == "stem":
        return [name for name in names if name in _STEM]
    if spec not in stages:
        raise Error(f"--freeze {spec}: this model's stages are {', '.join(stages)}")
    reach = stages[: stages.index(spec) + 1]
    return [name for name in names if name in _STEM or name in reach]


def freeze(model: nn.Module, spec: str) -> list[str]:
    """Freeze what `spec` names (see the module docstring); returns the frozen children's names."""
    names = frozen_module_names(model, spec)
    for name in names:
        model.get_submodule(name).requires_grad_(False)
    pin_frozen_norms(model)
    return names


def pin_frozen_norms(model: nn.Module) -> None:
    """`pin_eval` every BN layer whose parameters are all frozen. Called again after anything that
    replaces BN modules (SyncBatchNorm conversion keeps the parameters, not the instances)."""
    for layer in model.modules():
        params = list(layer.parameters(recurse=False))
        if (
            isinstance(layer, nn.modules.batchnorm._BatchNorm)
            and params
            and not any(p.requires_grad for p in params)
        ):
            pin_eval(layer)


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a frozen BN layer: whatever `mode` asks, it stays in eval mode."""
    return nn.Module.train(self, False)


def pin_eval(layer: nn.Module) -> None:
    """Keep `layer` in eval mode for good: `model.train()` reaches it through its own `train`,
    which this replaces on the instance (copies made by deepcopy, such as the EMA, keep it)."""
    layer.train = types.MethodType(_stay_in_eval, layer)
    layer.train()


def is_frozen(layer: nn.Module) -> bool:
    """Whether `pin_eval` pinned this layer."""
    return getattr(layer.train, "__func__", None) is _stay_in_eval


def head_parameter_ids(model: nn.Module) -> set[int]:
    """ids of the classifier's parameters: the part `--head-lr-mult` speeds up."""
    head = getattr(model, _HEAD, None)
    return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
