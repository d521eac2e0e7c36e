"""Looking up pretrained entries by tag: `get_weights("resnet50.tv2_in1k")`, `list_weights("resnet50*")`."""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path

from resnetlab.errors import Error
from resnetlab.weights.entry import WeightsEntry
from resnetlab.weights.table import ENTRIES

_BY_NAME: dict[str, WeightsEntry] = {}
for _entry in ENTRIES:
    if _entry.name in _BY_NAME:
        raise RuntimeError(f"weights {_entry.name!r} listed twice")
    _BY_NAME[_entry.name] = _entry


def list_weights(pattern: str = "*") -> list[WeightsEntry]:
    """Entries whose full tag (`model.tag`) matches a shell-style pattern, in table order."""
    return [e for e in ENTRIES if fnmatch.fnmatchcase(e.name, pattern)]


def model_tags(model: str) -> list[str]:
    """The full tags of one model's checkpoints, default first."""
    entries = [e for e in ENTRIES if e.model == model]
    return [e.name for e in sorted(entries, key=lambda e: not e.default)]


def default_weights(model: str) -> WeightsEntry:
    """The entry `pretrained=True` means for `model`."""
    for entry in ENTRIES:
        if entry.model == model and entry.default:
            return entry
    tags = model_tags(model)
    if tags:  # a model with checkpoints but none marked default: the first one
        return _BY_NAME[tags[0]]
    raise Error(f"{model} has no pretrained weights; models with some: {', '.join(_models_with_weights())}")


def get_weights(tag: str, model: str | None = None) -> WeightsEntry:
    """The entry of a full tag ("resnet50.tv2_in1k"), or of a short one ("tv2_in1k") for `model`.

    Without `model`, a short tag must be unique over the table ("fmnist"). Unknown tags raise
    `Error` listing the model's tags (or close matches).
    """
    if model is not None:
        full = tag if tag.startswith(f"{model}.") else f"{model}.{tag}"
        if full in _BY_NAME:
            return _BY_NAME[full]
        if tag in _BY_NAME:  # a full tag of another model
            other = _BY_NAME[tag].model
            raise Error(f"{tag} holds {other} weights, not {model}; use create_model({other!r}, ...)")
        tags = model_tags(model)
        known = f"its tags: {', '.join(tags)}" if tags else "it has none; see `resnetlab weights`"
        raise Error(f"unknown weights {tag!r} for {model}; {known}")
    if tag in _BY_NAME:
        return _BY_NAME[tag]
    short = [e for e in ENTRIES if e.tag == tag]
    if len(short) == 1:
        return short[0]
    if short:
        raise Error(
            f"weights tag {tag!r} is ambiguous: {', '.join(e.name for e in short)}; give the full tag"
        )
    close = difflib.get_close_matches(tag, _BY_NAME, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `resnetlab weights`"
    raise Error(f"unknown weights {tag!r}{hint}")


def find_by_path(path: Path) -> WeightsEntry | None:
    """The entry a local file is a copy of, told by its published name: a torchvision file's
    (it carries its sha256 prefix) or a shipped file's; a Hub file (model.safetensors) is
    named by its repository, so a loose one matches nothing."""
    posix = path.as_posix()
    found = [
        e for e in ENTRIES if e.hub is None and (posix == e.file_name or posix.endswith("/" + e.file_name))
    ]
    return found[0] if len(found) == 1 else None


def find_by_url(url: str) -> WeightsEntry | None:
    return next((e for e in ENTRIES if e.url == url), None)


def _models_with_weights() -> list[str]:
    return list(dict.fromkeys(e.model for e in ENTRIES))
