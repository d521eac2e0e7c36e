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
from resnetlab.data.scenes import SceneLayout, fashion_scenes, load_scenes
from resnetlab.errors import Error
from resnetlab.experiments import backbone
from resnetlab.experiments.backbone import item_recall
from resnetlab.models import create_model
from resnetlab.models.dense import TaskModel, decode_centers, task_model
from resnetlab.models.fpn import FPN
from resnetlab.train import TrainConfig, fit, get_recipe
from resnetlab.train.config import DENSE_OFF
from resnetlab.train.detection import area_bounds, center_loss, center_targets, coco_map, gaussian_radius
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


def test_a_smaller_canvas_draws_the_same_scene_smaller(fashion):
    """At 48 px, scene i has the same items in the same order, at half their 96 px size."""
    big = fashion_scenes("test", 4, fashion)
    small = fashion_scenes("test", 4, fashion, SceneLayout().at_canvas(48))
    assert (small.layout.min_scale, small.layout.max_scale) == (0.375, 1.25)
    pairs = [(big.scene(i), small.scene(i)) for i in range(4)]
    assert all(b.image.shape == (48, 48) and np.array_equal(a.picks, b.picks) for a, b in pairs)
    item_pixels = [
        sum(int((scene.class_map > 0).sum()) for scene in side) for side in zip(*pairs, strict=True)
    ]
    assert item_pixels[1] * 4 == pytest.approx(item_pixels[0], rel=0.15)  # a quarter of the area
    with pytest.raises(Error, match="at least 32 px"):
        SceneLayout().at_canvas(16)
    assert area_bounds(96) == (24**2, 48**2) and area_bounds(48) == (12**2, 24**2)


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
    (finest,) = FPN(chans, 32, levels=1)(features)  # what a task model's head reads
    assert finest.shape == pyramid[0].shape
    # Every parameter of a task model reaches the loss, as DDP requires.
    for task in ("segment", "detect"):
        model = task_model(backbone, task, num_classes=10, in_chans=1, fpn=True)
        out = model(x)
        sum(o.sum() for o in (out.values() if task == "detect" else [out])).backward()
        assert all(p.grad is not None for p in model.parameters())


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


@pytest.mark.parametrize("name, fpn", [("resnet20", False), ("resnet20", True), ("resnet18", False)])
def test_the_targets_cover_the_heads_grid_on_any_canvas(name, fpn):
    """--image-size 50 is no multiple of the stride: the head's grid and the targets still agree."""
    model = TaskModel(create_model(name, in_chans=1, features_only=True), "detect", 10, fpn=fpn).eval()
    for side in (50, 61, 64):
        with torch.no_grad():
            heat = model(torch.zeros(1, 1, side, side))["heatmap"]
        box = np.array([[side - 9.0, side - 9.0, side, side]], np.float32)  # in the last cell
        t = center_targets(box, np.array([3]), num_classes=10, stride=model.stride, image_size=side)
        assert t["heatmap"].shape == heat.shape[1:], (side, model.stride)
        assert t["mask"].sum() == 1


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


@pytest.mark.parametrize("task, canvas", [("segment", 0), ("detect", 48)])
def test_a_task_run_resumes_exactly_and_evaluates_as_it_recorded(task, canvas, tmp_path, monkeypatch):
    """The detection run draws its scenes on a 48 px canvas: eval draws them so again."""
    whole = fit(_task_cfg(tmp_path, task, image_size=canvas))
    stopped = _task_cfg(tmp_path, task, image_size=canvas, out=str(tmp_path / "stopped"))
    fit_stopped_at_step(monkeypatch, stopped, 5)  # killed after the step-3 checkpoint
    resumed = fit(stopped, resume=True)
    assert_same_weights(whole.model, resumed.model)
    last = [r for r in whole.history if r["kind"] == "eval"][-1]
    assert last == [r for r in resumed.history if r["kind"] == "eval"][-1]
    assert ("miou" in last) == (task == "segment") and ("map" in last) == (task == "detect")
    recorded = json.loads((tmp_path / task / "config.json").read_text())["dataset"]["scene_layout"]
    layout = SceneLayout().at_canvas(canvas) if canvas else SceneLayout()
    assert recorded == layout.record()  # every scene of the run can be made again
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
        (["--data", "fashion-mnist", "--image-size", "64"], "fashion-mnist images have a fixed size"),
        (["--task", "segment", "--data", "fashion-scenes", "--image-size", "16"], "at least 32 px, got 16"),
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
    argv = [
        "data",
        "fashion-scenes",
        "--image-size",
        "48",
        "--data-dir",
        FASHION,
        "--out",
        str(tmp_path / "t.png"),
    ]
    assert main(argv) == 0
    assert "48x48 grey canvas" in capsys.readouterr().out
    assert Image.open(tmp_path / "t.png").size == (4 * 144 + 12, 2 * 144 + 4)
    assert main(["data", "fashion-mnist", "--image-size", "48", "--data-dir", FASHION]) == 2
    assert (
        capsys.readouterr().err
        == "resnetlab: error: --image-size goes with fashion-scenes, not fashion-mnist\n"
    )


