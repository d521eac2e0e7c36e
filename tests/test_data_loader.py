"""The in-memory input pipeline: epoch order, rank shards, normalisation and batch augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetlab.data import Augment, ImageArrays, epoch_order, make_loader, split_indices
from resnetlab.data.augment import alternating_mirror, crop_flip, flip_phase, mix, random_erasing
from resnetlab.errors import Error


def toy(n: int = 50, channels: int = 3, size: int = 8) -> ImageArrays:
    """Example i has label i, so a batch's labels say which examples it holds."""
    images = torch.randint(
        0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageArrays(
        images, torch.arange(n), [f"c{i}" for i in range(n)], (0.5,) * channels, (0.25,) * channels
    )


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 300), world=st.integers(1, 8), seed=st.integers(0, 10**6), epoch=st.integers(0, 50))
def test_epoch_order_shards_are_disjoint_and_cover(n: int, world: int, seed: int, epoch: int) -> None:
    train = [
        epoch_order(n, train=True, seed=seed, epoch=epoch, rank=r, world_size=world) for r in range(world)
    ]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    usable = n - n % world
    assert {len(t) for t in train} == {usable // world}  # same number of steps on every rank
    assert sorted(torch.cat(train).tolist()) == sorted(perm[:usable].tolist())  # disjoint, covering
    evals = [
        epoch_order(n, train=False, seed=seed, epoch=epoch, rank=r, world_size=world) for r in range(world)
    ]
    assert sorted(torch.cat(evals).tolist()) == list(range(n))  # nothing dropped or duplicated


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), val=st.integers(0, 499), seed=st.integers(0, 10**6))
def test_split_sizes(n: int, val: int, seed: int) -> None:
    if val >= n:
        with pytest.raises(Error, match="val_size must lie in"):
            split_indices(n, val, seed)
        return
    train, held_out = split_indices(n, val, seed)
    assert (len(train), len(held_out)) == (n - val, val)
    assert sorted(torch.cat([train, held_out]).tolist()) == list(range(n))
    assert torch.equal(held_out, split_indices(n, val, seed)[1])


def test_training_batches_are_slices_of_the_epoch_permutation() -> None:
    data = toy(50)
    loader = make_loader(data, batch_size=8, train=True, device="cpu", seed=3, epoch=2)
    assert len(loader) == 6  # drop_last: 48 of 50
    seen = torch.cat([y for _, y in loader])
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(3 + 2))
    assert torch.equal(seen, perm[:48])
    again = torch.cat([y for _, y in loader])
    loader.set_epoch(3)
    other = torch.cat([y for _, y in loader])
    assert torch.equal(seen, again) and not torch.equal(seen, other)
    whole = make_loader(data, batch_size=8, train=True, device="cpu", drop_last=False)
    assert len(whole) == 7 and sorted(torch.cat([y for _, y in whole]).tolist()) == list(range(50))


def test_a_mid_epoch_start_yields_the_rest_of_the_epoch_unchanged() -> None:
    augment = Augment(crop_padding=2, flip=True, erasing=0.5)
    loader = make_loader(toy(50), batch_size=8, train=True, device="cpu", augment=augment, seed=3, epoch=2)
    whole = list(loader)
    loader.set_epoch(2, first_batch=4)
    rest = list(loader)
    assert len(loader) == 6 and len(rest) == 2
    for (x, y), (x0, y0) in zip(rest, whole[4:], strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)  # same examples, same augmentation draws
    loader.set_epoch(3)
    assert len(list(loader)) == 6  # the next epoch starts at its first batch
    with pytest.raises(Error, match=r"first_batch must lie in \[0, 6\], got -1"):
        loader.set_epoch(3, first_batch=-1)


def test_rank_shards_are_disjoint_and_cover_the_epoch() -> None:
    data = toy(50)
    shards = [
        torch.cat(
            [
                y
                for _, y in make_loader(
                    data, batch_size=4, train=True, device="cpu", rank=r, world_size=3, seed=1
                )
            ]
        )
        for r in range(3)
    ]
    assert [len(s) for s in shards] == [16, 16, 16]  # 48 usable, 4 per batch
    assert len(set(torch.cat(shards).tolist())) == 48


@pytest.mark.parametrize("world", [1, 3, 4])
def test_evaluation_never_drops_or_duplicates(world: int) -> None:
    data = toy(50)
    seen = []
    for rank in range(world):
        loader = make_loader(data, batch_size=7, train=False, device="cpu", rank=rank, world_size=world)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += torch.cat([y for _, y in batches]).tolist()
    assert sorted(seen) == list(range(50))


