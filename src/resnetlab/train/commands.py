"""`resnetlab train`, `resnetlab eval` and `resnetlab predict`.

`train` has one flag per TrainConfig field, generated from the dataclass by `resnetlab.flags`.
`--recipe` picks the starting point; the flags a user types override single fields of it, and
nothing else does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import textwrap
import time
from pathlib import Path

from resnetlab.data.datasets import is_image_files
from resnetlab.errors import Error
from resnetlab.flags import add_field_flags, format_value, given_fields
from resnetlab.train.config import (
    DENSE_OFF,
    RECIPES,
    RESUME_MAY_CHANGE,
    TrainConfig,
    get_recipe,
    list_recipes,
)
from resnetlab.train.distributed import setup_runtime, teardown_runtime
from resnetlab.train.engine import fit
from resnetlab.train.eval_source import evaluate_checkpoint, format_report
from resnetlab.train.predict import predict
from resnetlab.train.rundir import read_config
from resnetlab.train.tta import TTA_MODES
from resnetlab.weights import source_model

DEFAULT_RECIPE = "fast"
FINETUNE_RECIPE = "finetune"  # the default with --init-from
RUNS_DIR = "runs"  # where `train` puts a run when --out is not given


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a model on a data set with a recipe (writes a run directory)",
        description=(
            "Train a model. --recipe picks a TrainConfig preset; each flag below overrides one of its "
            "fields. Writes config.json, metrics.jsonl, curves.png and checkpoints to --out "
            f"(default: {RUNS_DIR}/MODEL-DATA-TIME)."
        ),
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--recipe",
        choices=list_recipes(),
        help=f"preset for every field below (default: {DEFAULT_RECIPE}; with --init-from, {FINETUNE_RECIPE})",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR from its latest checkpoint with its saved config (only --device and "
        "--[no-]progress may be given with it)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory --out")
    _add_config_flags(
        train.add_argument_group(f"config fields (default: the recipe's; shown: {DEFAULT_RECIPE})")
    )
    train.set_defaults(func=run_train)

    ev = subparsers.add_parser(
        "eval",
        help="top-1/top-5 error, per-class accuracy and a confusion matrix of a trained model",
        description="Evaluate a run directory (its latest checkpoint; EMA weights when kept), a "
        "weights file (resnetlab or timm .safetensors, torchvision .pth), a pretrained tag of "
        "`resnetlab weights` (e.g. resnet20.fmnist), a URL, or a file from `resnetlab export` (.onnx "
        "through ONNX Runtime, .pt2) with its sidecar's preprocessing.",
    )
    ev.add_argument(
        "path",
        metavar="RUN_DIR|WEIGHTS|TAG|FILE",
        help="run directory, weights file, pretrained tag, URL, or exported .onnx/.pt2",
    )
    ev.add_argument("--data", help="data set to evaluate on (default: the one it was trained on)")
    ev.add_argument("--data-dir", metavar="DIR", help="where the data set files are")
    ev.add_argument(
        "--split",
        choices=("val", "test"),
        help="split to evaluate (default: test; for a folder of class folders only, its held-out val)",
    )
    ev.add_argument("--batch-size", type=int, default=512, help="examples per batch (default: 512)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ev.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        help="autocast (default: the run's own, so eval gives the figure training recorded; none "
        "for other weights, and for a run trained in fp16 when evaluated off CUDA)",
    )
    ev.add_argument(
        "--tta",
        choices=TTA_MODES,
        help="test-time augmentation: none, flip (the image and its mirror), flip-shift (also both "
        "shifted 1 px) (default: what the run evaluated with, none for other weights)",
    )
    ev.add_argument(
        "--figure",
        metavar="PNG",
        help="confusion-matrix path (default: confusion-SPLIT.png in the run directory; other "
        "weights and exported files draw one only when this names a path)",
    )
    ev.set_defaults(func=run_eval)

    pr = subparsers.add_parser(
        "predict",
        help="top-k classes with probabilities for image files",
        description="Classify image files with a trained model; class names come from the run or "
        "the pretrained weights' registry entry. `resnetlab predict RUN_DIR IMAGE...` or "
        "`resnetlab predict --weights resnet50.tv2_in1k IMAGE...`; a file from `resnetlab export` "
        "(.onnx, .pt2) runs with its sidecar's preprocessing.",
    )
    pr.add_argument(
        "path",
        metavar="RUN_DIR|WEIGHTS|TAG|FILE",
        nargs="?",
        help="run directory, weights file, pretrained tag, URL or exported .onnx/.pt2 (or give --weights)",
    )
    pr.add_argument("images", metavar="IMAGE", nargs="+", help="image files (any format Pillow reads)")
    pr.add_argument(
        "--weights", metavar="TAG|WEIGHTS", help="the model to use; then every argument is an image"
    )
    pr.add_argument("--top-k", type=int, default=5, help="classes to show per image (default: 5)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    pr.set_defaults(func=run_predict)


def _add_config_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per TrainConfig field (resnetlab.flags); the help shows the default recipe's value.
    Unset flags stay out of the namespace, so the recipe's value holds and `run_train` can tell
    exactly which fields the user set."""
    shown = RECIPES[DEFAULT_RECIPE]

    def help_for(field: dataclasses.Field) -> str:
        if field.name == "out":
            return f"{field.metadata['help']} [{RUNS_DIR}/MODEL-DATA-TIME]"
        return f"{field.metadata['help']} [{format_value(getattr(shown, field.name), short=True)}]"

    add_field_flags(group, TrainConfig, help_for)


