"""One row per registered model: structure, size and cost, measured on a meta-device build, plus
the figure the paper reports for it. `resnetlab models` reads these rows from model_table.json;

    python -m resnetlab.models.summary --write

measures every built-in model again and rewrites that file (a test checks it is up to date).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnetlab.models.factory import create_model, list_models
from resnetlab.models.gpt import GPT
from resnetlab.models.mlp import ResidualMLP
from resnetlab.models.resnet import ResNet
from resnetlab.models.table import PAPER_FIGURES, TABLE_FILE, ModelSummary, load_table, table_json

# WRN-d-k counts its convolutions, the three 1x1 projections included and the FC not
# [Zagoruyko16]; every other depth here is [He15]'s count of weighted layers on the main path.
_NAMED_DEPTH = {"wrn28_10": 28, "wrn40_4": 40}

NATIVE_SIZE = {"cifar": 32, "imagenet": 224}  # input height = width, in pixels


def count_macs(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> int:
    """Multiply-accumulates of one forward pass (convs, linears and attention's matmuls; norms
    and adds are not counted, as in torchvision's tables): torch's FLOP counter halved, since it
    counts 2 per MAC. `dtype` int64 feeds token ids (the GPT)."""
    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_shape, device=device, dtype=dtype))
    return counter.get_total_flops() // 2


def weighted_depth(model: ResNet) -> int:
    """Weighted layers on the main path [He15]: the stem, every branch conv, and the FC. A deep
    stem counts as one layer, as [He19] names ResNet-50-D after the net it modifies."""
    convs = sum(
        isinstance(m, nn.Conv2d)
        for block in model.blocks()
        for name, m in block.named_modules()
        if not name.startswith("downsample")
    )
    return 1 + convs + 1


def summarize(name: str) -> ModelSummary:
    """Build `name` with default arguments on the meta device (no memory, no init) and measure it."""
    with torch.device("meta"):
        model = create_model(name)
        if not isinstance(model, ResNet):
            return _summarize_sequence(name, model)
        # MACs on the norm-free twin: the counter skips norms anyway, and meta-device BN is slow.
        bare = create_model(name, norm="none").eval()
    size = NATIVE_SIZE[model.family]
    kind = "bottleneck" if model.blocks()[0].expansion > 1 else "basic"
    block = f"preact-{kind}" if model.preact else kind
    if (model.groups, model.base_width) != (1, 64):
        block += f"-{model.groups}x{model.base_width}d"  # [Xie17]'s C x d; ResNet-50 is 1x64d
    stem = (
        model.stem_type if model.stem_type != "default" else {"cifar": "3x3", "imagenet": "7x7"}[model.family]
    )
    return ModelSummary(
        name=name,
        family=model.family,
        depth=_NAMED_DEPTH.get(name, weighted_depth(model)),
        block=block,
        stem=stem,
        shortcut=model.shortcut_type + ("-avg" if model.avg_down else ""),
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(bare, (1, model.in_chans, size, size)),
        input_size=size,
        paper=PAPER_FIGURES.get(name, ""),
    )


def _summarize_sequence(name: str, model: nn.Module) -> ModelSummary:
    """The row of a residual MLP or GPT: depth counts residual units' layers as [He15] counts
    convs (two linears per MLP unit; attention's qkv and projection per attention unit), plus
    the input layer and the head. MACs for one image (MLP) or one full context of bytes (GPT)."""
    if isinstance(model, ResidualMLP):
        shape, dtype, size = (
            (1, model.in_chans, model.image_size, model.image_size),
            torch.float32,
            model.image_size,
        )
        block = "preln-mlp"
    else:
        assert isinstance(model, GPT)
        shape, dtype, size = (1, model.context), torch.int64, model.context
        block = "preln-attn+mlp"
    return ModelSummary(
        name=name,
        family=model.family,
        depth=2 * len(model.blocks()) + 2,
        block=block,
        stem="linear" if model.family == "mlp" else "embed",
        shortcut="identity" if model.has_shortcut else "none",
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, shape, dtype),
        input_size=size,
        paper=PAPER_FIGURES.get(name, ""),
    )


def write_table(path: str | os.PathLike, rows: Iterable[ModelSummary]) -> None:
    """Write the table's file atomically: temporary file, fsync, rename."""
    text = table_json(rows)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model_table.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnetlab.models.summary",
        description=f"Check {TABLE_FILE.name} against the code (exit 1 if it is stale), or rewrite it.",
    )
    parser.add_argument("--write", action="store_true", help="measure every model and rewrite the file")
    args = parser.parse_args(argv)
    if args.write:
        write_table(TABLE_FILE, (summarize(name) for name in list_models()))
        print(f"wrote {TABLE_FILE} ({len(list_models())} models)")
        return 0
    table = load_table()
    stale = [name for name in list_models() if table.get(name) != summarize(name)]
    stale += sorted(set(table) - set(list_models()))
    if stale:
        print(f"{TABLE_FILE.name} is stale for {', '.join(stale)}; run with --write", file=sys.stderr)
        return 1
    print(f"{TABLE_FILE.name} is up to date ({len(table)} models)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
