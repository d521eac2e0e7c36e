"""Image folders: layout, splits, crops, worker decoding, and unreadable images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import Augment, FolderDataset, UnreadableImage, epoch_order, load_dataset, make_loader
from resnetlab.data.augment import flip_phase
from resnetlab.data.folder import centre_box, random_resized_box
from resnetlab.data.loader import _FolderItems
from resnetlab.errors import Error

CLASSES = ["cat", "dog", "emu"]
BROKEN = {b"truncated.jpg", b"text.jpg", b"empty.png"}  # all under train/
CORRUPT = len(BROKEN)


def _image(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if mode == "P":
        image.info["transparency"] = 0
    image.save(path)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """train/ with 4 readable images per class in assorted modes, formats and sizes, plus 3 broken
    files; val/ with 2 per class; and stray non-image files that must be ignored."""
    root = tmp_path / "imgs"
    kinds = [("RGB", ".jpg"), ("L", ".png"), ("P", ".png"), ("RGBA", ".png")]
    for split, count in (("train", 4), ("val", 2)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                mode, ext = kinds[i]
                _image(folder / f"{i}{ext}", mode, (40 + 7 * i, 30 + 5 * c), seed=10 * c + i)
            (folder / "notes.txt").write_text("not an image")
    (root / "train" / "README").write_text("a file beside the class folders")
    good = (root / "train" / "dog" / "0.jpg").read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "train" / "emu" / "text.jpg").write_text("this is not a JPEG")
    (root / "train" / "cat" / "empty.png").write_bytes(b"")
    return root


def test_layout_classes_and_items(tree: Path) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train")
    assert isinstance(train, FolderDataset)
    assert train.classes == CLASSES and train.num_classes == 3 and train.in_chans == 3
    assert len(train) == 3 * 4 + CORRUPT
    assert all(0 < m < 1 for m in train.mean) and all(0 < s < 1 for s in train.std)
    x, y = train[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and y == 0


def test_splits(tree: Path) -> None:
    name = f"imagefolder:{tree}"
    train = load_dataset(name, "train", val_size=5, seed=1)
    held_out = load_dataset(name, "val", val_size=5, seed=1)
    assert len(train) + len(held_out) == 15 and not set(train.paths) & set(held_out.paths)
    assert train.mean == held_out.mean  # statistics come from the train split
    test = load_dataset(name, "test")
    assert len(test) == 6 and all(p.startswith(b"val/") for p in test.paths)
    assert len(load_dataset(name, "val")) == 6  # no hold-out asked for: the val/ folder
    assert len(train.subset([0, 2])) == 2


def test_layout_errors_are_one_line(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(
        Error, match=r"nowhere/train is not a folder; imagefolder:PATH expects PATH/train/<class>"
    ):
        load_dataset(f"imagefolder:{tmp_path / 'nowhere'}", "train")
    (tree / "val" / "yak").mkdir()
    with pytest.raises(Error, match="has class folders that train/ lacks: yak"):
        load_dataset(f"imagefolder:{tree}", "test")
    with pytest.raises(Error, match="unknown split 'dev'"):
        load_dataset(f"imagefolder:{tree}", "dev")
    with pytest.raises(Error, match="crop_padding is for in-memory sets"):
        make_loader(
            load_dataset(f"imagefolder:{tree}", "train"),
            batch_size=4,
            train=True,
            device="cpu",
            augment=Augment(crop_padding=4),
            num_workers=0,
        )


def test_unreadable_training_images_are_replaced_counted_and_reported_once(tree: Path, capsys) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train")
    loader = make_loader(
        train, batch_size=4, train=True, device="cpu", augment=Augment(flip=True), num_workers=0
    )
    sizes = [len(x) for x, _ in loader]
    visited = epoch_order(len(train), train=True, seed=0, epoch=0)[:12]  # 3 full batches of 4
    broken = {i for i, p in enumerate(train.paths) if p.rsplit(b"/", 1)[1] in BROKEN}
    assert broken & set(visited.tolist())  # the test means something: a broken file is drawn
    assert sizes == [4, 4, 4]  # full batches: every rank keeps the same batch shape
    assert loader.unreadable >= len(broken & set(visited.tolist()))  # replacements may hit one too
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"resnetlab: warning: {loader.unreadable} unreadable image(s) in epoch 0, replaced by other "
        "training images (first: "
    )


def test_unreadable_evaluation_images_are_skipped_counted_and_reported_once(tree: Path, capsys) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train")
    evaluation = make_loader(train, batch_size=4, train=False, device="cpu", num_workers=0)
    labels = torch.cat([y for _, y in evaluation])
    assert len(labels) == 12 and evaluation.unreadable == CORRUPT  # each readable image once
    assert torch.equal(labels.bincount(), torch.tensor([4, 4, 4]))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("resnetlab: warning: 3 unreadable image(s) in epoch 0, skipped (first: ")


def test_a_training_batch_with_nothing_decodable_is_a_one_line_error(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # every image is now a "bomb"
    loader = make_loader(train, batch_size=4, train=True, device="cpu", num_workers=0)
    with pytest.raises(Error, match=r"^no image of training batch 0 could be decoded, nor 8 replacements"):
        next(iter(loader))


def test_a_mid_epoch_start_decodes_none_of_the_earlier_batches(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test = load_dataset(f"imagefolder:{tree}", "test")  # 6 readable images
    kwargs = dict(batch_size=2, train=True, device="cpu", augment=Augment(flip=True), num_workers=0)
    whole = list(make_loader(test, epoch=1, **kwargs))
    decoded, load = [], FolderDataset.load

    def counted(self: FolderDataset, index: int, *args, **kwargs) -> torch.Tensor:
        decoded.append(index)
        return load(self, index, *args, **kwargs)

    monkeypatch.setattr(FolderDataset, "load", counted)
    loader = make_loader(test, **kwargs)
    loader.set_epoch(1, first_batch=2)
    rest = list(loader)
    assert len(loader) == 3 and len(rest) == 1 and len(decoded) == 2
    assert torch.equal(rest[0][0], whole[2][0]) and torch.equal(rest[0][1], whole[2][1])
    with pytest.raises(Error, match=r"first_batch must lie in \[0, 3\], got 4"):
        loader.set_epoch(1, first_batch=4)


def test_strict_mode_makes_an_unreadable_image_an_error(tree: Path) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train", strict=True)
    loader = make_loader(train, batch_size=15, train=False, device="cpu", num_workers=0)
    with pytest.raises(UnreadableImage, match=r"(empty\.png|truncated\.jpg|text\.jpg): .*strict mode"):
        list(loader)
    with pytest.raises(UnreadableImage, match="empty.png"):
        train.load(int(np.flatnonzero(train.paths == b"train/cat/empty.png")[0]))


def test_decompression_bombs_count_as_unreadable(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    test = load_dataset(f"imagefolder:{tree}", "test")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400)  # Pillow refuses images over twice this
    loader = make_loader(test, batch_size=6, train=False, device="cpu", num_workers=0)
    assert sum(len(x) for x, _ in loader) == 0 and loader.unreadable == 6


def test_workers_decode_exactly_what_the_main_process_would(tree: Path) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train")
    kwargs = dict(
        batch_size=5, train=True, device="cpu", augment=Augment(flip=True, erasing=0.5), seed=4, epoch=1
    )
    inline = list(make_loader(train, num_workers=0, **kwargs))
    workers = make_loader(train, num_workers=2, **kwargs)
    assert len(workers) == 3
    for (x0, y0), (x1, y1) in zip(inline, workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert x0.dtype == torch.float32 and x0.shape[1:] == (3, 224, 224)


def test_alternating_flips_in_a_folder_mirror_each_image_in_every_other_epoch(tree: Path) -> None:
    train = load_dataset(f"imagefolder:{tree}", "train", image_size=16)
    alternate = _FolderItems(train, train=True, augment=Augment(flip=True, alternate_flip=True), seed=4)
    unflipped = _FolderItems(train, train=True, augment=Augment(), seed=4)  # the same crops, unmirrored
    readable = [i for i in range(len(train)) if train.paths[i].rsplit(b"/", 1)[-1] not in BROKEN]
    for i in readable:
        sides = []
        for epoch in (0, 1, 2):
            image, plain = alternate[(i, epoch)][0], unflipped[(i, epoch)][0]
            assert torch.equal(image, plain) or torch.equal(image, plain.flip(-1))
            sides.append(not torch.equal(image, plain))
        assert sides == [bool(flip_phase(len(train), 4)[i]), not sides[0], sides[0]], i


@settings(max_examples=100, deadline=None)
@given(width=st.integers(1, 2000), height=st.integers(1, 2000), seed=st.integers(0, 2**32))
def test_random_resized_boxes_stay_inside_the_image(width: int, height: int, seed: int) -> None:
    left, top, right, bottom = random_resized_box((width, height), rng=np.random.default_rng(seed))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_centre_box_matches_resize_then_centre_crop() -> None:
    # 300x200 image: short side 200 -> 256 scales by 1.28; a 224 crop covers 175 source pixels.
    assert centre_box((300, 200), crop=224, resize=256) == pytest.approx((62.5, 12.5, 237.5, 187.5))


def test_data_command_describes_a_folder(tree: Path, capsys) -> None:
    assert main(["data", f"imagefolder:{tree}"]) == 0
    out = capsys.readouterr().out
    assert "train: 15 images, 3x224x224, 3 classes" in out and "test:  6 images" in out
    assert "classes: cat, dog, emu" in out


def test_a_folders_statistics_are_computed_once_and_recomputed_when_a_sampled_file_changes(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resnetlab.data import folder as folder_module

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    first = load_dataset(f"imagefolder:{tree}", "train")
    assert len(list((tmp_path / "home" / ".cache" / "resnetlab" / "folder-stats").glob("*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the statistics were cached")

    monkeypatch.setattr(folder_module, "decode", no_decoding)
    again = load_dataset(f"imagefolder:{tree}", "test")  # another split, the same train statistics
    assert (again.mean, again.std) == (first.mean, first.std)
    monkeypatch.undo()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (cached,) = (tmp_path / "home" / ".cache" / "resnetlab" / "folder-stats").glob("*.json")
    for damaged in ('{"mean": "abc", "std": [1]}', "not json", '{"mean": [0.5]}'):
        cached.write_text(damaged)  # measured again, and the cache mended
        assert load_dataset(f"imagefolder:{tree}", "train").mean == pytest.approx(first.mean)
    changed = tree / "train" / "cat" / "1.png"
    original = changed.read_bytes()
    try:
        Image.new("RGB", (30, 20), (255, 255, 255)).save(changed)
        brighter = load_dataset(f"imagefolder:{tree}", "train")
        assert brighter.mean[0] > first.mean[0]  # the changed file missed the cache
    finally:
        changed.write_bytes(original)
    (tmp_path / "home" / ".cache").chmod(0o500)  # an unwritable cache costs time, not the run
    try:
        assert load_dataset(f"imagefolder:{tree}", "train", seed=5).num_classes == first.num_classes
    finally:
        (tmp_path / "home" / ".cache").chmod(0o700)
