"""Hostile and broken inputs outside exported files: a loopback server that misbehaves, broken
caches, odd image folders and bad flags. Each gets one line and exit 2 (or a clean recovery),
runs no code and loses nothing. Each test here failed before issue 23's fixes."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import pickle
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from cli_fixtures import assert_one_line, run
from loopback import serving
from resnetlab import create_model
from resnetlab.data import download as download_module
from resnetlab.data.folder import load_folder
from resnetlab.errors import Error
from resnetlab.weights.formats import read_checkpoint
from weights_fixtures import Evil, cached_files, entry, isolate_caches, register, tiny, torchvision_file


@pytest.fixture
def home(tmp_path, monkeypatch):
    return isolate_caches(tmp_path, monkeypatch)


@contextlib.contextmanager
def misbehaving_server(
    files: dict[str, bytes], *, cut_after: int | None = None, stall: float = 0.0
) -> Iterator[str]:
    """A loopback HTTP server for `files` that announces the whole Content-Length but closes the
    connection after `cut_after` bytes, or sends nothing for `stall` seconds first."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            if stall:
                time.sleep(stall)
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if cut_after is None else body[:cut_after])
            except (BrokenPipeError, ConnectionResetError):
                # The client gave up first (the stall test's timeout): expected, and not to be
                # printed into whichever test's stderr is being captured by then.
                pass
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    with serving(Handler) as url:
        yield url


def _registered_tiny(monkeypatch, tmp_path: Path, base: str) -> tuple[Path, bytes]:
    path = torchvision_file(tmp_path, "tiny", tiny().state_dict())
    register(monkeypatch, entry(base + path.name, path.name, None))  # no checksum: only the length tells
    return path, path.read_bytes()


# ---------------------------------------------------------------- 2. a cut-off download is not kept


def test_a_download_cut_off_halfway_leaves_nothing_and_the_next_call_downloads_cleanly(
    home, monkeypatch, tmp_path
):
    path = torchvision_file(tmp_path, "tiny", tiny().state_dict())
    body = path.read_bytes()
    with misbehaving_server({path.name: body}, cut_after=len(body) // 2) as base:
        register(monkeypatch, entry(base + path.name, path.name, None))
        with pytest.raises(Error, match=f"broke off after {len(body) // 2:,} of {len(body):,} bytes"):
            create_model("cifar_resnet", pretrained="test")
    assert cached_files(home) == []  # nothing under the final name, no temporary either
    with misbehaving_server({path.name: body}) as base:
        register(monkeypatch, entry(base + path.name, path.name, None))
        create_model("cifar_resnet", pretrained="test")
    assert cached_files(home) == [f"weights/{path.name}"]
    assert (home / "weights" / path.name).read_bytes() == body


# ---------------------------------------------------------------- 3. an unwritable cache is one line


def test_resnetlab_home_naming_a_file_is_one_line_naming_the_variable(home, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")
    with misbehaving_server({}) as base:
        register(monkeypatch, entry(base + "tiny-12345678.pth", "tiny-12345678.pth", None))
        line = assert_one_line(
            capsys,
            "weights",
            "download",
            "cifar_resnet.test",
            match=f"cannot write into {tmp_path / 'a-file' / 'weights'}",
        )
    assert "set RESNETLAB_HOME to a writable folder" in line
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_read_only_cache_is_one_line(home, monkeypatch, tmp_path):
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(download_module.os, "open", read_only)
    with misbehaving_server({}) as base:
        register(monkeypatch, entry(base + "tiny-12345678.pth", "tiny-12345678.pth", None))
        with pytest.raises(
            Error, match=r"cannot write into .*weights \(Read-only file system\); .*RESNETLAB_HOME"
        ):
            create_model("cifar_resnet", pretrained="test")


# ---------------------------------------------------------------- 4. smaller things


def test_a_raw_pickle_that_needs_code_is_called_that_not_corrupt(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"conv1.weight": Evil(marker)}, protocol=4))
    with pytest.raises(Error, match=r"needs code to load \(it refers to io.open\)"):
        read_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"conv1.weight": torch.zeros(1)}, protocol=4)[:20])
    with pytest.raises(Error, match="truncated or corrupt"):
        read_checkpoint(path)


def test_safetensors_metadata_that_is_not_json_names_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(2)}, path, metadata={"resnetlab": "{not json"})
    with pytest.raises(Error, match=r"w\.safetensors: its 'resnetlab' metadata is not JSON"):
        read_checkpoint(path)


def test_cached_files_follow_the_umask_so_a_shared_cache_is_readable(home, monkeypatch, tmp_path):
    previous = os.umask(0o022)
    try:
        with misbehaving_server({}) as base:
            path, body = _registered_tiny(monkeypatch, tmp_path, base)
        with misbehaving_server({path.name: body}) as base:
            register(monkeypatch, entry(base + path.name, path.name, None))
            create_model("cifar_resnet", pretrained="test")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((home / "weights" / path.name).stat().st_mode) == 0o644


