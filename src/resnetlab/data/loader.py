"""Batches for training and evaluation: device-resident tensors for small sets, workers for folders.

Both loaders visit examples in the same order (`epoch_order`). Training takes a permutation drawn
from seed + epoch; rank r of W takes perm[r:usable:W], usable being the largest multiple of W,
so every rank takes the same number of steps. Evaluation takes range(r, N, W): across ranks every
example is seen exactly once. Augmentation draws come from (seed, epoch, batch), so a resumed
run sees the same batches as an uninterrupted one, and `set_epoch(epoch, first_batch=b)` starts
an epoch at batch b without producing (or, for folders, decoding) the batches before it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from resnetlab.data.arrays import ImageArrays
from resnetlab.data.augment import Augment, alternating_mirror, crop_flip, flip_phase, mix, random_erasing
from resnetlab.data.folder import FolderDataset, UnreadableImage
from resnetlab.errors import Error

Batch = tuple[torch.Tensor, torch.Tensor]  # x (B, C, H, W) float32 normalised; y (B,) int64 or (B, K) float


def epoch_order(
    n: int, *, train: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Indices of the n examples this rank visits in `epoch`, in order."""
    if train:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        return perm[rank : n - n % world_size : world_size]
    return torch.arange(min(rank, n), n, world_size)  # empty on a rank past the last example


def _count(n: int, *, train: bool, rank: int, world_size: int) -> int:
    """len(epoch_order(...)) without drawing the permutation."""
    return n // world_size if train else len(range(rank, n, world_size))


def _num_batches(count: int, batch_size: int, drop_last: bool) -> int:
    return count // batch_size if drop_last else -(-count // batch_size)


def _batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, batch])


class _Pipeline:
    """uint8 batch on the device -> normalised, augmented float batch (training) or plain (eval)."""

    def __init__(
        self,
        dataset: ImageArrays | FolderDataset,
        augment: Augment,
        device: torch.device,
        channels_last: bool,
    ):
        std = torch.tensor(dataset.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std)  # uint8 value -> normalised units
        self.shift = -mean / std
        self.augment = augment
        self.num_classes = dataset.num_classes
        self.channels_last = channels_last
        self.generator = torch.Generator(device=device)

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        rng: np.random.Generator | None,
        mirrored: torch.Tensor | None = None,
    ) -> Batch:
        """mirrored: (B, 1) bool under alternating flips, else None (a coin per image)."""
        aug = self.augment
        if rng is not None:
            self.generator.manual_seed(int(rng.integers(2**63)))
            if aug.crop_padding or aug.flip:
                x = crop_flip(x, aug.crop_padding, aug.flip, self.generator, mirrored)
        # (x / 255 - mean) / std; in place after the cast: 3-4x faster on the CPU than one
        # broadcasting addcmul, which PyTorch does not vectorise there.
        x = x.to(torch.float32).mul_(self.scale).add_(self.shift)
        if rng is not None and aug.erasing:
            x = random_erasing(x, aug.erasing, self.generator)
        if rng is not None and aug.soft_targets:
            x, y = mix(x, y, self.num_classes, aug.mixup, aug.cutmix, rng)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


