"""Turn a finished run into a weights file that ships in the package (maintainers' tool).

    python -m resnetlab.train.ship RUN_DIR resnet20.fmnist

writes src/resnetlab/weights/shipped/resnet20-fmnist.safetensors: the run's inference weights
(EMA when kept) with its metadata, plus the tag, the training command, the code version and the
whole TrainConfig; evaluates it on the test set with what `resnetlab eval` runs; and prints the
entry to add to weights/table.py (sha256, parameters, size, statistics, accuracy). The test
split picks nothing: the run is fixed before this measures it once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from resnetlab.errors import Error
from resnetlab.train.eval_source import evaluate_checkpoint
from resnetlab.weights import load
from resnetlab.weights.cache import SHIPPED_DIR, sha256sum
from resnetlab.weights.checkpoint import inference_weights, load_weights, save_weights


def shipped_name(tag: str) -> str:
    """resnet20.fmnist -> resnet20-fmnist.safetensors."""
    return tag.replace(".", "-", 1) + ".safetensors"


def ship(run_dir: Path, tag: str, folder: Path = SHIPPED_DIR) -> dict[str, Any]:
    """Write the run's inference weights as `folder/<model>-<tag>.safetensors`; returns the entry facts."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise Error(f"{run_dir} has no config.json; give a run directory written by resnetlab train")
    run = json.loads(config_file.read_text(encoding="utf-8"))
    weights = inference_weights(run_dir)
    state, meta = load_weights(weights)
    if not tag.startswith(f"{meta['model']}."):
        raise Error(f"the tag must start with the run's model: {meta['model']}.<tag>; got {tag!r}")
    command = run.get("command") or []
    meta = {
        **meta,
        "tag": tag,
        "trained_by": _as_typed(command),
        "code": run.get("environment", {}).get("git"),
        "train_config": run["config"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / shipped_name(tag)
    save_weights(dest, state, meta)
    model, _ = load(dest, model=meta["model"])  # the file loads, and gives the parameter count
    return {
        "file": str(dest),
        "sha256": sha256sum(dest),
        "num_params": sum(p.numel() for p in model.parameters()),
        "size_mb": round(dest.stat().st_size / 2**20, 2),
        "mean": meta.get("mean"),
        "std": meta.get("std"),
        "from": str(weights),
        "trained_by": meta["trained_by"],
    }


def table_entry(tag: str, facts: dict[str, Any], acc1: float, acc5: float) -> str:
    """The `_fashion(...)` entry to add to weights/table.py's ENTRIES for a shipped file."""
    model, short = tag.split(".", 1)
    words = (facts["trained_by"] or "").split(" ")
    chunks, line = [], ""
    for word in words:  # the command as string pieces of <= 80 characters, to fit the line length
        if line and len(line) + len(word) > 80:
            chunks.append(line)
            line = ""
        line += word + " "
    chunks.append(line.rstrip())
    command = "\n        ".join(repr(chunk) for chunk in chunks)
    return "\n".join(
        [
            "    _fashion(",
            f"        {model!r},",
            f"        {short!r},",
            f"        sha256={facts['sha256']!r},",
            f"        num_params={facts['num_params']:_},",
            f"        acc1={acc1:.2f},",
            f"        acc5={acc5:.2f},",
            f"        size_mb={facts['size_mb']},",
            f"        mean={facts['mean'][0]!r},",
            f"        std={facts['std'][0]!r},",
            f"        trained_by={command},",
            "        default=True,",
            "    ),",
        ]
    )


def _as_typed(command: list[str]) -> str | None:
    """The run's command line as a user types it: benchmarks/x.py -> python -m benchmarks.x,
    resnetlab/__main__.py (`python -m resnetlab`, as the benchmarks start runs) -> resnetlab."""
    if not command:
        return None
    script = Path(command[0])
    if script.parent.name == "benchmarks":
        program = f"python -m benchmarks.{script.stem}"
    elif script.name == "__main__.py":
        program = script.parent.name
    else:
        program = script.name
    return " ".join([program, *command[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnetlab.train.ship", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory")
    parser.add_argument("tag", help="the registry tag, <model>.<tag> (resnet20.fmnist)")
    parser.add_argument(
        "--folder", type=Path, default=SHIPPED_DIR, help=f"where to write (default: {SHIPPED_DIR})"
    )
    parser.add_argument("--device", default="cpu", help="for the test-set evaluation (default: cpu)")
    args = parser.parse_args(argv)
    facts = ship(args.run_dir, args.tag, args.folder)
    print(json.dumps(facts, indent=2))
    # The figure the entry records is what `resnetlab eval <tag>` measures: the same function.
    with tempfile.TemporaryDirectory() as tmp:
        ev = evaluate_checkpoint(facts["file"], device=args.device, figure=Path(tmp) / "confusion.png")
    acc1, acc5 = 100 * (1 - ev.result.err), 100 * (1 - ev.result.top5_err)
    print(
        f"test accuracy of {facts['file']}: top-1 {acc1:.2f}%, top-5 {acc5:.2f}% ({ev.result.count} images)"
    )
    print("entry for ENTRIES in src/resnetlab/weights/table.py:")
    print(table_entry(args.tag, facts, acc1, acc5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