def test_a_pretrained_backbone_goes_under_a_head_with_its_weights():
    import resnetlab

    backbone = resnetlab.create_model("resnet20", pretrained="fmnist", features_only=True)
    shipped = resnetlab.create_model("resnet20", pretrained="fmnist").state_dict()
    model = TaskModel(backbone, "detect", num_classes=10, fpn=True)
    assert all(torch.equal(v, shipped[k]) for k, v in model.backbone.state_dict().items())
    assert model(torch.zeros(1, 1, 96, 96))["heatmap"].shape == (1, 10, 48, 48)


# --- the backbone experiment's own measure ---------------------------------------------------------


def test_item_recall_counts_each_items_own_pixels_by_size(fashion):
    test = load_scenes("test", fashion, val_size=0, layout=SceneLayout().at_canvas(48)).subset(range(40))
    truth = test.class_maps.numpy()
    bounds = area_bounds(48)
    (small, n_small), (large, n_large) = item_recall(truth, test, bounds)
    assert (small, large) == (1.0, 1.0) and n_small > 0 and n_large > 0
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for boxes in test.boxes for b in boxes.tolist()]
    assert n_small == sum(a < bounds[0] for a in areas) and n_large == sum(a > bounds[1] for a in areas)
    assert item_recall(np.zeros_like(truth), test, bounds)[0][0] == 0.0  # all background: none found
    wrong_class = np.where(truth > 0, truth % 10 + 1, 0)  # every item pixel given another class
    assert item_recall(wrong_class, test, bounds)[1][0] == 0.0


def _segment_run(arch: str, depth: int, head: str, seed: int, miou: float, small: float) -> dict:
    return {
        "task": "segment",
        "arch": arch,
        "depth": depth,
        "head": head,
        "seed": seed,
        "miou": miou,
        "pixel_acc": 0.8,
        "recall_small": small,
        "recall_large": 0.5,
        "final_train_loss": 0.5,
    }


def test_backbone_findings_follow_the_numbers_and_the_seeds_spread():
    cfg = backbone.BackboneConfig(seeds=2)
    # resnet-56 beats plain-56 far beyond the spread; at depth 20 the arms overlap. The FPN helps
    # small items by 10 points in three backbones, and loses 1 in the fourth.
    miou = {("plain", 20): (0.20, 0.30), ("resnet", 20): (0.22, 0.29), ("plain", 56): (0.08, 0.09),
            ("resnet", 56): (0.25, 0.26)}  # fmt: skip
    runs = [
        _segment_run(arch, depth, head, seed, miou[arch, depth][seed],
                     0.3 + (head == "fpn") * (-0.01 if (arch, depth) == ("resnet", 56) else 0.1))
        for (arch, depth) in miou for head in backbone.HEADS for seed in range(2)
    ]  # fmt: skip
    text = backbone.findings("segment", backbone.summarize(runs, cfg), cfg)
    assert (
        "depth 56, single-scale: the residual backbone beats its plain twin: mIoU 25.50 against 8.50"
        in text[2]
    )
    assert "depth 20, single-scale: the residual backbone ties its plain twin" in text[0]
    assert "within the seeds' spread" in text[0]
    small = next(line for line in text if "small items" in line)
    assert "it pays: better, by more than the seeds' spread, for 3 of 4 backbones" in small
    assert "resnet-56 -1.00" in small
    large = next(line for line in text if "large items" in line)
    assert "it does not pay, on the whole: better, by more than the seeds' spread, for 0 of 4" in large
    one_seed = backbone.BackboneConfig(seeds=1)
    single = [r for r in runs if r["seed"] == 0]
    text = backbone.findings("segment", backbone.summarize(single, one_seed), one_seed)
    assert "depth 20, single-scale: the residual backbone beats its plain twin" in text[0]
    assert text[-1].startswith("One seed per arm")


def test_a_backbone_run_without_pictures_scores_both_tasks(tmp_path):
    """--figure-scenes 0: no predictions figure, and no empty batch to draw."""
    out = tmp_path / "run"
    flags = ["--tasks", "segment,detect", "--depths", "8", "--archs", "resnet", "--heads", "fpn",
             "--canvas", "32", "--steps", "1", "--batch-size", "2", "--test-scenes", "3",
             "--figure-scenes", "0", "--amp", "none", "--workers", "1"]  # fmt: skip
    assert main(["experiment", "backbone", *flags, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["scores-detect.png", "scores-segment.png"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--heads", "single,pyramid"], "--heads takes single, fpn"),
        (["--tasks", "classify"], "--tasks takes segment, detect"),
        (["--depths", "21"], "--depths must be 6n+2"),
        (["--canvas", "30"], "--canvas: a multiple of 4, >= 32"),
        (["--archs", "densenet"], "--archs takes plain, resnet"),
    ],
)
def test_bad_backbone_experiment_flags_are_one_line(flags, message, capsys):
    assert main(["experiment", "backbone", *flags, "--out", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
