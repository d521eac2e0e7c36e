"""`resnetlab models [PATTERN]`: the model zoo as a table, measured rather than quoted.

The rows come from model_table.json (see `resnetlab.models.table`), so the command answers
without importing torch; a model registered at run time, not in the file, is measured live.
"""

from __future__ import annotations

import argparse
import re

from resnetlab.errors import Error
from resnetlab.models.registry import match_names, registered_names, unknown_model
from resnetlab.models.table import ModelSummary, load_table

_COLUMNS = ("name", "family", "depth", "block", "stem", "shortcut", "params", "MACs", "input", "paper")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models: depth, block, shortcut, parameters, MACs, the paper's figure",
        description="List registered models with their parameter count and multiply-accumulates "
        "(MACs) for one image at the native input size (CIFAR 32x32, ImageNet 224x224).",
    )
    parser.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'plain*'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    table = load_table()
    known = list(table) + [name for name in registered_names() if name not in table]
    names = match_names(args.pattern, known)
    if not names:
        if not re.search(r"[*?\[]", args.pattern):
            raise unknown_model(args.pattern, known)  # "unknown model ...; did you mean ..."
        raise Error(f"no model matches {args.pattern!r}; `resnetlab models` lists them all")
    rows = sorted((table.get(name) or _measure(name) for name in names), key=lambda s: s.family)  # stable
    print(format_table(rows))
    return 0


def _measure(name: str) -> ModelSummary:
    from resnetlab.models.summary import summarize  # imports torch: only for models not in the file

    return summarize(name)


def format_table(rows: list[ModelSummary]) -> str:
    """Aligned plain-text table, one model per line."""
    cells = [_COLUMNS] + [
        (
            s.name,
            s.family,
            str(s.depth),
            s.block,
            s.stem,
            s.shortcut,
            f"{s.params:,}",
            _si(s.macs),
            f"{s.input_size}B" if s.family == "gpt" else f"{s.input_size}px",  # bytes of context
            s.paper,
        )
        for s in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    numeric = {2, 6, 7, 8}  # right-aligned columns
    lines = []
    for row in cells:
        pairs = enumerate(zip(row, widths, strict=True))
        padded = (cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in pairs)
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _si(n: int) -> str:
    """1814073344 -> '1.81G'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