def _train_epilog() -> str:
    base = TrainConfig()
    lines = ["recipes (fields that differ from the TrainConfig defaults):"]
    for name in list_recipes():
        recipe = RECIPES[name]
        changed = [
            f"{f.name}={format_value(getattr(recipe, f.name), short=True)}"
            for f in dataclasses.fields(TrainConfig)
            if getattr(recipe, f.name) != getattr(base, f.name)
        ]
        lines.append(
            textwrap.fill(" ".join(changed), 100, initial_indent=f"  {name:<16}", subsequent_indent=" " * 18)
        )
    lines += [
        "",
        "examples:",
        "  resnetlab train --model resnet20 --data fashion-mnist --recipe fast --epochs 15 --out runs/r20",
        "  resnetlab train --model resnet110 --data cifar10 --recipe paper-cifar --out runs/paper-r110",
        "  resnetlab train --init-from resnet20.fmnist --data imagefolder:photos --freeze layer1",
        "  resnetlab train --resume runs/r20",
        "  torchrun --nproc-per-node 2 -m resnetlab train --model resnet20 --out runs/r20-ddp",
    ]
    return "\n".join(lines)


def default_run_dir(cfg: TrainConfig) -> str:
    """runs/MODEL-DATA-YYYYmmdd-HHMMSS; an image folder or pack is named by its last path component."""
    data = re.sub(
        r"[^A-Za-z0-9_.-]+", "_", Path(cfg.data.split(":", 1)[-1]).name.removesuffix(".pack") or "data"
    )
    return str(Path(RUNS_DIR) / f"{cfg.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """(the config to train, whether it resumes) from the recipe or RUN_DIR plus the flags given."""
    given = given_fields(TrainConfig, args)
    if args.resume is None:
        fine_tuning = given.get("init_from") is not None
        if fine_tuning and "model" not in given:
            given["model"] = source_model(given["init_from"]) or RECIPES[DEFAULT_RECIPE].model
        default = FINETUNE_RECIPE if fine_tuning else DEFAULT_RECIPE
        cfg = dataclasses.replace(get_recipe(args.recipe or default), **given)
        if cfg.task != "classify":  # the recipe's augmentations, unless typed (then check() refuses)
            cfg = dataclasses.replace(cfg, **{k: v for k, v in DENSE_OFF.items() if k not in given})
        if is_image_files(cfg.data) and "crop_padding" not in given:
            # The small-image recipes pad and crop; folders take random-resized crops instead. Only
            # a --crop-padding the user typed is a contradiction worth an error (TrainConfig.check).
            cfg = dataclasses.replace(cfg, crop_padding=0)
        if "out" not in given:
            cfg = dataclasses.replace(cfg, out=default_run_dir(cfg))
        return cfg, False
    if args.overwrite:
        raise Error("--resume and --overwrite contradict each other; drop one of them")
    if args.recipe:
        raise Error("--resume takes the recipe from RUN_DIR/config.json; drop --recipe")
    if "out" in given:
        raise Error("--resume RUN_DIR already names the run directory; drop --out")
    fixed = sorted(set(given) - set(RESUME_MAY_CHANGE))
    if fixed:
        flags = ", ".join("--" + name.replace("_", "-") for name in fixed)
        raise Error(f"--resume continues a run with its saved config; drop {flags} (or start a new run)")
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise Error(f"--resume {run_dir}: no such run directory")
    return dataclasses.replace(read_config(run_dir), out=str(run_dir), **given), True


def run_train(args: argparse.Namespace) -> int:
    cfg, resume = config_from_args(args)
    runtime = setup_runtime(cfg.device)
    try:
        if runtime.max_restarts and not resume and not hasattr(args, "out"):
            raise Error(
                "torchrun --max-restarts needs --out RUN_DIR: restarted workers resume the run from there"
            )
        result = fit(cfg, resume=resume, overwrite=args.overwrite, runtime=runtime)
    finally:
        teardown_runtime(runtime)
    if not runtime.is_main:  # under torchrun, rank 0 speaks for the group
        return 0
    final = {r["split"]: r for r in result.history if r["kind"] == "eval"}
    if final:
        print(f"final: {final_summary(final, result.config.tta)}")
    print(f"time: {process_seconds() / 60:.2f} min from process start")
    if result.run_dir is not None:
        print(f"run directory: {result.run_dir}")
        print(f"next: resnetlab eval {result.run_dir}   resnetlab predict {result.run_dir} IMAGE...")
    return 0


def final_summary(final: dict[str, dict], tta: str) -> str:
    """'val accuracy 93.10%, test accuracy 93.02% (flip-shift TTA; one view 92.85%)' from the last
    eval record of each split."""
    parts = []
    for split, record in final.items():
        if "miou" in record:  # --task segment
            parts.append(
                f"{split} mIoU {100 * record['miou']:.2f} (pixel accuracy {100 * record['pixel_acc']:.2f}%)"
            )
            continue
        if "map" in record:  # --task detect
            parts.append(f"{split} mAP {100 * record['map']:.2f} (mAP@.5 {100 * record['map_50']:.2f})")
            continue
        part = f"{split} accuracy {100 * (1 - record['err']):.2f}%"
        if "single_err" in record:
            part += f" ({tta} TTA; one view {100 * (1 - record['single_err']):.2f}%)"
        parts.append(part)
    return ", ".join(parts)


def process_seconds() -> float:
    """Wall seconds since this process started, imports included (Linux's /proc; elsewhere,
    since this module was imported)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        started = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


_IMPORTED = time.monotonic()


def run_eval(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise Error("--batch-size must be at least 1")
    report = evaluate_checkpoint(
        args.path,
        data=args.data,
        data_dir=args.data_dir,
        split=args.split,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        tta=args.tta,
        figure=args.figure,
    )
    print(format_report(report))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    source, images = args.path, args.images
    if args.weights is not None:
        source, images = args.weights, ([args.path] if args.path else []) + images
    elif source is None:  # argparse fills IMAGE first, so a lone argument lands there
        raise Error("give a model (RUN_DIR, weights file or --weights TAG) and at least one IMAGE")
    for prediction in predict(source, images, top_k=args.top_k, device=args.device):
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in prediction.top)
        drawn = f" (drawn: {prediction.drawn})" if prediction.drawn is not None else ""
        print(f"{prediction.path}: {ranked or 'nothing found'}{drawn}")
    return 0
