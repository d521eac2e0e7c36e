"""Training augmentation as tensor ops on whole batches, on the device the batch lives on.

Hand-written rather than per-sample transforms: one gather or mask per batch on the GPU (or the
CPU) costs microseconds where a Python loop over 128 images costs milliseconds (airbench).
References: crop and flip [He15 §4.2]; alternating flips (airbench, Jordan 2024,
arXiv:2404.00498); random erasing [Zhong17, arXiv:1708.04896]; mixup [Zhang18,
arXiv:1710.09412]; CutMix [Yun19, arXiv:1905.04899].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from resnetlab.errors import Error

_ERASE_AREA = (0.02, 0.4)  # fraction of the image an erased rectangle covers [Zhong17]
_ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))  # its aspect ratio h / w, log-uniform [Zhong17]


@dataclass(frozen=True)
class Augment:
    """What the training loader does to each batch; evaluation batches are never augmented."""

    crop_padding: int = 0  # pixels of zero padding per side before a random crop back to size; 4 in [He15]
    flip: bool = False  # mirror left-right with probability 1/2
    # With flip: each image mirrored in every other epoch instead of by a fresh coin (airbench), so
    # any two consecutive epochs show both views of every image; its first side is drawn by seed.
    alternate_flip: bool = False
    erasing: float = 0.0  # probability that an image gets one random rectangle of noise [Zhong17]
    mixup: float = 0.0  # alpha of the Beta(alpha, alpha) mixing weight; 0 = off [Zhang18]
    cutmix: float = 0.0  # alpha of CutMix's Beta(alpha, alpha) box area; 0 = off [Yun19]

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise Error(f"crop_padding must be >= 0 pixels, got {self.crop_padding}")
        if not 0.0 <= self.erasing <= 1.0:
            raise Error(f"erasing is a probability in [0, 1], got {self.erasing}")
        if self.alternate_flip and not self.flip:
            raise Error("alternate_flip decides how images are flipped, so it needs flip=True")
        if self.mixup < 0 or self.cutmix < 0:
            raise Error(
                f"mixup and cutmix are Beta alphas >= 0 (0 = off), got {self.mixup} and {self.cutmix}"
            )

    @property
    def soft_targets(self) -> bool:
        """Whether training labels come as (B, num_classes) mixtures instead of class indices."""
        return self.mixup > 0 or self.cutmix > 0

    @classmethod
    def preset(cls, name: str) -> Augment:
        try:
            return AUGMENT_PRESETS[name]
        except KeyError:
            raise Error(
                f"unknown augmentation preset {name!r}; choose from {', '.join(AUGMENT_PRESETS)}"
            ) from None


AUGMENT_PRESETS: dict[str, Augment] = {
    "none": Augment(),
    "flip": Augment(flip=True),
    "crop-flip": Augment(crop_padding=4, flip=True),  # the paper's CIFAR augmentation [He15 §4.2]
    "crop-flip-erase": Augment(crop_padding=4, flip=True, erasing=0.5),  # [Zhong17]'s CIFAR setting
    "mix": Augment(flip=True, erasing=0.1, mixup=0.2, cutmix=1.0),  # torchvision's "V2" ImageNet recipe
}


def flip_phase(n: int, seed: int) -> torch.Tensor:
    """(n,) bool: which of n images start mirrored under alternating flips, drawn from `seed`."""
    return torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed)).bool()


def alternating_mirror(phase: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
    """(B, 1) bool: whether images `index` are mirrored in `epoch`: their phase, switched every epoch."""
    return (phase[index] ^ bool(epoch % 2)).view(-1, 1)


def crop_flip(
    images: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    mirrored: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random crops of the zero-padded batch, each maybe mirrored, as one gather.

    images: (B, C, H, W), any dtype; the crop offsets are 0..2*padding per image and axis.
    mirrored: (B, 1) bool, which images to mirror (alternating flips); None draws a coin per image.
    A flat `gather` is 4-5x faster on the CPU than the equivalent 4-index advanced indexing.
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=device, generator=generator)
    rows = dy + torch.arange(h, device=device)  # (B, H) source row of each output row
    cols = dx + torch.arange(w, device=device)  # (B, W)
    if flip:
        if mirrored is None:
            mirrored = torch.rand((b, 1), device=device, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)  # read the crop's columns right to left
    flat = rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]  # (B, H, W) offsets into a padded plane
    index = flat.view(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, index).view(b, c, h, w)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, size, size), antialiased bilinear; the memory layout is kept."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_erasing(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """With probability p per image, replace one random rectangle with N(0, 1) noise.

    x: normalised (B, C, H, W) float, so the noise has the data's own mean and spread. A rectangle
    that does not fit is clipped to the image; [Zhong17] redraws it instead.
    """
    b, _, h, w = x.shape
    device = x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, device=device, generator=generator)

    area = h * w * uniform(*_ERASE_AREA)
    aspect = uniform(*_ERASE_LOG_RATIO).exp()
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = (uniform(0, 1) * (h - eh + 1)).floor()
    left = (uniform(0, 1) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])  # (B, W)
    erase = in_rows[:, :, None] & in_cols[:, None, :] & (uniform(0, 1) < p)[:, None, None]
    noise = torch.randn(x.shape, device=device, dtype=x.dtype, generator=generator)
    return torch.where(erase[:, None], noise, x)


def mix(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, mixup: float, cutmix: float, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (a coin flip when both are on) of each image with its mirror in the batch.

    Pairing image i with image B-1-i is as random as a fresh permutation, since the batch is
    already a random draw, and needs no gather. Returns the mixed batch and (B, num_classes)
    float targets that sum to 1.
    """
    target = F.one_hot(y, num_classes).to(x.dtype)
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix, cutmix) if use_cutmix else rng.beta(mixup, mixup))
    if use_cutmix:
        h, w = x.shape[-2:]
        side = math.sqrt(1 - lam)  # the box covers 1 - lam of the image before clipping
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        top, bottom = max(cy - round(h * side / 2), 0), min(cy + round(h * side / 2), h)
        left, right = max(cx - round(w * side / 2), 0), min(cx + round(w * side / 2), w)
        x = x.clone()
        x[:, :, top:bottom, left:right] = x[:, :, top:bottom, left:right].flip(0)
        lam = 1 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
    else:
        x = torch.lerp(x.flip(0), x, lam)
    return x, torch.lerp(target.flip(0), target, lam)
