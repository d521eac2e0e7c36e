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
from resnetlab.errors import Error
from resnetlab.train.distributed import resolve_device
from resnetlab.weights import Preprocessing, load
from resnetlab.weights.exported import is_exported


@dataclass
class Prediction:
    path: Path
    top: list[tuple[str, float]]  # (class name, probability), most likely first


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
    return classify(model, preprocessing, images, top_k=top_k, source=model.pretrained_cfg["source"])


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
