"""Which examples a run trains and evaluates on: the splits, a class subset, a few per class, a
random subset, and a batch size no larger than what there is."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from resnetlab.data.arrays import MIN_STD, floored_channels
from resnetlab.data.datasets import has_split, load_dataset, per_class_subset, select_classes
from resnetlab.data.folder import MAX_VAL_FRACTION
from resnetlab.errors import Error


@dataclass(frozen=True)
class Selection:
    """The data of a run, as `TrainConfig` names it (`TrainConfig.selection()`)."""

    data: str
    eval_splits: tuple[str, ...] = ("test",)
    data_dir: str | None = None
    val_size: int = 0
    seed: int = 0
    strict: bool = False
    image_size: int = 0  # a folder's crop side (0: its default, or the weights' own)
    decode: str = "reduced"
    classes: tuple[int, ...] = ()  # indices of the classes kept, relabelled 0..N-1
    per_class: int | None = None  # training examples kept per class
    train_subset: int | None = None  # training examples kept, drawn by seed


def load_splits(selection: Selection, *, talk: bool) -> dict[str, Any]:
    """{"train": ..., and each of `eval_splits` the data has}. talk: say which splits are skipped,
    which channels have no spread, and when a folder's hold-out is capped."""
    s = selection
    kw = dict(
        data_dir=s.data_dir,
        val_size=s.val_size,
        seed=s.seed,
        strict=s.strict,
        image_size=s.image_size,
        decode=s.decode,
    )
    train = load_dataset(s.data, "train", **kw)
    if s.classes:
        train = select_classes(train, s.classes)
    if s.per_class is not None:
        train = per_class_subset(train, s.per_class, s.seed)
    if s.train_subset is not None:
        if s.train_subset > len(train):
            raise Error(f"--train-subset {s.train_subset} is larger than the {len(train)} training examples")
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(s.seed))
        train = train.subset(pick[: s.train_subset].sort().values)
    present = torch.as_tensor(train.labels).unique().tolist()
    if len(present) < 2:  # one class: the loss is 0 from the first step and nothing is learned
        names = ", ".join(train.classes[c] for c in present)
        raise Error(
            f"{s.data} has training images of {len(present)} class ({names}); a classifier needs "
            "at least 2 classes with images"
        )
    splits = {"train": train}
    for split in s.eval_splits:
        if has_split(s.data, split, val_size=s.val_size):
            ds = load_dataset(s.data, split, **kw)
            splits[split] = select_classes(ds, s.classes) if s.classes else ds
        elif talk:
            folder = "the folder has" if s.data.startswith("imagefolder:") else "the pack's folder had"
            why = "--val-size is 0" if split == "val" else f"{folder} no val/ beside train/"
            print(f"resnetlab: no {split} split to evaluate ({why})", file=sys.stderr)
    if talk and (flat := floored_channels(train.std)):
        print(
            f"resnetlab: warning: channel(s) {', '.join(map(str, flat))} of {s.data} have (almost) no "
            f"spread; their std is floored at {MIN_STD:.4f} (one grey level), as config.json records",
            file=sys.stderr,
        )
    if talk and "val" in splits and len(splits["val"]) < s.val_size and not s.classes:
        total = len(splits["val"]) + len(train)
        print(
            f"resnetlab: holding out {len(splits['val'])} of the {total} training images as the val split "
            f"(--val-size {s.val_size} is capped at {MAX_VAL_FRACTION:.0%} of a folder or pack)",
            file=sys.stderr,
        )
    return splits


def batch_that_fits(batch_size: int, train_examples: int, world_size: int, *, talk: bool) -> int:
    """`batch_size`, or less when the training set is smaller (a few dozen images of one's own), so
    that every step takes all of them instead of no full batch being there to take; said on stderr."""
    fits = train_examples - train_examples % world_size
    if batch_size <= fits or fits == 0:
        return batch_size
    if talk:
        print(
            f"resnetlab: --batch-size {batch_size} is more than the {train_examples} training "
            f"examples; each step takes {fits}",
            file=sys.stderr,
        )
    return fits