def test_evaluation_batches_are_normalised_exactly() -> None:
    data = toy(10)
    x, y = next(
        iter(make_loader(data, batch_size=10, train=False, device="cpu", augment=Augment.preset("mix")))
    )
    assert x.dtype == torch.float32 and y.dtype == torch.int64  # evaluation is never augmented
    torch.testing.assert_close(x, (data.images.float() / 255 - 0.5) / 0.25)
    x, _ = next(iter(make_loader(data, batch_size=10, train=False, device="cpu", channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_augmented_training_is_reproducible_per_seed_and_epoch() -> None:
    data = toy(40)
    aug = Augment(crop_padding=2, flip=True, erasing=0.5, mixup=0.2, cutmix=1.0)

    def epoch(seed: int, e: int) -> list:
        return list(
            make_loader(data, batch_size=8, train=True, device="cpu", augment=aug, seed=seed, epoch=e)
        )

    first, again, other = epoch(0, 1), epoch(0, 1), epoch(0, 2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other[0][0])
    x, y = first[0]
    assert x.shape == (8, 3, 8, 8) and y.shape == (8, 40) and y.dtype == torch.float32


def test_bad_loader_arguments_are_one_line_errors() -> None:
    with pytest.raises(Error, match="no full batch of 64 in 50 training examples"):
        make_loader(toy(50), batch_size=64, train=True, device="cpu")
    with pytest.raises(Error, match="rank must lie in"):
        make_loader(toy(50), batch_size=4, train=True, device="cpu", rank=2, world_size=2)
    with pytest.raises(Error, match="erasing is a probability"):
        Augment(erasing=2.0)
    with pytest.raises(Error, match="unknown augmentation preset 'x'; choose from none, flip, crop-flip"):
        Augment.preset("x")


# ---------------------------------------------------------------- augmentation invariants


def test_crop_keeps_content_within_the_padding() -> None:
    x = torch.arange(16 * 2 * 6 * 6).view(16, 2, 6, 6) + 1  # distinct values, 0 only in the padding
    out = crop_flip(x, 2, False, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = set()
    for i in range(16):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6])
        ]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 4  # offsets do vary


def test_flip_is_an_exact_mirror_of_some_images() -> None:
    x = torch.randint(0, 256, (64, 3, 5, 7), dtype=torch.uint8)
    out = crop_flip(x, 0, True, torch.Generator().manual_seed(0))
    mirrored = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((mirrored | kept).all()) and 16 < int(mirrored.sum()) < 48


def test_alternating_mirror_switches_each_images_side_every_epoch() -> None:
    phase = torch.tensor([True, False, True, False])
    index = torch.tensor([2, 0, 1])
    assert alternating_mirror(phase, index, 0).flatten().tolist() == [True, True, False]
    assert alternating_mirror(phase, index, 1).flatten().tolist() == [False, False, True]
    assert alternating_mirror(phase, index, 6).flatten().tolist() == [True, True, False]
    assert alternating_mirror(phase, index, 0).shape == (3, 1)


def test_flip_phase_is_drawn_by_the_seed() -> None:
    assert torch.equal(flip_phase(100, 3), flip_phase(100, 3))
    assert not torch.equal(flip_phase(100, 3), flip_phase(100, 4))
    assert flip_phase(100, 3).dtype == torch.bool and 30 < int(flip_phase(100, 3).sum()) < 70


def test_crop_flip_mirrors_exactly_the_images_it_is_told_to() -> None:
    x = torch.arange(2 * 1 * 2 * 3).view(2, 1, 2, 3)
    out = crop_flip(x, 0, True, torch.Generator().manual_seed(0), torch.tensor([[True], [False]]))
    assert out[0, 0].tolist() == [[2, 1, 0], [5, 4, 3]] and out[1, 0].tolist() == [[6, 7, 8], [9, 10, 11]]


def test_alternating_flips_show_each_image_both_ways_in_two_epochs() -> None:
    data = toy(40, channels=1, size=6)
    aug = Augment(flip=True, alternate_flip=True)

    def views(seed: int, e: int) -> dict[int, torch.Tensor]:
        loader = make_loader(data, batch_size=8, train=True, device="cpu", augment=aug, seed=seed, epoch=e)
        return {int(label): image for x, y in loader for image, label in zip(x, y, strict=True)}

    (x, y), *_ = make_loader(data, batch_size=40, train=False, device="cpu")  # the unaugmented views
    plain = dict(zip(y.tolist(), x, strict=True))
    first, second, third = views(0, 0), views(0, 1), views(0, 2)
    for i in first:
        mirrored = [torch.equal(v[i], plain[i].flip(-1)) for v in (first, second, third)]
        assert [torch.equal(v[i], plain[i]) for v in (first, second, third)] == [not m for m in mirrored]
        assert mirrored[0] != mirrored[1] and mirrored[0] == mirrored[2], i
    assert 10 < sum(torch.equal(first[i], plain[i].flip(-1)) for i in first) < 30
    other_seed = views(1, 0)
    assert any(not torch.equal(first[i], other_seed[i]) for i in first if i in other_seed)
    with pytest.raises(Error, match="alternate_flip decides how images are flipped"):
        Augment(alternate_flip=True)


def test_random_erasing_replaces_one_rectangle() -> None:
    x = torch.zeros(32, 3, 16, 16)
    assert torch.equal(random_erasing(x, 0.0, torch.Generator()), x)
    out = random_erasing(x, 1.0, torch.Generator().manual_seed(0))
    for image in out:
        changed = (image != 0).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = len(rows), len(cols)
        assert h > 0 and w > 0 and rows[-1] - rows[0] == h - 1 and cols[-1] - cols[0] == w - 1
        assert changed.sum() == h * w  # a filled rectangle
        assert 0.02 * 256 * 0.5 <= h * w <= 0.4 * 256 * 1.5  # of the drawn area, rounding aside


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixing_gives_soft_targets_that_sum_to_one(mixup: float, cutmix: float) -> None:
    x = torch.randn(16, 3, 8, 8)
    y = torch.randint(0, 10, (16,))
    for seed in range(8):
        mixed, target = mix(x, y, 10, mixup, cutmix, np.random.default_rng(seed))
        assert mixed.shape == x.shape and target.shape == (16, 10)
        torch.testing.assert_close(target.sum(1), torch.ones(16))
        lam = float(target[torch.arange(16), y].min()) if bool((y != y.flip(0)).all()) else None
        if cutmix and not mixup:  # every pixel comes from the image or its partner
            assert bool(((mixed == x) | (mixed == x.flip(0))).all())
            if lam is not None:
                share = ((mixed == x) & (x != x.flip(0))).float().mean()
                assert abs(float(share) - lam) < 1e-6
