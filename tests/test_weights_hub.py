"""`hf-hub:ORG/NAME`: a Hub repository fetched through huggingface_hub from a loopback server that
answers as the Hub does (HEAD then GET of /ORG/NAME/resolve/REV/FILE, the commit and ETag
headers, LFS files named by their sha256), cached, verified and loaded."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import safetensors.torch
import torch
from PIL import Image

from loopback import serving
from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import Error
from resnetlab.export.hub import export_hf
from resnetlab.weights import get_weights
from resnetlab.weights import source_model as weights_model
from resnetlab.weights.cache import cached_path
from test_weights_hf import CLASSES, resnet18_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@contextlib.contextmanager
def online_hub(
    repos: dict[str, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    lie_about: set[str] = frozenset(),
) -> Iterator[None]:
    """The Hub, online, holding `repos` ({"org/name": {file: bytes}}) on loopback, with the Hugging
    Face cache at `cache`; files in `lie_about` get an ETag of other bytes."""

    class Hub(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            repo, data = "/".join(parts[:2]), None
            known_revision = len(parts) == 5 and parts[3] in ("main", COMMIT)
            if len(parts) == 5 and parts[2] == "resolve" and known_revision:
                data = repos.get(repo, {}).get(parts[4])
            if data is None:
                self.send_response(404)
                code = "RepoNotFound" if repo not in repos else "EntryNotFound"
                self.send_header("X-Error-Code", code if known_revision else "RevisionNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            if parts[4].endswith(".safetensors"):  # LFS: the ETag is the sha256 of the content
                named = data + b"!" if parts[4] in lie_about else data
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(named).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *args: object) -> None:
            pass

    with serving(Hub) as url:
        monkeypatch.setenv("HF_ENDPOINT", url.rstrip("/"))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[tuple[dict[str, dict[str, bytes]], torch.nn.Module]]:
    """A Hub holding org/zoo (a resnet18 of 5 classes, written by `export --format hf`), with the
    Hugging Face cache in tmp_path."""
    weights, model = resnet18_weights(tmp_path / "r18.safetensors")
    folder = export_hf(str(weights), tmp_path / "zoo")
    repos = {"org/zoo": {p.name: p.read_bytes() for p in folder.iterdir()}}
    with online_hub(repos, monkeypatch, tmp_path / "hf-cache"):
        yield repos, model.eval()


def test_a_hub_repository_loads_once_then_offline_from_the_cache(hub, tmp_path, monkeypatch):
    _, model = hub
    x = torch.randn(2, 3, 64, 64)
    loaded = create_model("hf-hub:org/zoo", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    cfg = loaded.pretrained_cfg
    assert cfg["source"] == "hf-hub:org/zoo" and cfg["classes"] == CLASSES and cfg["resize_size"] == 73
    snapshot = tmp_path / "hf-cache" / "models--org--zoo" / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors"]  # no card
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing answers there
    again = create_model("resnet18", pretrained="hf-hub:org/zoo").eval()
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert weights_model("hf-hub:org/zoo") == "resnet18"  # what `train --init-from` builds


def test_predict_and_export_take_a_hub_repository(hub, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (80, 70), (200, 120, 40)).save(image)
    assert main(["predict", "--weights", "hf-hub:org/zoo", str(image), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count("%") == 2
    assert main(["export", "hf-hub:org/zoo", "--format", "hf", "--out", str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "model.safetensors").read_bytes() == hub[0]["org/zoo"]["model.safetensors"]


def test_weights_that_do_not_hash_to_the_published_sha256_are_refused_and_dropped(tmp_path, monkeypatch):
    weights, _ = resnet18_weights(tmp_path / "r18.safetensors")
    folder = export_hf(str(weights), tmp_path / "zoo")
    repos = {"org/zoo": {p.name: p.read_bytes() for p in folder.iterdir()}}
    with (
        online_hub(repos, monkeypatch, tmp_path / "hf-cache", lie_about={"model.safetensors"}),
        pytest.raises(Error, match="does not match the sha256 the Hub published"),
    ):
        create_model("hf-hub:org/zoo", pretrained=True)
    blobs = [p.name for p in (tmp_path / "hf-cache").rglob("blobs/*")]
    assert len(blobs) == 1 and len(blobs[0]) == 40  # the config (a git hash) stays; the weights are gone


@pytest.mark.parametrize(
    "source, message",
    [
        ("hf-hub:org/none", "no such repository"),
        ("hf-hub:org/zoo@v9", "cannot fetch config.json of hf-hub:org/zoo@v9"),
        ("hf-hub:../etc", "give hf-hub:ORG/NAME"),
        ("hf-hub:justaname", "give hf-hub:ORG/NAME"),
    ],
)
def test_bad_repositories_are_one_line(hub, tmp_path, capsys, source, message):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--weights", source, str(image)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_offline_and_not_cached_is_one_line(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["predict", "--weights", "hf-hub:org/zoo", str(image)]) == 2
    err = capsys.readouterr().err
    assert "not in the Hugging Face cache, and the Hub cannot be reached" in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match="give pretrained=True"):
        create_model("hf-hub:org/zoo")
    assert not (Path(tmp_path) / "hf-cache" / "models--org--zoo" / "snapshots").exists()


def test_a_timm_table_tag_comes_through_the_hub_checked_with_its_config(tmp_path, monkeypatch):
    """resnet18d.ra2_in1k, as timm's Hub repository holds it (deep stem conv1.0/.1/.3/.4/.6,
    downsample.1/.2; config.json with the preprocessing), served on loopback: the tag loads
    strictly, then a grey 10-class model from it adapts the stem by timm's rule."""
    torch.manual_seed(0)
    source = create_model("resnet18d").eval()
    assert {"conv1.0.weight", "conv1.6.weight", "layer2.0.downsample.1.weight"} <= set(source.state_dict())
    config = {"architecture": "resnet18d", "num_classes": 1000, "pretrained_cfg": {
        "input_size": [3, 224, 224], "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}  # fmt: skip
    files = {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors.torch.save(source.state_dict()),
    }
    with online_hub({"timm/resnet18d.ra2_in1k": files}, monkeypatch, tmp_path / "hf-cache"):
        assert cached_path(get_weights("resnet18d.ra2_in1k")) is None
        model = create_model("resnet18d", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    cfg = model.pretrained_cfg
    assert (cfg["source"], cfg["tag"]) == ("hf-hub:timm/resnet18d.ra2_in1k", "resnet18d.ra2_in1k")
    assert (cfg["resize_size"], cfg["interpolation"]) == (256, "bicubic") and cfg["classes"][0] == "tench"
    assert cached_path(get_weights("resnet18d.ra2_in1k")).name == "model.safetensors"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # from the cache now
    grey = create_model("resnet18d", pretrained="ra2_in1k", in_chans=1, num_classes=10)
    torch.testing.assert_close(grey.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True))
    assert grey.pretrained_cfg["mean"] == [pytest.approx((0.485 + 0.456 + 0.406) / 3)]
    kept = {k: v for k, v in source.state_dict().items() if not k.startswith(("fc.", "conv1.0."))}
    assert all(torch.equal(grey.state_dict()[k], v) for k, v in kept.items())


def test_a_timm_table_tag_whose_bytes_do_not_match_the_hubs_sha256_is_refused(tmp_path, monkeypatch):
    source = create_model("resnet18d")
    files = {
        "config.json": b'{"architecture": "resnet18d"}',
        "model.safetensors": safetensors.torch.save(source.state_dict()),
    }
    repos = {"timm/resnet18d.ra2_in1k": files}
    with (
        online_hub(repos, monkeypatch, tmp_path / "hf-cache", lie_about={"model.safetensors"}),
        pytest.raises(Error, match="does not match the sha256 the Hub published"),
    ):
        create_model("resnet18d", pretrained="ra2_in1k")
