"""Evaluation: loss, top-1 and top-5 error and the confusion matrix, counted exactly across ranks.

`evaluate` is what the training loop calls (through its task, train/tasks.py); `resnetlab eval`
is train/eval_source.py, which adds per-class figures and a confusion-matrix PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from resnetlab.train.distributed import Runtime
from resnetlab.train.precision import autocast
from resnetlab.train.tta import check_tta, tta_logits


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

    def iou(self) -> list[float]:
        """Intersection over union of each class (segmentation: class 0 is the background); NaN
        for a class neither predicted nor present."""
        hits = self.confusion.diagonal().double()
        union = self.confusion.sum(0).double() + self.confusion.sum(1).double() - hits
        return [h / u if u else math.nan for h, u in zip(hits.tolist(), union.tolist(), strict=True)]

    @property
    def miou(self) -> float:
        """Mean IoU over the classes present or predicted, background included (as VOC counts)."""
        values = [v for v in self.iou() if not math.isnan(v)]
        return sum(values) / max(len(values), 1)

    def record(self) -> dict[str, float]:
        single = {} if self.single_err is None else {"single_err": self.single_err}
        return {"loss": self.loss, "err": self.err, "top5_err": self.top5_err, **single}

    def summary(self) -> str:
        views = "" if self.single_err is None else f" ({100 * self.single_err:.2f}% one view)"
        err = f"error {100 * self.err:.2f}%{views}, top-5 error {100 * self.top5_err:.2f}%"
        return f"{err}, loss {self.loss:.4f}"


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    num_classes: int,
    runtime: Runtime | None = None,
    amp: str = "none",
    tta: str = "none",
    targets: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> EvalResult:
    """Evaluate on every example of `loader` once; under torchrun each rank sees its shard and the
    counts are summed over ranks, so the result equals a single-process evaluation when every rank
    holds the same model (`fit` gives them all rank 0's BN statistics first).

    `tta` scores each image by the averaged logits of several views (`resnetlab.train.tta`: flip,
    flip-shift); the result then also holds the plain view's error (`single_err`). `targets` maps
    a batch's labels to what the outputs are scored against (a segmentation's class maps: each
    pixel then counts as one example).
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
        y = targets(y) if targets is not None else y
        with autocast(device, amp):
            logits, single = tta_logits(model, x, tta)
        if tta != "none":  # without TTA the plain view is `logits`, counted by the confusion matrix
            single_hits += (single.argmax(1) == y).sum()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        pairs.append((y * k + logits.argmax(1)).flatten())  # a class map: one pair per pixel
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
