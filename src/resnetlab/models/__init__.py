"""The model zoo: every ResNet of [He15, He16, Zagoruyko16], ResNeXt [Xie17], ResNet-D [He19],
a residual MLP and a byte-level GPT, and each one's plain twin.

>>> from resnetlab.models import create_model
>>> model = create_model("resnet56", in_chans=1)  # Fashion-MNIST
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each name is imported from its module on first use (PEP 562): torch alone takes seconds to
# load, and `resnetlab models` prints its table from model_table.json without it.
_EXPORTS = {
    "BasicBlock": "resnetlab.models.blocks",
    "GPT": "resnetlab.models.gpt",
    "Bottleneck": "resnetlab.models.blocks",
    "PreActBasicBlock": "resnetlab.models.blocks",
    "PreActBottleneck": "resnetlab.models.blocks",
    "ResNet": "resnetlab.models.resnet",
    "ResNetOptions": "resnetlab.models.options",
    "ResidualMLP": "resnetlab.models.mlp",
    "cifar_resnet": "resnetlab.models.resnet",
    "create_model": "resnetlab.models.factory",
    "list_models": "resnetlab.models.factory",
    "register_model": "resnetlab.models.registry",
}

__all__ = [
    "GPT",
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "ResNetOptions",
    "ResidualMLP",
    "cifar_resnet",
    "create_model",
    "list_models",
    "register_model",
]

if TYPE_CHECKING:
    from resnetlab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
    from resnetlab.models.factory import create_model, list_models
    from resnetlab.models.gpt import GPT
    from resnetlab.models.mlp import ResidualMLP
    from resnetlab.models.options import ResNetOptions
    from resnetlab.models.registry import register_model
    from resnetlab.models.resnet import ResNet, cifar_resnet


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
