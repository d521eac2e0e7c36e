"""Running exported files: an .onnx through ONNX Runtime, a .pt2 through torch.export.load,
each called like the eager model, (N, C, H, W) float -> (N, K) logits, with the sidecar's
metadata, so `resnetlab eval` and `resnetlab predict` take them as they take a run directory.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.export.sidecar import read_sidecar

EXPORT_SUFFIXES = (".onnx", ".pt2")


def require_extra(name: str) -> ModuleType:
    """Import one package of the `export` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise Error(
            f'{name} is not installed; ONNX export and inference need it: pip install "resnetlab[export]"'
        ) from None


class OnnxModel(nn.Module):
    """An .onnx file in an ONNX Runtime CPU session. A file exported for a fixed batch size
    runs any batch in chunks of that size, the last one padded."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        ort = require_extra("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own types for unreadable or invalid models
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Error(f"ONNX Runtime cannot load {path}: {reason}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.batch = inp.shape[0] if isinstance(inp.shape[0], int) else None  # None: dynamic

    def _run(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        cpu = x.detach().to("cpu", torch.float32).contiguous()
        if self.batch is None or len(cpu) == self.batch:
            return self._run(cpu).to(x.device)
        chunks = []
        for start in range(0, len(cpu), self.batch):
            part = cpu[start : start + self.batch]
            pad = self.batch - len(part)
            if pad:
                part = torch.cat([part, part.new_zeros((pad, *part.shape[1:]))])
            chunks.append(self._run(part)[: self.batch - pad])
        return torch.cat(chunks).to(x.device)


class ProgramModel(nn.Module):
    """A .pt2 `torch.export` program, loaded with `torch.export.load` (no resnetlab code runs)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        try:
            self.program = torch.export.load(str(path)).module()
        except Exception as exc:  # a damaged archive fails in zipfile, pickle-free loaders or asserts
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise Error(f"cannot load {path} as a torch.export program: {reason}") from None

    def train(self, mode: bool = True) -> ProgramModel:
        """An exported program is fixed in eval mode (its module refuses `train()`): a no-op."""
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.program(x.detach().to("cpu", torch.float32)).to(x.device)


def is_exported(path: str | Path) -> bool:
    return Path(path).suffix in EXPORT_SUFFIXES and Path(path).is_file()


def load_exported(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(callable model on the CPU, sidecar metadata) of an exported .onnx or .pt2 file; "source"
    names the file itself (the checkpoint it came from is in meta["export"])."""
    meta = {**read_sidecar(path), "source": str(path), "tag": None}
    model = OnnxModel(path) if Path(path).suffix == ".onnx" else ProgramModel(path)
    return model.eval(), meta


def load_inference_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """An exported file through its runtime, or anything `load_model` takes (run directory,
    weights file, registry tag, URL) as the eager model on `device`."""
    if is_exported(path):
        return load_exported(path)
    from resnetlab.train.checkpoint import load_model

    return load_model(path, device)
