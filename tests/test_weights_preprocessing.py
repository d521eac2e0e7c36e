"""`Preprocessing`: exact to and from timm's pretrained_cfg and resnetlab's metadata, and datasets
fed through it are copies, never changed in place."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from resnetlab.data import load_dataset
from resnetlab.errors import Error
from resnetlab.weights import Preprocessing
from resnetlab.weights.preprocessing import INTERPOLATIONS, follow_weights

FASHION = "/usr/share/datasets/fashion-mnist"
unit = st.floats(0.01, 1.0, allow_nan=False)


@st.composite
def preprocessings(draw: st.DrawFn) -> Preprocessing:
    channels = draw(st.sampled_from([1, 3, 4]))
    size = draw(st.integers(8, 1024))
    return Preprocessing(
        mean=tuple(draw(st.lists(unit, min_size=channels, max_size=channels))),
        std=tuple(draw(st.lists(unit, min_size=channels, max_size=channels))),
        image_size=size,
        resize_size=size + draw(st.integers(0, 600)),
        interpolation=draw(st.sampled_from(INTERPOLATIONS)),
        in_chans=channels,
    )


@given(preprocessings())
def test_timms_pretrained_cfg_round_trips_exactly(pre):
    cfg = pre.pretrained_cfg()
    assert cfg["input_size"] == [pre.in_chans, pre.image_size, pre.image_size]
    # timm's own evaluation resize, floor(size / crop_pct), gives back the resize side
    assert math.floor(pre.image_size / cfg["crop_pct"]) == pre.resize_size
    assert Preprocessing.from_pretrained_cfg(cfg) == pre


@given(preprocessings(), st.none() | st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5))
def test_metadata_round_trips_exactly(pre, classes):
    pre = replace(pre, classes=classes)
    assert Preprocessing.from_meta(pre.meta()) == pre
    assert isinstance(Preprocessing.from_meta(pre.meta()).mean, tuple)  # JSON lists kept immutable


def test_timms_defaults_and_a_real_config():
    assert Preprocessing.from_pretrained_cfg({}).resize_size == 256  # crop_pct 0.875 of 224
    a1 = {
        "input_size": [3, 224, 224],
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    pre = Preprocessing.from_pretrained_cfg(a1)
    assert (pre.image_size, pre.resize_size, pre.interpolation) == (224, 235, "bicubic")
    with pytest.raises(ValueError, match="out of range"):
        Preprocessing.from_pretrained_cfg({**a1, "crop_pct": 0})


def test_inconsistent_fields_are_refused():
    with pytest.raises(ValueError, match="together"):
        Preprocessing((0.5,), None, 28, 28, in_chans=1)
    with pytest.raises(ValueError, match="3 mean values for 1 channels"):
        Preprocessing((0.5,) * 3, (0.5,) * 3, 28, 28, in_chans=1)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing((0.5,), (0.5,), 28, 28, interpolation="lanczos9", in_chans=1)


def test_an_adapted_stem_gets_the_mean_statistics_or_repeats_them():
    rgb = Preprocessing((0.2, 0.4, 0.6), (0.1, 0.2, 0.3), 224, 256)
    grey = rgb.for_channels(1)
    assert grey.in_chans == 1 and grey.mean == pytest.approx((0.4,)) and grey.std == pytest.approx((0.2,))
    assert rgb.for_channels(4).mean == (0.2, 0.4, 0.6, 0.2)
    assert rgb.for_channels(3) is rgb


def test_feeding_a_dataset_returns_a_copy_and_leaves_it_alone():
    test = load_dataset("fashion-mnist", "test", data_dir=FASHION)
    own = (test.mean, test.std)
    pre = Preprocessing((0.5,), (0.25,), 28, 28, in_chans=1)
    fed = pre.feed(test)
    assert (fed.mean, fed.std) == ((0.5,), (0.25,))
    assert (test.mean, test.std) == own and fed.images is test.images  # no copy of the pixels
    with pytest.raises(Error, match="normalised over 3 channels, but the data has 1"):
        Preprocessing((0.5,) * 3, (0.25,) * 3, 28, 28).feed(test)


def test_a_folder_takes_the_crop_and_resize_only_when_asked(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 90, 200)).save(tmp_path / "train" / cls / f"{i}.png")
    folder = load_dataset(f"imagefolder:{tmp_path}", "train")
    pre = Preprocessing((0.4,) * 3, (0.2,) * 3, 176, 232, interpolation="bicubic")
    fed = pre.feed(folder)
    assert (fed.image_size, fed.resize_size, fed.interpolation) == (176, 232, "bicubic")
    assert (folder.image_size, folder.resize_size) == (224, 256)  # unchanged
    kept = pre.feed(folder, crop=False)
    assert kept.image_size == 224 and kept.mean == (0.4,) * 3


def test_normalize_is_the_division_the_model_was_trained_with():
    pre = Preprocessing((0.5,), (0.25,), 2, 2, in_chans=1)
    x = torch.tensor([[[[0, 255], [51, 204]]]], dtype=torch.uint8)
    assert torch.allclose(pre.normalize(x), (x.float() / 255 - 0.5) / 0.25)


def test_training_follows_the_weights_as_normalize_and_the_data_say():
    data = Preprocessing((0.3,), (0.3,), 28, 28, in_chans=1, classes=("a", "b"))
    weights = Preprocessing((0.45,), (0.22,), 224, 232, interpolation="bicubic", in_chans=1)
    fed, whose = follow_weights(data, weights, normalize="auto", resizable=False, source="w")
    assert whose == "weights" and fed.mean == (0.45,) and fed.image_size == 28 and fed.classes == ("a", "b")
    fed, whose = follow_weights(data, weights, normalize="data", resizable=True, source="w")
    assert whose == "data" and fed.mean == (0.3,) and (fed.image_size, fed.resize_size) == (224, 232)
    assert follow_weights(data, None, normalize="auto", resizable=True, source=None) == (data, "data")
    unknown = replace(weights, mean=None, std=None)
    assert follow_weights(data, unknown, normalize="auto", resizable=False, source="w")[1] == "data"
    with pytest.raises(Error, match="w records no mean and std"):
        follow_weights(data, unknown, normalize="weights", resizable=False, source="w")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"mean": "abc"}, "records unusable preprocessing"),  # a string where a list belongs
        ({"mean": [0.5], "std": None}, "records unusable preprocessing"),
        ({"interpolation": "lanczos9"}, "records unusable preprocessing"),
        ({"task": "teleport"}, "unknown task 'teleport'"),
    ],
)
def test_a_weights_file_with_foreign_metadata_is_one_line(tmp_path, capsys, changes, message):
    from PIL import Image

    from resnetlab.cli import main
    from resnetlab.models import create_model
    from resnetlab.weights.checkpoint import save_weights

    meta = {"model": "cifar_resnet", "model_kwargs": {"depth": 8}, "num_classes": 10, "in_chans": 1,
            "classes": [str(i) for i in range(10)], "mean": [0.3], "std": [0.3], "image_size": 28,
            "resize_size": 28, "interpolation": "bilinear"}  # fmt: skip
    model = create_model("cifar_resnet", depth=8, in_chans=1)
    save_weights(tmp_path / "w.safetensors", model.state_dict(), {**meta, **changes})
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "w.safetensors"), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
