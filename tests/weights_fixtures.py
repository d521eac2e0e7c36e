"""Shared by the pretrained-weights tests: a loopback HTTP server, test entries, torchvision-style files."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import socket
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from loopback import serving
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


def isolate_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $RESNETLAB_HOME, $TORCH_HOME and the Hugging Face cache into tmp_path; returns the
    resnetlab home."""
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "home"


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving `root`: (base URL, list of the paths requested)."""
    root.mkdir(exist_ok=True)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    with serving(functools.partial(Handler, directory=str(root))) as url:
        yield url, requests


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


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 16, in_chans: int = 3) -> None:
    """Bit-equal logits of two models on one random batch (N=2, in_chans, size, size)."""
    x = torch.randn(2, in_chans, size, size)
    torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def cached_files(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()) if home.exists() else []


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
