"""The run directory: never overwritten by accident, config round trip, records, curves, TensorBoard."""

from __future__ import annotations

import dataclasses
import json

import pytest

from resnetlab.errors import Error
from resnetlab.train import TrainConfig, get_recipe
from resnetlab.train import rundir as rundir_module
from resnetlab.train.rundir import (
    Recorder,
    plot_curves,
    prepare_run_dir,
    read_config,
    read_metrics,
    write_config,
)


def test_an_existing_directory_is_only_replaced_when_asked(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run, overwrite=False)  # new: created
    write_config(run, TrainConfig(), dataset={})
    with pytest.raises(Error, match="already exists; pass --overwrite"):
        prepare_run_dir(run, overwrite=False)
    prepare_run_dir(run, overwrite=True)
    assert list(run.iterdir()) == []
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(Error, match="not a resnetlab run directory; refusing to delete it"):
        prepare_run_dir(tmp_path / "home", overwrite=True)
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(Error, match="is a file"):
        prepare_run_dir(tmp_path / "file", overwrite=True)


def test_config_json_round_trips_and_records_the_environment(tmp_path):
    cfg = dataclasses.replace(get_recipe("paper-cifar"), model_kwargs={"norm": "none"}, out=str(tmp_path))
    write_config(tmp_path, cfg, dataset={"train_examples": 45000})
    assert read_config(tmp_path) == cfg  # tuples come back as tuples
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["dataset"] == {"train_examples": 45000}
    assert {"torch", "python", "resnetlab", "git"} <= set(stored["environment"])
    stored["config"]["learning_rate"] = 0.1
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(Error, match="fields this resnetlab does not know"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(Error, match="is damaged"):
        read_config(tmp_path)


class _FakeWriter:
    def __init__(self):
        self.scalars, self.closed = [], False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def close(self):
        self.closed = True


def test_recorder_writes_jsonl_curves_and_tensorboard(tmp_path, monkeypatch):
    writer = _FakeWriter()
    monkeypatch.setattr(rundir_module, "_tensorboard_writer", lambda path: writer)
    old = {"kind": "train", "step": 1, "epoch": 0.5, "loss": 2.0, "err": 0.8, "lr": 0.1, "img_per_s": 10.0}
    recorder = Recorder(tmp_path, history=[old])  # a resumed run starts from its kept records
    recorder.log({**old, "step": 2, "epoch": 1.0, "loss": 1.0, "err": 0.5})
    recorder.log(
        {"kind": "eval", "split": "val", "step": 2, "epoch": 1.0, "loss": 1.1, "err": 0.4, "top5_err": 0.1}
    )
    recorder.plot()
    recorder.close()
    assert read_metrics(tmp_path) == recorder.history and len(recorder.history) == 3
    assert ("val/top5_err", 0.1, 2) in writer.scalars and ("train/img_per_s", 10.0, 2) in writer.scalars
    assert writer.closed
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_with_nothing_yet_still_draw(tmp_path):
    plot_curves([], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
