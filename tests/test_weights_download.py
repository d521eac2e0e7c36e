"""Downloading pretrained weights from a loopback HTTP server: cache, checksums, refusals, offline."""

from __future__ import annotations

import os

import pytest
import torch

from resnetlab import create_model
from resnetlab.errors import Error
from weights_fixtures import (
    TINY,
    Evil,
    assert_same_outputs,
    cached_files,
    closed_port,
    entry,
    isolate_caches,
    register,
    serve,
    sha256,
    tiny,
    torchvision_file,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    return isolate_caches(tmp_path, monkeypatch)


@pytest.fixture
def server(tmp_path):
    with serve(tmp_path / "www") as running:
        yield running


def test_a_torchvision_file_downloads_once_and_loads_like_its_state_dict(home, server, monkeypatch, tmp_path):
    base, requests = server
    torch.manual_seed(0)
    source = create_model("resnet18").eval()  # the real layout of torchvision's resnet18 file
    path = torchvision_file(tmp_path / "www", "resnet18", source.state_dict())
    imagenet = {"num_classes": 1000, "dataset": "imagenet-1k", "image_size": 224, "resize_size": 256}
    register(monkeypatch, entry(base + path.name, path.name, path.name[-12:-4], model="resnet18", **imagenet))
    model = create_model("resnet18", pretrained="test")
    assert_same_outputs(model, source, size=64)
    assert cached_files(home) == [f"weights/{path.name}"] and requests == [f"/{path.name}"]
    cfg = model.pretrained_cfg
    assert (cfg["tag"], cfg["source"], cfg["num_classes"], cfg["image_size"]) == (
        "resnet18.test",
        base + path.name,
        1000,
        224,
    )
    assert cfg["classes"][:2] == ["tench", "goldfish"] and cfg["mean"] == [0.5, 0.5, 0.5]
    again = create_model("resnet18", pretrained="resnet18.test")  # from the cache: no second request
    assert requests == [f"/{path.name}"]
    assert_same_outputs(again, source, size=64)


def test_a_file_in_torchs_cache_is_used_without_downloading(home, server, monkeypatch, tmp_path):
    base, requests = server
    source = tiny()
    torch_dir = tmp_path / "torch" / "hub" / "checkpoints"
    torch_dir.mkdir(parents=True)
    path = torchvision_file(torch_dir, "tiny", source.state_dict())
    register(monkeypatch, entry(base + path.name, path.name, path.name[-12:-4]))
    assert_same_outputs(create_model("cifar_resnet", pretrained="test"), source)
    assert requests == [] and cached_files(home) == []


def test_a_checksum_mismatch_is_refused_and_leaves_nothing_in_the_cache(home, server, monkeypatch, tmp_path):
    base, _ = server
    path = torchvision_file(tmp_path / "www", "tiny", tiny().state_dict())
    register(monkeypatch, entry(base + path.name, path.name, "0badc0de"))
    with pytest.raises(Error) as error:
        create_model("cifar_resnet", pretrained="test")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"checksum mismatch for {base}{path.name}: sha256 {sha256(path)}, expected 0badc0de"
    )
    assert cached_files(home) == [] and not home.exists()  # not even the folders it made


def test_a_file_in_the_cache_that_does_not_match_is_refused_before_loading(
    home, server, monkeypatch, tmp_path
):
    base, requests = server
    path = torchvision_file(tmp_path / "www", "tiny", tiny().state_dict())
    register(monkeypatch, entry(base + path.name, path.name, path.name[-12:-4]))
    (home / "weights").mkdir(parents=True)
    (home / "weights" / path.name).write_bytes(b"tampered")
    with pytest.raises(
        Error, match=r"checksum mismatch for cifar_resnet\.test: .* delete it and fetch it again"
    ):
        create_model("cifar_resnet", pretrained="test")
    assert (
        requests == [] and (home / "weights" / path.name).read_bytes() == b"tampered"
    )  # the user's file stays


def test_a_pickle_that_needs_code_is_refused_and_never_runs(home, server, monkeypatch, tmp_path):
    base, _ = server
    marker = tmp_path / "pwned"
    path = torchvision_file(tmp_path / "www", "evil", {"conv1.weight": Evil(marker)})
    prefix = path.name[-12:-6]  # a 6-digit prefix of the sha256 is checked as well as 8
    register(monkeypatch, entry(base + path.name, path.name, prefix))
    refusal = (
        r"refusing to load .*evil-\w+\.pth: it is a pickle that needs code to load \(it refers to \S*open\)"
    )
    with pytest.raises(Error, match=refusal):
        create_model("cifar_resnet", pretrained="test")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the same bytes do run code when unpickled plainly:
    assert marker.exists()  # proof that the test's exploit is real


def test_a_url_is_downloaded_by_its_name_and_its_hash_prefix_checked(home, server, tmp_path):
    base, requests = server
    source = tiny()
    path = torchvision_file(tmp_path / "www", "tiny", source.state_dict())
    model = create_model("cifar_resnet", **TINY, pretrained=base + path.name)
    assert_same_outputs(model, source)
    assert model.pretrained_cfg["source"] == base + path.name and model.pretrained_cfg["tag"] is None
    create_model("cifar_resnet", **TINY, pretrained=base + path.name)
    assert requests == [f"/{path.name}"] and cached_files(home) == [f"weights/{path.name}"]
    forged = tmp_path / "www" / "tiny-00000000.pth"
    forged.write_bytes(path.read_bytes())
    with pytest.raises(
        Error, match=r"checksum mismatch for .*tiny-00000000\.pth: sha256 \w+, expected 00000000"
    ):
        create_model("cifar_resnet", **TINY, pretrained=base + forged.name)
    assert cached_files(home) == [f"weights/{path.name}"]


def test_offline_names_the_url_the_file_and_the_folder_to_put_it_in(home, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}/models/tiny-12345678.pth"
    register(monkeypatch, entry(url, "tiny-12345678.pth", "12345678"))
    with pytest.raises(Error) as error:
        create_model("cifar_resnet", pretrained="test")
    message = str(error.value)
    assert "\n" not in message and "Connection refused" in message
    assert message.endswith(
        f"offline? fetch {url} by hand and save it as tiny-12345678.pth in {home / 'weights'}"
    )
    assert cached_files(home) == []


def test_a_hand_placed_registry_file_is_checked_against_the_entry(home, monkeypatch, tmp_path):
    source = tiny()
    path = torchvision_file(tmp_path, "tiny", source.state_dict())
    register(monkeypatch, entry("http://127.0.0.1:9/" + path.name, path.name, path.name[-12:-4]))
    model = create_model("cifar_resnet", pretrained=path)  # a local file that is a registry file
    assert model.pretrained_cfg["tag"] == "cifar_resnet.test" and model.pretrained_cfg["image_size"] == 16
    assert_same_outputs(model, source)
    os.truncate(path, path.stat().st_size - 1)
    with pytest.raises(Error, match="checksum mismatch"):
        create_model("cifar_resnet", pretrained=path)
