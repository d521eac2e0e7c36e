"""Running exported files: an .onnx through ONNX Runtime, a .pt2 through torch.export.load
(after `pt2_check`), each called like the eager model, (N, C, H, W) float -> (N, K) logits,
with the sidecar's metadata, so `resnetlab eval` and `resnetlab predict` take them as they take a
run directory.

The file and its sidecar are checked against each other when they are opened: the sidecar's
sha256 of the file (a pair from two exports is refused), and the graph's input (name, rank,
channels, size) and output width against the sidecar's channels, image size and class list.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.weights.cache import sha256sum
from resnetlab.weights.pt2_check import check_program_archive
from resnetlab.weights.sidecar import read_sidecar, sidecar_path

EXPORT_SUFFIXES = (".onnx", ".pt2")
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load's switch: weights_only=True always


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
        self.path = Path(path)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)  # None: symbolic
        self.output_shape = tuple(d if isinstance(d, int) else None for d in out.shape)
        self.batch = self.input_shape[0] if self.input_shape else None  # None: dynamic

    def _run(self, x: Tensor) -> Tensor:
        try:
            return torch.from_numpy(self.session.run(None, {self.input_name: x.numpy()})[0])
        except Exception as exc:  # ORT's own error types (shape, type, kernel failures)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Error(f"ONNX Runtime failed running {self.path}: {reason}") from None

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
    """A .pt2 `torch.export` program, checked by `pt2_check` and then loaded with
    `torch.export.load` (no resnetlab code is needed to run it, and none of the file's runs)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        program = load_program(path)
        signature = program.graph_signature
        if len(signature.user_inputs) != 1 or len(signature.user_outputs) != 1:
            raise Error(
                f"{path} takes {len(signature.user_inputs)} inputs and gives {len(signature.user_outputs)} "
                "outputs; an image classifier takes one and gives one"
            )
        try:
            nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
            self.input_shape = _static(nodes[signature.user_inputs[0]].meta.get("val"))
            self.output_shape = _static(program.graph.output_node().args[0][0].meta.get("val"))
            self.program = program.module()
        except Exception as exc:  # graph construction asserts on malformed programs
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Error(f"cannot load {path} as a torch.export program: {reason}") from None

    def train(self, mode: bool = True) -> ProgramModel:
        """An exported program is fixed in eval mode (its module refuses `train()`): a no-op."""
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.program(x.detach().to("cpu", torch.float32)).to(x.device)


def _static(value: Any) -> tuple[int | None, ...]:
    """A traced tensor's shape with symbolic sizes as None; () where the graph records none."""
    shape = getattr(value, "shape", ())
    return tuple(d if isinstance(d, int) else None for d in shape)


def is_exported(path: str | Path) -> bool:
    return Path(path).suffix in EXPORT_SUFFIXES and Path(path).is_file()


def load_exported(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(callable model on the CPU, sidecar metadata) of an exported .onnx or .pt2 file, the two
    checked against each other; "source" names the file itself (the checkpoint it came from is
    in meta["export"])."""
    side = read_sidecar(path)
    meta = {**side, "source": str(path), "tag": None, "source_tag": side.get("tag")}
    recorded = meta["export"].get("sha256")
    if recorded is not None and recorded != sha256sum(path):
        raise Error(
            f"{sidecar_path(path).name} describes another file than {path} (its sha256 differs): "
            "they come from two exports; export again"
        )
    model = OnnxModel(path) if Path(path).suffix == ".onnx" else ProgramModel(path)
    check_interface(path, meta, model.input_shape, model.output_shape, getattr(model, "input_name", None))
    return model.eval(), meta


def check_interface(
    path: str | Path,
    meta: dict[str, Any],
    input_shape: tuple[int | None, ...],
    output_shape: tuple[int | None, ...],
    input_name: str | None = None,
) -> None:
    """Refuse an exported graph whose input or output disagrees with its sidecar, naming both."""
    side = sidecar_path(path).name
    want_name = meta["export"].get("input")
    if input_name is not None and want_name is not None and input_name != want_name:
        raise Error(f"{path} takes input {input_name!r}, but {side} says {want_name!r}; export it again")
    if len(input_shape) != 4:
        raise Error(f"{path} takes a rank-{len(input_shape)} input; an image classifier takes (N, C, H, W)")
    channels, height, width = input_shape[1:]
    if channels is not None and channels != meta["in_chans"]:
        raise Error(f"{path} takes {channels}-channel images, but {side} says {meta['in_chans']}")
    size = meta["image_size"]
    if any(d is not None and d != size for d in (height, width)):
        raise Error(f"{path} takes {height}x{width}px images, but {side} says {size}x{size}px")
    if len(output_shape) != 2:
        raise Error(
            f"{path} gives a rank-{len(output_shape)} output; an image classifier gives (N, K) logits"
        )
    classes = len(meta.get("classes") or [])
    if output_shape[1] is not None and output_shape[1] != meta["num_classes"]:
        raise Error(f"{path} gives {output_shape[1]} logits, but {side} says {meta['num_classes']} classes")
    if classes != meta["num_classes"]:
        raise Error(f"{side} lists {classes} class names for {meta['num_classes']} classes; export it again")


@contextlib.contextmanager
def _restricted_torch_load() -> Iterator[None]:
    """Inside: every `torch.load` is weights-only whatever its caller asks (torch's own switch),
    and torch.export's loader logs nothing (it logs a traceback before raising on a bad file).
    A second fence behind `check_program_archive`, which has already refused what this would."""
    logger = logging.getLogger("torch.export")
    level, previous = logger.level, os.environ.get(_FORCE_WEIGHTS_ONLY)
    logger.setLevel(logging.CRITICAL)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        logger.setLevel(level)
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """The `torch.export` program in `path`, read only after `check_program_archive` passed it;
    a damaged or refused file is one `Error` line."""
    check_program_archive(path)
    try:
        with _restricted_torch_load(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as exc:  # a damaged archive fails in zipfile, pickle-free loaders or asserts
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Error(f"cannot load {path} as a torch.export program: {reason}") from None
