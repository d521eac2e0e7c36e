"""Measures of how a signal travels through a stack of residual units, shared by every family.

    rank1_distance   relative distance of representations from their best rank-1 approximation,
                     the rank-collapse measure of [Dong21] (0: every row is a multiple of one row)
    effective_rank   exp of the entropy of the normalised singular values [Roy07]
    unit_gradient_norms  ||dL/dtheta|| of each unit in `model.blocks()`, the per-block analogue
                     of the `gradients` experiment's per-conv norms
    linear_recoverability  R^2 of the best ridge reconstruction of the input from a
                     representation, fitted on some examples and scored on others: how much of
                     the input a linear read-out can still find there (1: all of it, 0: none)

A representation is a matrix with one row per example (an MLP's batch, (N, width)) or per token
(one sequence of a transformer, (T, width)); batches of sequences (B, T, width) are measured per
sequence and averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
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


# Ridge penalties tried, relative to the mean eigenvalue of the fitting examples' Gram matrix.
RIDGE_GRID = tuple(10.0**k for k in range(-12, 3))


@torch.no_grad()
def linear_recoverability(
    fit_features: Tensor,
    fit_inputs: Tensor,
    test_features: Tensor,
    test_inputs: Tensor,
    *,
    ridge: tuple[float, ...] = RIDGE_GRID,
) -> float:
    """R^2 of reconstructing `test_inputs` from `test_features` by ridge regression (with an
    intercept) fitted on the fit pair: 1 - SSE / SST over every element, SST around the fit
    inputs' mean.

    Rows are examples (N, ...), flattened to vectors. The penalty is the one of `ridge` (relative
    to the mean nonzero eigenvalue of the centred fit Gram matrix) with the least leave-one-out
    error on the fit rows, exact and cheap in the Gram matrix's eigenbasis. The eigenproblem is
    N x N or width x width, whichever is smaller. NaN for non-finite features.
    """
    f, x = fit_features.flatten(1).double(), fit_inputs.flatten(1).double()
    ft, xt = test_features.flatten(1).double(), test_inputs.flatten(1).double()
    if not (torch.isfinite(f).all() and torch.isfinite(ft).all()):
        return math.nan
    f_mean, x_mean = f.mean(0), x.mean(0)
    f, ft, x, xt = f - f_mean, ft - f_mean, x - x_mean, xt - x_mean
    n, total = len(f), xt.square().sum()
    if total == 0:
        return math.nan
    # u (n, r): orthonormal eigenvectors of K = F F^T with nonzero eigenvalues evals (r,)
    if f.shape[1] < n:
        evals, v = torch.linalg.eigh(f.T @ f)
        keep = evals > evals.max() * n * 1e-15
        evals = evals[keep]
        u = f @ v[:, keep] / evals.sqrt()
    else:
        evals, u = torch.linalg.eigh(f @ f.T)
        keep = evals > evals.max() * n * 1e-15
        evals, u = evals[keep], u[:, keep]
    if len(evals) == 0:  # constant features: the best reconstruction is the mean
        return 0.0
    ux = u.T @ x
    outside = x - u @ ux  # the part of X that no feature direction reaches
    leverage_in = (u * u).sum(1)

    def loo_error(penalty: float) -> float:
        # Leave-one-out residuals of ridge with an unpenalised intercept: (A X)_i / A_ii with
        # A = (K + penalty I)^-1 - 1 1^T / (n penalty). K's null space (which holds the constant
        # vector that the intercept fits) contributes 1 / penalty. In this form there is no
        # cancellation near interpolation, where the hat matrix tends to I.
        inverse = 1 / (evals + penalty)
        residual = u @ (inverse[:, None] * ux) + outside / penalty
        diagonal = (u * u) @ inverse + (1 - leverage_in) / penalty - 1 / (n * penalty)
        return float((residual / diagonal[:, None]).square().sum())

    penalty = min((c * float(evals.mean()) for c in ridge), key=loo_error)
    coef = u @ (ux / (evals + penalty)[:, None])  # (K + penalty I)^-1 X, K's range only
    predicted = (ft @ f.T) @ coef
    return float(1 - (xt - predicted).square().sum() / total)


def input_recoverability(features: Tensor, inputs: Tensor) -> float:
    """`linear_recoverability` of a batch's inputs from its features, fitted on the first half of
    the examples and scored on the second. Images (N, ...) with features (N, ...); token ids
    (B, T) are read as one-hot vectors and, with features (B, T, width), every token is a row."""
    half = len(inputs) // 2
    if not inputs.is_floating_point():
        half *= inputs.shape[1]  # whole sequences on each side
        inputs = F.one_hot(inputs).flatten(0, 1)  # (B*T, vocabulary seen)
        features = features.flatten(0, 1)
    return linear_recoverability(features[:half], inputs[:half], features[half:], inputs[half:])
