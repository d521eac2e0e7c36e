"""Training and scoring the CenterNet detection head [Zhou19] (models/dense.py).

Targets: each box puts a Gaussian peak on its class's heatmap at its centre cell, as wide as
the centre shift that keeps IoU >= 0.7 with the box (`gaussian_radius`; CenterNet takes the
radius from the box size too), and at that cell the box's size and the centre's sub-cell
offset, both in cells.
Loss: CenterNet's penalty-reduced focal loss on the heatmap (alpha 2, beta 4), plus L1 on size
(weight 0.1) and offset (weight 1) at the centre cells, each averaged over the boxes.
Score: COCO's mAP@[.5:.95] and mAP@.5, and AP for small and large items (`SMALL_AREA`,
`LARGE_AREA`), by pycocotools (the `dense` extra), on boxes as `decode_centers` gives them.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import Tensor

from resnetlab.data.scenes import SceneLayout
from resnetlab.errors import Error

SIZE_WEIGHT = 0.1  # [Zhou19 §4]: lambda_size
OFFSET_WEIGHT = 1.0  # lambda_off
MIN_OVERLAP = 0.7  # IoU a centre off by the radius keeps with the box (CenterNet's gaussian_radius)
# Item sizes for AP by size, in px^2 of box area. COCO's own bounds (32^2, 96^2) are for ~640 px
# photos; on a 96 px canvas nothing is "large" by them. A scene item is 21-70 px: "small" is
# under 24^2 (below 0.9x the original item), "large" over 48^2 (above 1.7x). On another canvas
# the bounds scale with the items (`area_bounds`).
SMALL_AREA = 24**2
LARGE_AREA = 48**2
BOUNDS_CANVAS = SceneLayout.canvas  # px: the canvas SMALL_AREA and LARGE_AREA are for (96)


def area_bounds(canvas: int) -> tuple[float, float]:
    """(small, large) box-area bounds in px^2 on a `canvas` px scene, where items are drawn at
    canvas / 96 of their 96 px size (`SceneLayout.at_canvas`)."""
    ratio = (canvas / BOUNDS_CANVAS) ** 2
    return SMALL_AREA * ratio, LARGE_AREA * ratio


def gaussian_radius(height: float, width: float, min_overlap: float = MIN_OVERLAP) -> float:
    """The centre shift (px or cells, as the box) that keeps IoU >= min_overlap with the box
    along either axis: shifting by d along a side of length a leaves IoU (a - d) / (a + d)."""
    return min(height, width) * (1 - min_overlap) / (1 + min_overlap)


def center_targets(
    boxes: np.ndarray, labels: np.ndarray, *, num_classes: int, stride: int, image_size: int
) -> dict[str, Tensor]:
    """Targets of one image for a head at `stride`: {"heatmap": (K, h, w), "size": (2, h, w),
    "offset": (2, h, w), "mask": (h, w) bool: the centre cells}. Boxes [x0, y0, x1, y1) in px."""
    # The head's grid: every stride-2 layer (3x3 conv or max-pool, padding 1) maps a side S to
    # ceil(S / 2), so a canvas that is not a multiple of the stride still gets a whole last cell.
    cells = -(-image_size // stride)
    heat = np.zeros((num_classes, cells, cells), np.float32)
    size = np.zeros((2, cells, cells), np.float32)
    offset = np.zeros((2, cells, cells), np.float32)
    mask = np.zeros((cells, cells), bool)
    ys, xs = np.ogrid[:cells, :cells]
    for (x0, y0, x1, y1), cls in zip(boxes / stride, labels, strict=True):
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), cells - 1), min(int(cy), cells - 1)
        sigma = (2 * max(0, int(gaussian_radius(h, w))) + 1) / 6  # a diameter of 6 sigma [Zhou19]
        bump = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma**2))
        np.maximum(heat[cls], bump, out=heat[cls])
        size[:, iy, ix] = (w, h)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = True
    return {
        "heatmap": torch.from_numpy(heat),
        "size": torch.from_numpy(size),
        "offset": torch.from_numpy(offset),
        "mask": torch.from_numpy(mask),
    }


def center_loss(outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    """CenterNet's loss, in fp32: focal loss on the heatmap plus weighted L1 on size and offset."""
    logits = outputs["heatmap"].float()
    prob = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    gt = targets["heatmap"]
    centre = gt.eq(1).float()
    positives = (1 - prob) ** 2 * torch.log(prob) * centre
    negatives = (1 - gt) ** 4 * prob**2 * torch.log(1 - prob) * (1 - centre)
    count = centre.sum().clamp(min=1)
    focal = -(positives.sum() + negatives.sum()) / count
    mask = targets["mask"].unsqueeze(1).float()  # (N, 1, h, w)
    boxes = mask.sum().clamp(min=1)
    size = (outputs["size"].float() - targets["size"]).abs().mul(mask).sum() / boxes
    offset = (outputs["offset"].float() - targets["offset"]).abs().mul(mask).sum() / boxes
    return focal + SIZE_WEIGHT * size + OFFSET_WEIGHT * offset


def coco_map(
    predictions: list[dict[str, Tensor]],
    truths: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    *,
    canvas: int = BOUNDS_CANVAS,
) -> dict[str, float]:
    """COCO box AP by pycocotools: {"map": AP@[.5:.95], "map_50": AP@.5, "map_small", "map_large"}
    (-1 where a size has no items, as COCO reports; sizes by `area_bounds(canvas)`). predictions:
    per image, boxes [x0, y0, x1, y1) px, scores and labels; truths: per image, (boxes, labels)."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise Error('detection mAP needs pycocotools: pip install "resnetlab[dense]"') from None
    images, annotations, results = [], [], []
    for image_id, ((boxes, labels), pred) in enumerate(zip(truths, predictions, strict=True)):
        images.append({"id": image_id})
        for (x0, y0, x1, y1), cls in zip(boxes.tolist(), labels.tolist(), strict=True):
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }  # fmt: skip
            )
        for (x0, y0, x1, y1), score, cls in zip(
            pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
    truth = COCO()
    truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
        truth.createIndex()
        if not results:
            return {"map": 0.0, "map_50": 0.0, "map_small": 0.0, "map_large": 0.0}
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        small, large = area_bounds(canvas)
        evaluation.params.areaRng = [[0, 1e10], [0, small], [small, large], [large, 1e10]]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats  # AP, AP50, AP75, AP_small, AP_medium, AP_large, AR...
    return {
        "map": float(stats[0]),
        "map_50": float(stats[1]),
        "map_small": float(stats[3]),
        "map_large": float(stats[5]),
    }