def test_the_stall_timeout_comes_from_the_environment(home, monkeypatch, tmp_path):
    path = torchvision_file(tmp_path, "tiny", tiny().state_dict())
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_TIMEOUT", "0.3")
    with misbehaving_server({path.name: path.read_bytes()}, stall=3) as base:
        register(monkeypatch, entry(base + path.name, path.name, None))
        start = time.monotonic()
        with pytest.raises(Error, match="timed out"):
            create_model("cifar_resnet", pretrained="test")
        assert time.monotonic() - start < 2.5  # the default would wait 30 s
    monkeypatch.setenv("RESNETLAB_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(Error, match="RESNETLAB_DOWNLOAD_TIMEOUT='soon': give the seconds"):
        create_model("cifar_resnet", pretrained="test")
    assert cached_files(home) == []


# ---------------------------------------------------------------- 10-12. image folders


def _folder(root: Path, classes: dict[str, list[tuple[int, int, int]]]) -> Path:
    for name, colours in classes.items():
        (root / name).mkdir(parents=True)
        for i, colour in enumerate(colours):
            Image.new("RGB", (20, 16), colour).save(root / name / f"{i}.png")
    return root


def test_a_channel_with_no_spread_is_floored_and_trains_finite(tmp_path, capsys):
    # Blue is 77 in every image: its std is 0, and dividing by it sent training to NaN.
    from resnetlab.data.arrays import MIN_STD

    rng = np.random.default_rng(0)
    colours = {c: [(int(rng.integers(256)), int(rng.integers(256)), 77) for _ in range(12)] for c in "ab"}
    root = _folder(tmp_path / "photos", colours)
    assert load_folder(root, "train").std[2] == MIN_STD
    out = tmp_path / "run"
    code, _, err = run(
        capsys, "train", "--data", f"imagefolder:{root}", "--image-size", "16", "--batch-size", "8",
        "--max-steps", "3", "--val-size", "0", "--no-progress", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    assert "channel(s) 2 of imagefolder:" in err
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["std_floored_channels"] == [2] and config["dataset"]["std_floor"] == MIN_STD
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert losses and all(np.isfinite(losses))


def test_a_folder_with_one_class_is_refused(tmp_path, capsys):
    root = _folder(tmp_path / "photos", {"cats": [(10, 20, 30)] * 6, "empty": []})
    assert_one_line(capsys, "train", "--data", f"imagefolder:{root}", match="images of 1 class (cats)")


def test_symlink_loops_are_read_once_and_said_once(tmp_path):
    root = _folder(tmp_path / "photos", {"a": [(1, 2, 3)] * 3, "b": [(4, 5, 6)] * 2})
    for name in ("up", "again"):  # two links back to the root: 2^depth paths for a plain os.walk
        (root / "a" / name).symlink_to(root, target_is_directory=True)
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)
    script = (
        "from resnetlab.data.folder import load_folder; import sys; "
        "d = load_folder(sys.argv[1], 'train'); print(len(d), sorted(d.labels.tolist()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    # a/ holds its 3 images and b/ its 2: a/again is the root (its a/ and b/ are class folders,
    # read as their own classes), a/up the root again, b/self b/ again.
    assert done.stdout.strip() == "5 [0, 0, 0, 1, 1]", done.stdout
    warnings = [line for line in done.stderr.splitlines() if "reached again through symbolic links" in line]
    assert len(warnings) == 1, done.stderr


# ---------------------------------------------------------------- 13-15. flags and files left behind


@pytest.mark.parametrize(
    "command", [["eval", "resnet20.fmnist"], ["export", "resnet20.fmnist", "--out", "x.onnx"]]
)
def test_a_missing_data_dir_is_refused_by_every_command(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert_one_line(capsys, *command, "--data-dir", str(tmp_path / "nosuch"), match="is not a directory")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_non_finite_float_flag_is_refused_up_front(capsys, value):
    code, _, err = run(capsys, "train", f"--head-lr-mult={value}", "--max-steps", "1")
    assert code == 2 and "--head-lr-mult: expected FLOAT" in err and len(err.strip().splitlines()) == 1


def test_a_non_finite_float_is_refused_by_the_python_api_too():
    import dataclasses

    from resnetlab.train import fit, get_recipe

    cfg = dataclasses.replace(get_recipe("fast"), head_lr_mult=float("inf"), max_steps=1)
    with pytest.raises(Error, match="--head-lr-mult must be a finite number"):
        fit(cfg)


def test_eval_of_a_tag_writes_no_file_unless_asked(tmp_path, capsys, monkeypatch):
    import importlib

    evaluate = importlib.import_module("resnetlab.train.eval_source")  # the module behind `resnetlab eval`
    whole = evaluate.load_dataset
    # The first 500 test images are enough to tell where the figure goes.
    monkeypatch.setattr(evaluate, "load_dataset", lambda *a, **k: whole(*a, **k).subset(torch.arange(500)))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "eval", "resnet20.fmnist")
    assert code == 0, err
    assert list(tmp_path.iterdir()) == [] and "confusion matrix: not drawn" in out
    code, out, err = run(capsys, "eval", "resnet20.fmnist", "--figure", str(tmp_path / "c.png"))
    assert code == 0 and (tmp_path / "c.png").is_file(), err
