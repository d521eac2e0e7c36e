"""The one loader: `load(SOURCE)` -> (model, Preprocessing), and `create_model(name, pretrained=...)`.

Every command that reads weights comes here: train (--init-from), eval, predict, export, the
experiments and `resnetlab.create_model`. The weights are found (`weights.source.locate`), the
model is built to fit them through the registry and they are loaded into it; an exported .onnx
or .pt2 runs through its runtime instead (`weights.exported`). The model gets `pretrained_cfg`:
what the weights record beyond the `Preprocessing` (name, options, data set, tag, metrics,
license, the run's autocast and TTA), under the names a run stores (`weights.meta`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import Error
from resnetlab.models.dense import task_model
from resnetlab.models.factory import get_builder
from resnetlab.weights import hf
from resnetlab.weights.adapt import HEAD, fit_state_dict
from resnetlab.weights.classes import class_names
from resnetlab.weights.entry import WeightsEntry
from resnetlab.weights.exported import is_exported, load_exported
from resnetlab.weights.formats import read_checkpoint
from resnetlab.weights.preprocessing import Preprocessing
from resnetlab.weights.source import Located, locate

_RESNETLAB_KEYS = ("model", "model_kwargs", "num_classes", "in_chans")  # to rebuild a run's model
_TIMM_PREFIXES = ("hf-hub:", "local-dir:")  # timm's spelling: the repository names the model


def load(
    source: str | Path,
    *,
    model: str | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    device: torch.device | str = "cpu",
    **options: Any,
) -> tuple[nn.Module, Preprocessing]:
    """The model `source` holds, in eval mode on `device`, and how to feed it.

    model: the architecture the weights must be (None: the one they name). num_classes, in_chans:
    another head (fresh) or stem (adapted) than the weights'; options: more builder arguments.
    An exported file runs on the CPU through its runtime and takes no such changes.
    """
    shape = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
    if is_exported(source):
        if shape or options:
            changes = ", ".join({**shape, **options})
            raise Error(f"{source} is an exported graph; it cannot be rebuilt with {changes}")
        runner, meta = load_exported(source)
        runner.pretrained_cfg = meta
        return runner.eval(), preprocessing_of(meta, source)
    net = load_pretrained(model, source, **shape, **options)
    return net.to(device).eval(), preprocessing_of(net.pretrained_cfg, source)


def create_model(name: str, *, pretrained: object = None, **kwargs: Any) -> nn.Module:
    """Build a registered model: `create_model("resnet56", num_classes=10, in_chans=1)`.

    `pretrained`: None/False for random weights; True (the model's default weights) or any SOURCE
    (weights/source.py) loads them and sets `model.pretrained_cfg`, in training mode.
    `create_model("hf-hub:timm/resnet50.a1_in1k", pretrained=True)` is timm's spelling.
    """
    if name.startswith(_TIMM_PREFIXES):
        if pretrained is not True:
            raise ValueError(f"create_model({name!r}) loads that repository's weights: give pretrained=True")
        return load_pretrained(None, name, **kwargs)
    if pretrained is None or pretrained is False:
        return get_builder(name)(**kwargs)
    get_builder(name)  # an unknown name fails before any download
    return load_pretrained(name, pretrained, **kwargs)


def preprocessing_of(meta: dict[str, Any], source: object) -> Preprocessing:
    """The `Preprocessing` a model's metadata records; inconsistent metadata is one `Error` line."""
    try:
        return Preprocessing.from_meta(meta)
    except (ValueError, TypeError) as exc:
        raise Error(
            f"{source} records unusable preprocessing ({exc}); use the weights of a resnetlab run"
        ) from None


def load_pretrained(model: str | None, pretrained: object, **kwargs: Any) -> nn.Module:
    """Build `model` (None: the one the weights name) with the weights `pretrained` names loaded.

    kwargs are the builder's; a `num_classes` different from the checkpoint's gets a fresh head
    and an `in_chans` different from it a first conv adapted by timm's rule (one line each on
    stderr). The model is returned in training mode, with `model.pretrained_cfg`.
    """
    found = locate(pretrained, model)
    state, meta = read_checkpoint(found.path)
    meta = meta or found.config  # a folder resnetlab wrote has its own; timm's has config.json only
    entry = found.entry
    if meta is not None:
        missing = [key for key in _RESNETLAB_KEYS if key not in meta]
        if missing:
            raise Error(
                f"{found.path} lacks {', '.join(missing)} in its metadata; use the weights of a resnetlab run"
            )
    meta = meta or {}
    named = meta.get("model") or (entry.model if entry else None)
    if model is None:
        if named is None:
            raise Error(
                f"cannot tell which model {found.source} holds (no registry entry, no resnetlab metadata); "
                "use resnetlab.create_model(NAME, pretrained=...)"
            )
        model = named
    elif named is not None and named != model:
        raise Error(f"{found.source} holds {named} weights, not {model}; use create_model({named!r}, ...)")
    num_classes, in_chans = _checkpoint_shape(state, meta, entry)
    stored = {**(entry.model_kwargs if entry else {}), **meta.get("model_kwargs", {})}
    build = {**stored, "num_classes": num_classes, "in_chans": in_chans, **kwargs}
    task = meta.get("task") or "classify"
    if task == "classify":
        net = get_builder(model)(**build)
    else:  # a segmentation or detection run: its backbone, pyramid and head (models/dense.py)
        net = task_model(model, task, fpn=bool(meta.get("fpn")), **build)
    label = entry.name if entry else str(found.path)
    for note in fit_state_dict(net, state, label, model):
        print(f"resnetlab: {note}", file=sys.stderr)
    net.pretrained_cfg = _pretrained_cfg(net, model, found, meta, num_classes)
    return net


def _checkpoint_shape(
    state: dict[str, torch.Tensor], meta: dict[str, Any], entry: WeightsEntry | None
) -> tuple[int, int]:
    """(classes, input channels) the checkpoint was trained with: its metadata, else its tensors."""
    if "num_classes" in meta:
        return meta["num_classes"], meta["in_chans"]
    if entry is not None:
        return entry.num_classes, entry.in_chans
    head = state.get(f"{HEAD}.weight")
    stem = next((v for v in state.values() if v.ndim == 4), None)
    if head is None or stem is None:
        raise Error("the checkpoint has no fc.weight or no conv kernel; is it a ResNet state dict?")
    return head.shape[0], stem.shape[1]


def _pretrained_cfg(
    net: nn.Module, model: str, found: Located, meta: dict[str, Any], num_classes: int
) -> dict[str, Any]:
    """What the weights expect as input and what their outputs mean; None where unknown."""
    entry = found.entry
    preprocess = {key: meta.get(key) for key in ("mean", "std", "image_size", "resize_size")}
    # timm folders say; resnetlab's runs record it, or resized bilinearly before they did
    preprocess["interpolation"] = meta.get("interpolation") or ("bilinear" if meta else None)
    classes, dataset = meta.get("classes"), meta.get("data")
    if entry is not None:
        hub = hf.read_config(found.path.parent) if entry.hub else {}  # the repository's config.json
        for key in ("mean", "std", "image_size", "resize_size", "interpolation"):
            value = getattr(entry, key)
            if value is None:  # not in the table: the hub's config.json, else the file's metadata
                value = hub.get(key) if entry.hub else preprocess[key]
            preprocess[key] = list(value) if isinstance(value, tuple) else value
        classes, dataset = list(class_names(entry.dataset)), entry.dataset
    in_chans, outputs = net.in_chans, net.num_classes
    try:  # the statistics of the stem the weights were trained with, adapted to the model's
        stats_chans = len(preprocess["mean"]) if preprocess["mean"] is not None else in_chans
        adapted = Preprocessing(
            **{k: preprocess[k] for k in ("mean", "std", "image_size", "resize_size")},
            interpolation=preprocess["interpolation"] or "bilinear",
            in_chans=stats_chans,
        ).for_channels(in_chans)
    except (ValueError, TypeError) as exc:
        raise Error(f"{found.source} records unusable preprocessing ({exc})") from None
    preprocess = {k: v for k, v in adapted.meta().items() if k not in ("in_chans", "classes")}
    return {
        **meta,
        "model": model,
        "tag": entry.name if entry else meta.get("tag"),  # a shipped file records its tag
        "source": found.source,
        "num_classes": outputs,
        "in_chans": in_chans,
        "classes": classes if outputs == num_classes else None,  # a fresh head's classes are the user's
        **preprocess,
        "dataset": dataset,
        "data": meta.get("data", entry.data if entry else None),
        "metrics": vars(entry.metrics) if entry else None,
        "license": entry.license if entry else None,
    }
