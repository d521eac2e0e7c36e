"""Pretrained weights without a network: local files, run directories, adaptation, the registry table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from resnetlab import create_model
from resnetlab.errors import Error
from resnetlab.models import list_models
from resnetlab.weights import (
    adapt_input_conv,
    class_names,
    default_weights,
    get_weights,
    list_weights,
    load,
    model_tags,
)
from resnetlab.weights.checkpoint import save_checkpoint
from weights_fixtures import assert_same_outputs

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "REFERENCE.md"
TINY = {"depth": 8, "shortcut": "B"}  # torchvision's key layout (conv1, bn1, layerN.i, downsample.0/1, fc)


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def tiny(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cifar_resnet", **TINY, **kwargs).eval()


# ---------------------------------------------------------------- local files and run directories


def test_a_torch_save_file_loads_like_its_state_dict(tmp_path):
    source = tiny(num_classes=7)
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    model = create_model("cifar_resnet", **TINY, pretrained=tmp_path / "mine.pth")
    assert_same_outputs(model, source)
    cfg = model.pretrained_cfg
    assert (cfg["model"], cfg["tag"], cfg["source"]) == ("cifar_resnet", None, str(tmp_path / "mine.pth"))
    assert (cfg["num_classes"], cfg["in_chans"]) == (7, 3)  # read from the tensors: fc and conv1
    assert cfg["classes"] is None and cfg["mean"] is None  # a bare state dict says nothing else


def test_a_safetensors_file_without_metadata_loads(tmp_path):
    source = tiny()
    safetensors.torch.save_file(source.state_dict(), tmp_path / "model.safetensors")
    assert_same_outputs(
        create_model("cifar_resnet", **TINY, pretrained=str(tmp_path / "model.safetensors")), source
    )


def test_a_run_directory_and_its_weights_file_load_with_the_runs_metadata(tmp_path):
    source = tiny(in_chans=1)
    meta = {
        "model": "cifar_resnet",
        "model_kwargs": TINY,
        "num_classes": 10,
        "in_chans": 1,
        "classes": [f"c{i}" for i in range(10)],
        "mean": [0.3],
        "std": [0.35],
        "image_size": 28,
        "resize_size": 28,
        "data": "fashion-mnist",
        "val_size": 0,
        "seed": 0,
    }
    (tmp_path / "run").mkdir()
    ckpt = save_checkpoint(
        tmp_path / "run", 5, model=source.state_dict(), ema=None, meta=meta, train_state={}
    )
    model = create_model("cifar_resnet", pretrained=tmp_path / "run")  # depth and shortcut from the file
    assert_same_outputs(model, source, in_chans=1)
    assert model.pretrained_cfg["source"] == str(ckpt / "model.safetensors")
    assert {k: model.pretrained_cfg[k] for k in meta} == meta
    assert model.pretrained_cfg["step"] == 5 and model.pretrained_cfg["interpolation"] == "bilinear"
    loaded, _ = load(tmp_path / "run")
    cfg = loaded.pretrained_cfg  # the name comes from the metadata
    assert not loaded.training and cfg == model.pretrained_cfg
    with pytest.raises(Error, match=r"holds cifar_resnet weights, not resnet18"):
        create_model("resnet18", pretrained=tmp_path / "run")


def test_load_model_needs_a_model_name_for_a_bare_state_dict(tmp_path):
    torch.save(tiny().state_dict(), tmp_path / "mine.pth")
    with pytest.raises(Error, match=r"cannot tell which model .*mine\.pth holds"):
        load(tmp_path / "mine.pth")


def test_missing_files_and_bad_values_are_one_line_errors(tmp_path):
    for bad, message in [
        (tmp_path / "nope.pth", r"nope\.pth does not exist"),
        (str(tmp_path / "no" / "run"), r"run does not exist"),
        (3, r"pretrained must be True, a weights tag, a file, a URL or a run directory; got 3"),
    ]:
        with pytest.raises(Error, match=message):
            create_model("resnet18", pretrained=bad)
    (tmp_path / "junk.pth").write_bytes(b"\x00not a zip")
    with pytest.raises(Error, match=r"junk\.pth is not a readable torch checkpoint"):
        create_model("resnet18", pretrained=tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(Error, match=r"holds no state dict"):
        create_model("resnet18", pretrained=tmp_path / "nostate.pth")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(Error, match=r"cut\.safetensors is not a readable safetensors file"):
        create_model("resnet18", pretrained=tmp_path / "cut.safetensors")


def test_a_training_checkpoint_dict_gives_its_state_dict(tmp_path):
    source = tiny()
    torch.save({"epoch": 90, "state_dict": source.state_dict()}, tmp_path / "ckpt.pth")
    assert_same_outputs(create_model("cifar_resnet", **TINY, pretrained=tmp_path / "ckpt.pth"), source)


# ---------------------------------------------------------------- fitting: strict keys, head, stem


def test_keys_or_shapes_that_do_not_fit_name_the_first_of_each(tmp_path):
    state = tiny().state_dict()
    state["layer9.weight"] = torch.zeros(1)
    del state["layer1.0.bn1.bias"]
    state["layer2.0.conv1.weight"] = torch.zeros(32, 16, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(Error) as error:
        create_model("cifar_resnet", **TINY, pretrained=tmp_path / "bad.pth")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"the weights in {tmp_path / 'bad.pth'} do not fit cifar_resnet: ")
    assert "missing layer1.0.bn1.bias" in message and "unexpected layer9.weight" in message
    assert "mismatched layer2.0.conv1.weight: checkpoint (32, 16, 1, 1) vs model (32, 16, 3, 3)" in message


def test_num_classes_10_keeps_every_other_tensor_and_says_so(tmp_path, capsys):
    source = tiny(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "in1k.pth")
    model = create_model("cifar_resnet", **TINY, pretrained=tmp_path / "in1k.pth", num_classes=10)
    got, want = model.state_dict(), source.state_dict()
    assert got["fc.weight"].shape == (10, 64) and model.pretrained_cfg["num_classes"] == 10
    assert all(torch.equal(got[k], v) for k, v in want.items() if not k.startswith("fc."))
    assert model.pretrained_cfg["classes"] is None  # the fresh head's classes are the user's
    err = capsys.readouterr().err.strip().splitlines()
    head = "the checkpoint's 1000-class head is not loaded; fc starts fresh with 10 outputs"
    assert err == [f"resnetlab: {tmp_path / 'in1k.pth'}: {head}"]


def test_features_only_drops_the_head(tmp_path):
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model("cifar_resnet", **TINY, pretrained=tmp_path / "w.pth", features_only=True)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(model.eval()(x)[-1], source.forward_intermediates(x)[-1])


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_follows_timms_rule_computed_by_hand(tmp_path, in_chans):
    source = tiny()
    torch.save(source.state_dict(), tmp_path / "rgb.pth")
    model = create_model("cifar_resnet", **TINY, pretrained=tmp_path / "rgb.pth", in_chans=in_chans).eval()
    w = source.conv1.weight.detach()  # (16, 3, 3, 3)
    if in_chans == 1:
        expected = w[:, 0:1] + w[:, 1:2] + w[:, 2:3]  # the RGB kernels summed
    else:  # repeated ceil(4 / 3) = 2 times, cut to 4 channels, scaled by 3 / 4
        expected = torch.cat([w[:, 0:1], w[:, 1:2], w[:, 2:3], w[:, 0:1]], dim=1) * 0.75
    torch.testing.assert_close(model.conv1.weight.detach(), expected)
    got, want = model.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items() if k != "conv1.weight")
    # A grey image replicated into RGB gives the RGB net's output exactly (up to rounding).
    if in_chans == 1:
        x = torch.randn(2, 1, 16, 16)
        torch.testing.assert_close(model(x), source(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_adapt_input_conv_refuses_a_source_that_is_neither_rgb_nor_grey():
    assert adapt_input_conv(torch.ones(2, 3, 1, 1), 3).equal(torch.ones(2, 3, 1, 1))
    with pytest.raises(Error, match="cannot adapt a 2-channel first conv to 4 channels"):
        adapt_input_conv(torch.ones(2, 2, 3, 3), 4)
    # a grey kernel to RGB: three copies at a third, so a grey image copied to RGB gives the same
    grey = torch.randn(4, 1, 3, 3)
    x = torch.randn(2, 1, 8, 8)
    rgb = adapt_input_conv(grey, 3)
    assert rgb.shape == (4, 3, 3, 3)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(x.expand(-1, 3, -1, -1), rgb), torch.nn.functional.conv2d(x, grey)
    )
    # 7 channels: three copies, cut to 7, each scaled by 3/7
    adapted = adapt_input_conv(torch.arange(3.0).view(1, 3, 1, 1), 7)
    assert adapted.flatten().tolist() == pytest.approx([x * 3 / 7 for x in (0, 1, 2, 0, 1, 2, 0)])


# ---------------------------------------------------------------- the registry table


def _reference_torchvision_rows() -> list[list[str]]:
    text = REFERENCE.read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\w+) \| IMAGENET1K_V(\d) \| (\S+\.pth) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|"
                      r" [\d.]+ \| ([\d.]+) \| (\d+) \|$", text, flags=re.M)  # fmt: skip
    return [list(r) for r in rows]


@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared/REFERENCE.md is not beside the checkout")
def test_every_torchvision_file_of_reference_md_is_an_entry_with_its_facts():
    rows = _reference_torchvision_rows()
    assert len(rows) == 17
    for model, version, file_name, params, acc1, acc5, size_mb, resize in rows:
        entry = get_weights(f"{model}.{'tv_in1k' if version == '1' else 'tv2_in1k'}")
        assert entry.url == f"https://download.pytorch.org/models/{file_name}"
        assert entry.file_name == file_name and entry.sha256 == file_name[-12:-4] and entry.format == "pth"
        assert entry.num_params == int(params.replace(",", ""))
        assert (entry.metrics.acc1, entry.metrics.acc5) == (float(acc1), float(acc5))
        assert (entry.size_mb, entry.resize_size, entry.image_size) == (float(size_mb), int(resize), 224)
        assert entry.mean == (0.485, 0.456, 0.406) and entry.std == (0.229, 0.224, 0.225)
        assert entry.interpolation == "bilinear" and entry.dataset == "imagenet-1k"
        assert entry.default == (version == "2" or model in ("resnet18", "resnet34", "resnext101_64x4d"))


def test_each_model_has_one_default_and_timm_entries_come_from_the_hub():
    for model in dict.fromkeys(e.model for e in list_weights()):
        assert sum(e.default for e in list_weights(f"{model}.*")) == 1, model
        assert model_tags(model)[0] == default_weights(model).name
    timm = [e for e in list_weights() if e.hub is not None]
    assert {e.name for e in timm} == {
        "resnet50.a1_in1k",
        "resnet18d.ra2_in1k",
        "resnet50d.ra2_in1k",
        "resnet50d.a1_in1k",
        "resnet101d.ra2_in1k",
    }
    for entry in timm:  # the Hub's sha256 checks them, through hf-hub: (tests/test_weights_hub.py)
        assert (entry.hub, entry.source, entry.url) == (
            f"timm/{entry.name}",
            f"hf-hub:timm/{entry.name}",
            None,
        )
        assert entry.format == "safetensors" and entry.file_name == "model.safetensors"
    assert not any(e.url and "huggingface.co" in e.url for e in list_weights())
    a1 = get_weights("resnet50.a1_in1k")
    assert (a1.image_size, a1.resize_size, a1.interpolation, a1.metrics.acc1) == (224, 235, "bicubic", 80.38)


def test_unknown_tags_list_the_models_tags():
    with pytest.raises(Error, match=r"unknown weights 'v9' for resnet50; its tags: resnet50\.tv2_in1k, "):
        create_model("resnet50", pretrained="v9")
    with pytest.raises(Error, match=r"resnet50\.tv2_in1k holds resnet50 weights, not resnet18"):
        create_model("resnet18", pretrained="resnet50.tv2_in1k")
    with pytest.raises(Error, match=r"plain20 has no pretrained weights; models with some: resnet18, "):
        create_model("plain20", pretrained=True)
    with pytest.raises(Error, match=r"weights tag 'tv2_in1k' is ambiguous"):
        get_weights("tv2_in1k")
    with pytest.raises(ValueError, match=r"unknown model 'resnet51'"):  # before any download
        create_model("resnet51", pretrained=True)


def test_imagenet_class_names_are_the_1000_in_index_order():
    names = class_names("imagenet-1k")
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"
    assert class_names("fashion-mnist")[0] == "T-shirt/top"
    with pytest.raises(Error, match="no class names are known for 'cifar7'"):
        class_names("cifar7")


def test_the_docs_table_is_the_registry():
    text = (Path(__file__).resolve().parents[1] / "docs" / "weights.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([\w.]+)`( \(default\))? \| ([\d,]+) \| ([\d.]+|-) \| ([\d.]+|-) \|", text, re.M)
    assert sorted(r[0] for r in rows) == sorted(e.name for e in list_weights())
    for name, default, params, acc1, acc5 in rows:
        e = get_weights(name)
        assert (bool(default), int(params.replace(",", ""))) == (e.default, e.num_params), name
        assert (None if acc1 == "-" else float(acc1), None if acc5 == "-" else float(acc5)) == (
            e.metrics.acc1,
            e.metrics.acc5,
        ), name


def test_a_local_file_is_a_registry_file_only_by_its_published_name(tmp_path):
    from resnetlab.weights.registry import find_by_path

    assert find_by_path(tmp_path / "resnet50-11ad3fa6.pth").name == "resnet50.tv2_in1k"
    assert find_by_path(tmp_path / "resnet20-fmnist.safetensors").name == "resnet20.fmnist"
    assert (
        find_by_path(tmp_path / "timm" / "resnet50d.ra2_in1k" / "model.safetensors") is None
    )  # hub: by repo
    assert find_by_path(tmp_path / "model.safetensors") is None  # a run's file or a timm file kept by hand
    assert find_by_path(tmp_path / "checkpoint-00000010" / "ema.safetensors") is None


def test_every_entry_names_a_registered_model_with_its_parameter_count():
    registered = set(list_models())
    for entry in list_weights():
        assert entry.model in registered, entry.name
        with torch.device("meta"):  # no memory for the 127M-parameter nets
            model = create_model(entry.model, num_classes=entry.num_classes, in_chans=entry.in_chans)
        assert sum(p.numel() for p in model.parameters()) == entry.num_params, entry.name
