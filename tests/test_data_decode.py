"""Reduced JPEG decoding: the box a view draws, mapped onto an image decoded at 1/2, 1/4 or 1/8
scale, shows the same picture as full decoding, for every EXIF orientation."""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.data.folder import FolderDataset, UnreadableImage, decode_box
from resnetlab.errors import Error

PHOTO = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # 512 x 600
# How ImageOps.exif_transpose turns stored pixels upright, per EXIF orientation; stored images
# are made with the inverse, so every file below shows the same upright photo.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {**UPRIGHT, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def off_centre(size: tuple[int, int]) -> tuple[float, float, float, float]:
    """An asymmetric box, so a box mapped through the wrong flip lands elsewhere."""
    w, h = size
    return 0.07 * w, 0.31 * h, 0.55 * w, 0.83 * h


def crop(path: Path, out: int, *, reduce: bool, mode: str = "RGB") -> tuple[np.ndarray, tuple[int, int]]:
    image, box = decode_box(path, off_centre, out, mode=mode, reduce=reduce)
    pixels = np.asarray(image.resize((out, out), Image.Resampling.BILINEAR, box=box), dtype=np.float64)
    return pixels, image.size


@pytest.fixture(scope="module")
def oriented(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The photo stored under each EXIF orientation, 1..8, with odd sizes (1000 x 1171 upright):
    a flipped axis is then measured from a partial last DCT block."""
    root = tmp_path_factory.mktemp("oriented")
    with Image.open(PHOTO) as photo:
        upright = photo.convert("RGB").resize((1000, 1171), Image.Resampling.BICUBIC)
    out = {}
    for orientation in range(1, 9):
        stored = upright.transpose(INVERSE[orientation]) if orientation in INVERSE else upright
        exif = Image.Exif()
        exif[0x0112] = orientation
        out[orientation] = root / f"o{orientation}.jpg"
        stored.save(out[orientation], "JPEG", quality=95, exif=exif.tobytes())
    return out


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("out", "scale"), [(60, 8), (100, 4), (200, 2), (480, 1)])
def test_reduced_decoding_shows_the_same_crop(oriented: dict, orientation: int, out: int, scale: int) -> None:
    full, full_size = crop(oriented[orientation], out, reduce=False)
    reduced, reduced_size = crop(oriented[orientation], out, reduce=True)
    assert full_size == (1000, 1171)
    assert reduced_size == (-(-1000 // scale), -(-1171 // scale))  # the box spans 480 x 608 px
    # The same picture, blurred differently (about 2 here): a box off by one reduced pixel (8 px
    # of the original at 1/8), or scaled by the sizes' ratio instead of 1/scale, gives more.
    assert np.abs(full - reduced).mean() < 3.0


def test_a_misplaced_box_would_be_caught(oriented: dict) -> None:
    """The bound above has teeth: the reduced crop shifted by one reduced pixel fails it."""
    image, box = decode_box(oriented[1], off_centre, 60, reduce=True)
    shifted = (box[0] + 1, box[1], box[2] + 1, box[3])
    moved = np.asarray(image.resize((60, 60), Image.Resampling.BILINEAR, box=shifted), dtype=np.float64)
    assert np.abs(crop(oriented[1], 60, reduce=False)[0] - moved).mean() > 3.0


def test_grey_output_and_non_jpeg_files_decode_in_full(oriented: dict, tmp_path: Path) -> None:
    grey, size = crop(oriented[6], 60, reduce=True, mode="L")
    assert grey.shape == (60, 60) and size == (125, 147)
    png = tmp_path / "photo.png"
    with Image.open(oriented[1]) as image:
        image.save(png)
    assert crop(png, 60, reduce=True)[1] == (1000, 1171)


def test_a_folder_draws_the_same_crops_with_either_decoding(oriented: dict) -> None:
    paths = np.array([f"o{o}.jpg".encode() for o in range(1, 9)])
    root = oriented[1].parent

    def folder(decode: str) -> FolderDataset:
        return FolderDataset(root, paths, np.zeros(8, np.int64), ["photo"], mean=(0.5,) * 3, std=(0.25,) * 3,
                             image_size=64, decode=decode)  # fmt: skip

    full, reduced = folder("full"), folder("reduced")
    for i in range(8):
        rngs = np.random.default_rng([i, 1]), np.random.default_rng([i, 1])
        a, b = (d.load(i, rng, flip=True).double() for d, rng in zip((full, reduced), rngs, strict=True))
        assert a.shape == b.shape == (3, 64, 64) and (a - b).abs().mean() < 6.0
        assert rngs[0].random() == rngs[1].random()  # the same draws were taken
        assert (full.load(i).double() - reduced.subset([i]).load(0).double()).abs().mean() < 3.0
    with pytest.raises(Error, match="unknown decode mode 'fast'"):
        folder("fast")


def test_train_rejects_an_unknown_decode_mode(capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", "imagefolder:/nowhere", "--decode", "fast"]) == 2
    assert "--decode must be one of full, reduced" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "foreign", "header only"])
def test_broken_files_are_unreadable_images_with_reduced_decoding(
    oriented: dict, tmp_path: Path, damage: str
) -> None:
    data = oriented[6].read_bytes()
    broken = {"truncated": data[: len(data) // 3], "foreign": b"GIF89a not really", "header only": data[:600]}
    path = tmp_path / "broken.jpg"
    path.write_bytes(broken[damage])
    with pytest.raises(UnreadableImage, match="broken.jpg"):
        decode_box(path, off_centre, 60, reduce=True)
