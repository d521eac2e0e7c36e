"""An exponential moving average of a model's weights, evaluated in place of the raw weights.

Averaging the last few hundred steps' weights smooths out SGD noise late in training; fast
small-image recipes (airbench, hlb-CIFAR10) use it for a free fraction of a percent.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`module` tracks `decay * module + (1 - decay) * model` after every `update()`.

    Parameters and float buffers (BN running statistics) are averaged; integer buffers
    (num_batches_tracked) are copied. The decay ramps up as (1 + n) / (10 + n) over the first
    updates, so the average is not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        # EMA and model tensors as parallel lists for the foreach ops: one kernel launch per list
        # on a GPU instead of one per tensor (hundreds per step for a deep net).
        self._avg_ema = [e for e, _ in pairs if e.is_floating_point()]
        self._avg_model = [m for e, m in pairs if e.is_floating_point()]
        self._copy_ema = [e for e, _ in pairs if not e.is_floating_point()]
        self._copy_model = [m for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        if self._avg_ema:
            torch._foreach_lerp_(self._avg_ema, self._avg_model, 1 - decay)
        if self._copy_ema:
            torch._foreach_copy_(self._copy_ema, self._copy_model)
