"""The optimizer and the learning-rate schedule, kept out of the model and out of the loop.

The schedule is a pure function of the step (plus one flag for [He15]'s error-triggered
warm-up), so resuming only has to restore the step to continue on the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from resnetlab.train.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, *, decay_norm_and_bias: bool) -> list[dict]:
    """SGD groups; with `decay_norm_and_bias=False`, 1-d tensors (BN γ/β, biases) get no decay.

    Decaying BN scales only shrinks them against the next layer's weights, which undo it, so modern
    recipes skip them (torchvision's "V2" recipe, [Goyal17]-style large-batch training).
    """
    if decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.SGD:
    groups = param_groups(model, cfg.weight_decay, decay_norm_and_bias=cfg.wd_norm_bias)
    return torch.optim.SGD(groups, lr=cfg.peak_lr(), momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The schedule's shape in [0, 1] at optimizer step `step` (0-based) of `total_steps`.

    step: lr_decay ** (milestones passed); cosine: half a cosine to 0; onecycle: linear down to 0
    after the warm-up peak (the triangular schedule of fast small-image training); all shapes start
    with `cfg.warmup` of the run ramping linearly up from 0.
    """
    warmup_steps = cfg.warmup * total_steps
    if step < warmup_steps:
        return min(1.0, (step + 1) / warmup_steps)
    rest = (step - warmup_steps) / (total_steps - warmup_steps)  # post-warm-up fraction done, [0, 1)
    if cfg.schedule == "step":
        return cfg.lr_decay ** sum(step >= m * total_steps for m in cfg.milestones)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    if cfg.schedule == "onecycle":
        return 1 - rest
    return 1.0


def count_weighted_layers(model: nn.Module) -> int:
    """Depth as [He15] counts it: convs and FC layers on the main path, projection shortcuts excluded."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in name.split(".")
        for name, m in model.named_modules()
    )


class LRSchedule:
    """Sets every param group's lr for each step; owns [He15 §4.2]'s warm-up for very deep nets.

    "We use 0.01 to warm up the training until the training error is below 80% (about 400
    iterations), and then go back to 0.1": while that phase lasts the lr is `warmup_lr`, flat.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, depth: int):
        self.optimizer = optimizer
        self.cfg = cfg
        self.total_steps = total_steps
        self.in_error_warmup = cfg.warmup_lr > 0 and depth >= cfg.warmup_min_depth

    def lr(self, step: int) -> float:
        if self.in_error_warmup:
            return self.cfg.warmup_lr
        return self.cfg.peak_lr() * lr_factor(self.cfg, step, self.total_steps)

    def set(self, step: int) -> float:
        """Apply the lr for `step` to the optimizer and return it."""
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe_train_error(self, err: float) -> None:
        """End the error-triggered warm-up once the running train error is low enough."""
        if self.in_error_warmup and err < self.cfg.warmup_until_err:
            self.in_error_warmup = False

    def state_dict(self) -> dict:
        return {"in_error_warmup": self.in_error_warmup}

    def load_state_dict(self, state: dict) -> None:
        self.in_error_warmup = bool(state["in_error_warmup"])
