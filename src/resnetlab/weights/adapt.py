"""Fitting a checkpoint's state dict to a model: first-conv adaptation, a fresh head, a strict check."""

from __future__ import annotations

import math

import torch
from torch import nn

from resnetlab.errors import Error

HEAD = "fc"  # the classifier's module name in every resnetlab network


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-conv kernel (O, 3, k, k) made (O, in_chans, k, k) by timm's rule (`adapt_input_conv`).

    1 channel: the RGB kernels summed, so a grey image gives what its RGB copy would. C > 3: the
    RGB kernels repeated ceil(C / 3) times, cut to C, scaled by 3 / C to keep the output's scale.
    From a 1-channel kernel (a net trained on grey images, resnet20.fmnist), C copies scaled by
    1 / C: an image whose C channels equal a grey one gives what that grey image gave.
    """
    source = weight.shape[1]
    if source == in_chans:
        return weight
    if source == 1:
        return (weight.float().repeat(1, in_chans, 1, 1) / in_chans).to(weight.dtype)
    if source != 3:
        raise Error(
            f"cannot adapt a {source}-channel first conv to {in_chans} channels; "
            "timm's rule starts from 3 (RGB) channels"
        )
    w = weight.float()
    if in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    return w.to(weight.dtype)


def first_conv(model: nn.Module) -> str | None:
    """State-dict key of the first conv's kernel (conv1.weight; conv1.0.weight in a deep stem);
    None for a net without convolutions (the residual MLP)."""
    return next((k for k, v in model.state_dict().items() if v.ndim == 4), None)


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str, name: str) -> list[str]:
    """Load `state` (from `label`) into `model` (registered as `name`) strictly, after adapting the
    stem and dropping a head that does not fit; returns what was changed, one line each. Keys or
    shapes that still do not fit raise `Error` naming the first missing, unexpected and mismatched key."""
    target = model.state_dict()
    state = dict(state)
    notes = []
    stem = first_conv(model)
    if (
        stem is not None
        and stem in state
        and state[stem].ndim == 4
        and state[stem].shape[1] != target[stem].shape[1]
    ):
        have = state[stem].shape[1]
        state[stem] = adapt_input_conv(state[stem], target[stem].shape[1])
        notes.append(f"{label}: first conv adapted from {have} to {target[stem].shape[1]} input channels")
    head = [k for k in state if k.startswith(f"{HEAD}.")]
    weight = f"{HEAD}.weight"
    if head and (weight not in target or (weight in state and state[weight].shape != target[weight].shape)):
        outputs = target[weight].shape[0] if weight in target else 0
        had = state[weight].shape[0] if weight in state else "?"
        for key in head:
            del state[key]
        fresh = f"starts fresh with {outputs} outputs" if outputs else "is left out (no classifier)"
        notes.append(f"{label}: the checkpoint's {had}-class head is not loaded; {HEAD} {fresh}")
        state.update({k: v for k, v in target.items() if k.startswith(f"{HEAD}.")})
    # Files saved before BatchNorm counted its batches lack num_batches_tracked; it is not a weight.
    for key, value in target.items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        details = _describe(missing, unexpected, mismatched, state, target)
        raise Error(f"the weights in {label} do not fit {name}: {details}")
    model.load_state_dict(state, strict=True)
    return notes


def _describe(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    state: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
) -> str:
    parts = []
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            parts.append(f"{kind} {keys[0]}{more}")
    if mismatched:
        k = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        parts.append(
            f"mismatched {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(target[k].shape)}{more}"
        )
    return "; ".join(parts)
