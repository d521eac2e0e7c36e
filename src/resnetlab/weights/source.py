"""SOURCE: every way to name weights, resolved to a checked file on disk.

A SOURCE is True (a model's default tag), a registry tag ("tv2_in1k" or "resnet50.tv2_in1k"), a
local file (torchvision .pth, timm or resnetlab .safetensors), an http(s) URL, a resnetlab run
directory (its latest checkpoint, EMA weights when kept), a Hugging Face Hub repository in timm's
layout (`hf-hub:ORG/NAME[@REV]`, weights/hub.py) or such a folder on disk (`local-dir:PATH` or
PATH, weights/hf.py). An exported .onnx or .pt2 is a SOURCE too, run through weights/exported.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnetlab.errors import Error
from resnetlab.weights import hf, hub
from resnetlab.weights.cache import fetch, fetch_url, verify
from resnetlab.weights.checkpoint import inference_weights
from resnetlab.weights.entry import WeightsEntry
from resnetlab.weights.formats import read_checkpoint
from resnetlab.weights.registry import default_weights, find_by_path, find_by_url, get_weights

FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


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
            path = inference_weights(path)
        entry = find_by_path(path)
        if entry is not None:  # a registry file kept by hand: it must be the published one
            verify(path, entry.sha256, str(path))
        return Located(path, entry, str(path))
    if isinstance(pretrained, os.PathLike) or os.sep in text or text.endswith(FILE_SUFFIXES):
        raise Error(
            f"{path} does not exist; give a run directory, a weights file or a tag (`resnetlab weights`)"
        )
    return _from_entry(get_weights(text, model))


def _from_entry(entry: WeightsEntry) -> Located:
    path = fetch(entry)
    return Located(path, entry, entry.source if not entry.shipped else str(path))


def source_model(source: str) -> str | None:
    """The model that the weights `source` names hold, found without downloading the weights: a
    registry tag's, a resnetlab run's or weights file's, a Hub folder's (its config.json alone);
    None where only loading would tell."""
    if source.startswith(("http://", "https://")):
        entry = find_by_url(source)
        return entry.model if entry else None
    if source.startswith(hub.PREFIX):  # its config.json alone says (a few hundred bytes)
        return hf.read_config(hub.fetch(source, files=(hf.CONFIG_FILE,)))["model"]
    path = Path(source.removeprefix(hf.PREFIX)).expanduser()
    if hf.is_hf_folder(path):
        return hf.read_config(path)["model"]
    if path.exists():
        weights = inference_weights(path)
        entry = find_by_path(weights)
        if entry is not None:
            return entry.model
        return (read_checkpoint(weights)[1] or {}).get("model") if weights.suffix == ".safetensors" else None
    if os.sep in source or source.endswith(FILE_SUFFIXES):
        return None  # a file that is not there: loading it says so
    return get_weights(source).model
