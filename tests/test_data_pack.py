"""Packs: `resnetlab data pack` writes a folder into one file that `packed:FILE` reads as the folder.

Pack then read gives the folder's labels, splits and pictures (raw exactly, JPEG within a bound);
a pack is the same bytes every time, a killed pack resumes, a damaged one is refused in one line,
a run on a pack resumes exactly, and torchrun's ranks read disjoint strides of it.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import load_dataset, make_loader
from resnetlab.data import packing as packing_module
from resnetlab.data.folder import FolderDataset
from resnetlab.data.pack import MAGIC, CorruptPack, Pack, open_pack
from resnetlab.data.packed import PackedDataset
from resnetlab.data.packing import pack_folder
from resnetlab.errors import Error
from resnetlab.train import TrainConfig, fit
from resnetlab.weights.checkpoint import latest_checkpoint
from run_fixtures import assert_same_weights, fit_stopped_at_step

CLASSES = ("circle", "square")


PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # 512 x 600


def _picture(label: int, size: tuple[int, int], seed: int) -> Image.Image:
    """A crop of a real photo: the upper half for class 0, the lower for class 1."""
    rng = np.random.default_rng(seed)
    with Image.open(PHOTO) as photo:
        left, top = int(rng.integers(0, 200)), int(rng.integers(0, 100)) + 300 * label
        return photo.convert("RGB").resize(
            size, Image.Resampling.BICUBIC, box=(left, top, left + 300, top + 200)
        )


def make_folder(root: Path, per_class: dict[str, int], *, broken: bool = False) -> Path:
    """train/ (and val/) of JPEGs (one EXIF-rotated, one greyscale) and PNGs, 40-90 px."""
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = _picture(label, (40 + 5 * (i % 11), 36 + 3 * (i % 7)), seed=1000 * label + i)
                path = root / split / name / f"{i:03d}{('.jpg', '.png')[i % 2]}"
                if i == 2:
                    exif = Image.Exif()
                    exif[0x0112] = 6  # stored rotated: the pack keeps it upright
                    image.save(path, quality=92, exif=exif.tobytes())
                elif i == 4:
                    image.convert("L").save(path, quality=92)
                else:
                    image.save(path, **({"quality": 92} if path.suffix == ".jpg" else {}))
    if broken:
        (root / "train" / "square" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("folder"), {"train": 14, "val": 4})


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("broken"), {"train": 3}, broken=True)


@pytest.fixture(scope="module")
def jpeg_pack(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "photos.pack"
    pack_folder(folder, out, workers=1)
    return out


@pytest.fixture(scope="module")
def raw_pack(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "raw.pack"
    pack_folder(folder, out, raw=True, workers=1)
    return out


def both(folder: Path, pack: Path, split: str, **kwargs) -> tuple[FolderDataset, PackedDataset]:
    return (
        load_dataset(f"imagefolder:{folder}", split, **kwargs),
        load_dataset(f"packed:{pack}", split, **kwargs),
    )


@pytest.mark.parametrize("split, val_size", [("train", 4), ("val", 4), ("test", 0)])
def test_a_raw_pack_reads_as_the_folder_pixel_for_pixel_with_its_labels_and_splits(
    folder, raw_pack, split, val_size
):
    pictures, packed = both(folder, raw_pack, split, val_size=val_size, image_size=32)
    assert isinstance(packed, PackedDataset) and packed.classes == pictures.classes == list(CLASSES)
    assert packed.labels.tolist() == pictures.labels.tolist()
    for i in range(len(pictures)):
        j = i
        assert torch.equal(packed[i][0], pictures[j][0]), j  # centre view, exact
        rng_a, rng_b = np.random.default_rng([5, i]), np.random.default_rng([5, i])
        assert torch.equal(packed.load(i, rng_a, flip=True), pictures.load(j, rng_b, flip=True))


def test_a_jpeg_pack_keeps_the_pictures_within_the_bound_and_small_rgb_jpegs_as_they_are(folder, jpeg_pack):
    pictures, packed = both(folder, jpeg_pack, "train", image_size=32)
    errors = []
    for i in range(len(pictures)):
        j = i
        a, b = packed[i][0].double(), pictures[j][0].double()
        errors.append((a - b).abs().mean().item())
        name = pictures.paths[j].decode()
        if name.endswith(".jpg") and not name.endswith(("002.jpg", "004.jpg")):  # RGB, upright
            record = packed.pack.record(int(packed.paths[i]))
            assert bytes(record) == (folder / name).read_bytes()  # stored as it was
    # Grey levels per pixel, from re-encoding 40-90 px thumbnails of a detailed photo at quality 90
    # (their PNGs, the rotated and the grey JPEG); the verbatim JPEGs are exact.
    assert max(errors) < 6.0 and np.mean(errors) < 3.0, errors
    assert errors.count(0.0) >= len(errors) // 3


def test_shrinking_keeps_the_aspect_and_the_long_side_and_the_statistics_are_exact(folder, tmp_path):
    out = tmp_path / "small.pack"
    pack_folder(folder, out, max_side=24, raw=True, workers=1)
    pack = open_pack(out)
    sides = np.maximum(pack.index["width"], pack.index["height"])
    assert sides.max() == 24 and sides.min() == 24  # every image here is larger than 24
    train = load_dataset(f"packed:{out}", "train")
    pixels = np.concatenate([pack.pixels(int(r)).reshape(-1, 3) / 255 for r in train.paths])
    np.testing.assert_allclose(train.mean, pixels.mean(0), atol=1e-6)
    np.testing.assert_allclose(train.std, pixels.std(0), atol=1e-5)


def test_a_pack_is_the_same_bytes_every_time_and_leaves_nothing_else(folder, jpeg_pack, tmp_path):
    again = tmp_path / "again.pack"
    report = pack_folder(folder, again, workers=2)
    assert again.read_bytes() == jpeg_pack.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.pack"]
    assert report.counts == {"train": 28, "test": 8} and report.unreadable == []


def test_unreadable_images_are_left_out_and_reported_once_at_pack_time(broken_folder, tmp_path, capsys):
    out = tmp_path / "b.pack"
    assert main(["data", "pack", f"imagefolder:{broken_folder}", "--out", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "6 train images" in captured.out
    assert "1 unreadable image(s) left out (first: " in captured.err and "broken.jpg" in captured.err
    assert len(load_dataset(f"packed:{out}", "train")) == 6


def test_a_killed_pack_resumes_from_its_last_whole_chunk_to_the_same_bytes(
    folder, jpeg_pack, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(packing_module, "CHUNK", 4)
    out = tmp_path / "photos.pack"
    seen = []

    def killed(done: int) -> None:
        seen.append(done)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as Ctrl-C or a kill between chunks

    with pytest.raises(KeyboardInterrupt):
        pack_folder(folder, out, workers=1, progress=killed)
    assert not out.exists()
    partial = tmp_path / ".photos.pack.partial"
    assert len(list(partial.glob("chunk-*.npz"))) == 3
    (partial / ".chunk-0000003.npz.1234.tmp").write_bytes(b"half")  # what a kill mid-write leaves
    report = pack_folder(folder, out, workers=1, progress=seen.append)
    assert report.resumed == 12 and seen[3] == 16  # chunks 0-2 were not packed again
    assert "resuming: 12 of 36 images were packed before" in capsys.readouterr().err
    assert out.read_bytes() == jpeg_pack.read_bytes()
    assert not partial.exists()


def test_a_partial_pack_of_a_folder_that_changed_since_starts_over(tmp_path, monkeypatch):
    monkeypatch.setattr(packing_module, "CHUNK", 4)
    root = make_folder(tmp_path / "f", {"train": 6})
    out = tmp_path / "f.pack"

    def killed(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_folder(root, out, workers=1, progress=killed)
    _picture(0, (50, 50), seed=99).save(root / "train" / "circle" / "000.jpg")  # changed since
    report = pack_folder(root, out, workers=1)
    assert report.resumed == 0
    fresh = tmp_path / "fresh.pack"
    pack_folder(root, fresh, workers=1)
    assert out.read_bytes() == fresh.read_bytes()


@pytest.mark.parametrize("damage", [b"not a zip at all", b"rows"])
def test_a_damaged_chunk_of_an_interrupted_pack_is_one_line_and_packed_anew_next_time(
    folder, jpeg_pack, tmp_path, monkeypatch, damage
):
    monkeypatch.setattr(packing_module, "CHUNK", 4)
    out = tmp_path / "photos.pack"

    def killed(done: int) -> None:
        if done == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_folder(folder, out, workers=1, progress=killed)
    chunk = tmp_path / ".photos.pack.partial" / "chunk-0000001.npz"
    if damage == b"rows":  # a readable .npz whose rows do not agree with its bytes
        with np.load(chunk) as arrays:
            parts = {name: arrays[name] for name in arrays.files}
        parts["length"] = parts["length"] + 1
        np.savez(chunk, **parts)
    else:
        chunk.write_bytes(damage)
    with pytest.raises(
        Error, match=r"chunk-0000001.npz of the interrupted pack is damaged .* run the command again"
    ):
        pack_folder(folder, out, workers=1)
    assert not out.exists() and not chunk.exists()
    report = pack_folder(folder, out, workers=1)
    assert report.resumed == 32  # every chunk but the damaged one was kept; it alone is packed anew
    assert out.read_bytes() == jpeg_pack.read_bytes()


def _damaged(pack: Path, tmp_path: Path, how: str) -> Path:
    data = bytearray(pack.read_bytes())
    header = open_pack(pack).header
    if how == "truncated":
        data = data[: len(data) - 100]
    elif how == "index":
        data[header.index + 5] ^= 0xFF
    elif how == "header":
        data[20] = ord("!")
    elif how == "foreign":
        data = bytearray(b"PK\x03\x04" + bytes(200))
    elif how == "empty":
        data = bytearray()
    out = tmp_path / f"{how}.pack"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "is truncated"),
        ("index", "the index fails its checksum"),
        ("header", "damaged header"),
        ("foreign", "is not a resnetlab pack"),
        ("empty", "is not a resnetlab pack"),
    ],
)
def test_a_damaged_pack_is_refused_in_one_line(jpeg_pack, tmp_path, capsys, how, message):
    bad = _damaged(jpeg_pack, tmp_path, how)
    assert main(["data", f"packed:{bad}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert main(["train", "--data", f"packed:{bad}", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_image_in_a_pack_stops_training_with_one_line(jpeg_pack, tmp_path, capsys):
    data = bytearray(jpeg_pack.read_bytes())
    pack = open_pack(jpeg_pack)
    data[pack.header.data + int(pack.index["offset"][3]) + 40] ^= 0xFF
    bad = tmp_path / "bad.pack"
    bad.write_bytes(bytes(data))
    flags = [
        "--model",
        "resnet18",
        "--image-size",
        "16",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--workers",
        "1",
    ]
    flags += ["--val-size", "0", "--device", "cpu", "--no-progress", "--amp", "none"]
    assert main(["train", "--data", f"packed:{bad}", *flags, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "image 3 fails its checksum" in err and "Traceback" not in err


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_bytes_after_the_signature_are_a_corrupt_pack_and_nothing_else(tmp_path_factory, body):
    path = tmp_path_factory.mktemp("fuzz") / "x.pack"
    path.write_bytes(MAGIC + len(body).to_bytes(8, "little") + body)
    with pytest.raises(CorruptPack):
        Pack(path)


def test_a_hostile_header_that_parses_is_still_refused(jpeg_pack, tmp_path):
    import json

    data = jpeg_pack.read_bytes()
    length = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + length])
    for change in (
        {"version": 99},
        {"encoding": "pickle"},
        {"record": [["offset", "<u8"]]},
        {"classes": [1, 2]},
        {"classes": "ab"},
        {"data_length": "9"},
        {"counts": {"train": -1, "test": 0}},
        {"max_side": 2.5},
        {"index_sha256": 7},
    ):
        text = json.dumps({**header, **change}).encode()
        out = tmp_path / "hostile.pack"
        out.write_bytes(MAGIC + len(text).to_bytes(8, "little") + text + bytes(64))
        with pytest.raises(CorruptPack):
            Pack(out)


def test_a_run_on_a_pack_stopped_mid_epoch_resumes_to_the_same_weights(jpeg_pack, tmp_path, monkeypatch):
    cfg = TrainConfig(
        data=f"packed:{jpeg_pack}",
        model="cifar_resnet",
        model_kwargs={"depth": 8},
        image_size=16,
        val_size=0,
        eval_splits=(),
        batch_size=4,
        epochs=2,
        checkpoint_every=3,
        workers=1,
        deterministic=True,
        amp="none",
        progress=False,
        crop_padding=0,
    )
    whole = fit(dataclasses.replace(cfg, out=str(tmp_path / "whole")))
    broken = dataclasses.replace(cfg, out=str(tmp_path / "broken"))
    fit_stopped_at_step(monkeypatch, broken, 8)  # epoch 1 (6 steps each), after the checkpoint at step 6
    assert latest_checkpoint(tmp_path / "broken").name == "checkpoint-00000006"
    resumed = fit(broken, resume=True)
    assert_same_weights(whole.model, resumed.model)


def test_two_ranks_read_disjoint_strides_that_cover_the_pack(jpeg_pack):
    train = load_dataset(f"packed:{jpeg_pack}", "train", image_size=16)
    common = dict(batch_size=4, train=False, device="cpu", num_workers=0)
    (whole,) = [torch.cat([x for x, _ in make_loader(train, **common)])]
    ranks = [torch.cat([x for x, _ in make_loader(train, rank=r, world_size=2, **common)]) for r in (0, 1)]
    assert torch.equal(ranks[0], whole[0::2]) and torch.equal(ranks[1], whole[1::2])
    for epoch in (0, 1):  # training: each rank its own share of the epoch's permutation, no overlap
        shares = []
        for rank in (0, 1):
            loader = make_loader(train, **{**common, "train": True}, rank=rank, world_size=2, seed=3)
            loader.set_epoch(epoch)
            shares.append([i for batch in loader.sampler for i, _ in batch])
        assert len(shares[0]) == len(shares[1]) == len(train) // 2 // 4 * 4
        assert not set(shares[0]) & set(shares[1])


def test_the_data_command_packs_and_describes_a_pack_and_refuses_bad_flags(folder, tmp_path, capsys):
    out = tmp_path / "p.pack"
    assert main(["data", "pack", f"imagefolder:{folder}", "--out", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "28 train, 8 test images" in captured.out and f"--data packed:{out}" in captured.out
    assert main(["data", f"packed:{out}"]) == 0
    text = capsys.readouterr().out
    assert "JPEG quality 90, long side at most 256 px" in text and "train: 28 images, 3x224x224" in text
    for argv, message in (
        (["data", "pack", f"imagefolder:{folder}"], "usage: resnetlab data pack"),
        (["data", "pack", str(folder), "--out", str(out)], "usage: resnetlab data pack"),
        (["data", "pack", f"imagefolder:{folder}", "--out", str(tmp_path)], "is a folder"),
        (["data", "pack", f"imagefolder:{folder}", "--out", str(out), "--max-side", "8"], "--max-side must"),
        (["data", "pack", f"imagefolder:{folder}", "--out", str(out), "--quality", "0"], "--quality must"),
        (["data", "pack", f"imagefolder:{folder}", "--out", str(out), "--workers", "0"], "--workers must"),
        (["data", "fashion-mnist", "--out", str(out)], "go with `pack`"),
        (["data", f"packed:{tmp_path / 'none.pack'}"], "No such file or directory; make one with"),
        (["train", "--data", f"packed:{out}", "--crop-padding", "4"], "--crop-padding applies"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_a_jpeg_in_a_pack_is_read_without_a_file(jpeg_pack, monkeypatch):
    train = load_dataset(f"packed:{jpeg_pack}", "train", image_size=16)
    train.pack = Pack(jpeg_pack)  # not yet mapped
    opened = []
    real_open = open

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    for i in range(len(train)):
        train.load(i, np.random.default_rng(i), flip=True)
    assert opened == [str(train.pack.path)]  # one memory map, opened at the first image, serves them all
    assert isinstance(train.pack.image_file(0), io.BytesIO)


@pytest.mark.skipif(
    not Path("/proc/self").is_dir(), reason="uses Linux /proc as a folder no one can write in"
)
def test_packing_into_a_folder_no_one_can_write_in_is_one_line(folder, capsys):
    # /proc refuses new files even to root, for whom chmod 0500 would not
    assert main(["data", "pack", f"imagefolder:{folder}", "--out", "/proc/photos.pack"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error: cannot write in /proc") and err.count("\n") == 1, err
