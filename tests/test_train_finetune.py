"""Fine-tuning: --init-from each kind of source, the head and the first conv adapted, frozen parts
bit-identical with BN statistics untouched, the optimizer's groups, exact resume, error paths."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loopback import QuietFiles, serving
from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.errors import Error
from resnetlab.train import TrainConfig, fit, get_recipe
from resnetlab.weights import Preprocessing
from resnetlab.weights import source_model as weights_model
from resnetlab.weights.checkpoint import MODEL_FILE, latest_checkpoint, load_train_state, load_weights
from resnetlab.weights.preprocessing import follow_weights
from run_fixtures import assert_same_weights, fit_stopped_at_step

# The source: a 4-block CIFAR ResNet trained briefly on 10-class, 1-channel Fashion-MNIST.
SOURCE = TrainConfig(
    model="cifar_resnet",
    model_kwargs={"depth": 8},
    train_subset=512,
    val_size=0,
    eval_splits=(),
    batch_size=64,
    epochs=1,
    progress=False,
)
FROZEN = ("conv1.", "bn1.", "layer1.")  # what --freeze layer1 covers


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("source") / "run"
    fit(dataclasses.replace(SOURCE, out=str(run_dir)))
    return run_dir


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes of RGB pictures (stripes at three angles), 12 each, in class folders only."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:36, :36]
    for label, name in enumerate(("flat", "steep", "tilted")):
        (root / name).mkdir()
        for i in range(12):
            stripes = np.sin([yy, xx, xx + yy][label] / 2.0 + i) > 0
            pixels = rng.integers(0, 60, (36, 36, 3), dtype=np.uint8)
            pixels[stripes] += np.uint8(150)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _train(*argv: str) -> int:
    return main(["train", "--no-progress", "--workers", "0", *argv])


def test_fine_tuning_a_run_on_a_folder_trains_evaluates_predicts_and_keeps_frozen_parts(
    source, folder, tmp_path, capsys
):
    out = tmp_path / "ft"
    flags = ["--init-from", str(source), "--data", f"imagefolder:{folder}", "--freeze", "layer1"]
    assert _train(*flags, "--head-lr-mult", "10", "--epochs", "3", "--ema-decay", "0", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert "final: val accuracy" in captured.out
    assert "--freeze layer1: conv1, bn1, maxpool, layer1 frozen" in captured.err
    config = json.loads((out / "config.json").read_text())
    # No --model or --recipe given: the weights' model, and the finetune recipe.
    assert config["config"]["model"] == "cifar_resnet" and config["config"]["lr"] == get_recipe("finetune").lr
    assert config["dataset"]["normalization"] == "weights"
    assert config["dataset"]["init_from"]["source"].startswith(str(source))
    assert config["dataset"]["image_size"] == 28  # a folder is cropped as the weights were trained

    tuned, meta = load_weights(latest_checkpoint(out) / MODEL_FILE)
    original, source_meta = load_weights(latest_checkpoint(source) / MODEL_FILE)
    assert meta["mean"] == source_meta["mean"] * 3  # 1-channel statistics for the adapted stem
    assert tuned["fc.weight"].shape == (3, 64) and tuned["conv1.weight"].shape[1] == 3
    # The adapted stem is what create_model(pretrained=...) makes; frozen, it never moved.
    adapted = create_model("cifar_resnet", depth=8, pretrained=str(source), num_classes=3, in_chans=3)
    assert torch.equal(tuned["conv1.weight"], adapted.conv1.weight)
    for key, value in original.items():
        if key.startswith(FROZEN) and key != "conv1.weight":
            assert torch.equal(tuned[key], value), key  # weights and BN statistics, bit for bit
        elif key.startswith("layer2.") and value.is_floating_point():
            assert not torch.equal(tuned[key], value), key  # what was not frozen did train

    state = load_train_state(latest_checkpoint(out))
    groups = state["optimizer"]["param_groups"]
    held = sum(len(group["params"]) for group in groups)
    model = create_model("cifar_resnet", depth=8, num_classes=3, in_chans=3)
    frozen = sum(name.startswith(FROZEN) for name, _ in model.named_parameters())
    assert held == len(list(model.parameters())) - frozen  # no frozen tensor in the optimizer
    head_lrs = {group["lr"] for group in groups if group.get("lr_mult") == 10.0}
    body_lrs = {group["lr"] for group in groups if "lr_mult" not in group}
    assert len(head_lrs) == len(body_lrs) == 1 and head_lrs.pop() == pytest.approx(10 * body_lrs.pop())

    assert main(["eval", str(out)]) == 0
    assert "val (7 images): top-1 error" in capsys.readouterr().out
    assert main(["predict", str(out), str(folder / "steep" / "0.png"), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.split(": ")[1].split()[0] in ("flat", "steep", "tilted")


def test_every_kind_of_source_gives_the_same_start(source, tmp_path):
    weights_file = latest_checkpoint(source) / MODEL_FILE
    assert weights_model(str(source)) == weights_model(str(weights_file)) == "cifar_resnet"
    assert weights_model("resnet50.tv2_in1k") == "resnet50"
    starts = []
    for init in (str(source), str(weights_file)):
        cfg = dataclasses.replace(SOURCE, init_from=init, max_steps=1, train_subset=64, freeze="head-only")
        starts.append(fit(cfg).model.state_dict())
    assert all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
    # head-only: only fc moved in one step; the body is the source's exactly
    original = load_weights(weights_file)[0]
    assert all(torch.equal(starts[0][k], v) for k, v in original.items() if not k.startswith("fc."))
    assert not torch.equal(starts[0]["fc.weight"], original["fc.weight"])


def test_a_shipped_registry_tag_starts_a_fine_tuning_run_on_an_rgb_folder(folder, tmp_path, capsys):
    """--init-from resnet20.fmnist: the 1-channel Fashion-MNIST net starts a 3-class RGB run."""
    out = tmp_path / "ft-tag"
    argv = ["--init-from", "resnet20.fmnist", "--data", f"imagefolder:{folder}", "--freeze", "layer1"]
    assert _train(*argv, "--epochs", "1", "--ema-decay", "0", "--out", str(out)) == 0
    assert "--freeze layer1: conv1, bn1, maxpool, layer1 frozen" in capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["model"] == "resnet20"
    assert config["dataset"]["init_from"]["tag"] == "resnet20.fmnist"
    tuned = load_weights(latest_checkpoint(out) / MODEL_FILE)[0]
    shipped = create_model("resnet20", pretrained="resnet20.fmnist").state_dict()
    assert tuned["fc.weight"].shape == (3, 64) and tuned["conv1.weight"].shape == (16, 3, 3, 3)
    # the grey stem is spread over the three colours, 1/3 each, and stayed frozen
    assert torch.allclose(tuned["conv1.weight"], shipped["conv1.weight"].expand(-1, 3, -1, -1) / 3)
    assert torch.equal(tuned["layer1.0.bn1.running_mean"], shipped["layer1.0.bn1.running_mean"])
    assert not torch.equal(tuned["layer3.0.conv1.weight"], shipped["layer3.0.conv1.weight"])
    assert main(["predict", str(out), str(folder / "flat" / "0.png"), "--top-k", "1"]) == 0


def test_a_fine_tuning_run_resumes_exactly(source, tmp_path, monkeypatch):
    cfg = dataclasses.replace(
        get_recipe("finetune"),
        model="cifar_resnet",
        init_from=str(source),
        freeze="stem",
        train_subset=256,
        val_size=64,
        eval_splits=("val",),
        epochs=2,
        checkpoint_every=3,
        log_every=3,  # train records aligned with checkpoints, so the resumed ones average the same steps
        ema_decay=0.9,
        deterministic=True,
        progress=False,
    )
    whole = fit(dataclasses.replace(cfg, out=str(tmp_path / "whole")))
    broken = dataclasses.replace(cfg, out=str(tmp_path / "broken"))
    fit_stopped_at_step(monkeypatch, broken, 8)  # killed mid-epoch, after the checkpoint at step 6
    assert latest_checkpoint(tmp_path / "broken").name == "checkpoint-00000006"
    resumed = fit(broken, resume=True)
    assert_same_weights(whole.model, resumed.model)
    strip = [{k: v for k, v in r.items() if k != "img_per_s"} for r in whole.history]
    assert [{k: v for k, v in r.items() if k != "img_per_s"} for r in resumed.history] == strip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--init-from", "resnet20.nosuchtag"], "unknown weights 'resnet20.nosuchtag'"),
        (["--init-from", "/no/such/weights.safetensors"], "/no/such/weights.safetensors does not exist"),
        (["--init-from", "http://127.0.0.1:9/w.safetensors", "--model", "resnet20"], "127.0.0.1:9"),
        (["--freeze", "layer9"], "this model's stages are layer1, layer2, layer3"),
        (["--freeze", "body"], "--freeze takes none, stem, layerK"),
        (["--normalize", "weights"], "--normalize weights needs --init-from"),
        (["--head-lr-mult", "0"], "--head-lr-mult must be positive"),
    ],
)
def test_bad_sources_and_flags_are_one_line_errors(argv, message, tmp_path, capsys):
    tiny = ["--train-subset", "64", "--batch-size", "32", "--max-steps", "1", "--out", str(tmp_path / "r")]
    assert _train(*argv, *tiny) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_weights_of_another_model_are_refused(source, tmp_path, capsys):
    argv = [
        "--init-from",
        str(source),
        "--model",
        "resnet20",
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "r"),
    ]
    assert _train(*argv) == 2
    assert "holds cifar_resnet weights, not resnet20" in capsys.readouterr().err
    data = Preprocessing((0.5,), (0.25,), 28, 28, in_chans=1)
    with pytest.raises(Error, match="x records no mean and std"):
        follow_weights(
            data, replace(data, mean=None, std=None), normalize="weights", resizable=False, source="x"
        )


def test_a_url_source_downloads_once_and_starts_where_the_file_does(source, tmp_path, monkeypatch):
    """--init-from URL, served on loopback: the run starts from the file's weights."""
    monkeypatch.setenv("RESNETLAB_HOME", str(tmp_path / "home"))
    served = latest_checkpoint(source)
    with serving(functools.partial(QuietFiles, directory=str(served))) as base:
        url = base + MODEL_FILE
        assert weights_model(url) is None  # not in the registry: --model says which
        cfg = dataclasses.replace(SOURCE, init_from=url, freeze="head-only", max_steps=1, train_subset=64)
        result = fit(cfg)
    original = load_weights(served / MODEL_FILE)[0]
    state = result.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.items() if not k.startswith("fc."))
    assert list((tmp_path / "home" / "weights").rglob("*.safetensors"))  # kept in the cache