class DeviceLoader:
    """An in-memory set copied to `device` once as uint8; each batch is a slice of the epoch order.

    Per batch: one gather, one crop-and-flip gather, one normalising kernel, then optional
    erasing and mixing; no Python runs per example.
    """

    def __init__(
        self,
        dataset: ImageArrays,
        *,
        batch_size: int,
        train: bool,
        device: torch.device,
        augment: Augment,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        drop_last: bool,
        channels_last: bool,
    ) -> None:
        self.dataset = dataset
        self.batch_size, self.train, self.device = batch_size, train, device
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.first_batch = 0
        self.drop_last = drop_last
        self.images = dataset.images.to(device)  # (N, C, H, W) uint8, resident for the whole run
        self.labels = dataset.labels.to(device)
        self._pipeline = _Pipeline(dataset, augment, device, channels_last)
        alternate = train and augment.alternate_flip
        self._phase = flip_phase(len(dataset), seed).to(device) if alternate else None

    @property
    def num_samples(self) -> int:
        """Examples this rank visits per epoch."""
        return _count(len(self.dataset), train=self.train, rank=self.rank, world_size=self.world_size)

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Iterate `epoch` from batch `first_batch` on (a mid-epoch resume); len() stays the epoch's."""
        self.epoch, self.first_batch = epoch, _check_first_batch(first_batch, len(self))

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        order = epoch_order(
            len(self.dataset),
            train=self.train,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
        ).to(self.device)
        for b in range(self.first_batch, len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            rng = _batch_rng(self.seed, self.epoch, b) if self.train else None
            mirrored = None if self._phase is None else alternating_mirror(self._phase, index, self.epoch)
            x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
            yield self._pipeline(x, y, rng, mirrored)


class _EpochBatches:
    """Batch sampler for the DataLoader: lists of (index, epoch) keys in `epoch_order`."""

    def __init__(
        self, n: int, *, batch_size: int, train: bool, seed: int, rank: int, world_size: int, drop_last: bool
    ):
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.first_batch = 0, 0

    def __len__(self) -> int:
        count = _count(self.n, train=self.train, rank=self.rank, world_size=self.world_size)
        return _num_batches(count, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(
            self.n,
            train=self.train,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
        ).tolist()
        for b in range(self.first_batch, len(self)):
            yield [(i, self.epoch) for i in order[b * self.batch_size : (b + 1) * self.batch_size]]


# Random other training images tried in place of an unreadable one before the example is dropped.
_REPLACEMENT_TRIES = 8


class _FolderItems(Dataset):
    """What a worker decodes: key (index, epoch) -> (image or None, label, failures).

    The crop and mirror draws depend on (seed, epoch, index) only, not on which worker runs them.
    Failures are returned rather than raised, so one bad file out of a million costs one decode,
    not the run. In training an unreadable image is replaced by another training image drawn
    from (seed, epoch, index, attempt): batches keep their size, so every rank still takes the
    same steps with the same batch shape. Evaluation drops it: a copy would count twice. Any
    other resnetlab error (a damaged pack) is returned as the item's fatal line, so the main
    process can raise it as one line rather than as DataLoader's re-raised traceback.
    """

    def __init__(self, dataset: FolderDataset, *, train: bool, augment: Augment, seed: int):
        self.dataset, self.train, self.seed = dataset, train, seed
        self.flip = augment.flip and not augment.alternate_flip  # a coin per image and epoch
        self.phase = flip_phase(len(dataset), seed) if train and augment.alternate_flip else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor | None, int, list[str], str]:
        index, epoch = key
        failures = []
        for attempt in range(1 + _REPLACEMENT_TRIES if self.train else 1):
            draws = [self.seed, epoch, index] + ([attempt] if attempt else [])
            rng = np.random.default_rng(draws) if self.train else None
            source = int(rng.integers(len(self.dataset))) if attempt else index
            try:
                image = self.dataset.load(source, rng, flip=self.flip)
            except UnreadableImage as exc:
                failures.append(str(exc))
                continue
            except Error as exc:
                return None, -1, failures, str(exc)
            if self.phase is not None and alternating_mirror(self.phase, torch.tensor([source]), epoch):
                image = image.flip(-1)  # (3, S, S): mirror W
            return image, int(self.dataset.labels[source]), failures, ""
        return None, -1, failures, ""


def _collate(items: list, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str], str]:
    kept = [(image, label) for image, label, _, _ in items if image is not None]
    failures = [failure for _, _, failed, _ in items for failure in failed]
    fatal = next((line for *_, line in items if line), "")
    if not kept:
        return (
            torch.empty((0, 3, image_size, image_size), dtype=torch.uint8),
            torch.empty(0, dtype=torch.int64),
            failures,
            fatal,
        )
    images, labels = torch.stack([image for image, *_ in kept]), torch.tensor([label for _, label in kept])
    return images, labels, failures, fatal


