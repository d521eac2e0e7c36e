"""The optimizer and the learning-rate schedule, kept out of the model and out of the loop.

The schedule is a pure function of the step (plus one flag for [He15]'s error-triggered
warm-up), so resuming only has to restore the step to continue on the same curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from resnetlab.errors import Error
from resnetlab.train.config import TrainConfig
from resnetlab.train.freeze import head_parameter_ids


def param_groups(
    model: nn.Module, weight_decay: float, *, decay_norm_and_bias: bool, head_lr_mult: float = 1.0
) -> list[dict]:
    """SGD groups of the parameters that train (requires_grad); frozen ones are left out.

    decay_norm_and_bias=False: 1-d tensors (BN γ/β, biases) get no decay. Decaying BN scales only
    shrinks them against the next layer's weights, which undo it, so modern recipes skip them
    (torchvision's "V2" recipe, [Goyal17]-style large-batch training). head_lr_mult != 1: the
    classifier gets its own groups with "lr_mult", the factor `LRSchedule` applies to their lr.
    """
    head = head_parameter_ids(model) if head_lr_mult != 1 else set()
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}  # (in the head, decayed) -> params
    for p in model.parameters():
        if p.requires_grad:
            buckets.setdefault((id(p) in head, decay_norm_and_bias or p.ndim > 1), []).append(p)
    groups = []
    for in_head in (False, True) if head else (False,):
        extra = {"lr_mult": head_lr_mult} if in_head else {}
        for decays in (True,) if decay_norm_and_bias else (True, False):
            params = buckets.get((in_head, decays), [])
            groups.append({"params": params, "weight_decay": weight_decay if decays else 0.0, **extra})
    return groups


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.SGD:
    """SGD over what trains: frozen parameters (`resnetlab.train.freeze`) are not in it."""
    groups = param_groups(
        model, cfg.weight_decay, decay_norm_and_bias=cfg.wd_norm_bias, head_lr_mult=cfg.head_lr_mult
    )
    if not any(group["params"] for group in groups):
        raise Error("nothing to train: every parameter is frozen; use a lighter --freeze")
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
        """Apply the lr for `step` to the optimizer (times each group's "lr_mult") and return it."""
        lr = self.lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        return lr

    def observe_train_error(self, err: float) -> None:
        """End the error-triggered warm-up once the running train error is low enough."""
        if self.in_error_warmup and err < self.cfg.warmup_until_err:
            self.in_error_warmup = False

    def state_dict(self) -> dict:
        return {"in_error_warmup": self.in_error_warmup}

    def load_state_dict(self, state: dict) -> None:
        self.in_error_warmup = bool(state["in_error_warmup"])
