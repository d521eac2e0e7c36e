"""Dense prediction: Fashion-MNIST scenes, the FPN, the segmentation and CenterNet heads, the
decoder and COCO mAP (pycocotools)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from resnetlab.cli import main
from resnetlab.data.datasets import published
from resnetlab.data.scenes import SceneLayout, fashion_scenes
from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.models.dense import TaskModel, decode_centers, task_model
from resnetlab.models.fpn import FPN
from resnetlab.train import TrainConfig, fit, get_recipe
from resnetlab.train.config import DENSE_OFF
from resnetlab.train.detection import center_loss, center_targets, coco_map, gaussian_radius
from resnetlab.train.eval_source import evaluate_checkpoint, format_report
from run_fixtures import assert_same_weights, fit_stopped_at_step

FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def fashion():
    return published("fashion-mnist", FASHION)


@pytest.fixture(scope="module")
def scenes(fashion):
    return {split: fashion_scenes(split, 200, fashion) for split in ("train", "val", "test")}


def test_a_scene_is_made_again_from_its_index_alone(scenes, fashion):
    again = fashion_scenes("train", 200, fashion)
    for i in (0, 7, 199):
        a, b = scenes["train"].scene(i), again.scene(i)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.class_map, b.class_map)
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(scenes["train"].scene(0).image, scenes["test"].scene(0).image)
    other = fashion_scenes("train", 1, fashion, SceneLayout(seed=1))
    assert not np.array_equal(other.scene(0).image, scenes["train"].scene(0).image)


def test_the_splits_draw_from_disjoint_item_pools(scenes):
    train_part, train_idx = scenes["train"].pool
    val_part, val_idx = scenes["val"].pool
    assert (train_part, val_part, scenes["test"].pool[0]) == ("train", "train", "test")
    assert len(train_idx) + len(val_idx) == 60000 and len(val_idx) == 5000
    assert not set(train_idx.tolist()) & set(val_idx.tolist())  # val items never train
    test = scenes["test"]
    for i in range(20):  # test scenes hold test items only: the very pixels of the test part
        scene = test.scene(i)
        assert scene.picks.max() < 10000
    assert len(test.items) == 10000


def test_boxes_enclose_exactly_the_visible_pixels_and_hidden_items_are_dropped(scenes):
    layout = scenes["train"].layout
    dropped = 0
    for i in range(200):
        scene = scenes["train"].scene(i)
        assert scene.image.shape == scene.class_map.shape == (layout.canvas, layout.canvas)
        assert layout.min_items <= len(scene.picks) <= layout.max_items
        assert len(scene.boxes) <= len(scene.picks)
        dropped += len(scene.picks) - len(scene.boxes)
        for (x0, y0, x1, y1), cls in zip(scene.boxes.astype(int), scene.labels, strict=True):
            inside = scene.class_map[y0:y1, x0:x1] == cls + 1
            # tight: the item's class shows on every edge row and column of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert ((scene.class_map > 0) == (scene.image > layout.threshold)).all()
    assert dropped > 0  # overlap happens, and items hidden past max_hidden lose their box


def test_a_layout_that_cannot_hold_its_items_is_one_line():
    with pytest.raises(Error, match="cannot hold an item at 2.5x"):
        SceneLayout(canvas=48).check()


@pytest.mark.parametrize("backbone, strides", [("resnet20", (4, 2)), ("resnet18", (32, 4))])
def test_fpn_and_heads_give_their_shapes_on_cifar_and_imagenet_backbones(backbone, strides):
    x = torch.zeros(2, 1, 96, 96)
    for fpn, stride in zip((False, True), strides, strict=True):
        seg = task_model(backbone, "segment", num_classes=10, in_chans=1, fpn=fpn)
        assert seg(x).shape == (2, 11, 96, 96) and seg.stride == stride
        det = task_model(backbone, "detect", num_classes=10, in_chans=1, fpn=fpn)
        out = det(x)
        cells = 96 // stride
        assert out["heatmap"].shape == (2, 10, cells, cells) and out["size"].shape == (2, 2, cells, cells)
    features = create_model(backbone, features_only=True, in_chans=1)(x)
    chans = [f.shape[1] for f in features]
    pyramid = FPN(chans, 32)(features)
    assert [p.shape[-1] for p in pyramid] == [f.shape[-1] for f in features]
    assert {p.shape[1] for p in pyramid} == {32}


def test_a_head_on_a_model_without_features_only_or_an_unknown_task_is_one_line():
    with pytest.raises(Error, match="unknown task 'classify'"):
        task_model("resnet20", "classify", num_classes=10, fpn=False)
    with pytest.raises(Error, match="has no features_only interface"):
        TaskModel(create_model("resnet20"), "segment", 10, fpn=False)
    with pytest.raises(Error, match="no features_only interface"):
        TaskModel(create_model("residual_mlp"), "detect", 10, fpn=False)


BOX = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.integers(6, 50), st.integers(6, 50), st.integers(0, 9)
)


@settings(max_examples=30, deadline=None)
@given(st.lists(BOX, min_size=1, max_size=4))
def test_the_decoder_recovers_the_boxes_of_its_own_targets_exactly(items):
    stride, side = 2, 96
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in items], np.float32)
    labels = np.array([c for *_, c in items], np.int64)
    centres = {(int((x0 + x1) / 2 / stride), int((y0 + y1) / 2 / stride)) for x0, y0, x1, y1 in boxes}
    if len(centres) < len(boxes):
        return  # two boxes on one centre cell: CenterNet keeps one, by design
    t = center_targets(boxes, labels, num_classes=10, stride=stride, image_size=side)
    heat = t["heatmap"].clamp(1e-6, 1 - 1e-6)
    outputs = {"heatmap": torch.logit(heat)[None], "size": t["size"][None], "offset": t["offset"][None]}
    found = decode_centers(outputs, stride, top_k=len(boxes))[0]
    assert sorted(map(tuple, found["boxes"].numpy().round(3).tolist())) == sorted(map(tuple, boxes.tolist()))
    assert sorted(found["labels"].tolist()) == sorted(labels.tolist())
    targets = {k: v[None] for k, v in t.items()}
    worse = {**outputs, "size": outputs["size"] + 2.0, "offset": outputs["offset"] + 0.25}
    assert center_loss(outputs, targets) < center_loss(worse, targets)


@given(st.floats(2, 200), st.floats(2, 200))
def test_a_centre_shifted_by_the_radius_keeps_the_overlap(width, height):
    r = gaussian_radius(height, width)
    short = min(width, height)  # shifted along its shorter side, a box loses the most
    assert (short - r) / (short + r) == pytest.approx(0.7)


def test_coco_map_is_one_for_perfect_boxes_and_drops_for_shifted_ones(scenes):
    truths = [(s.boxes, s.labels) for s in map(scenes["test"].scene, range(30))]
    perfect = [
        {"boxes": torch.from_numpy(b), "scores": torch.ones(len(b)), "labels": torch.from_numpy(c)}
        for b, c in truths
    ]
    assert coco_map(perfect, truths, 10)["map"] == pytest.approx(1.0)
    shifted = [{**p, "boxes": p["boxes"] + torch.tensor([4.0, 4.0, 4.0, 4.0])} for p in perfect]
    scores = coco_map(shifted, truths, 10)
    assert scores["map"] < 0.9 and scores["map_50"] >= scores["map"]
    assert coco_map([{**p, "boxes": p["boxes"][:0], "scores": p["scores"][:0], "labels": p["labels"][:0]}
                     for p in perfect], truths, 10)["map"] == 0  # fmt: skip


# --- training, resuming, evaluating and drawing through the classification engine -----------------

TINY_TASK = dict(
    model="cifar_resnet",
    model_kwargs={"depth": 8},
    data="fashion-scenes",
    data_dir=FASHION,
    train_subset=64,
    val_size=32,
    eval_splits=("val",),
    batch_size=16,
    eval_batch_size=32,
    max_steps=6,
    lr=0.02,
    amp="none",
    progress=False,
    checkpoint_every=3,
    eval_every=3,
)


def _task_cfg(tmp_path, task: str, **kw: object) -> TrainConfig:
    return dataclasses.replace(get_recipe("fast"), **{**TINY_TASK, **DENSE_OFF, "task": task, "fpn": True,
                                                      "out": str(tmp_path / task), **kw})  # fmt: skip


@pytest.mark.parametrize("task", ["segment", "detect"])
def test_a_task_run_resumes_exactly_and_evaluates_as_it_recorded(task, tmp_path, monkeypatch):
    whole = fit(_task_cfg(tmp_path, task))
    stopped = _task_cfg(tmp_path, task, out=str(tmp_path / "stopped"))
    fit_stopped_at_step(monkeypatch, stopped, 5)  # killed after the step-3 checkpoint
    resumed = fit(stopped, resume=True)
    assert_same_weights(whole.model, resumed.model)
    last = [r for r in whole.history if r["kind"] == "eval"][-1]
    assert last == [r for r in resumed.history if r["kind"] == "eval"][-1]
    assert ("miou" in last) == (task == "segment") and ("map" in last) == (task == "detect")
    recorded = json.loads((tmp_path / task / "config.json").read_text())["dataset"]["scene_layout"]
    assert recorded == SceneLayout().record()  # every scene of the run can be made again
    report = evaluate_checkpoint(tmp_path / task, split="val")
    assert report.result.record() == pytest.approx(
        {k: v for k, v in last.items() if k in report.result.record()}
    )
    assert format_report(report).startswith(f"cifar_resnet {task} on fashion-scenes val")


def test_predict_draws_masks_and_boxes_and_eval_prints_iou(tmp_path, capsys, fashion):
    fit(_task_cfg(tmp_path, "segment", max_steps=2, checkpoint_every=0, eval_every=0))
    scene = fashion_scenes("test", 1, fashion).scene(0)
    image = tmp_path / "scene.png"
    Image.fromarray(scene.image).save(image)
    assert main(["predict", str(tmp_path / "segment"), str(image)]) == 0
    out = capsys.readouterr().out
    assert "drawn: " in out and (tmp_path / "scene.segment.png").is_file()
    assert Image.open(tmp_path / "scene.segment.png").size == (4 * 96, 4 * 96)
    assert main(["eval", str(tmp_path / "segment"), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "background" in out and (tmp_path / "segment" / "confusion-val.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "segment", "--data", "fashion-mnist"], "--task segment needs data with masks and boxes"),
        (["--task", "detect", "--data", "fashion-scenes", "--flip"], "drop --flip"),
        (["--fpn", "--data", "fashion-scenes"], "--fpn builds a segment or detect model; add --task"),
        (["--task", "segment", "--data", "fashion-scenes", "--model", "residual_mlp"], "no features_only"),
    ],
)
def test_bad_task_flags_are_one_line(argv, message, tmp_path, capsys):
    base = ["train", "--max-steps", "1", "--val-size", "0", "--train-subset", "32", "--data-dir", FASHION]
    assert main([*base, *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_picture_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    import resnetlab.data.scenes as scenes_module

    def read_only(*args: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(scenes_module, "write_atomic", read_only)
    assert main(["data", "fashion-scenes", "--data-dir", FASHION, "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"resnetlab: error: cannot write {tmp_path / 's.png'}: Read-only file system\n"


def test_the_scenes_command_prints_the_layout_and_draws_a_sample(tmp_path, capsys):
    assert main(["data", "fashion-scenes", "--data-dir", FASHION, "--out", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "96x96 grey canvas" in out and "test 1,000 scenes (test items only)" in out
    assert Image.open(tmp_path / "s.png").size == (4 * 288 + 12, 2 * 288 + 4)


def test_a_pretrained_backbone_goes_under_a_head_with_its_weights():
    import resnetlab

    backbone = resnetlab.create_model("resnet20", pretrained="fmnist", features_only=True)
    shipped = resnetlab.create_model("resnet20", pretrained="fmnist").state_dict()
    model = TaskModel(backbone, "detect", num_classes=10, fpn=True)
    assert all(torch.equal(v, shipped[k]) for k, v in model.backbone.state_dict().items())
    assert model(torch.zeros(1, 1, 96, 96))["heatmap"].shape == (1, 10, 48, 48)
