"""Image folders, decoded with Pillow inside DataLoader workers.

Two layouts: ImageNet's PATH/train/<class>/<image> and PATH/val/<class>/<image> (val/ is the
evaluation split, "test"), or just PATH/<class>/<image>, the way most people keep their own
photos (no test split; the val split is held out of it). A class's index is its position in the
sorted list of class folders. A held-out val split takes at most `MAX_VAL_FRACTION` of the
images, so the defaults that suit Fashion-MNIST (5000) still work on a folder of a few dozen.
Images of any size and mode are read: EXIF rotation applied, 16-bit scaled to 8, palettes and
CMYK converted. Training crops are random-resized crops [Szegedy15, "Going Deeper
with Convolutions"]; evaluation resizes the short side to image_size / 0.875 and takes the
centre image_size crop. Both are a single Pillow resize of a box, never a second resample.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from resnetlab.atomic import write_atomic
from resnetlab.data.arrays import floor_std, split_indices
from resnetlab.data.paths import cache_dir
from resnetlab.errors import Error

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
_SCALE = (0.08, 1.0)  # fraction of the image area a training crop covers
_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # crop aspect ratio (w / h), sampled log-uniformly
_STATS_SAMPLE = 128  # training images decoded to estimate the normalisation
MAX_VAL_FRACTION = 0.2  # of a folder's training images, at most, held out as the val split
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})  # 16-bit (or int32) grey
DECODE_MODES = ("full", "reduced")


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
        decode: str = "reduced",
    ) -> None:
        if decode not in DECODE_MODES:
            raise Error(f"unknown decode mode {decode!r}; use {' or '.join(DECODE_MODES)}")
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
        self.decode = decode  # "full" or "reduced": JPEGs at the smallest DCT scale the box allows

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
        picked = copy.copy(self)  # the same settings (and, for a pack, the same open file)
        picked.paths, picked.labels = self.paths[index], self.labels[index]
        return picked

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index), int(self.labels[index])

    def decode_view(
        self, index: int, view: Callable[[tuple[int, int]], tuple[float, float, float, float]]
    ) -> tuple[Image.Image, tuple[float, float, float, float]]:
        """Image `index`, upright RGB, and the box `view(its size)` in its pixels (`decode_box`)."""
        return decode_box(self.path(index), view, self.image_size, reduce=self.decode == "reduced")

    def load(self, index: int, rng: np.random.Generator | None = None, *, flip: bool = False) -> torch.Tensor:
        """(3, S, S) uint8: a random-resized crop (maybe mirrored) given `rng`, else the centre view."""
        if rng is None:
            view = functools.partial(centre_box, crop=self.image_size, resize=self.resize_size)
        else:
            view = functools.partial(random_resized_box, rng=rng)
        image, box = self.decode_view(index, view)
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.resize((self.image_size, self.image_size), resample, box=box)
        if flip and rng is not None and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)


def decode(path: Path, mode: str = "RGB") -> Image.Image:
    """The image at `path`, upright, as 8-bit `mode` ("RGB" or "L"); a failure is `UnreadableImage`."""
    try:
        with Image.open(path) as file:
            return to_mode(ImageOps.exif_transpose(file), mode)  # cameras store rotation in EXIF
    except Exception as exc:  # Pillow signals bad files with OSError, SyntaxError, ValueError, bomb errors...
        raise UnreadableImage(f"{path}: {type(exc).__name__}: {exc}") from None


def decode_box(
    path: Path | BinaryIO,
    view: Callable[[tuple[int, int]], tuple[float, float, float, float]],
    out_size: int,
    *,
    mode: str = "RGB",
    reduce: bool = True,
    name: str | Path | None = None,
    known_upright: bool = False,
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The image at `path` (a file name or a file object; errors name it `name`), upright, 8-bit
    `mode`, and the box `view(upright size)` in its pixels. `known_upright`: the file is stored
    upright (a pack's images are), so its EXIF is not read.

    With `reduce`, a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8, libjpeg's
    scaled IDCT through Pillow's `draft`) that still leaves at least `out_size` pixels across
    the box in both directions, and the box is mapped onto the smaller image exactly, EXIF
    rotation included. The box is drawn from the full upright size either way, so a random view
    is the same draw as with full decoding.
    """
    try:
        with Image.open(path) as file:
            orientation = (
                1 if known_upright or file.format not in _EXIF_FORMATS else file.getexif().get(ORIENTATION, 1)
            )
            stored = file.size
            upright = stored[::-1] if orientation in SWAPS_AXES else stored
            box = view(upright)
            scale = 1
            if reduce and file.format == "JPEG":
                side = min(box[2] - box[0], box[3] - box[1])  # upright pixels across the box
                scale = next((s for s in (8, 4, 2) if side / s >= out_size), 1)
                if scale > 1:
                    # Pillow picks the largest scale whose image still holds the asked size:
                    # exactly `scale` for (W // scale, H // scale). It tells the one it chose.
                    drafted = file.draft(file.mode, (stored[0] // scale, stored[1] // scale))
                    scale = round(stored[0] / drafted[1][2]) if drafted else 1
            file.load()  # the pixels outlive the file
            image = to_mode(file if orientation == 1 else ImageOps.exif_transpose(file), mode)
    except Exception as exc:  # Pillow signals bad files with OSError, SyntaxError, ValueError, bomb errors...
        raise UnreadableImage(f"{name or path}: {type(exc).__name__}: {exc}") from None
    if scale > 1:
        box = _reduced_box(box, orientation, stored, scale)
    return image, box


# EXIF orientation: how the stored pixels map to the upright picture (ImageOps.exif_transpose).
ORIENTATION = 0x0112
_EXIF_FORMATS = frozenset({"JPEG", "TIFF", "PNG", "WEBP", "MPO"})
SWAPS_AXES = frozenset({5, 6, 7, 8})


def _to_stored(x: float, y: float, orientation: int, size: tuple[int, int]) -> tuple[float, float]:
    """Upright (x, y) -> stored (x, y), continuous pixel-edge coordinates, for a stored `size`."""
    w, h = size
    return {
        1: (x, y),
        2: (w - x, y),
        3: (w - x, h - y),
        4: (x, h - y),
        5: (y, x),
        6: (y, h - x),
        7: (w - y, h - x),
        8: (w - y, x),
    }.get(orientation, (x, y))


def _to_upright(x: float, y: float, orientation: int, size: tuple[int, int]) -> tuple[float, float]:
    """Stored (x, y) -> upright (x, y), for a stored `size`: the inverse of `_to_stored`, which is
    `_to_stored` of the inverse orientation (6 and 8 undo each other, the others themselves) over
    the upright size."""
    upright = size[::-1] if orientation in SWAPS_AXES else size
    return _to_stored(x, y, {6: 8, 8: 6}.get(orientation, orientation), upright)


def _reduced_box(
    box: tuple[float, float, float, float], orientation: int, stored: tuple[int, int], scale: int
) -> tuple[float, float, float, float]:
    """`box` in the upright picture of full size -> the same box in the upright picture decoded at
    1/`scale`: stored pixel edge x maps to x / scale, and a flipped axis is measured from the
    reduced image's far edge, ceil(W / scale), not from W / scale."""
    reduced = (-(-stored[0] // scale), -(-stored[1] // scale))
    corners = []
    for x, y in ((box[0], box[1]), (box[2], box[3])):
        sx, sy = _to_stored(x, y, orientation, stored)
        corners.append(_to_upright(sx / scale, sy / scale, orientation, reduced))
    (x0, y0), (x1, y1) = corners
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """`image` as 8-bit `mode`. Pillow's own convert clips 16-bit grey at 255 (nearly all white),
    so those are scaled by 255 / 65535 first; palette transparency goes through RGBA as Pillow asks."""
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)


def random_resized_box(size: tuple[int, int], *, rng: np.random.Generator) -> tuple[int, int, int, int]:
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


def centre_box(size: tuple[int, int], *, crop: int, resize: int) -> tuple[float, float, float, float]:
    """The source box that a resize of the short side to `resize` then a centre `crop` would show."""
    width, height = size
    side = crop * min(width, height) / resize  # source pixels
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def scan_split(root: Path, split_dir: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(paths relative to root, labels) of every image under root/split_dir/<class>/, links
    followed. A folder reached twice (a link back up the tree, a link to itself, two links to one
    place) is read once, and a class folder only as its own class: folders are remembered by
    (device, inode), and the repeats skipped are counted in one warning. Without that, two links
    back to the root make os.walk visit ~2^depth paths."""
    tops = [root / split_dir / name for name in classes]
    owner: dict[tuple[int, int], int] = {}
    for label, top in enumerate(tops):
        info = os.stat(top)
        owner.setdefault((info.st_dev, info.st_ino), label)
    paths, labels = [], []
    seen: set[tuple[int, int]] = set()
    skipped = 0
    for label, top in enumerate(tops):
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            info = os.stat(dirpath)
            key = (info.st_dev, info.st_ino)
            if key in seen or owner.get(key, label) != label:
                skipped += 1
                dirnames.clear()  # do not descend into a folder read (or to be read) elsewhere
                continue
            seen.add(key)
            dirnames.sort()
            for filename in sorted(filenames):
                if os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS:
                    paths.append(os.fsencode(os.path.relpath(os.path.join(dirpath, filename), root)))
                    labels.append(label)
    if skipped:
        _warn_once(
            f"resnetlab: warning: {root / split_dir}: {skipped} folder(s) reached again through "
            "symbolic links were skipped; each folder's images are read once"
        )
    return np.array(paths, dtype=bytes), np.array(labels, dtype=np.int64)


@functools.lru_cache(maxsize=64)
def _warn_once(message: str) -> None:
    """Print `message` to stderr the first time only: the train, val and test splits each scan."""
    print(message, file=sys.stderr)


def estimate_stats(
    root: Path, paths: np.ndarray, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units over up to 128 of the images, at full resolution.

    Decoding 128 full-size photos takes seconds, and every split of every run would do it, so the
    result is kept in `~/.cache/resnetlab/folder-stats/`, under a digest of the folder's path, the
    seed and the sampled files' names, sizes and modification times: a changed file misses."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=min(_STATS_SAMPLE, len(paths)), replace=False)
    files = [root / os.fsdecode(paths[index]) for index in picks]
    cache = _stats_cache(root, seed, files)
    try:
        cached = json.loads(cache.read_text())
        mean, std = (tuple(float(v) for v in cached[key]) for key in ("mean", "std"))
        if len(mean) == len(std) == 3:
            return mean, floor_std(std)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or damaged: measure again
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for file in files:
        try:
            pixels = np.asarray(decode(file), dtype=np.float64).reshape(-1, 3) / 255
        except UnreadableImage:
            continue  # the loader reports unreadable files; statistics just do without them
        total += pixels.sum(0)
        total_sq += (pixels**2).sum(0)
        count += len(pixels)
    if count == 0:
        raise Error(f"none of the {len(picks)} sampled training images under {root} could be decoded")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    stats = tuple(mean.tolist()), floor_std(std.tolist())
    try:  # a cache that cannot be written only costs the next run the same seconds
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cache, json.dumps({"mean": stats[0], "std": stats[1]}).encode())
    except OSError:
        pass
    return stats


def _stats_cache(root: Path, seed: int, files: list[Path]) -> Path:
    digest = hashlib.sha256(f"{os.path.realpath(root)}\0{seed}".encode())
    for file in files:
        try:
            info = os.stat(file)
            digest.update(b"%s\0%d\0%d\n" % (os.fsencode(file), info.st_size, info.st_mtime_ns))
        except OSError:
            digest.update(b"%s\0missing\n" % os.fsencode(file))
    return cache_dir() / "folder-stats" / f"{digest.hexdigest()[:32]}.json"


_LAYOUT = (
    "imagefolder:PATH expects PATH/train/<class>/<image> and PATH/val/<class>/<image>, "
    "or PATH/<class>/<image>"
)


def train_dir(root: Path) -> str:
    """The folder of `root`'s training images, relative to it: "train" or "" (class folders only)."""
    if (root / "train").is_dir():
        return "train"
    if root.is_dir() and any(entry.is_dir() for entry in os.scandir(root)):
        return ""
    raise Error(f"{root / 'train'} is not a folder; {_LAYOUT}")


def has_test_split(root: str | Path) -> bool:
    """Whether a folder has a test split: its val/ folder, beside train/."""
    root = Path(root).expanduser()
    return (root / "train").is_dir() and (root / "val").is_dir()


def held_out_size(num_images: int, val_size: int) -> int:
    """Images a folder holds out as its val split: `val_size`, capped at MAX_VAL_FRACTION of them."""
    return min(val_size, int(num_images * MAX_VAL_FRACTION))


def choose_split(
    num_images: int, split: str, *, val_size: int, seed: int, has_test: bool, source: Path, test_needs: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """(indices of the train split, indices of `split`) among N training images, for a folder and
    a pack alike; None for the test split, which is val/, not a part of them. `test_needs` says
    what a test split takes, in the error when there is none."""
    held_out = held_out_size(num_images, val_size)
    train_idx, val_idx = (index.numpy() for index in split_indices(num_images, held_out, seed))
    if split == "train" or (split == "val" and held_out > 0):
        return train_idx, train_idx if split == "train" else val_idx
    if not has_test:
        raise Error(
            f"{source} has no {split} split: a held-out val split needs --val-size > 0 and at least "
            f"{math.ceil(1 / MAX_VAL_FRACTION)} images, a test split {test_needs}"
        )
    return train_idx, None


def load_folder(
    root: Path,
    split: str,
    *,
    val_size: int = 0,
    seed: int = 0,
    strict: bool = False,
    image_size: int = DEFAULT_IMAGE_SIZE,
    decode: str = "reduced",
) -> FolderDataset:
    """`split` of an image folder: the training images minus the hold-out, the hold-out, or val/.

    "val" is the `held_out_size(N, val_size)` images held out of the N training images when that
    is > 0, else the val/ folder; "test" is always val/ (ImageNet's public evaluation set).
    """
    root = Path(root).expanduser()
    top = train_dir(root)
    classes = sorted(entry.name for entry in os.scandir(root / top) if entry.is_dir())
    paths, labels = scan_split(root, top, classes)
    if len(paths) == 0:
        raise Error(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root / top}; {_LAYOUT}")
    train_idx, index = choose_split(
        len(paths),
        split,
        val_size=val_size,
        seed=seed,
        has_test=has_test_split(root),
        source=root,
        test_needs="PATH/train/ and PATH/val/",
    )
    mean, std = estimate_stats(root, paths[train_idx], seed)
    if index is not None:
        paths, labels = paths[index], labels[index]
    else:
        if extra := sorted({e.name for e in os.scandir(root / "val") if e.is_dir()} - set(classes)):
            raise Error(f"{root / 'val'} has class folders that train/ lacks: {', '.join(extra[:5])}")
        paths, labels = scan_split(root, "val", classes)
    return FolderDataset(
        root, paths, labels, classes, mean=mean, std=std, image_size=image_size, strict=strict, decode=decode
    )
