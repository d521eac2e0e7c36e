"""Helpers shared by the model tests: meta-device builds and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from resnetlab import create_model
from resnetlab.models import ResNet


def meta_model(name: str, **kwargs: object) -> ResNet:
    """Built on the meta device: shapes and counts without memory or initialisation."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
