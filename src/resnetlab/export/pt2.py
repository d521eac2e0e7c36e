"""Writing `torch.export` programs (`.pt2`): `torch.export.save`, loadable with
`torch.export.load` alone (no resnetlab code needed), for torch.compile or AOTInductor
downstream. resnetlab reads them back only through `weights.exported.load_program`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from resnetlab.errors import Error


def export_pt2(model: nn.Module, example: Tensor, path: Path, *, dynamic: bool) -> dict[str, object]:
    """Write `model` (eval mode) as a torch.export program to `path`; returns the exporter facts.
    With `dynamic`, the batch axis is symbolic (the example batch must be >= 2)."""
    if dynamic and len(example) < 2:
        raise ValueError("a dynamic batch needs an example batch of at least 2")
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    except Exception as exc:  # tracing, guard and serialisation failures
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Error(f"torch.export cannot export this model: {reason}") from None
    return {"exporter": "torch.export.export", "input": "x", "output": "logits"}
