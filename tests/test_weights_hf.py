"""Folders in the Hugging Face Hub layout: `export --format hf` writes what timm reads, and
resnetlab reads back both its own folders and timm's (from config.json alone)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import Error
from resnetlab.export.hub import export_hf
from resnetlab.weights import source_model as weights_model
from resnetlab.weights.formats import weights_bytes
from resnetlab.weights.preprocessing import crop_pct

CLASSES = ["ant", "bee", "cat", "dog", "emu"]


def resnet18_weights(path: Path) -> tuple[Path, torch.nn.Module]:
    """A resnetlab weights file of a resnet18 with 5 classes, as a run would write it."""
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=5).eval()
    meta = {
        "model": "resnet18",
        "model_kwargs": {},
        "num_classes": 5,
        "in_chans": 3,
        "classes": CLASSES,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "image_size": 64,
        "resize_size": 73,
        "interpolation": "bicubic",
        "data": "imagefolder:zoo",
    }
    path.write_bytes(weights_bytes(model.state_dict(), meta))
    return path, model


def test_a_folder_written_for_timm_reads_back_to_the_same_model_and_preprocessing(tmp_path):
    weights, model = resnet18_weights(tmp_path / "r18.safetensors")
    out = export_hf(str(weights), tmp_path / "zoo-model")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 5
    assert config["num_features"] == 512 and config["label_names"] == CLASSES and config["model_args"] == {}
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 64, 64] and cfg["interpolation"] == "bicubic"
    assert math.floor(64 / cfg["crop_pct"]) == 73  # timm's resize rule gives the run's 73 back
    assert (cfg["mean"], cfg["std"]) == ([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    card = (out / "README.md").read_text()
    assert (
        "library_name: timm" in card and 'timm.create_model("local-dir:zoo-model", pretrained=True)' in card
    )
    for source in (f"local-dir:{out}", str(out)):
        again = create_model("resnet18", pretrained=source).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(again(x), model(x))
        cfg = again.pretrained_cfg
        assert (cfg["image_size"], cfg["resize_size"], cfg["interpolation"]) == (64, 73, "bicubic")
        assert cfg["classes"] == CLASSES


def test_a_folder_timm_wrote_is_read_from_its_config_alone(tmp_path):
    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=5).eval()
    folder = tmp_path / "timm-folder"
    folder.mkdir()
    safetensors.torch.save_file(model.state_dict(), folder / "model.safetensors")  # no resnetlab metadata
    config = {
        "architecture": "resnet18",
        "num_classes": 5,
        "num_features": 512,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": 0.95,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "label_names": CLASSES,
    }
    (folder / "config.json").write_text(json.dumps(config))
    loaded = create_model("resnet18", pretrained=f"local-dir:{folder}").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    cfg = loaded.pretrained_cfg
    assert (cfg["image_size"], cfg["resize_size"], cfg["interpolation"]) == (
        224,
        235,
        "bicubic",
    )  # floor(224/0.95)
    assert cfg["classes"] == CLASSES and cfg["mean"] == [0.485, 0.456, 0.406]
    # `train --init-from` finds the model to build in the folder, as it does for a tag
    assert weights_model(f"local-dir:{folder}") == weights_model(str(folder)) == "resnet18"
    del config["label_names"]
    config["num_classes"] = 1000  # timm's ImageNet repositories name no classes: ImageNet-1k's are meant
    (folder / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file(create_model("resnet18").state_dict(), folder / "model.safetensors")
    imagenet = create_model("resnet18", pretrained=str(folder)).pretrained_cfg
    assert len(imagenet["classes"]) == 1000 and imagenet["classes"][1] == "goldfish"


def test_a_cifar_net_timm_lacks_still_writes_a_folder_that_says_so_and_reads_back(tmp_path, capsys):
    out = tmp_path / "r20"
    assert main(["export", "resnet20.fmnist", "--format", "hf", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "library_name: resnetlab" in card and "timm cannot load this folder" in card
    config = json.loads((out / "config.json").read_text())
    assert config["model_args"] == {"in_chans": 1} and config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    shipped, again = (
        create_model("resnet20", pretrained="fmnist"),
        create_model("resnet20", pretrained=str(out)),
    )
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(shipped.eval()(x), again.eval()(x))


@given(image_size=st.integers(8, 1024), extra=st.integers(0, 600))
def test_crop_pct_turns_back_into_the_resize_by_timms_rule(image_size, extra):
    resize = image_size + extra
    assert math.floor(image_size / crop_pct(image_size, resize)) == resize


def _folder(tmp_path: Path, config: object, weights: bool = True) -> Path:
    folder = tmp_path / "f"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (folder / "model.safetensors").write_bytes(weights_bytes(create_model("resnet18").state_dict(), {}))
    return folder


@pytest.mark.parametrize(
    "config, message",
    [
        ({"architecture": "vit_base_patch16_224"}, "unknown model 'vit_base_patch16_224'"),
        ({"architecture": "resnet18", "num_classes": "many"}, "is not a timm config.json"),
        ({"architecture": "resnet18", "pretrained_cfg": {"input_size": 5}}, "is not a timm config.json"),
        ({"architecture": "resnet18", "model_args": [1]}, "is not a timm config.json"),
        (
            {"architecture": "resnet18", "pretrained_cfg": {"input_size": [3, 9, 9], "crop_pct": 0}},
            "out of range",
        ),
        ({"architecture": "resnet18", "model_args": {"groups": "x"}}, "groups must be an integer"),
    ],
)
def test_a_bad_or_foreign_folder_is_one_line(tmp_path, capsys, config, message):
    folder = _folder(tmp_path, config)
    argv = ["predict", "--weights", f"local-dir:{folder}", str(folder / "config.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_local_dir_needs_the_layout_and_export_needs_an_empty_place(tmp_path, capsys):
    with pytest.raises(Error, match="is not a folder with config.json"):
        create_model("resnet18", pretrained=f"local-dir:{tmp_path / 'none'}")
    with pytest.raises(Error, match="is not a folder with config.json"):
        create_model(
            "resnet18", pretrained=f"local-dir:{_folder(tmp_path, {'architecture': 'resnet18'}, False)}"
        )
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    for argv, message in (
        (
            ["export", "resnet20.fmnist", "--format", "hf", "--out", str(taken)],
            "exists and is not an empty folder",
        ),
        (
            ["export", "resnet20.fmnist", "--format", "hf", "--int8", "--out", str(tmp_path / "x")],
            "--int8 apply to",
        ),
        (["export", "resnet18", "--format", "hf", "--out", str(tmp_path / "y")], "unknown weights"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (taken / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "taken"]  # nothing half-written


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="uses /proc, a folder no one can write in")
def test_exporting_into_a_folder_no_one_can_write_in_is_one_line(capsys):
    assert main(["export", "resnet20.fmnist", "--format", "hf", "--out", "/proc/r20-hf"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error: cannot write /proc/r20-hf") and err.count("\n") == 1, err
