"""`Preprocessing`: how a model's inputs are made, and what its outputs mean.

Every weights file, export sidecar and Hugging Face folder records it, and training, evaluation,
prediction and export take it as an argument (as torchvision's `Weights.transforms()` and timm's
`resolve_data_config`): a data set is fed through `Preprocessing.feed`, which returns a copy
set up this way, never a changed data set. Files keep it as flat metadata keys (`meta`,
`from_meta`); a timm `config.json` keeps it as `pretrained_cfg`, converted both ways exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from resnetlab.data import fed_as
from resnetlab.errors import Error

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DEFAULT_CROP_PCT = 0.875  # timm's, when a config gives none: resize 256 for a 224 crop
_META_KEYS = ("mean", "std", "image_size", "resize_size", "interpolation", "in_chans", "classes")


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: None where its source does not say (a bare state dict)."""

    mean: tuple[float, ...] | None  # per input channel, [0, 1] units
    std: tuple[float, ...] | None
    image_size: int | None  # side of the square centre crop, px
    resize_size: int | None  # short side before the crop, px
    interpolation: str = "bilinear"  # of the resize
    in_chans: int = 3
    classes: tuple[str, ...] | None = None  # the name of each output, in order

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std are known together or not at all")
        for name in ("mean", "std", "classes"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))  # lists from JSON, kept immutable
        if self.mean is not None and len(self.mean) != self.in_chans:
            raise ValueError(f"{len(self.mean)} mean values for {self.in_chans} channels")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    # -- resnetlab's own files: flat keys beside the model's name and options ----------------

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Preprocessing:
        """From a weights file's or sidecar's metadata; files from before interpolation was
        recorded resized bilinearly."""
        size = meta.get("image_size")
        return cls(
            mean=meta.get("mean"),
            std=meta.get("std"),
            image_size=size,
            resize_size=meta.get("resize_size") or size,
            interpolation=meta.get("interpolation") or "bilinear",
            in_chans=int(meta.get("in_chans") or len(meta.get("mean") or (0, 0, 0))),
            classes=meta.get("classes"),
        )

    def meta(self) -> dict[str, Any]:
        """The metadata keys `from_meta` reads, JSON-ready."""
        return {
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "image_size": self.image_size,
            "resize_size": self.resize_size,
            "interpolation": self.interpolation,
            "in_chans": self.in_chans,
            "classes": None if self.classes is None else list(self.classes),
        }

    @classmethod
    def of_dataset(cls, dataset: Any) -> Preprocessing:
        """How `dataset` (ImageArrays, FolderDataset) feeds its images now."""
        size = dataset.image_size
        return cls(
            mean=tuple(dataset.mean),
            std=tuple(dataset.std),
            image_size=size,
            resize_size=getattr(dataset, "resize_size", size),
            interpolation=getattr(dataset, "interpolation", "bilinear"),
            in_chans=dataset.in_chans,
            classes=tuple(dataset.classes),
        )

    # -- timm's pretrained_cfg -----------------------------------------------------------------

    @classmethod
    def from_pretrained_cfg(
        cls, cfg: dict[str, Any], *, classes: Sequence[str] | None = None
    ) -> Preprocessing:
        """From timm's `pretrained_cfg`: input_size (C, H, W), crop_pct, interpolation, mean, std.
        timm's evaluation resize is floor(crop / crop_pct) on the short side, then the centre crop."""
        channels, _, size = (int(v) for v in cfg.get("input_size") or (3, 224, 224))
        pct = float(DEFAULT_CROP_PCT if cfg.get("crop_pct") is None else cfg["crop_pct"])
        if not (0 < pct <= 4 and 0 < size <= 65535 and 0 < channels <= 64):
            raise ValueError(f"crop_pct {pct} or input size {cfg.get('input_size')} out of range")
        interpolation = cfg.get("interpolation") or "bilinear"
        mean, std = cfg.get("mean"), cfg.get("std")
        return cls(
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
            image_size=size,
            resize_size=math.floor(size / pct),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
            in_chans=channels,
            classes=classes,
        )

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm's `pretrained_cfg` keys for this preprocessing; `from_pretrained_cfg` inverts it."""
        self.require(("mean", "std", "image_size"), "this model")
        size = int(self.image_size)
        return {
            "input_size": [self.in_chans, size, size],
            "fixed_input_size": False,
            "interpolation": self.interpolation,
            "crop_pct": crop_pct(size, int(self.resize_size or size)),
            "crop_mode": "center",
            "mean": list(self.mean),
            "std": list(self.std),
        }

    # -- use -------------------------------------------------------------------------------------

    def require(self, fields: Sequence[str], source: object) -> None:
        """Raise `Error` naming what `source` does not record among `fields`."""
        missing = [name for name in fields if getattr(self, name) is None]
        if missing:
            raise Error(
                f"{source} records no {', '.join(missing)}; use the weights of a resnetlab run, "
                "a registry tag or a Hub folder"
            )

    def for_channels(self, in_chans: int) -> Preprocessing:
        """The statistics for a stem adapted to `in_chans`: one channel gets their mean (the
        summed kernel sees a grey image as its RGB copy), more channels repeat them cyclically."""
        if in_chans == self.in_chans:
            return self

        def adapt(values: tuple[float, ...] | None) -> tuple[float, ...] | None:
            if values is None:
                return None
            if in_chans == 1:
                return (sum(values) / len(values),)
            return tuple(values[i % len(values)] for i in range(in_chans))

        return replace(self, mean=adapt(self.mean), std=adapt(self.std), in_chans=in_chans)

    def feed(self, dataset: Any, *, crop: bool = True) -> Any:
        """A copy of `dataset` fed this way: normalised with this mean and std (where known), and,
        for a folder or pack with `crop`, resized, cropped and interpolated as this says."""
        sized = crop and self.image_size is not None
        return fed_as(
            dataset,
            mean=self.mean,
            std=self.std,
            image_size=self.image_size if sized else None,
            resize_size=self.resize_size if sized else None,
            interpolation=self.interpolation if sized else None,
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 images -> the float input the model expects."""
        self.require(("mean", "std"), "this model")
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float() / 255 - mean) / std


def follow_weights(
    data: Preprocessing,
    weights: Preprocessing | None,
    *,
    normalize: str,
    resizable: bool,
    source: object,
) -> tuple[Preprocessing, str]:
    """How to feed training data to a model that starts from `weights` (None: random init), and
    whose statistics normalise it: "weights" or "data".

    data: the data's own preprocessing. normalize: "weights" (the weights' mean and std, as timm
    fine-tunes: ImageNet's for an ImageNet model), "data" (the data's own) or "auto" (the
    weights' when they record any). resizable: the data is a folder or pack cropped to a size the
    user did not give, so it takes the weights' crop, resize and interpolation too.
    """
    chosen = normalize if normalize != "auto" else ("weights" if weights is not None else "data")
    fed = data
    if chosen == "weights":
        if weights is None or weights.mean is None:
            if normalize == "weights":
                raise Error(f"{source} records no mean and std to follow; use --normalize data")
            chosen = "data"  # weights of unknown provenance: the data's own statistics
        else:
            fed = replace(fed, mean=weights.mean, std=weights.std)
    if resizable and weights is not None and weights.image_size:
        fed = replace(
            fed,
            image_size=weights.image_size,
            resize_size=weights.resize_size or round(weights.image_size / DEFAULT_CROP_PCT),
            interpolation=weights.interpolation,
        )
    return fed, chosen


def crop_pct(image_size: int, resize_size: int) -> float:
    """timm's crop_pct for a centre crop of `image_size` after resizing the short side to
    `resize_size`: the float that timm's floor(image_size / crop_pct) turns back into resize_size."""
    pct = image_size / resize_size
    while math.floor(image_size / pct) < resize_size:
        pct = math.nextafter(pct, 0.0)
    while math.floor(image_size / pct) > resize_size:
        pct = math.nextafter(pct, math.inf)
    return pct
