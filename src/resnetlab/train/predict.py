"""Prediction on image files: the top-k classes with probabilities, named as in the training data.

Each image is shown to the model the way the training data's evaluation split was: converted to
the model's channels, short side resized and centre-cropped to the training image size, and
normalised with the training split's mean and std, all of which the weights file (or the
registry entry of pretrained weights, `model.pretrained_cfg`) records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab.data.folder import UnreadableImage, centre_box, decode
from resnetlab.data.scenes import draw_scene, save_png
from resnetlab.errors import Error
from resnetlab.models.dense import decode_centers
from resnetlab.train.distributed import resolve_device
from resnetlab.weights import Preprocessing, load
from resnetlab.weights.exported import is_exported


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), most likely first; items found for a task
    drawn: Path | None = None  # a segmentation or detection run: the picture with masks or boxes


MIN_SCORE = 0.3  # a detection run draws (and lists) boxes whose centre score is at least this


_RESAMPLING = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_image(
    path: str | Path, *, in_chans: int, image_size: int, resize_size: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """(C, S, S) uint8 evaluation view of an image file; an unreadable file is an `Error`."""
    if not Path(path).is_file():
        raise Error(f"no image at {path}")
    try:
        image = decode(Path(path), "L" if in_chans == 1 else "RGB")  # as the training folder reads it
    except UnreadableImage as exc:
        raise Error(f"cannot read image {exc}") from None
    box = centre_box(image.size, crop=image_size, resize=resize_size)
    if interpolation not in _RESAMPLING:
        raise Error(f"unknown interpolation {interpolation!r}; choose from {', '.join(_RESAMPLING)}")
    image = image.resize((image_size, image_size), _RESAMPLING[interpolation], box=box)
    array = np.array(image)
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def predict(
    source: str | Path, images: list[str | Path], *, top_k: int = 5, device: str = "auto"
) -> list[Prediction]:
    """Top-k predictions for each image file of the model `source` names: a run directory, a
    weights file, a registry tag, a URL, a Hub repository or folder (any SOURCE `weights.load`
    takes) or a file from `resnetlab export` (.onnx through ONNX Runtime, .pt2), fed as it records."""
    if top_k < 1:
        raise Error("--top-k must be at least 1")
    dev = torch.device("cpu") if is_exported(source) else resolve_device(device)
    model, preprocessing = load(source, device=dev)
    if getattr(model, "task", "classify") != "classify":
        return [draw_prediction(model, preprocessing, Path(path), top_k=top_k) for path in images]
    return classify(model, preprocessing, images, top_k=top_k, source=model.pretrained_cfg["source"])


@torch.no_grad()
def draw_prediction(
    model: torch.nn.Module, preprocessing: Preprocessing, path: Path, *, top_k: int
) -> Prediction:
    """A segmentation or detection model's output on one image, drawn on it into
    `<image>.<task>.png` beside it (atomically); lists the classes found, largest first."""
    preprocessing.require(("classes", "mean", "std", "image_size"), "the model")
    size = preprocessing.image_size
    image = load_image(path, in_chans=preprocessing.in_chans, image_size=size, resize_size=size)
    device = next(model.parameters()).device
    outputs = model(preprocessing.normalize(image[None].to(device)))
    classes, pixels = list(preprocessing.classes), image[0].numpy()
    if model.task == "segment":
        class_map = outputs.argmax(1)[0].cpu().numpy()
        counts = np.bincount(class_map.ravel(), minlength=len(classes) + 1)[1:]
        top = [(classes[c], counts[c] / class_map.size) for c in counts.argsort()[::-1][:top_k] if counts[c]]
        picture = draw_scene(pixels, classes, class_map=class_map)
    else:
        found = decode_centers(outputs, model.stride)[0]
        keep = found["scores"] >= MIN_SCORE
        boxes, labels, scores = (found[k][keep].cpu().numpy() for k in ("boxes", "labels", "scores"))
        top = [(classes[c], float(p)) for c, p in zip(labels[:top_k], scores[:top_k], strict=True)]
        picture = draw_scene(pixels, classes, boxes=boxes, labels=labels, scores=scores)
    out = path.with_name(f"{path.stem}.{model.task}.png")
    save_png(picture, out)
    return Prediction(path, top, out)


@torch.no_grad()
def classify(
    model: torch.nn.Module,
    preprocessing: Preprocessing,
    images: list[str | Path],
    *,
    top_k: int = 5,
    source: object = "the model",
) -> list[Prediction]:
    """Top-k predictions of `model` for image files, each decoded, resized, cropped and
    normalised as `preprocessing` says."""
    preprocessing.require(("classes", "mean", "std", "image_size", "resize_size"), source)
    view = dict(
        in_chans=preprocessing.in_chans,
        image_size=preprocessing.image_size,
        resize_size=preprocessing.resize_size,
        interpolation=preprocessing.interpolation,
    )
    device = next(model.parameters(), torch.empty(0)).device
    batch = torch.stack([load_image(path, **view) for path in images]).to(device)
    probs = model(preprocessing.normalize(batch)).float().softmax(1)
    values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
    classes = preprocessing.classes
    return [
        Prediction(Path(path), [(classes[i], p) for i, p in zip(idx.tolist(), val.tolist(), strict=True)])
        for path, val, idx in zip(images, values, indices, strict=True)
    ]
