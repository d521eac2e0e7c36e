"""What a run learns: the loss, the training error and the evaluation of each task.

  classify  cross-entropy over the classes; top-1 error; `evaluate`'s confusion matrix
  segment   cross-entropy over each pixel's K + 1 classes (0: background); pixel error; the
            pixel confusion matrix, from which mIoU and pixel accuracy (`EvalResult`)
  detect    CenterNet's loss (train/detection.py); the error of the class at the boxes' centre
            cells; COCO mAP of the decoded boxes

A scene's label is its index (`data.scenes.SceneArrays`): a task looks its targets up by it, so
the loaders, their exact resume and their torchrun strides are the classification ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import Error
from resnetlab.models.dense import decode_centers
from resnetlab.train.config import TASKS
from resnetlab.train.detection import center_loss, center_targets, coco_map
from resnetlab.train.distributed import Runtime
from resnetlab.train.evaluate import EvalResult, evaluate
from resnetlab.train.precision import autocast


class Classify:
    name = "classify"

    def __init__(self, dataset: Any, *, label_smoothing: float = 0.0) -> None:
        self.num_classes, self.label_smoothing = dataset.num_classes, label_smoothing

    def loss(self, outputs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mean loss, top-1 errors in the batch); the loss in fp32: log-softmax over bf16 logits
        loses the small probabilities."""
        loss = F.cross_entropy(outputs.float(), y, label_smoothing=self.label_smoothing)
        target = y if y.ndim == 1 else y.argmax(1)  # mixup/CutMix: the dominant class
        return loss, (outputs.detach().argmax(1) != target).sum()

    def evaluate(self, model: nn.Module, loader: Any, **kw: Any) -> EvalResult:
        return evaluate(model, loader, num_classes=self.num_classes, **kw)


class Segment:
    name = "segment"

    def __init__(self, dataset: Any, device: torch.device) -> None:
        self.num_classes = dataset.num_classes + 1  # and the background, class 0
        self.maps = dataset.class_maps.to(device)  # (N, S, S) uint8

    def targets(self, y: Tensor) -> Tensor:
        return self.maps.index_select(0, y).long()

    def loss(self, outputs: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mean loss per pixel, the batch's summed per-image pixel error fractions)."""
        target = self.targets(y)
        loss = F.cross_entropy(outputs.float(), target)
        return loss, (outputs.detach().argmax(1) != target).float().mean((1, 2)).sum()

    def evaluate(self, model: nn.Module, loader: Any, **kw: Any) -> SegmentationResult:
        if kw.get("tta", "none") != "none":
            raise Error("test-time augmentation applies to classification; use --tta none")
        result = evaluate(model, loader, num_classes=self.num_classes, targets=self.targets, **kw)
        return SegmentationResult(**vars(result))


@dataclass
class SegmentationResult(EvalResult):
    """`EvalResult` over pixels: err is 1 - pixel accuracy; mIoU over background and items."""

    def record(self) -> dict[str, float]:
        return {"loss": self.loss, "err": self.err, "miou": self.miou, "pixel_acc": 1 - self.err}

    def summary(self) -> str:
        return f"mIoU {100 * self.miou:.2f}, pixel accuracy {100 * (1 - self.err):.2f}%, loss {self.loss:.4f}"


@dataclass
class DetectionResult:
    """COCO box AP of a split, and the mean loss."""

    loss: float
    map: float  # AP@[.5:.95]
    map_50: float
    map_small: float  # -1 where the split has no small (large) items, as COCO reports
    map_large: float
    count: int  # images

    @property
    def err(self) -> float:
        return 1 - self.map

    def record(self) -> dict[str, float]:
        return {
            "loss": self.loss, "err": self.err, "map": self.map, "map_50": self.map_50,
            "map_small": self.map_small, "map_large": self.map_large,
        }  # fmt: skip

    def summary(self) -> str:
        return f"mAP {100 * self.map:.2f}, mAP@.5 {100 * self.map_50:.2f}, loss {self.loss:.4f}"


class Detect:
    name = "detect"

    def __init__(self, dataset: Any, stride: int) -> None:
        self.num_classes, self.stride = dataset.num_classes, stride
        self.boxes, self.box_labels = dataset.boxes, dataset.box_labels
        self.image_size = dataset.image_size

    def targets(self, y: Tensor) -> dict[str, Tensor]:
        """CenterNet's targets for the scenes `y`, stacked, on y's device."""
        made = [
            center_targets(
                self.boxes[i],
                self.box_labels[i],
                num_classes=self.num_classes,
                stride=self.stride,
                image_size=self.image_size,
            )  # fmt: skip
            for i in y.tolist()
        ]
        return {key: torch.stack([m[key] for m in made]).to(y.device) for key in made[0]}

    def loss(self, outputs: dict[str, Tensor], y: Tensor) -> tuple[Tensor, Tensor]:
        """(CenterNet's loss, the batch's summed per-image error of the class at its centre cells)."""
        target = self.targets(y)
        loss = center_loss(outputs, target)
        centres = target["mask"]  # (N, h, w)
        truth = target["heatmap"].argmax(1)
        wrong = (outputs["heatmap"].detach().argmax(1) != truth) & centres
        per_image = wrong.flatten(1).sum(1).float() / centres.flatten(1).sum(1).clamp(min=1)
        return loss, per_image.sum()

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        loader: Any,
        *,
        runtime: Runtime | None = None,
        amp: str = "none",
        tta: str = "none",
    ) -> DetectionResult:
        """Decoded boxes of every scene against its truth, by COCO's AP (pycocotools), over all
        ranks' scenes; the loss is the mean over scenes of each scene's own loss, so it does not
        depend on how the scenes are batched or sharded."""
        if tta != "none":
            raise Error("test-time augmentation applies to classification; use --tta none")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        found: list[tuple[int, dict[str, Tensor]]] = []
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        for x, y in loader:
            with autocast(device, amp):
                outputs = model(x)
            outputs = {k: v.float() for k, v in outputs.items()}
            target = self.targets(y)
            for i in range(len(y)):  # per scene: CenterNet's loss divides by the boxes in what it is given
                one = slice(i, i + 1)
                loss_sum += center_loss(
                    {k: v[one] for k, v in outputs.items()}, {k: v[one] for k, v in target.items()}
                ).double()
            for index, boxes in zip(y.tolist(), decode_centers(outputs, self.stride), strict=True):
                found.append((index, {k: v.cpu() for k, v in boxes.items()}))
        model.train(was_training)
        if runtime is not None:  # every rank scored its shard: gather them all before COCO counts
            found = [item for part in runtime.all_gather_object(found) for item in part]
            runtime.all_reduce_sum(loss_sum)
        found.sort(key=lambda item: item[0])
        indices = [i for i, _ in found]
        scores = coco_map(
            [p for _, p in found],
            [(self.boxes[i], self.box_labels[i]) for i in indices],
            self.num_classes,
            canvas=self.image_size,
        )
        count = max(len(found), 1)
        return DetectionResult(loss=float(loss_sum) / count, count=len(found), **scores)


def make_task(
    name: str, dataset: Any, *, device: torch.device, model: nn.Module, label_smoothing: float = 0.0
) -> Any:
    """The task `name` bound to one split's targets."""
    if name == "classify":
        return Classify(dataset, label_smoothing=label_smoothing)
    if not hasattr(dataset, "class_maps"):
        raise Error(f"--task {name} needs data with masks and boxes: --data fashion-scenes")
    if name == "segment":
        return Segment(dataset, device)
    if name == "detect":
        return Detect(dataset, model.stride)
    raise Error(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
