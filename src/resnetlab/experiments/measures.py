"""Measures of how a signal travels through a stack of residual units, shared by every family.

    rank1_distance   relative distance of representations from their best rank-1 approximation,
                     the rank-collapse measure of [Dong21] (0: every row is a multiple of one row)
    effective_rank   exp of the entropy of the normalised singular values [Roy07]
    unit_gradient_norms  ||dL/dtheta|| of each unit in `model.blocks()`, the per-block analogue
                     of the `gradients` experiment's per-conv norms

A representation is a matrix with one row per example (an MLP's batch, (N, width)) or per token
(one sequence of a transformer, (T, width)); batches of sequences (B, T, width) are measured per
sequence and averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def _singular_values(h: Tensor) -> Tensor:
    """Singular values of each matrix in (..., rows, width), in float64."""
    return torch.linalg.svdvals(h.detach().double())


def rank1_distance(h: Tensor) -> float:
    """||H - H_1||_F / ||H||_F, H_1 the best rank-1 approximation (Eckart-Young: the top singular
    pair): sqrt(sum_{i>=2} s_i^2 / sum_i s_i^2). (rows, width), or (B, rows, width) averaged over B.
    NaN for a zero or non-finite H."""
    if not torch.isfinite(h).all():
        return math.nan
    s2 = _singular_values(h if h.dim() == 3 else h[None]).square()  # (B, k)
    total = s2.sum(-1)
    if (total == 0).any():
        return math.nan
    return float(((total - s2[:, 0]).clamp_min(0) / total).sqrt().mean())


def effective_rank(h: Tensor) -> float:
    """exp(-sum_i p_i log p_i), p_i = s_i / sum_j s_j [Roy07]: n for n equal singular values, 1 for
    rank 1. (rows, width), or (B, rows, width) averaged over B; NaN for a zero or non-finite H."""
    if not torch.isfinite(h).all():
        return math.nan
    s = _singular_values(h if h.dim() == 3 else h[None])  # (B, k)
    total = s.sum(-1, keepdim=True)
    if (total == 0).any():
        return math.nan
    p = s / total
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return float(entropy.exp().mean())


def unit_gradient_norms(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> list[float]:
    """||dL/dtheta_u|| over each unit u of `model.blocks()` (all its parameters), forward order.

    `loss_fn(model)` computes the loss on a fixed batch; the model's mode is left as it is.
    Non-finite gradients give NaN.
    """
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    norms = []
    for unit in model.blocks():
        grads = [p.grad.double().square().sum() for p in unit.parameters() if p.grad is not None]
        norms.append(float(torch.stack(grads).sum().sqrt()) if grads else 0.0)
    model.zero_grad(set_to_none=True)
    return [v if math.isfinite(v) else math.nan for v in norms]
