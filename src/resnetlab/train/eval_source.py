"""`resnetlab eval SOURCE`: a trained model scored on a split of its data.

SOURCE is a run directory, a weights file, a registry tag, a URL, a Hub repository or folder, or
an exported .onnx/.pt2 (run through its runtime with its sidecar's metadata). A classifier gets
top-1/top-5 error, per-class accuracy and a confusion-matrix PNG; a segmentation run mIoU, pixel
accuracy and per-class IoU; a detection run COCO mAP (train/tasks.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resnetlab.data import SCENES, has_split, is_image_files, load_dataset, make_loader, mirror_warning
from resnetlab.errors import Error
from resnetlab.train.distributed import resolve_device
from resnetlab.train.evaluate import plot_confusion
from resnetlab.train.rundir import CONFIG_FILE
from resnetlab.train.tasks import DetectionResult, make_task
from resnetlab.weights import Preprocessing, load
from resnetlab.weights.exported import is_exported


@dataclass
class CheckpointEval:
    result: Any  # EvalResult, SegmentationResult or DetectionResult (train/tasks.py)
    meta: dict[str, Any]
    data: str
    split: str
    classes: list[str]
    figure: Path | None  # the confusion-matrix PNG; None: not drawn
    tta: str = "none"


def evaluate_checkpoint(
    path: str | Path,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    amp: str | None = None,
    tta: str | None = None,
    figure: str | Path | None = None,
) -> CheckpointEval:
    """Evaluate a run directory, weights file or registry tag on a split; draws the confusion PNG.

    The data set defaults to the one the model was trained on, the split to test (val where the
    data has no test split: a folder of class folders only); the PNG goes to `figure`, else to
    RUN_DIR/confusion-SPLIT.png when there is a run directory, else nowhere (a tag, URL, loose
    weights file or exported file leaves no file behind unasked). A folder is shown to the model the
    way its weights expect: their crop, resize, interpolation and normalisation. `tta` and `amp`
    default to the test-time augmentation and autocast the run evaluated with, in its memory
    layout (none for other weights; fp16 only on CUDA), so eval repeats the run's own figure.
    """
    dev = torch.device("cpu") if is_exported(path) else resolve_device(device)
    model, preprocessing = load(path, device=dev)
    meta = model.pretrained_cfg
    data = data or meta.get("data")
    if not data:
        raise Error(
            f"{meta['tag'] or path} was trained on {meta.get('dataset') or 'data resnetlab does not know'}, "
            "which resnetlab cannot fetch; give --data (imagefolder:DIR with DIR/val/<class>/ for ImageNet)"
        )
    if split is None:  # a folder of class folders has no test split, only its held-out val
        split = "test" if has_split(data, "test", val_size=0) else "val"
    val_size = (meta.get("val_size") or 0) if split == "val" else 0
    # Scenes are drawn at the run's own canvas; every other set has one size, or is cropped below.
    canvas = (preprocessing.image_size or 0) if data == SCENES else 0
    dataset = load_dataset(
        data, split, data_dir=data_dir, val_size=val_size, seed=meta.get("seed") or 0, image_size=canvas
    )
    dataset = feed_for(preprocessing, dataset, data, num_classes=meta["num_classes"], source=meta["source"])
    tta = (meta.get("tta") or "none") if tta is None else tta
    if tta != "none" and (warning := mirror_warning(data, f"--tta {tta}")):
        print(warning, file=sys.stderr)
    exported = is_exported(path)  # an fp32 graph with its own layout: no autocast around it
    as_run = amp is None and not exported  # repeat the run's own figure: its autocast and layout
    if amp is None:
        amp = (meta.get("amp") or "none") if as_run else "none"
        amp = "none" if amp == "fp16" and dev.type != "cuda" else amp
    channels_last = as_run and bool(meta.get("channels_last"))
    if channels_last:  # the run's kernels: under bf16 another layout rounds differently
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(dataset, batch_size=batch_size, train=False, device=dev, channels_last=channels_last)
    task = make_task(meta.get("task") or "classify", dataset, device=dev, model=model)
    result = task.evaluate(model, loader, amp=amp, tta=tta)
    if isinstance(result, DetectionResult):  # no confusion matrix to draw
        return CheckpointEval(result, meta, data, split, list(dataset.classes), None, tta)
    if figure is None and (run_dir := _run_dir(path, meta)) is not None:
        figure = run_dir / f"confusion-{split}.png"
    if figure is not None:
        figure = Path(figure)
        views = f" with {tta} TTA" if tta != "none" else ""
        if task.name == "segment":  # per pixel, with the background as class 0
            names, score = ["background", *dataset.classes], f"mIoU {100 * result.miou:.2f}"
        else:
            names, score = list(dataset.classes), f"top-1 error {100 * result.err:.2f}%"
        plot_confusion(result.confusion, names, figure, f"{meta['model']} on {data} {split}{views}: {score}")
    return CheckpointEval(result, meta, data, split, list(dataset.classes), figure, tta)


def feed_for(
    preprocessing: Preprocessing, dataset: Any, data: str, *, num_classes: int, source: object
) -> Any:
    """`dataset` fed to a model of `num_classes` outputs as `preprocessing` says: its normalisation
    and, for a folder or pack, its crop, resize and interpolation. Other classes or channels are refused."""
    if dataset.num_classes != num_classes or dataset.in_chans != preprocessing.in_chans:
        raise Error(
            f"{data} has {dataset.num_classes} classes and {dataset.in_chans} channels, but the model was "
            f"trained for {num_classes} classes and {preprocessing.in_chans} channels; pick matching --data"
        )
    if is_image_files(data):  # decoded here: it must be cropped and normalised exactly as trained
        preprocessing.require(("mean", "std", "image_size", "resize_size"), source)
    return preprocessing.feed(dataset)


def _run_dir(path: str | Path, meta: dict[str, Any]) -> Path | None:
    """The run directory `path` names or keeps its weights in (a folder with config.json, maybe
    above a checkpoint-N/ folder), else None: a registry tag, a URL, a loose weights file or an
    exported file outside a run has none to write into."""
    if meta.get("tag") is not None:
        return None
    folders = [Path(path)] if Path(path).is_dir() else []
    if meta.get("source"):
        source = Path(meta["source"])
        folders += [source.parent, source.parent.parent]
    return next((f for f in folders if (f / CONFIG_FILE).is_file()), None)


def format_report(ev: CheckpointEval) -> str:
    """The text `resnetlab eval` prints: headline errors, then accuracy per class."""
    r = ev.result
    task = ev.meta.get("task") or "classify"
    if task != "classify":
        return _format_dense(ev)
    views = "" if r.single_err is None else f", {ev.tta} TTA"
    lines = [
        f"{ev.meta['model']} on {ev.data} {ev.split} ({r.count} images{views}): "
        f"top-1 error {100 * r.err:.2f}%, top-5 error {100 * r.top5_err:.2f}%, loss {r.loss:.4f}",
    ]
    if r.single_err is not None:
        lines.append(f"without test-time augmentation (one view): top-1 error {100 * r.single_err:.2f}%")
    metrics = ev.meta.get("metrics") or {}
    if metrics.get("acc1") is not None:  # a registry entry: what it records, to compare with
        who = ev.meta["tag"] or ev.meta.get("source_tag") or "the source"  # an export keeps its source's
        lines.append(
            f"{who} records top-1 accuracy {metrics['acc1']}% on {metrics['dataset']} "
            f"({metrics['how']}); measured here: {100 * (1 - r.err):.2f}%"
        )
    lines += ["", f"{'class':<24} {'accuracy':>8}  {'images':>6}"]
    for name, acc, n in zip(ev.classes, r.per_class_accuracy(), r.confusion.sum(1).tolist(), strict=True):
        lines.append(f"{name:<24} {100 * acc:>7.2f}%  {n:>6}")
    drawn = ev.figure if ev.figure is not None else "not drawn (--figure PNG draws it)"
    lines += ["", f"confusion matrix: {drawn}"]
    return "\n".join(lines)


def _format_dense(ev: CheckpointEval) -> str:
    """`resnetlab eval` of a segmentation or detection run: its headline figures, then per class."""
    r, head = ev.result, f"{ev.meta['model']} {ev.meta['task']}"
    if isinstance(r, DetectionResult):
        sizes = ", ".join(
            f"{name} items {'-' if v < 0 else f'{100 * v:.2f}'}"
            for name, v in (("small", r.map_small), ("large", r.map_large))
        )
        return (
            f"{head} on {ev.data} {ev.split} ({r.count} scenes): mAP@[.5:.95] {100 * r.map:.2f}, "
            f"mAP@.5 {100 * r.map_50:.2f}; AP of {sizes}; loss {r.loss:.4f}"
        )
    lines = [
        f"{head} on {ev.data} {ev.split} ({r.count:,} pixels): mIoU {100 * r.miou:.2f}, "
        f"pixel accuracy {100 * (1 - r.err):.2f}%, loss {r.loss:.4f}",
        "",
        f"{'class':<24} {'IoU':>7}",
    ]
    for name, iou in zip(["background", *ev.classes], r.iou(), strict=True):
        lines.append(f"{name:<24} {'-' if iou != iou else f'{100 * iou:.2f}':>7}")
    drawn = ev.figure if ev.figure is not None else "not drawn (--figure PNG draws it)"
    lines += ["", f"pixel confusion matrix: {drawn}"]
    return "\n".join(lines)
