"""Fashion-MNIST scenes: real items composed on a canvas, for segmentation and detection.

A scene is a square grey canvas holding 2-6 Fashion-MNIST items, each at a random position and
scale (0.75x to 2.5x the 28 px original); items may overlap, later ones on top. Its labels:

  class map  per pixel: 0 (background), or 1 + the class of the item whose pixel, above
             `threshold`, is visible there;
  boxes      per item: tight around its visible pixels, [x0, y0, x1, y1) in pixels (x1, y1
             exclusive, so width = x1 - x0, as COCO counts), with its class; an item hidden
             more than `max_hidden` of its own pixels is left out of the boxes (its visible
             pixels stay in the class map).

Scenes are made from (layout, split, index) alone, through numpy's PCG64 seeded with those
numbers, so any scene can be made again on any machine without storing it. Train scenes draw
items from the Fashion-MNIST training part minus a held-out set, val scenes from that held-out
set (`split_indices`, as the classification val split), and test scenes from the test part only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from resnetlab.atomic import write_atomic
from resnetlab.data.arrays import ImageArrays, Published, channel_histogram, histogram_stats, split_indices
from resnetlab.errors import Error

ITEM_SIDE = 28  # px, a Fashion-MNIST item
SPLIT_SCENES = {"train": 6000, "test": 1000}  # scenes per split; val: --val-size of them
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}  # part of each scene's seed
MIN_CANVAS = 32  # px: the smallest item is then 7 px, still an item


@dataclass(frozen=True)
class SceneLayout:
    """How scenes are composed; recorded with every run that uses them."""

    canvas: int = 96  # px, side of the square canvas
    min_items: int = 2
    max_items: int = 6
    min_scale: float = 0.75  # x the 28 px item
    max_scale: float = 2.5
    threshold: int = 50  # grey level (0-255) above which an item's pixel is the item
    max_hidden: float = 0.7  # an item hidden more than this fraction of its pixels has no box
    val_items: int = 5000  # training items held out for the val scenes
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.min_items <= self.max_items:
            raise Error(f"scenes need 1 <= min_items <= max_items, got {self.min_items}, {self.max_items}")
        if not 0 < self.min_scale <= self.max_scale:
            raise Error(f"scenes need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if self.canvas < round(ITEM_SIDE * self.max_scale):
            raise Error(
                f"a {self.canvas} px canvas cannot hold an item at {self.max_scale}x "
                f"({round(ITEM_SIDE * self.max_scale)} px); give a larger canvas or a smaller max scale"
            )
        if not 0 <= self.threshold < 255 or not 0 <= self.max_hidden <= 1:
            raise Error("scenes need 0 <= threshold < 255 and 0 <= max_hidden <= 1")

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def at_canvas(self, canvas: int) -> SceneLayout:
        """This layout drawn on a `canvas` px canvas: the item scales follow the canvas, so a
        64 px scene is the 96 px scene at 2/3 of its size (the same items, places and overlaps
        relative to the canvas), with (64/96)^2 of its pixels to compute on."""
        if canvas < MIN_CANVAS:
            raise Error(f"a scene canvas must be at least {MIN_CANVAS} px, got {canvas}")
        ratio = canvas / self.canvas
        scales = {"min_scale": self.min_scale * ratio, "max_scale": self.max_scale * ratio}
        return replace(self, canvas=canvas, **scales)


@dataclass
class Scene:
    """One scene and its labels."""

    image: np.ndarray  # (S, S) uint8
    class_map: np.ndarray  # (S, S) int64: 0 background, 1 + class
    boxes: np.ndarray  # (K, 4) float32 [x0, y0, x1, y1), pixels
    labels: np.ndarray  # (K,) int64 class of each box
    picks: np.ndarray  # (items,) int64: each placed item's index in the split's pool, in paint order


class FashionScenes:
    """`count` scenes of one split, made on demand from the layout and their index."""

    def __init__(
        self,
        items: torch.Tensor,
        item_labels: torch.Tensor,
        classes: list[str],
        layout: SceneLayout,
        split: str,
        count: int,
        pool: tuple[str, torch.Tensor] | None = None,
    ) -> None:
        layout.check()
        if split not in SPLIT_CODES:
            raise Error(f"unknown split {split!r}; choose from {', '.join(SPLIT_CODES)}")
        self.items = items.numpy() if isinstance(items, torch.Tensor) else items  # (M, 28, 28) uint8
        self.pool = pool  # (Fashion-MNIST part, indices into it) the items are, when known
        self.item_labels = np.asarray(item_labels, dtype=np.int64)
        self.classes = list(classes)
        self.layout, self.split, self.count = layout, split, count

    def __len__(self) -> int:
        return self.count

    def scene(self, index: int) -> Scene:
        """Scene `index`, the same on every machine."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        lay = self.layout
        rng = np.random.default_rng([lay.seed, SPLIT_CODES[self.split], index])
        side = lay.canvas
        image = np.zeros((side, side), np.uint8)
        owner = np.full((side, side), -1, np.int64)  # which placed item each pixel shows
        placed = []  # (class, own pixel count)
        picks = []  # index of each placed item in this split's pool
        for k in range(int(rng.integers(lay.min_items, lay.max_items + 1))):
            pick = int(rng.integers(len(self.items)))
            size = max(1, round(ITEM_SIDE * float(rng.uniform(lay.min_scale, lay.max_scale))))
            x0, y0 = (int(v) for v in rng.integers(0, side - size + 1, size=2))
            item = Image.fromarray(self.items[pick])
            patch = np.asarray(item.resize((size, size), Image.Resampling.BILINEAR))
            mask = patch > lay.threshold
            image[y0 : y0 + size, x0 : x0 + size][mask] = patch[mask]
            owner[y0 : y0 + size, x0 : x0 + size][mask] = k
            placed.append((int(self.item_labels[pick]), int(mask.sum())))
            picks.append(pick)
        class_of = np.array([c for c, _ in placed] + [-1], dtype=np.int64)  # owner -1 -> index -1
        class_map = np.where(owner >= 0, class_of[owner] + 1, 0)
        boxes, labels = [], []
        for k, (cls, own) in enumerate(placed):
            ys, xs = np.nonzero(owner == k)
            if len(ys) == 0 or own == 0 or 1 - len(ys) / own > lay.max_hidden:
                continue
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            labels.append(cls)
        return Scene(
            image=image,
            class_map=class_map,
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            labels=np.array(labels, np.int64),
            picks=np.array(picks, np.int64),
        )

    def arrays(self) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray], list[np.ndarray]]:
        """Every scene in index order: (N, 1, S, S) uint8 images, (N, S, S) uint8 class maps, and
        per scene its boxes and their labels."""
        side = self.layout.canvas
        images = torch.empty((self.count, 1, side, side), dtype=torch.uint8)
        maps = torch.empty((self.count, side, side), dtype=torch.uint8)
        boxes, labels = [], []
        for i in range(self.count):
            scene = self.scene(i)
            images[i, 0] = torch.from_numpy(scene.image)
            maps[i] = torch.from_numpy(scene.class_map.astype(np.uint8))
            boxes.append(scene.boxes)
            labels.append(scene.labels)
        return images, maps, boxes, labels


