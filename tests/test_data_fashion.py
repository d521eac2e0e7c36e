"""Real Fashion-MNIST (Debian's dataset-fashion-mnist package) and the `resnetlab data` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from resnetlab.cli import main
from resnetlab.data import load_dataset, make_loader
from resnetlab.data.datasets import published

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)


@pytest.fixture(autouse=True)
def no_user_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Search only the Debian folder, never the developer's own cache or $RESNETLAB_DATA."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)


@needs_fashion
def test_real_fashion_mnist_loads_verified() -> None:
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert published("fashion-mnist", download=False).verified == "sha256 of the decompressed bytes verified"
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.images.shape == (60_000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.num_classes == 10 and train.classes[9] == "Ankle boot"
    assert torch.bincount(train.labels).tolist() == [6000] * 10  # balanced [Xiao17]
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.mean == pytest.approx((0.2860,), abs=1e-4) and train.std == pytest.approx(
        (0.3530,), abs=1e-4
    )
    assert test.mean == train.mean  # normalised with the training statistics


@needs_fashion
def test_real_fashion_mnist_val_split_and_loader() -> None:
    train = load_dataset("fashion-mnist", "train", val_size=5000, seed=7)
    val = load_dataset("fashion-mnist", "val", val_size=5000, seed=7)
    assert (len(train), len(val)) == (55_000, 5000)
    loader = make_loader(val, batch_size=1000, train=False, device="cpu")
    x, y = next(iter(loader))
    assert len(loader) == 5 and x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05  # normalised


@needs_fashion
def test_data_command_prints_files_sizes_and_splits(capsys) -> None:
    assert main(["data", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert f"fashion-mnist: {DEBIAN} (sha256 of the decompressed bytes verified)" in out
    assert "train-images-idx3-ubyte.gz    26.4 MB" in out
    assert "train: 60,000 images, 1x28x28, 10 classes" in out and "test:  10,000 images" in out


def test_data_command_errors_are_one_line(capsys) -> None:
    assert main(["data", "imagenet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "resnetlab: error: unknown data set 'imagenet'; choose from"
    )
    assert main(["data", "cifar100", "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cifar100 not found; download cifar-100-python.tar.gz from" in err
