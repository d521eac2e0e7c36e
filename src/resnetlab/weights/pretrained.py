"""`create_model(name, pretrained=...)`: find the weights, build the model to fit them, load them.

`pretrained` is True (the model's default tag), a tag ("tv2_in1k" or "resnet50.tv2_in1k"), a
local file (torchvision .pth, timm or resnetlab .safetensors), an http(s) URL, a resnetlab run
directory, or a repository or folder in the Hugging Face Hub layout timm uses (`hf-hub:ORG/NAME`,
weights/hub.py; `local-dir:PATH` or PATH, weights/hf.py). The model gets `pretrained_cfg`: what
it expects as input and what its outputs mean, under the names a resnetlab run stores with its
weights (train/engine.py `_model_meta`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.errors import Error
from resnetlab.models.registry import get_builder
from resnetlab.weights import hf, hub
from resnetlab.weights.adapt import HEAD, fit_state_dict
from resnetlab.weights.cache import fetch, fetch_url, verify
from resnetlab.weights.classes import class_names
from resnetlab.weights.entry import WeightsEntry
from resnetlab.weights.formats import read_checkpoint
from resnetlab.weights.registry import default_weights, find_by_path, find_by_url, get_weights

_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_RESNETLAB_KEYS = ("model", "model_kwargs", "num_classes", "in_chans")  # to rebuild a run's model


@dataclass(frozen=True)
class Located:
    """A checkpoint file found (and checked) on disk, with the registry entry it belongs to, if any."""

    path: Path
    entry: WeightsEntry | None
    source: str  # the URL or path it came from, for pretrained_cfg["source"]
    config: dict[str, Any] | None = None  # an HF folder's config.json, as resnetlab metadata


def locate(pretrained: object, model: str | None = None) -> Located:
    """The file `pretrained` names, downloaded into the cache if need be and checked."""
    if pretrained is True:
        if model is None:
            raise Error("pretrained=True needs a model name; give a tag such as resnet50.tv2_in1k instead")
        return _from_entry(default_weights(model))
    if not isinstance(pretrained, (str, os.PathLike)) or isinstance(pretrained, bool):
        raise Error(
            f"pretrained must be True, a weights tag, a file, a URL or a run directory; got {pretrained!r}"
        )
    text = os.fspath(pretrained)
    if text.startswith(("http://", "https://")):
        entry = find_by_url(text)
        return _from_entry(entry) if entry else Located(fetch_url(text), None, text)
    if text.startswith(hub.PREFIX):
        folder = hub.fetch(text)
        return Located(folder / hf.WEIGHTS_FILE, None, text, hf.read_config(folder))
    path = Path(text.removeprefix(hf.PREFIX)).expanduser()
    if text.startswith(hf.PREFIX) and not hf.is_hf_folder(path):
        raise Error(f"{path} is not a folder with {hf.CONFIG_FILE} (timm's layout) and {hf.WEIGHTS_FILE}")
    if path.is_dir() and hf.is_hf_folder(path):
        return Located(path / hf.WEIGHTS_FILE, None, str(path), hf.read_config(path))
    if path.exists():
        if path.is_dir():
            from resnetlab.train.checkpoint import inference_weights  # lazy: train imports models

            path = inference_weights(path)
        entry = find_by_path(path)
        if entry is not None:  # a registry file kept by hand: it must be the published one
            verify(path, entry.sha256, str(path))
        return Located(path, entry, str(path))
    if isinstance(pretrained, os.PathLike) or os.sep in text or text.endswith(_FILE_SUFFIXES):
        raise Error(
            f"{path} does not exist; give a run directory, a weights file or a tag (`resnetlab weights`)"
        )
    return _from_entry(get_weights(text, model))


def _from_entry(entry: WeightsEntry) -> Located:
    path = fetch(entry)
    return Located(path, entry, entry.url or str(path))


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
    net = get_builder(model)(**build)
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
        hub = _hub_config(found.path) if entry.config_url else {}
        for key in ("mean", "std", "image_size", "resize_size", "interpolation"):
            value = getattr(entry, key)
            if value is None:  # not in the table: the hub's config.json, else the file's metadata
                value = hub.get(key) if entry.config_url else preprocess[key]
            preprocess[key] = list(value) if isinstance(value, tuple) else value
        classes, dataset = list(class_names(entry.dataset)), entry.dataset
    in_chans, outputs = net.in_chans, net.num_classes
    for key in ("mean", "std"):
        preprocess[key] = _per_channel(preprocess[key], in_chans)
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


def _per_channel(values: list[float] | None, in_chans: int) -> list[float] | None:
    """Per-channel statistics for a stem adapted to `in_chans`: one channel gets their mean (the
    summed kernel sees a grey image as its RGB copy), more channels repeat them cyclically."""
    if values is None or len(values) == in_chans:
        return None if values is None else list(values)
    if in_chans == 1:
        return [sum(values) / len(values)]
    return [values[i % len(values)] for i in range(in_chans)]


def _hub_config(weights: Path) -> dict[str, Any]:
    """Preprocessing from a timm hub `config.json` next to the weights (`pretrained_cfg`)."""
    path = weights.with_name(hf.CONFIG_FILE)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8")).get("pretrained_cfg", {})
    except FileNotFoundError:
        raise Error(
            f"{path} is missing; fetch the config.json of the timm repository next to {weights.name}"
        ) from None
    except (json.JSONDecodeError, AttributeError) as exc:
        raise Error(f"{path} is not a timm config.json ({exc})") from None
    return hf.preprocessing(cfg)
