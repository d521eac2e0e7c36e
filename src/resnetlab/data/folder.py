"""Image folders in the ImageNet layout, decoded with Pillow inside DataLoader workers.

PATH/train/<class>/<image> and PATH/val/<class>/<image>. A class's index is its position in the
sorted list of train/ folders. Training crops are random-resized crops [Szegedy15, "Going Deeper
with Convolutions"]; evaluation resizes the short side to image_size / 0.875 and takes the
centre image_size crop. Both are a single Pillow resize of a box, never a second resample.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from resnetlab.data.arrays import split_indices
from resnetlab.errors import Error

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
_SCALE = (0.08, 1.0)  # fraction of the image area a training crop covers
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # crop aspect ratio (w / h), sampled log-uniformly
_STATS_SAMPLE = 128  # training images decoded to estimate the normalisation


class UnreadableImage(Error):
    """A file Pillow cannot decode: truncated, corrupt, not an image, or too large."""


DEFAULT_IMAGE_SIZE = 224  # pixels, the crop side of ImageNet training and evaluation


class FolderDataset(Dataset):
    """One split of an image folder: item i is ((3, S, S) uint8 tensor, label) at evaluation view.

    Paths are kept in one numpy bytes array rather than a list of str: forked DataLoader workers
    would otherwise copy every page those million Python objects live on as their refcounts change.
    """

    def __init__(
        self,
        root: Path,
        paths: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int = DEFAULT_IMAGE_SIZE,
        strict: bool = False,
        resize_size: int | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        self.root = Path(root)
        self.paths = paths  # (N,) bytes, relative to root
        self.labels = labels  # (N,) int64
        self.classes = classes
        self.mean, self.std = mean, std  # per channel, [0, 1] units
        self.image_size = image_size  # pixels, side of the square crop
        self.strict = strict
        # Short side before the evaluation centre crop: 256 for 224, the usual ImageNet ratio,
        # unless pretrained weights ask for their own (torchvision's V2: 232).
        self.resize_size = resize_size or round(image_size / 0.875)
        self.interpolation = interpolation  # "bilinear" or "bicubic"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(self.paths[index])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> FolderDataset:
        index = np.asarray(indices, dtype=np.int64)
        return FolderDataset(
            self.root,
            self.paths[index],
            self.labels[index],
            self.classes,
            mean=self.mean,
            std=self.std,
            image_size=self.image_size,
            strict=self.strict,
            resize_size=self.resize_size,
            interpolation=self.interpolation,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index), int(self.labels[index])

    def load(self, index: int, rng: np.random.Generator | None = None, *, flip: bool = False) -> torch.Tensor:
        """(3, S, S) uint8: a random-resized crop (maybe mirrored) given `rng`, else the centre view."""
        image = decode(self.path(index))
        if rng is None:
            box = centre_box(image.size, self.image_size, self.resize_size)
        else:
            box = random_resized_box(image.size, rng)
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.resize((self.image_size, self.image_size), resample, box=box)
        if flip and rng is not None and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def decode(path: Path) -> Image.Image:
    """The image at `path` as RGB; any decoder failure becomes `UnreadableImage`."""
    try:
        with Image.open(path) as file:
            if file.mode == "P" and "transparency" in file.info:
                return file.convert("RGBA").convert("RGB")  # as Pillow asks for palette transparency
            return file.convert("RGB")
    except Exception as exc:  # Pillow signals bad files with OSError, SyntaxError, ValueError, bomb errors...
        raise UnreadableImage(f"{path}: {type(exc).__name__}: {exc}") from None


def random_resized_box(size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) covering 8-100% of the area at aspect 3/4..4/3; centre fallback."""
    width, height = size
    for _ in range(10):
        area = width * height * rng.uniform(*_SCALE)
        aspect = math.exp(rng.uniform(*_LOG_RATIO))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Ten misses happen only for extreme aspect ratios: take the largest centred crop in range.
    w = min(width, round(height * math.exp(_LOG_RATIO[1])))
    h = min(height, round(width / math.exp(_LOG_RATIO[0])))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_box(size: tuple[int, int], crop: int, resize: int) -> tuple[float, float, float, float]:
    """The source box that a resize of the short side to `resize` then a centre `crop` would show."""
    width, height = size
    side = crop * min(width, height) / resize  # source pixels
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _scan(root: Path, split_dir: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / split_dir / name, followlinks=True):
            dirnames.sort()
            for filename in sorted(filenames):
                if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                    paths.append(os.fsencode(os.path.relpath(os.path.join(dirpath, filename), root)))
                    labels.append(label)
    return np.array(paths, dtype=bytes), np.array(labels, dtype=np.int64)


def estimate_stats(
    root: Path, paths: np.ndarray, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units over up to 128 of the images, at full resolution."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=min(_STATS_SAMPLE, len(paths)), replace=False)
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for index in picks:
        try:
            pixels = (
                np.asarray(decode(root / os.fsdecode(paths[index])), dtype=np.float64).reshape(-1, 3) / 255
            )
        except UnreadableImage:
            continue  # the loader reports unreadable files; statistics just do without them
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += len(pixels)
    if count == 0:
        raise Error(f"none of the {len(picks)} sampled training images under {root} could be decoded")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(mean.tolist()), tuple(std.tolist())


def load_folder(
    root: Path,
    split: str,
    *,
    val_size: int = 0,
    seed: int = 0,
    strict: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> FolderDataset:
    """`split` of an ImageNet-layout folder: train/ minus the hold-out, the hold-out, or val/.

    "val" is the `val_size` images held out of train/ when val_size > 0, else the val/ folder;
    "test" is always val/ (ImageNet's public evaluation set).
    """
    root = Path(root).expanduser()
    layout = "imagefolder:PATH expects PATH/train/<class>/<image> and PATH/val/<class>/<image>"
    if not (root / "train").is_dir():
        raise Error(f"{root / 'train'} is not a folder; {layout}")
    classes = sorted(entry.name for entry in os.scandir(root / "train") if entry.is_dir())
    paths, labels = _scan(root, "train", classes)
    if len(paths) == 0:
        raise Error(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root / 'train'}; {layout}")
    train_idx, val_idx = split_indices(len(paths), val_size, seed)
    mean, std = estimate_stats(root, paths[train_idx.numpy()], seed)
    if split == "train" or (split == "val" and val_size > 0):
        index = train_idx if split == "train" else val_idx
        paths, labels = paths[index.numpy()], labels[index.numpy()]
    else:
        if not (root / "val").is_dir():
            raise Error(
                f"{root / 'val'} is not a folder; {layout} (or hold out training images with --val-size)"
            )
        if extra := sorted({e.name for e in os.scandir(root / "val") if e.is_dir()} - set(classes)):
            raise Error(f"{root / 'val'} has class folders that train/ lacks: {', '.join(extra[:5])}")
        paths, labels = _scan(root, "val", classes)
    return FolderDataset(
        root, paths, labels, classes, mean=mean, std=std, image_size=image_size, strict=strict
    )
