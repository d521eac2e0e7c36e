"""The metadata a run stores with its weights: what rebuilds the model, how to feed it (its
`Preprocessing`), where its data came from, and how the run evaluated it.

It lives in each weights file's safetensors header, is copied into export sidecars and Hub
folders, and comes back as `model.pretrained_cfg` when `weights.load` reads the file.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from resnetlab.weights.preprocessing import Preprocessing
from resnetlab.weights.registry import get_weights


def init_record(model: nn.Module) -> dict[str, Any] | None:
    """Where a model's initial weights came from (None: random init), as config.json and the
    weights metadata record it."""
    weights = getattr(model, "pretrained_cfg", None)
    if not weights:
        return None
    return {key: weights.get(key) for key in ("tag", "source", "model", "dataset", "num_classes", "in_chans")}


def model_kwargs(model: nn.Module, given: dict[str, Any]) -> dict[str, Any]:
    """The builder options that rebuild `model`: its weights' own (depth=8) under those `given`."""
    weights = getattr(model, "pretrained_cfg", None) or {}
    stored = dict(weights.get("model_kwargs") or {})
    if weights.get("tag"):
        stored = {**get_weights(weights["tag"]).model_kwargs, **stored}
    return {**stored, **given}


def run_meta(
    name: str,
    model: nn.Module,
    preprocessing: Preprocessing,
    *,
    given_kwargs: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """What eval, predict and export need to rebuild the model `name` and feed it, stored with its
    weights: the builder's options, the preprocessing, and `run`'s facts (data, val_size, seed, and
    the TTA, autocast and layout that `resnetlab eval` repeats to give the run's own figure)."""
    return {
        "model": name,
        "model_kwargs": model_kwargs(model, given_kwargs),
        "num_classes": len(preprocessing.classes or ()),
        **preprocessing.meta(),
        **run,
        "init_from": init_record(model),
    }
