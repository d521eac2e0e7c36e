"""A run's checkpoints: weights in safetensors plus a small train-state file, replaced atomically.

A checkpoint is one directory in the run directory, `checkpoint-<step>/`:
  model.safetensors  the trained weights, with the metadata needed to rebuild and feed the model
                     (name, kwargs, classes, normalisation, image size) in the safetensors header;
  ema.safetensors    the EMA weights, when the run keeps an EMA (eval and predict prefer these);
  train_state.pt     optimizer, schedule, AMP scaler, RNG states and step: plain tensors and
                     containers, read back with `torch.load(weights_only=True)`, which unpickles
                     nothing else.
All files are written into a hidden temporary directory and fsynced, then the directory is renamed
into place in one step; only after that are older checkpoints removed. A crash at any moment
therefore leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from resnetlab.atomic import fsync_dir
from resnetlab.errors import Error
from resnetlab.weights.formats import read_safetensors, weights_bytes

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "train_state.pt"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_weights(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write one weights file atomically: temporary file, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        _write_bytes(tmp, weights_bytes(state, meta))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict on the CPU, metadata) of a resnetlab weights file; a damaged file is an `Error`."""
    path = Path(path)
    if not path.is_file():
        raise Error(f"no weights file at {path}; give a run directory or a .safetensors file")
    state, meta = read_safetensors(path)
    if meta is None:
        raise Error(f"{path} has no resnetlab metadata (model name, classes); was it written by resnetlab?")
    return state, meta


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor] | None,
    meta: dict[str, Any],
    train_state: dict[str, Any],
) -> Path:
    """Write `checkpoint-<step>/` atomically and remove the older ones; returns its path."""
    final = run_dir / f"checkpoint-{step:08d}"
    if final.is_dir():  # a finished run resumed: nothing changed since this checkpoint
        return final
    tmp = run_dir / f".checkpoint-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash during an earlier write
    tmp.mkdir()
    try:
        _write_bytes(tmp / MODEL_FILE, weights_bytes(model, {**meta, "step": step}))
        if ema is not None:
            _write_bytes(tmp / EMA_FILE, weights_bytes(ema, {**meta, "step": step, "ema": True}))
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save({**train_state, "step": step}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(run_dir)
    for old in list_checkpoints(run_dir):
        if old != final:
            shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and _CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.fullmatch(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_train_state(checkpoint: Path) -> dict[str, Any]:
    """The train-state dict of a checkpoint directory; only tensors and containers are unpickled."""
    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise Error(f"{checkpoint} has no {STATE_FILE}; the checkpoint is incomplete") from None
    except Exception as exc:  # torch.load raises many types for damaged or hostile files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Error(f"{path} is corrupt or not a resnetlab train state ({reason}); start a new run") from None


def inference_weights(path: str | Path) -> Path:
    """The weights file a run directory is used through (EMA when kept), or `path` itself."""
    path = Path(path)
    if path.is_dir():
        checkpoint = latest_checkpoint(path)
        if checkpoint is None:
            raise Error(f"{path} holds no checkpoint; give a finished run directory or a .safetensors file")
        return checkpoint / EMA_FILE if (checkpoint / EMA_FILE).is_file() else checkpoint / MODEL_FILE
    if not path.exists():
        raise Error(f"{path} does not exist; give a run directory or a .safetensors file")
    return path


def require_meta(meta: dict[str, Any], keys: tuple[str, ...], path: str | Path) -> None:
    """Raise `Error` when a weights file's metadata lacks (or leaves None) what the caller needs."""
    missing = [key for key in keys if meta.get(key) is None]
    if missing:
        raise Error(f"{path} lacks {', '.join(missing)} in its metadata; use the weights of a resnetlab run")
