"""The sidecar JSON written next to an exported file (`FILE.json`, e.g. `r20.onnx.json`).

It holds the source's own metadata under the names a run stores with its weights (model,
classes, mean, std, image_size, resize_size, data, ...; see weights/meta.py `run_meta`), so
`resnetlab eval` and `resnetlab predict` feed an exported file exactly as they feed the run, plus
an "export" block: format and options, the input, the source checkpoint's sha256, the exporter
and its versions, and the parity and accuracy figures measured before the file was kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnetlab.errors import Error

SIDECAR_VERSION = 1
# What eval and predict read from a sidecar, and its type; anything else is optional.
_REQUIRED = {"model": str, "num_classes": int, "in_chans": int, "image_size": int, "classes": list}


def sidecar_path(path: str | Path) -> Path:
    """Where the sidecar of an exported file lives: the file's name plus `.json`."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def sidecar_bytes(meta: dict[str, Any], export: dict[str, Any]) -> bytes:
    return (json.dumps({**meta, "export": {"version": SIDECAR_VERSION, **export}}, indent=2) + "\n").encode()


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of exported file `path` (metadata plus the "export" block); missing or broken
    sidecars are an `Error` that says how to get one."""
    side = sidecar_path(path)
    try:
        data = json.loads(side.read_text())
    except FileNotFoundError:
        raise Error(f"{path} has no sidecar {side.name}; export it again with `resnetlab export`") from None
    except (OSError, ValueError) as exc:
        raise Error(f"{side} is not readable JSON ({exc}); export {path} again") from None
    if not isinstance(data, dict) or not isinstance(data.get("export"), dict):
        raise Error(f"{side} is not a resnetlab export sidecar; export {path} again")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise Error(f"{side} has no valid {key!r} ({kind.__name__}); export {path} again")
    return data
