"""`resnetlab train | eval | predict` on an ImageNet-layout folder, the way a user brings their own
images: JPEGs and PNGs of assorted sizes and modes, one of them broken, a chosen crop size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main
from resnetlab.weights import load

CLASSES = ("circle", "square")


def _picture(path: Path, label: int, size: tuple[int, int], seed: int) -> None:
    """A bright disc (class 0) or square (class 1) on noise: learnable, never identical."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    r = min(w, h) // 3
    shape = (
        (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < r * r
        if label == 0
        else (abs(xx - w / 2) < r) & (abs(yy - h / 2) < r)
    )
    pixels[shape] = 230
    mode = ("RGB", "L")[seed % 2]
    Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for split, count in (("train", 12), ("val", 4)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                ext = (".jpg", ".png")[i % 2]
                _picture(
                    root / split / name / f"{i}{ext}", label, (48 + 3 * i, 40 + 2 * i), seed=100 * label + i
                )
    (root / "train" / "square" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return root


def test_a_folder_trains_at_the_chosen_size_and_evaluates_and_predicts_at_it(folder, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = [
        "--model",
        "resnet18",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--lr",
        "0.05",
    ]
    flags += [
        "--workers",
        "1",
        "--val-size",
        "0",
        "--eval-splits",
        "test",
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert main(["train", "--data", f"imagefolder:{folder}", *flags, "--out", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "final: test accuracy" in out
    assert "unreadable image(s) in epoch 0, replaced by other training images" in err  # not fatal

    model, _ = load(run_dir)
    meta = model.pretrained_cfg
    assert (meta["image_size"], meta["resize_size"], meta["classes"]) == (32, 37, list(CLASSES))
    assert main(["eval", str(run_dir)]) == 0  # crops the val/ folder at 32, as trained
    assert "test (8 images): top-1 error" in capsys.readouterr().out

    image = folder / "val" / "circle" / "0.jpg"
    assert main(["predict", str(run_dir), str(image), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count("%") == 2
    assert sorted(line.split(": ", 1)[1].replace(",", "").split()[::2]) == sorted(CLASSES)


@pytest.mark.parametrize(
    "data, flags, message",
    [
        (
            "fashion-mnist",
            ["--image-size", "32"],
            "--image-size applies to imagefolder:PATH, packed:FILE and fashion-scenes data",
        ),
        ("imagefolder:{folder}", ["--crop-padding", "4"], "--crop-padding applies to in-memory data sets"),
        ("imagefolder:{folder}", ["--image-size", "-1"], "--image-size must be >= 0"),
    ],
)
def test_size_and_padding_flags_that_do_not_fit_the_data_are_one_line_errors(
    data, flags, message, folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", data.format(folder=folder), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []  # no run directory was started


@pytest.fixture(scope="module")
def small_flat(tmp_path_factory) -> Path:
    """40 images in 2 class folders and nothing else: no train/, no val/."""
    root = tmp_path_factory.mktemp("flat")
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(20):
            _picture(root / name / f"{i}.png", label, (40 + i, 36 + i), seed=300 * label + i)
    return root


def test_forty_images_in_two_class_folders_train_evaluate_and_predict_with_default_flags(
    small_flat, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    # Default flags but two, for speed only: one epoch, and 32-pixel crops instead of 224.
    fast = ["--epochs", "1", "--image-size", "32", "--no-progress"]
    assert main(["train", "--data", f"imagefolder:{small_flat}", *fast, "--out", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "final: val accuracy" in out  # the capped hold-out was evaluated; there is no test split
    assert "holding out 8 of the 40 training images as the val split" in err
    assert "each step takes 32" in err and "no test split to evaluate" in err
    assert main(["eval", str(run_dir)]) == 0  # no test split: eval takes the held-out val
    assert "val (8 images): top-1 error" in capsys.readouterr().out
    assert main(["predict", str(run_dir), str(small_flat / "circle" / "3.png")]) == 0
    assert capsys.readouterr().out.startswith(f"{small_flat / 'circle' / '3.png'}: ")


def test_val_size_0_turns_the_val_evaluation_off(small_flat, tmp_path, capsys):
    flags = ["--val-size", "0", "--epochs", "1", "--image-size", "32", "--workers", "0", "--no-progress"]
    assert main(["train", "--data", f"imagefolder:{small_flat}", *flags, "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert "final:" not in out  # nothing to evaluate: the folder has no test split either
    assert "no val split to evaluate (--val-size is 0)" in err
    assert '"kind": "eval"' not in (tmp_path / "r" / "metrics.jsonl").read_text()
    assert "each step takes 40" in err  # all 40 images train
