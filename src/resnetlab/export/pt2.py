"""`torch.export` programs (`.pt2`): `torch.export.save`, loadable with `torch.export.load`
alone (no resnetlab code needed), for torch.compile or AOTInductor downstream; and reading
them back, which resnetlab does only through `load_program` (see `pt2_check` for why)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.export.pt2_check import check_program_archive

_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load's switch: weights_only=True always


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
