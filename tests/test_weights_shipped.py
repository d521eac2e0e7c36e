"""resnetlab's own Fashion-MNIST weights: shipped in the package, offline, at their recorded accuracy."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.data import load_dataset
from resnetlab.train.ship import _as_typed, ship, table_entry
from resnetlab.weights import list_weights, table
from resnetlab.weights.cache import SHIPPED_DIR, sha256sum
from resnetlab.weights.checkpoint import save_checkpoint
from weights_fixtures import isolate_caches

SHIPPED = [e for e in list_weights() if e.shipped]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty caches and no network: any download attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a shipped weights file was downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return isolate_caches(tmp_path, monkeypatch)


def test_resnet20_fmnist_ships_and_loads_offline(offline):
    assert "resnet20.fmnist" in {e.name for e in SHIPPED}
    model = create_model("resnet20", pretrained="fmnist")
    cfg = model.pretrained_cfg
    assert (cfg["tag"], cfg["num_classes"], cfg["in_chans"], cfg["image_size"]) == (
        "resnet20.fmnist",
        10,
        1,
        28,
    )
    assert cfg["classes"] == list(load_dataset("fashion-mnist", "test").classes)
    assert (
        cfg["source"] == str(SHIPPED_DIR / "resnet20-fmnist.safetensors") and cfg["data"] == "fashion-mnist"
    )
    assert create_model("resnet20", pretrained=True).pretrained_cfg["tag"] == "resnet20.fmnist"  # the default
    assert not offline.exists()  # nothing was cached


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_files_match_their_entries(entry):
    path = SHIPPED_DIR / entry.file_name
    assert sha256sum(path) == entry.sha256 and len(entry.sha256) == 64
    assert (
        entry.url is None
        and entry.license.startswith("MIT")
        and entry.metrics.dataset == "fashion-mnist test"
    )
    # the command that trained it: the benchmark, or the `resnetlab train` it started
    assert "python -m benchmarks.time_to_accuracy" in entry.notes or "resnetlab train --recipe" in entry.notes
    assert entry.size_mb == round(path.stat().st_size / 2**20, 2)
    model = create_model(entry.model, pretrained=entry.name)
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    assert model.pretrained_cfg["mean"] == list(entry.mean) and model.pretrained_cfg["std"] == list(entry.std)


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_weights_reach_their_recorded_accuracy_on_the_real_test_set(entry, offline, capsys, tmp_path):
    assert main(["eval", entry.name, "--device", "cpu", "--figure", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    top1, top5 = map(float, re.search(r"top-1 error ([\d.]+)%, top-5 error ([\d.]+)%", out).groups())
    assert "(10000 images)" in out
    assert abs((100 - top1) - entry.metrics.acc1) <= 0.05
    assert f"{entry.name} records top-1 accuracy {entry.metrics.acc1}% on fashion-mnist test" in out
    assert abs((100 - top5) - entry.metrics.acc5) <= 0.05


def test_predict_with_the_shipped_weights_names_fashion_classes(offline, tmp_path, capsys):
    test = load_dataset("fashion-mnist", "test")
    Image.fromarray(test.images[0, 0].numpy()).save(tmp_path / "0.png")
    assert main(["predict", "--weights", "resnet20.fmnist", str(tmp_path / "0.png"), "--device", "cpu"]) == 0
    ranked = capsys.readouterr().out.split(": ", 1)[1]
    assert ranked.count("%") == 5 and ranked.startswith(test.classes[int(test.labels[0])])  # an ankle boot


def test_ship_writes_a_runs_inference_weights_with_the_entry_facts(tmp_path):
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=8, in_chans=1)
    meta = {"model": "cifar_resnet", "model_kwargs": {"depth": 8}, "num_classes": 10, "in_chans": 1}
    meta.update(mean=[0.25], std=[0.5])
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, 7, model=model.state_dict(), ema=model.state_dict(), meta=meta, train_state={})
    command = ["/x/benchmarks/time_to_accuracy.py", "--model", "cifar_resnet"]
    config = {
        "config": {"model": "cifar_resnet"},
        "command": command,
        "environment": {"git": {"commit": "abc"}},
    }
    (run / "config.json").write_text(json.dumps(config))
    facts = ship(run, "cifar_resnet.tiny", tmp_path / "out")
    path = tmp_path / "out" / "cifar_resnet-tiny.safetensors"
    assert facts["file"] == str(path) and facts["sha256"] == sha256sum(path)
    assert facts["num_params"] == sum(p.numel() for p in model.parameters())
    assert facts["trained_by"] == "python -m benchmarks.time_to_accuracy --model cifar_resnet"
    text = table_entry("cifar_resnet.tiny", facts, 91.234, 99.5)
    assert max(map(len, text.splitlines())) <= 110  # pastes into table.py within the line length
    made = eval(text.strip().rstrip(","), vars(table))  # the entry as table.py would build it
    assert (made.name, made.file_name, made.sha256, made.num_params) == (
        "cifar_resnet.tiny",
        "cifar_resnet-tiny.safetensors",
        facts["sha256"],
        facts["num_params"],
    )
    assert (made.metrics.acc1, made.metrics.acc5, made.mean, made.std) == (91.23, 99.5, (0.25,), (0.5,))
    assert made.notes == "trained by python -m benchmarks.time_to_accuracy --model cifar_resnet"
    assert made.shipped and made.default and made.url is None
    loaded = create_model("cifar_resnet", pretrained=path)
    cfg = loaded.pretrained_cfg
    assert (
        cfg["tag"] == "cifar_resnet.tiny"
        and cfg["ema"] is True
        and cfg["train_config"] == {"model": "cifar_resnet"}
    )
    assert cfg["code"] == {"commit": "abc"} and cfg["step"] == 7


@pytest.mark.parametrize(
    ("argv0", "typed"),
    [
        ("/x/benchmarks/time_to_accuracy.py", "python -m benchmarks.time_to_accuracy"),
        ("/venv/lib/site-packages/resnetlab/__main__.py", "resnetlab"),  # python -m resnetlab
        ("/venv/bin/resnetlab", "resnetlab"),
    ],
)
def test_ship_records_the_training_command_as_typed(argv0, typed):
    assert _as_typed([argv0, "train", "--seed", "0"]) == f"{typed} train --seed 0"
    assert _as_typed([]) is None
