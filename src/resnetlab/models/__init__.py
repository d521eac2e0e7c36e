"""The model zoo: every ResNet of [He15, He16, Zagoruyko16] and its plain twin.

>>> from resnetlab.models import create_model
>>> model = create_model("resnet56", in_chans=1)  # Fashion-MNIST
"""

from resnetlab.models.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from resnetlab.models.options import ResNetOptions
from resnetlab.models.registry import create_model, list_models, register_model
from resnetlab.models.resnet import ResNet, cifar_resnet  # importing resnet registers its builders

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "ResNetOptions",
    "cifar_resnet",
    "create_model",
    "list_models",
    "register_model",
]
