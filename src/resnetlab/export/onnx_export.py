"""ONNX export through `torch.onnx.export(dynamo=True)` (the default exporter since torch 2.9),
checked with `onnx.checker` and for the batch axis the caller asked for."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.weights.exported import require_extra

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter logs a warning per torchvision op it cannot register (torchvision is absent)
    and torch.export warns about its own deprecated internals: none of it is the user's business."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: nn.Module, example: Tensor, path: Path, *, dynamic: bool) -> dict[str, object]:
    """Write `model` (eval mode) as ONNX to `path`; returns the exporter facts for the sidecar.

    example: (B, C, H, W); with `dynamic` the batch axis is symbolic. B must be >= 2 then: the
    exporter specialises a dynamic axis whose example size is 1 (REFERENCE.md), so we check.
    """
    onnx = require_extra("onnx")
    require_extra("onnxscript")
    if dynamic and len(example) < 2:
        raise ValueError("a dynamic batch needs an example batch of at least 2")
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=shapes,
                optimize=True,
                verbose=False,
            )
        program.save(str(path))
    except Exception as exc:  # the exporter fails in many ways: unsupported ops, guards, shapes
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Error(f"torch.onnx.export cannot export this model: {reason}") from None
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, shape-inference errors
        raise Error(f"the exported ONNX graph is invalid: {str(exc).splitlines()[0]}") from None
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if dynamic and not batch.dim_param:
        raise Error(f"the exporter fixed the batch axis to {batch.dim_value}; export with --batch N instead")
    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")),
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
    }
