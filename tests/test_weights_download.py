"""Downloading pretrained weights from a loopback HTTP server: cache, checksums, refusals, offline."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import safetensors.torch
import torch

from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.weights import registry
from resnetlab.weights.entry import Metrics, WeightsEntry

TINY = {"depth": 8, "shortcut": "B"}  # torchvision's key layout in a 78k-parameter net


class Evil:
    """Unpickling this would create `marker`: the loader must refuse it, not run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return open, (self.marker, "w")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home"


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, list of paths requested)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def torchvision_file(folder: Path, stem: str, state: dict[str, torch.Tensor]) -> Path:
    """A zip torch.save of `state` named `<stem>-<first 8 hex digits of its sha256>.pth`, as torchvision's."""
    tmp = folder / f"{stem}.tmp"
    torch.save(state, tmp)
    path = folder / f"{stem}-{sha256(tmp)[:8]}.pth"
    tmp.rename(path)
    return path


def entry(
    url: str, file_name: str, sha: str | None, *, model: str = "cifar_resnet", **changes
) -> WeightsEntry:
    fields = dict(
        model=model,
        tag="test",
        url=url,
        file_name=file_name,
        sha256=sha,
        format="pth",
        num_params=0,
        num_classes=10,
        in_chans=3,
        dataset="fashion-mnist",
        image_size=16,
        resize_size=18,
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        metrics=Metrics("fashion-mnist test", None, None, "not measured (a test file)"),
        license="MIT",
        model_kwargs=TINY if model == "cifar_resnet" else {},
    )
    return WeightsEntry(**{**fields, **changes})


def register(monkeypatch, *entries: WeightsEntry) -> None:
    monkeypatch.setattr(registry, "ENTRIES", (*registry.ENTRIES, *entries))
    monkeypatch.setattr(registry, "_BY_NAME", {**registry._BY_NAME, **{e.name: e for e in entries}})


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cifar_resnet", **TINY).eval()


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 16) -> None:
    x = torch.randn(2, 3, size, size)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def cached_files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) if home.exists() else []


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


def test_a_timm_safetensors_file_loads_with_its_config_json(home, server, monkeypatch, tmp_path):
    base, requests = server
    source = tiny()
    repo = tmp_path / "www" / "timm" / "tiny.test"
    repo.mkdir(parents=True)
    safetensors.torch.save_file(source.state_dict(), repo / "model.safetensors", metadata={"format": "pt"})
    config = {"architecture": "tiny", "num_classes": 10, "pretrained_cfg": {
        "input_size": [3, 160, 160], "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4]}}  # fmt: skip
    (repo / "config.json").write_text(json.dumps(config))
    url = base + "timm/tiny.test/"
    register(monkeypatch, entry(url + "model.safetensors", "timm/cifar_resnet.test/model.safetensors", None,
        format="safetensors", config_url=url + "config.json", image_size=None, resize_size=None,
        interpolation=None, mean=None, std=None))  # fmt: skip
    model = create_model("cifar_resnet", pretrained=True)  # the only cifar_resnet entry: its default
    assert_same_outputs(model, source)
    cfg = model.pretrained_cfg
    assert (cfg["image_size"], cfg["resize_size"], cfg["interpolation"]) == (160, 168, "bicubic")  # 160/0.95
    assert (cfg["mean"], cfg["std"]) == ([0.4, 0.5, 0.6], [0.2, 0.3, 0.4])
    assert cached_files(home) == [
        "weights/timm/cifar_resnet.test/config.json",
        "weights/timm/cifar_resnet.test/model.safetensors",
    ]
    create_model("cifar_resnet", pretrained="test")
    assert len(requests) == 2


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


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
