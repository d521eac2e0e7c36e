"""Reading checkpoint files: torchvision `.pth` (zip `torch.save`), timm and resnetlab `.safetensors`.

A `.pth` is read only with `torch.load(weights_only=True)`, whose unpickler builds tensors and
plain containers and refuses anything else, so a hostile pickle is an error and never runs.
`load_restricted` is that one way in for every pickle resnetlab reads (the `.pt2` check uses it
too); a refusal names the code the pickle asks for, read off its opcodes without running them.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError

from resnetlab.errors import Error

META_KEY = "resnetlab"  # the safetensors header entry resnetlab writes its metadata under
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")  # in torch.load's refusal message
_STORAGE = re.compile(r"torch\.\w*Storage")  # storage types, which the restricted unpickler also takes
_NESTED = ("state_dict", "model", "state_dict_ema")  # where training checkpoints keep the weights


def weights_bytes(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """A resnetlab .safetensors file's bytes: the tensors (made contiguous on the CPU, channels_last
    included) and `meta` as JSON under `META_KEY` in the header."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return safetensors.torch.save(tensors, metadata={META_KEY: json.dumps(meta)})


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
    if META_KEY not in header:
        return state, None
    try:
        return state, json.loads(header[META_KEY])
    except ValueError as exc:
        raise Error(
            f"{path}: its {META_KEY!r} metadata is not JSON ({exc}); the file was damaged or not "
            "written by resnetlab"
        ) from None


def load_restricted(source: Path | bytes, label: str, kind: str = "torch file") -> Any:
    """`torch.load(weights_only=True)` of a file or its bytes; a refusal is an `Error` that says
    whether the pickle needs code (and which) or is damaged. `label` and `kind` name it."""
    data = source if isinstance(source, bytes) else None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(
                io.BytesIO(data) if data is not None else source, map_location="cpu", weights_only=True
            )
    except Exception as exc:  # torch.load raises many types for damaged files
        if data is None:
            try:
                data = Path(source).read_bytes()
            except OSError:
                data = b""
        needs = code_in_pickle(data)
        refused = _GLOBAL.search(str(exc))  # weights_only met a global: the pickle needs code
        if refused is not None and refused.group(1) not in needs:
            needs.insert(0, refused.group(1))
        if needs:
            raise Error(
                f"refusing to load {label}: it is a pickle that needs code to load (it refers to "
                f"{', '.join(needs[:3])}); resnetlab loads only tensors and plain containers "
                "(torch.load weights_only=True)"
            ) from None
        # torch's own text runs to a page of advice: keep its first sentence
        reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):
            reason = "not a pickle of tensors"
        raise Error(f"{label} is not a readable {kind} ({reason}); it may be truncated or corrupt") from None


def code_in_pickle(data: bytes) -> list[str]:
    """The globals a pickle (raw, or `data.pkl` inside a torch.save zip) imports that torch's
    weights-only unpickler does not allow, found by reading its opcodes: nothing is run."""
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                pickles = [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError, ValueError):
            return []
    else:
        pickles = [data]
    from torch import _weights_only_unpickler  # the allow-list of torch.load(weights_only=True)

    safe = set(_weights_only_unpickler._get_allowed_globals())
    found: list[str] = []
    for raw in pickles:
        for name in _pickle_globals(raw):
            if name not in safe and not _STORAGE.fullmatch(name) and name not in found:
                found.append(name)
    return found


def _pickle_globals(raw: bytes) -> list[str]:
    """The "module.name" of each GLOBAL and STACK_GLOBAL in a pickle, as far as it parses. A
    STACK_GLOBAL takes the two strings pushed before it, directly or from the memo."""
    names: list[str] = []
    strings: list[str] = []
    memo: dict[int, object] = {}
    top: object = None  # what the last opcode pushed, where it matters: a string or not
    try:
        for op, arg, _ in pickletools.genops(raw):
            if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = top  # the stack is unchanged
                continue
            top = None
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif "UNICODE" in op.name and isinstance(arg, str):
                top = arg
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                top = memo.get(arg)
            if isinstance(top, str):
                strings.append(top)
    except Exception:  # a damaged pickle: report what was read before the damage
        pass
    return names


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    obj = load_restricted(path, str(path), "torch checkpoint")
    if isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[k] for k in _NESTED if k in obj and _is_state_dict(obj[k])), obj)
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise Error(
            f"{path} holds no state dict (a dict of tensors); save one with torch.save(model.state_dict())"
        )
    return dict(obj)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