class FolderLoader:
    """An image folder decoded by `num_workers` persistent worker processes into pinned uint8 batches.

    Unreadable images are counted, replaced (training) or dropped (evaluation) as `_FolderItems`
    says, and one warning line per epoch says how many; `dataset.strict` makes the first one an
    error instead.
    """

    def __init__(
        self,
        dataset: FolderDataset,
        *,
        batch_size: int,
        train: bool,
        device: torch.device,
        augment: Augment,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        num_workers: int,
        drop_last: bool,
        channels_last: bool,
    ) -> None:
        if augment.crop_padding:
            raise Error(
                "crop_padding is for in-memory sets; image folders use random-resized crops, so set it to 0"
            )
        self.dataset, self.device, self.train, self.seed = dataset, device, train, seed
        self.batch_size = batch_size
        self.sampler = _EpochBatches(
            len(dataset),
            batch_size=batch_size,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )
        self.sampler.epoch = epoch
        self.loader = DataLoader(
            _FolderItems(dataset, train=train, augment=augment, seed=seed),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=functools.partial(_collate, image_size=dataset.image_size),
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            # Its own generator for the workers' base seed: by default each epoch's iterator draws
            # it from the global RNG, which would shift the model's stochastic-depth draws.
            generator=torch.Generator().manual_seed(seed),
        )
        # Crop and flip happen in the workers; erasing and mixing run on the device batch.
        no_flip = dataclasses.replace(augment, flip=False, alternate_flip=False)
        self._pipeline = _Pipeline(dataset, no_flip, device, channels_last)
        self.unreadable = 0  # unreadable images met in the current or last epoch

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def num_samples(self) -> int:
        return _count(
            len(self.dataset), train=self.train, rank=self.sampler.rank, world_size=self.sampler.world_size
        )

    def set_epoch(self, epoch: int, first_batch: int = 0) -> None:
        """Iterate `epoch` from batch `first_batch` on (a mid-epoch resume); len() stays the epoch's."""
        self.sampler.epoch, self.sampler.first_batch = epoch, _check_first_batch(first_batch, len(self))

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        self.unreadable, first = 0, None
        try:
            for b, (x, y, failures, fatal) in enumerate(self.loader, start=self.sampler.first_batch):
                if fatal:
                    raise Error(fatal)
                if failures and self.dataset.strict:
                    raise UnreadableImage(
                        f"{failures[0]} (strict mode; without --strict such images are replaced or skipped)"
                    )
                self.unreadable += len(failures)
                first = first or (failures[0] if failures else None)
                if len(x) == 0 and self.train:  # every image and every replacement failed
                    raise Error(
                        f"no image of training batch {b} could be decoded, nor {_REPLACEMENT_TRIES} "
                        f"replacements for each (first: {first}); check {self.dataset.root}"
                    )
                if len(x) == 0:
                    continue
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                yield self._pipeline(x, y, _batch_rng(self.seed, self.epoch, b) if self.train else None)
        finally:
            if self.unreadable:
                handled = "replaced by other training images" if self.train else "skipped"
                tqdm.write(
                    f"resnetlab: warning: {self.unreadable} unreadable image(s) in epoch {self.epoch}, "
                    f"{handled} (first: {first})",
                    file=sys.stderr,
                )


def _check_first_batch(first_batch: int, num_batches: int) -> int:
    if not 0 <= first_batch <= num_batches:
        raise Error(f"first_batch must lie in [0, {num_batches}], got {first_batch}")
    return first_batch


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_workers(world_size: int) -> int:
    return max(1, min(8, available_cpus() // world_size))


def make_loader(
    dataset: ImageArrays | FolderDataset,
    *,
    batch_size: int,
    train: bool,
    device: str | torch.device,
    augment: Augment | None = None,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int | None = None,
    drop_last: bool | None = None,
    channels_last: bool = False,
) -> DeviceLoader | FolderLoader:
    """Batches (x, y) of `dataset` on `device`; see the module docstring for the order.

    batch_size: examples per batch on this rank. drop_last defaults to `train`. augment applies to
    training only; with mixup or CutMix, y is (B, num_classes) float. num_workers (folders only)
    defaults to the CPUs available per rank, at most 8.
    """
    if batch_size < 1:
        raise Error(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise Error(f"rank must lie in [0, {world_size}), got {rank}")
    if seed < 0:
        raise Error(f"seed must be >= 0, got {seed}")
    common = dict(
        batch_size=batch_size,
        train=train,
        device=torch.device(device),
        augment=augment or Augment(),
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        drop_last=train if drop_last is None else drop_last,
        channels_last=channels_last,
    )
    if isinstance(dataset, ImageArrays):
        loader: DeviceLoader | FolderLoader = DeviceLoader(dataset, **common)
    elif isinstance(dataset, FolderDataset):
        workers = _default_workers(world_size) if num_workers is None else num_workers
        loader = FolderLoader(dataset, num_workers=workers, **common)
    else:
        raise TypeError(f"make_loader takes ImageArrays or FolderDataset, not {type(dataset).__name__}")
    if train and len(loader) == 0:
        raise Error(
            f"no full batch of {batch_size} in {loader.num_samples} training examples per rank; "
            "lower the batch size or use more data"
        )
    return loader
