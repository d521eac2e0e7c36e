"""In-memory image sets: uint8 images with int64 labels, their statistics and the val hold-out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from resnetlab.errors import Error


@dataclass
class ImageArrays:
    """A whole split in memory, as published: no normalisation applied to `images`."""

    images: torch.Tensor  # (N, C, H, W) uint8, CPU
    labels: torch.Tensor  # (N,) int64 in [0, num_classes)
    classes: list[str]
    mean: tuple[float, ...]  # per channel, in [0, 1] units, of the training split
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            got = f"{self.images.dtype} {tuple(self.images.shape)}"
            raise Error(f"images must be a uint8 (N, C, H, W) tensor, got {got}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            got = f"{self.labels.dtype} {tuple(self.labels.shape)}"
            raise Error(f"labels must be int64 of shape ({len(self.images)},), got {got}")
        if self.images.shape[2] != self.images.shape[3]:
            raise Error(f"images must be square, got {tuple(self.images.shape[2:])}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise Error(f"mean and std need one value per channel ({self.in_chans})")
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < self.num_classes:
            raise Error(f"labels must lie in [0, {self.num_classes})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageArrays:
        """The examples at `indices` (copied), with this set's classes and normalisation."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageArrays(self.images[index], self.labels[index], self.classes, self.mean, self.std)


@dataclass(frozen=True)
class Published:
    """A data set as its authors split it, after its files were checked."""

    train_images: torch.Tensor  # (N, C, H, W) uint8
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    verified: str  # what was checked, in words, for `resnetlab data`
    train_histogram: torch.Tensor = field(init=False)  # (C, 256) int64 pixel-value counts

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_histogram", channel_histogram(self.train_images))


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into n examples: `val_size` held out at random by `seed`, both sorted.

    The paper holds out 5k of CIFAR-10's 50k training images the same way [He15 §4.2].
    """
    if not 0 <= val_size < n:
        raise Error(f"val_size must lie in [0, {n}) for a training set of {n} examples, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def channel_histogram(images: torch.Tensor) -> torch.Tensor:
    """(C, 256) counts of each uint8 value per channel; exact, and additive over subsets."""
    return torch.stack(
        [torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(images.shape[1])]
    )


def histogram_stats(histogram: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units from (C, 256) value counts; std floored at `MIN_STD`."""
    values = torch.arange(256, dtype=torch.float64) / 255
    counts = histogram.to(torch.float64)
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / total
    return tuple(mean.tolist()), floor_std(var.sqrt().tolist())


# A channel with (almost) no spread, the same value in every image (a blue channel constant over a
# small set, a folder of grey scans saved as RGB), would be divided by ~0 and send training to NaN.
# Its std is floored at one grey level, as Keras's Normalization floors it at an epsilon: the
# channel then normalises to ~0, which is all it carries. The run's config.json says which.
MIN_STD = 1 / 255  # [0, 1] units


def floor_std(std: Sequence[float]) -> tuple[float, ...]:
    """`std` with every channel below `MIN_STD` raised to it."""
    return tuple(max(float(s), MIN_STD) for s in std)


def floored_channels(std: Sequence[float]) -> list[int]:
    """The channels whose std `floor_std` raised (equal to `MIN_STD`)."""
    return [c for c, s in enumerate(std) if s <= MIN_STD]
