"""`resnetlab weights [PATTERN]`: the table of pretrained checkpoints; `resnetlab weights download TAG...`."""

from __future__ import annotations

import argparse
import re

from resnetlab.errors import Error
from resnetlab.weights.cache import cache_dir, cached_path, fetch, torch_cache_dir
from resnetlab.weights.entry import WeightsEntry
from resnetlab.weights.registry import get_weights, list_weights

_COLUMNS = ("tag", "params", "dataset", "acc@1", "size", "cached", "source")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="list pretrained weights (tag, accuracy, size, cached?) or download them",
        description="`resnetlab weights [PATTERN]` lists the pretrained checkpoints: tag, parameters, "
        "data set, published top-1 accuracy, file size, whether it is cached, and where it comes "
        "from. `resnetlab weights download TAG...` fetches them into the cache "
        "($RESNETLAB_HOME/weights, default ~/.cache/resnetlab/weights).",
        epilog="examples:\n  resnetlab weights\n  resnetlab weights 'resnet50*'\n"
        "  resnetlab weights download resnet50.tv2_in1k\n"
        "  resnetlab predict --weights resnet50.tv2_in1k cat.jpg\n  resnetlab eval resnet20.fmnist",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="PATTERN | download TAG...",
        help="shell-style tag pattern ('resnet50*') or a model name; or `download` and tags",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    words = args.words
    if words[:1] == ["download"]:
        if len(words) == 1:
            raise Error("`resnetlab weights download` needs at least one TAG (see `resnetlab weights`)")
        entries = [get_weights(tag) for tag in words[1:]]  # every tag checked before any download
        for entry in entries:
            where = "ships with resnetlab" if entry.shipped else "cached"
            print(f"{entry.name}: {where} at {fetch(entry)}")
        return 0
    if len(words) > 1:
        raise Error(f"give one PATTERN, or `download TAG...`; got {' '.join(words)}")
    pattern = words[0] if words else "*"
    print(format_table(select(pattern)))
    print(f"\ncache: {cache_dir()} (files in {torch_cache_dir()} are used too)")
    return 0


def select(pattern: str) -> list[WeightsEntry]:
    """Entries matching a shell-style pattern, or a model name or tag given without wildcards."""
    if re.search(r"[*?\[]", pattern):
        found = list_weights(pattern)
    else:
        found = [e for e in list_weights() if pattern in (e.model, e.name, e.tag)]
    if not found:
        raise Error(f"no pretrained weights match {pattern!r}; `resnetlab weights` lists them all")
    return found


def format_table(entries: list[WeightsEntry]) -> str:
    """Aligned plain-text table, one checkpoint per line; the default tag of a model is starred."""
    cells = [_COLUMNS]
    for e in entries:
        found = cached_path(e)
        size = e.size_mb if e.size_mb is not None else (found.stat().st_size / 2**20 if found else None)
        cells.append(
            (
                e.name + (" *" if e.default else ""),
                f"{e.num_params:,}",
                e.dataset,
                "-" if e.metrics.acc1 is None else f"{e.metrics.acc1:.2f}",
                "?" if size is None else f"{size:.1f} MB",
                "shipped" if e.shipped else ("yes" if found else "no"),
                e.source,
            )
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    numeric = {1, 3, 4}  # right-aligned columns
    lines = []
    for row in cells:
        pairs = enumerate(zip(row, widths, strict=True))
        padded = (cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in pairs)
        lines.append("  ".join(padded).rstrip())
    lines.append("* the model's default (pretrained=True); acc@1: published top-1 %, '-' where none is")
    if any(e.hub for e in entries):
        lines.append("hf-hub: checked against the sha256 the Hub publishes; the size shows once cached")
    return "\n".join(lines)
