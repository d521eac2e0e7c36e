"""Reading checkpoint files: torchvision `.pth` (zip `torch.save`), timm and resnetlab `.safetensors`.

A `.pth` is read only with `torch.load(weights_only=True)`, whose unpickler builds tensors and
plain containers and refuses anything else, so a hostile pickle is an error and never runs.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError

from resnetlab.errors import Error

META_KEY = "resnetlab"  # the safetensors header entry resnetlab writes its metadata under
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")  # in torch.load's refusal message
_NESTED = ("state_dict", "model", "state_dict_ema")  # where training checkpoints keep the weights


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict on the CPU, resnetlab metadata or None) of a .safetensors or torch.save file."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return _read_torch(path), None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict on the CPU, resnetlab metadata or None); a damaged file is an `Error`."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise Error(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None
    return state, json.loads(header[META_KEY]) if META_KEY in header else None


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _GLOBAL.search(str(exc))  # weights_only met a global: the pickle needs code
        if refused is None:
            raise Error(
                f"{path} is not a readable torch checkpoint; it may be truncated or corrupt"
            ) from None
        raise Error(
            f"refusing to load {path}: it is a pickle that needs code to load (it refers to "
            f"{refused.group(1)}); resnetlab reads only plain state dicts (torch.load weights_only=True)"
        ) from None
    except Exception as exc:  # torch.load raises many types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Error(
            f"{path} is not a readable torch checkpoint ({reason}); it may be truncated or corrupt"
        ) from None
    if isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[k] for k in _NESTED if k in obj and _is_state_dict(obj[k])), obj)
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise Error(
            f"{path} holds no state dict (a dict of tensors); save one with torch.save(model.state_dict())"
        )
    return dict(obj)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
