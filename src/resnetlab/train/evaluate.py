"""Evaluation: loss, top-1 and top-5 error and the confusion matrix, counted exactly across ranks.

`evaluate` is what the training loop calls; `evaluate_checkpoint` backs `resnetlab eval
RUN_DIR|weights.safetensors|FILE.onnx|FILE.pt2`, which adds per-class accuracy and a
confusion-matrix PNG; an exported file runs through its runtime with its sidecar's metadata.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from resnetlab.data import has_split, is_image_files, load_dataset, make_loader, mirror_warning
from resnetlab.errors import Error
from resnetlab.train.distributed import Runtime, resolve_device
from resnetlab.train.precision import autocast
from resnetlab.train.rundir import CONFIG_FILE
from resnetlab.train.tta import check_tta, tta_logits
from resnetlab.weights import Preprocessing, load
from resnetlab.weights.exported import is_exported


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per example, nats
    err: float  # top-1 error, fraction in [0, 1]
    top5_err: float  # fraction of examples whose label is not among the 5 highest logits
    confusion: torch.Tensor  # (K, K) int64 counts: row = true class, column = predicted class
    single_err: float | None = None  # with test-time augmentation: the top-1 error of the plain view

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def per_class_accuracy(self) -> list[float]:
        """Recall of each class (NaN for a class with no examples)."""
        hits = self.confusion.diagonal().double()
        totals = self.confusion.sum(1).double()
        return [h / t if t else math.nan for h, t in zip(hits.tolist(), totals.tolist(), strict=True)]

    def record(self) -> dict[str, float]:
        single = {} if self.single_err is None else {"single_err": self.single_err}
        return {"loss": self.loss, "err": self.err, "top5_err": self.top5_err, **single}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    num_classes: int,
    runtime: Runtime | None = None,
    amp: str = "none",
    tta: str = "none",
) -> EvalResult:
    """Evaluate on every example of `loader` once; under torchrun each rank sees its shard and the
    counts are summed over ranks, so the result equals a single-process evaluation when every rank
    holds the same model (`fit` gives them all rank 0's BN statistics first).

    `tta` scores each image by the averaged logits of several views (`resnetlab.train.tta`: flip,
    flip-shift); the result then also holds the plain view's error (`single_err`).
    """
    check_tta(tta)
    # An exported file's runner (resnetlab.export) has no parameters and runs on the CPU.
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    k = num_classes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top5_hits = torch.zeros((), dtype=torch.float64, device=device)
    single_hits = torch.zeros((), dtype=torch.float64, device=device)  # plain-view top-1 hits
    pairs = []  # true * K + predicted, one int64 per example; counted on the CPU at the end
    for x, y in loader:
        with autocast(device, amp):
            logits, single = tta_logits(model, x, tta)
        if tta != "none":  # without TTA the plain view is `logits`, counted by the confusion matrix
            single_hits += (single.argmax(1) == y).sum()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        pairs.append(y * k + logits.argmax(1))
        top5 = logits.topk(min(5, k), dim=1).indices
        top5_hits += (top5 == y[:, None]).any(1).sum()
    model.train(was_training)
    # bincount on the CPU: CUDA's is nondeterministic and refused in --deterministic runs.
    codes = torch.cat(pairs).cpu() if pairs else torch.zeros(0, dtype=torch.long)
    confusion = torch.bincount(codes, minlength=k * k).to(device, torch.float64)
    # One float64 all-reduce for everything: counts stay exact up to 2**53 examples.
    totals = torch.cat([confusion, loss_sum[None], top5_hits[None], single_hits[None]])
    if runtime is not None:
        runtime.all_reduce_sum(totals)
    confusion = totals[: k * k].round().long().view(k, k).cpu()
    n = max(int(confusion.sum()), 1)
    return EvalResult(
        loss=float(totals[-3]) / n,
        err=1 - int(confusion.trace()) / n,
        top5_err=1 - float(totals[-2]) / n,
        confusion=confusion,
        single_err=None if tta == "none" else 1 - float(totals[-1]) / n,
    )


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix (each true class sums to 100%) as a PNG."""
    k = len(classes)
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.5 * k + 2)
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    image = ax.imshow(100 * rates.numpy(), cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    if k <= 30:  # beyond that, tick labels and numbers overlap
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, f"{100 * rates[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color
                    )
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


@dataclass
class CheckpointEval:
    result: EvalResult
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
    dataset = load_dataset(data, split, data_dir=data_dir, val_size=val_size, seed=meta.get("seed") or 0)
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
    result = evaluate(model, loader, num_classes=dataset.num_classes, amp=amp, tta=tta)
    if figure is None and (run_dir := _run_dir(path, meta)) is not None:
        figure = run_dir / f"confusion-{split}.png"
    if figure is not None:
        figure = Path(figure)
        views = f" with {tta} TTA" if tta != "none" else ""
        title = f"{meta['model']} on {data} {split}{views}: top-1 error {100 * result.err:.2f}%"
        plot_confusion(result.confusion, list(dataset.classes), figure, title)
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
