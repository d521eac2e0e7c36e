"""Checkpoints: safetensors weights with metadata, a safe train-state file, atomic replacement."""

from __future__ import annotations

import os
import pickle

import pytest
import safetensors.torch
import torch
from PIL import Image

from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.train.predict import predict
from resnetlab.weights import checkpoint as ckpt
from resnetlab.weights import load
from resnetlab.weights.checkpoint import (
    MODEL_FILE,
    STATE_FILE,
    inference_weights,
    latest_checkpoint,
    list_checkpoints,
    load_train_state,
    load_weights,
    save_checkpoint,
    save_weights,
)

META = {
    "model": "cifar_resnet",
    "model_kwargs": {"depth": 8},
    "num_classes": 10,
    "in_chans": 1,
    "classes": [f"c{i}" for i in range(10)],
}


def _model() -> torch.nn.Module:
    return create_model("cifar_resnet", depth=8, in_chans=1)


def _save(run_dir, step, model, note="x"):
    return save_checkpoint(
        run_dir,
        step,
        model=model.state_dict(),
        ema=None,
        meta=META,
        train_state={"note": note, "x": torch.ones(2)},
    )


def test_weights_round_trip_with_metadata_and_channels_last(tmp_path):
    model = _model().to(memory_format=torch.channels_last)
    save_weights(tmp_path / "w.safetensors", model.state_dict(), META)
    state, meta = load_weights(tmp_path / "w.safetensors")
    assert meta == META
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    rebuilt, _ = load(tmp_path / "w.safetensors")
    assert not rebuilt.training
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(rebuilt(x), model.eval()(x))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left


def test_checkpoint_replaces_the_previous_one(tmp_path):
    model = _model()
    first = _save(tmp_path, 10, model, "first")
    second = _save(tmp_path, 20, model, "second")
    assert list_checkpoints(tmp_path) == [second] and not first.exists()
    state = load_train_state(second)
    assert state["note"] == "second" and state["step"] == 20
    assert inference_weights(tmp_path) == second / MODEL_FILE


@pytest.mark.parametrize("fail_at", ["write", "rename"])
def test_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    model = _model()
    _save(tmp_path, 10, model, "good")
    before = load_weights(tmp_path / "checkpoint-00000010" / MODEL_FILE)[0]

    def crash(*args, **kwargs):
        raise OSError("disk full")

    if fail_at == "write":
        monkeypatch.setattr(ckpt.torch, "save", crash)  # dies after the weights, before the train state
    else:
        monkeypatch.setattr(ckpt.os, "replace", crash)  # every file written, the rename never happens
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 20, model, "lost")
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000010"]  # the temporary dir is gone
    good = latest_checkpoint(tmp_path)
    assert load_train_state(good)["note"] == "good"
    after = load_weights(good / MODEL_FILE)[0]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_corrupt_files_are_one_line_errors(tmp_path):
    model = _model()
    good = _save(tmp_path, 5, model)
    weights = good / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(Error, match="not a readable safetensors file"):
        load_weights(weights)
    (good / STATE_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(Error, match="corrupt or not a resnetlab train state"):
        load_train_state(good)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, plain)
    with pytest.raises(Error, match="no resnetlab metadata"):
        load_weights(plain)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Error, match="holds no checkpoint"):
        inference_weights(tmp_path / "empty")
    with pytest.raises(Error, match="does not exist"):
        inference_weights(tmp_path / "missing")


class _Boom:
    """Unpickling this runs os.system: the train-state loader must refuse it, not run it."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_hostile_train_state_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoint-00000001").mkdir()
    (tmp_path / "checkpoint-00000001" / STATE_FILE).write_bytes(pickle.dumps({"step": _Boom()}, protocol=2))
    with pytest.raises(Error, match="corrupt or not a resnetlab train state"):
        load_train_state(tmp_path / "checkpoint-00000001")
    assert not (tmp_path / "pwned").exists()


def test_weights_that_do_not_fit_the_model_are_an_error(tmp_path):
    save_weights(tmp_path / "w.safetensors", _model().state_dict(), {**META, "model_kwargs": {"depth": 14}})
    with pytest.raises(Error, match="do not fit cifar_resnet"):
        load(tmp_path / "w.safetensors")


def test_weights_without_the_metadata_predict_needs_are_an_error(tmp_path):
    save_weights(tmp_path / "w.safetensors", _model().state_dict(), META)  # no image size or statistics
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    with pytest.raises(
        Error, match="records no mean, std, image_size, resize_size; use the weights of a resnetlab run"
    ):
        predict(tmp_path / "w.safetensors", [tmp_path / "x.png"])
