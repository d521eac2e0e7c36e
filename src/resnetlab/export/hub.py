"""`resnetlab export SOURCE --format hf --out DIR`: a folder in the Hugging Face Hub layout.

DIR gets `model.safetensors` (the inference weights, resnetlab's metadata in the header),
`config.json` in timm's layout and a `README.md` model card: the data, the accuracy the run
measured, the command that trained it, how to load it, and whether timm can. `huggingface-cli
upload ORG/NAME DIR` publishes it unchanged; `timm.create_model("local-dir:DIR",
pretrained=True)` opens it for every architecture timm also has (weights/hf.py `TIMM_MODELS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resnetlab.errors import Error
from resnetlab.weights import hf
from resnetlab.weights.adapt import HEAD
from resnetlab.weights.formats import read_checkpoint, weights_bytes
from resnetlab.weights.source import locate


def export_hf(source: str, out: str | Path) -> Path:
    """Write the weights `source` names (a run directory, a resnetlab weights file or tag, or a
    folder in this layout) as the folder `out`; returns it."""
    found = locate(source)
    state, meta = read_checkpoint(found.path)
    meta = meta or found.config
    if meta is None:
        raise Error(
            f"{found.path} has no resnetlab metadata (model, classes, preprocessing); "
            "--format hf writes run directories and resnetlab weights"
        )
    if meta.get("image_size") is None or meta.get("mean") is None:
        raise Error(f"{found.path} records no input size or normalisation to write into config.json")
    run_dir = Path(source) if Path(source).is_dir() and not hf.is_hf_folder(Path(source)) else None
    config = hf.hf_config(meta, num_features=int(state[f"{HEAD}.weight"].shape[1]))
    out = Path(out).expanduser()
    hf.write_folder(
        out,
        {
            hf.WEIGHTS_FILE: weights_bytes(state, meta),
            hf.CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
            hf.CARD_FILE: model_card(meta, out, run_dir).encode(),
        },
    )
    return out


def _run_facts(run_dir: Path | None) -> tuple[str | None, list[str]]:
    """(the training command, lines of measured accuracy) of a run directory, where it has them."""
    if run_dir is None:
        return None, []
    try:
        record = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        argv = list(record["command"])
        if Path(argv[0]).name in ("resnetlab", "__main__.py"):  # the console script or python -m
            argv[0] = "resnetlab"
        command = " ".join(argv)
    except (OSError, ValueError, KeyError, TypeError):
        command = None
    last: dict[str, dict[str, Any]] = {}
    try:
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("kind") == "eval" and "err" in row:
                last[row["split"]] = row
    except (OSError, ValueError, KeyError, TypeError):
        pass
    lines = [
        f"- {split} split: top-1 accuracy {100 * (1 - row['err']):.2f}% (step {row['step']})"
        for split, row in sorted(last.items())
    ]
    return command, lines


def _rounded(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def model_card(meta: dict[str, Any], out: Path, run_dir: Path | None) -> str:
    """README.md: YAML front matter the Hub reads, then what the weights are and how to load them."""
    command, accuracy = _run_facts(run_dir)
    model, size = meta["model"], meta["image_size"]
    classes = meta.get("classes") or []
    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
    timm = hf.timm_loads(meta)
    front = [
        "---",
        f"license: {meta.get('license') or 'other'}",
        f"library_name: {'timm' if timm else 'resnetlab'}",
        "tags:",
        "- image-classification",
        "- resnetlab",
        *(["- timm"] if timm else []),
        "---",
    ]
    body = [
        f"# {model}, trained with resnetlab",
        "",
        f"- Data: {meta.get('data') or meta.get('dataset') or 'not recorded'}; "
        f"{meta['num_classes']} classes{f' ({shown})' if shown else ''}.",
        f"- Input: {meta['in_chans']}x{size}x{size}, the short side resized to "
        f"{meta.get('resize_size') or size} ({meta.get('interpolation') or 'bilinear'}) and the centre "
        f"cropped; mean {_rounded(meta['mean'])}, std {_rounded(meta['std'])}.",
        *(accuracy or ["- Accuracy: not recorded with these weights."]),
        *([f"- Trained by: `{command}`"] if command else []),
        "",
        "## Loading",
        "",
        "```python",
        "import resnetlab",
        f'model = resnetlab.create_model("{model}", pretrained="local-dir:{out.name}")',
        *(
            ["", "import timm", f'model = timm.create_model("local-dir:{out.name}", pretrained=True)']
            if timm
            else []
        ),
        "```",
        "",
    ]
    if not timm:
        body += [
            f"timm cannot load this folder: it has no `{model}` with these arguments "
            f"({json.dumps(meta.get('model_kwargs') or {})}); resnetlab reads it back.",
            "",
        ]
    return "\n".join(front + body)