def fashion_scenes(
    split: str, count: int, data: Published, layout: SceneLayout = SceneLayout()
) -> FashionScenes:
    """`count` scenes of `split` made from Fashion-MNIST's published parts (`datasets.published`):
    train from the training part minus `layout.val_items` held out, val from those, test from the
    test part."""
    if split == "test":
        items, labels = data.test_images, data.test_labels
        pool = ("test", torch.arange(len(items)))
    else:
        train_idx, val_idx = split_indices(len(data.train_images), layout.val_items, layout.seed)
        index = train_idx if split == "train" else val_idx
        if len(index) == 0:
            raise Error("val scenes need held-out items: give the layout val_items > 0")
        items, labels = data.train_images.index_select(0, index), data.train_labels.index_select(0, index)
        pool = ("train", index)
    return FashionScenes(items[:, 0], labels, list(data.classes), layout, split, count, pool)


@dataclass
class SceneArrays(ImageArrays):
    """A split of scenes in memory, fed like any `ImageArrays` (uint8 images, normalised on the
    device) with each scene's index as its label: the task looks its targets up by that index
    (`class_maps` for segmentation, `boxes` and `box_labels` for detection)."""

    class_maps: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, 0, dtype=torch.uint8))
    boxes: list[np.ndarray] = field(default_factory=list)  # per scene (K, 4) [x0, y0, x1, y1) px
    box_labels: list[np.ndarray] = field(default_factory=list)  # per scene (K,) classes
    layout: SceneLayout = field(default_factory=SceneLayout)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise Error(
                f"scene images must be (N, C, H, W) uint8, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if not torch.equal(self.labels, torch.arange(len(self.images))):
            raise Error("a scene's label is its index: labels must be 0..N-1")
        if self.class_maps.shape != (len(self.images), *self.images.shape[2:]):
            raise Error(f"class maps of shape {tuple(self.class_maps.shape)} do not match the scenes")
        if not len(self.boxes) == len(self.box_labels) == len(self.images):
            raise Error("every scene needs its boxes and their labels")

    def subset(self, indices: Sequence[int] | torch.Tensor) -> SceneArrays:
        """The scenes at `indices`, renumbered 0..n-1."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return SceneArrays(
            self.images[index],
            torch.arange(len(index)),
            self.classes,
            self.mean,
            self.std,
            class_maps=self.class_maps[index],
            boxes=[self.boxes[i] for i in index.tolist()],
            box_labels=[self.box_labels[i] for i in index.tolist()],
            layout=self.layout,
        )


def load_scenes(
    split: str, data: Published, *, val_size: int, layout: SceneLayout = SceneLayout()
) -> SceneArrays:
    """One split of `fashion-scenes` in memory: 6,000 train scenes, `val_size` val scenes, 1,000
    test scenes; normalised by the train scenes' statistics (as the other sets by their train split).
    `--image-size` gives `layout.at_canvas(size)`."""
    if split == "val" and val_size == 0:
        raise Error("the val scenes need a count: give --val-size")
    count = val_size if split == "val" else SPLIT_SCENES[split]
    key = (split, count, layout)  # made once per process and data: the experiments train many nets
    cached = _SPLITS.get(key)
    if cached is None or cached[0] is not data:
        cached = _SPLITS[key] = (data, _make_split(split, count, data, layout))
    return cached[1]


def _make_split(split: str, count: int, data: Published, layout: SceneLayout) -> SceneArrays:
    scenes = fashion_scenes(split, count, data, layout)
    images, maps, boxes, labels = scenes.arrays()
    mean, std = _train_stats(layout, data)
    return SceneArrays(
        images, torch.arange(count), scenes.classes, mean, std,
        class_maps=maps, boxes=boxes, box_labels=labels, layout=layout,
    )  # fmt: skip


def _train_stats(layout: SceneLayout, data: Published) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the train scenes' pixels (the first 1,000 of them: the statistics settle
    long before that), the same for every split; computed once per layout and data."""
    cached = _STATS.get(layout)
    if cached is None or cached[0] is not data:  # kept with its data: another data set is not it
        images = fashion_scenes("train", 1000, data, layout).arrays()[0]
        cached = _STATS[layout] = (data, histogram_stats(channel_histogram(images)))
    return cached[1]


_STATS: dict[SceneLayout, tuple[Published, tuple[tuple[float, ...], tuple[float, ...]]]] = {}
_SPLITS: dict[tuple[str, int, SceneLayout], tuple[Published, SceneArrays]] = {}


# Ten distinct colours (matplotlib's tab10), one per Fashion-MNIST class, for drawn masks and boxes.
CLASS_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def draw_scene(
    image: np.ndarray,
    classes: list[str],
    *,
    class_map: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    zoom: int = 4,
) -> Image.Image:
    """An RGB picture of a (S, S) uint8 scene, `zoom` times larger: the class map's items tinted
    in their class's colour, and boxes outlined in it with the class name (and score)."""
    grey = (
        Image.fromarray(image)
        .convert("RGB")
        .resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.NEAREST)
    )
    if class_map is not None:
        palette = np.array([(0, 0, 0), *CLASS_COLOURS], np.uint8)
        tint = Image.fromarray(palette[np.clip(class_map, 0, len(CLASS_COLOURS))]).resize(
            grey.size, Image.NEAREST
        )
        alpha = Image.fromarray(((class_map > 0) * 110).astype(np.uint8)).resize(grey.size, Image.NEAREST)
        grey.paste(tint, (0, 0), alpha)
    if boxes is not None:
        draw = ImageDraw.Draw(grey)
        for i, (box, cls) in enumerate(zip(boxes, labels, strict=True)):
            colour = CLASS_COLOURS[int(cls) % len(CLASS_COLOURS)]
            x0, y0, x1, y1 = (float(v) * zoom for v in box)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=2)
            text = classes[int(cls)] + ("" if scores is None else f" {float(scores[i]):.2f}")
            draw.text((x0 + 2, y0 + 1), text, fill=colour)
    return grey


def save_png(picture: Image.Image, path: Path) -> None:
    """Write `picture` as a PNG at `path` atomically; a folder that cannot take it is one `Error`."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    try:
        write_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise Error(f"cannot write {path}: {exc.strerror or exc}") from None
