"""Image folders the way people keep their own: only class folders, a few dozen images, any mode
(grayscale, RGBA, palette, CMYK JPEG, 16-bit PNG, EXIF-rotated), and `--val-size 0`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import has_split, load_dataset
from resnetlab.data.folder import MAX_VAL_FRACTION, decode, held_out_size
from resnetlab.errors import Error


def _flat_folder(root: Path, per_class: int = 20) -> Path:
    """root/<class>/<image>: no train/ or val/, as a phone's export or a scrape would be."""
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(
                root / name / f"{i}.png"
            )
    return root


def test_a_folder_of_class_folders_holds_out_a_capped_seeded_val_and_has_no_test(tmp_path):
    name = f"imagefolder:{_flat_folder(tmp_path / 'flat')}"
    train = load_dataset(name, "train", val_size=5000, seed=3)
    val = load_dataset(name, "val", val_size=5000, seed=3)
    assert train.classes == ["ant", "bee"]
    assert len(val) == held_out_size(40, 5000) == int(40 * MAX_VAL_FRACTION) == 8  # not 5000 of 40
    assert len(train) == 32 and not set(train.paths) & set(val.paths)
    assert set(load_dataset(name, "val", val_size=5000, seed=3).paths) == set(val.paths)  # seeded
    assert set(load_dataset(name, "val", val_size=5000, seed=4).paths) != set(val.paths)
    assert len(load_dataset(name, "val", val_size=3, seed=3)) == 3  # under the cap: as asked
    assert not has_split(name, "test", val_size=5000) and has_split(name, "val", val_size=5000)
    assert not has_split(name, "val", val_size=0)
    with pytest.raises(Error, match="has no test split"):
        load_dataset(name, "test")


def test_a_folder_with_train_and_val_uses_val_as_its_test_split(tmp_path):
    root = tmp_path / "imnet"
    _flat_folder(root / "train")
    _flat_folder(root / "val", per_class=3)
    name = f"imagefolder:{root}"
    assert has_split(name, "test", val_size=0)
    test = load_dataset(name, "test")
    assert len(test) == 6 and all(p.startswith(b"val/") for p in test.paths)
    assert len(load_dataset(name, "train", val_size=5000)) == 32  # the cap holds here too


def _mixed_folder(root: Path) -> dict[str, np.ndarray]:
    """One image per mode with known content; returns the RGB pixels each must decode to."""
    folder = root / "train" / "mixed"
    folder.mkdir(parents=True)
    expected = {}
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))  # (16, 32) grey ramp
    Image.fromarray(ramp, "L").save(folder / "grey.png")
    expected["grey.png"] = np.repeat(ramp[..., None], 3, axis=2)

    wide = ramp.astype(np.uint16) * 257  # the same ramp, stored 16-bit
    Image.fromarray(wide).save(folder / "wide.png")
    assert Image.open(folder / "wide.png").mode.startswith("I")  # the case Pillow's convert clips
    expected["wide.png"] = expected["grey.png"]

    rgb = np.zeros((16, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = ramp, 255 - ramp
    rgba = np.concatenate([rgb, np.full((16, 32, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    expected["rgba.png"] = rgb

    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    palette.save(folder / "palette.png")
    expected["palette.png"] = np.asarray(palette.convert("RGB"))

    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    expected["cmyk.jpg"] = rgb

    # A camera that stores a landscape sensor image of a portrait scene, with EXIF orientation 6
    # (rotate 90° clockwise to display): the decoded image must be the portrait one.
    upright = rgb[:, :16]  # (16, 16)... made non-square below
    upright = np.concatenate([upright, upright[::-1]], axis=0)  # (32, 16): portrait
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # (16, 32) landscape
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "rotated.png", exif=exif)
    expected["rotated.png"] = upright
    return expected


def test_every_mode_decodes_to_the_right_rgb_pixels(tmp_path):
    expected = _mixed_folder(tmp_path / "mixed")
    for name, pixels in expected.items():
        got = np.asarray(decode(tmp_path / "mixed" / "train" / "mixed" / name))
        assert got.shape == pixels.shape, name
        tolerance = 24 if name.endswith(".jpg") else 1  # JPEG is lossy, the rest exact
        assert np.abs(got.astype(int) - pixels).max() <= tolerance, name
    grey = np.asarray(decode(tmp_path / "mixed" / "train" / "mixed" / "wide.png", "L"))
    assert grey.shape == (16, 32) and (grey.min(), grey.max()) == (0, 248)  # scaled, not clipped


def test_a_mixed_mode_folder_loads_with_one_shape(tmp_path):
    _mixed_folder(tmp_path / "mixed")
    train = load_dataset(f"imagefolder:{tmp_path / 'mixed'}", "train", image_size=24)
    batch = torch.stack([train[i][0] for i in range(len(train))])
    assert batch.shape == (6, 3, 24, 24) and batch.dtype == torch.uint8
    assert all(0 < m < 1 for m in train.mean)


def test_data_with_a_missing_data_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--data-dir {tmp_path / 'nowhere'} is not a directory" in err


def test_data_describes_a_folder_of_class_folders(tmp_path, capsys):
    root = _flat_folder(tmp_path / "flat")
    assert main(["data", f"imagefolder:{root}"]) == 0
    out = capsys.readouterr().out
    assert "class folders, no test split" in out and "train: 40 images" in out and "test:  none" in out
