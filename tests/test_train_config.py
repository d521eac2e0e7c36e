"""TrainConfig, the recipes, the optimizer groups, the learning-rate schedules and the EMA."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.train import RECIPES, TrainConfig, get_recipe, list_recipes
from resnetlab.train.ema import EMA
from resnetlab.train.optim import LRSchedule, build_optimizer, count_weighted_layers, lr_factor, param_groups


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_passes_its_own_check_and_is_handed_out_as_a_copy(name):
    recipe = get_recipe(name)
    recipe.check()  # raises resnetlab's Error for fields that contradict each other
    recipe.model_kwargs["extra"] = 1  # changing the copy leaves the registered recipe alone
    assert "extra" not in RECIPES[name].model_kwargs and get_recipe(name) == RECIPES[name]


def test_paper_recipes_match_he15():
    cifar = get_recipe("paper-cifar")  # [He15 §4.2]
    assert (cifar.batch_size, cifar.lr, cifar.momentum, cifar.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert cifar.max_steps == 64_000 and cifar.schedule == "step" and cifar.lr_decay == 0.1
    assert [round(m * cifar.max_steps) for m in cifar.milestones] == [32_000, 48_000]
    assert (cifar.warmup_lr, cifar.warmup_until_err, cifar.warmup_min_depth) == (0.01, 0.8, 110)
    assert (cifar.crop_padding, cifar.flip, cifar.val_size) == (4, True, 5000)
    imagenet = get_recipe("paper-imagenet")  # [He15 §3.4]
    assert (imagenet.batch_size, imagenet.lr, imagenet.weight_decay, imagenet.epochs) == (256, 0.1, 1e-4, 90)
    assert [round(m * imagenet.epochs) for m in imagenet.milestones] == [30, 60]
    fast = get_recipe("fast")
    assert fast.nesterov and fast.label_smoothing > 0 and fast.ema_decay > 0 and not fast.wd_norm_bias
    assert (fast.amp, fast.schedule) == ("bf16", "onecycle")
    speedrun = get_recipe("speedrun")
    assert speedrun.tta == "flip" and speedrun.final_eval_only
    assert speedrun.val_size == 0 and speedrun.epochs < fast.epochs


def test_get_recipe_returns_a_copy_and_names_the_choices():
    a = get_recipe("fast")
    a.model_kwargs["norm"] = "gn"
    assert RECIPES["fast"].model_kwargs == {}
    with pytest.raises(Error, match="unknown recipe 'fastest'; choose one of fast, fast-long, finetune"):
        get_recipe("fastest")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"eval_splits": ("train",)}, "--eval-splits takes val and/or test"),
        ({"milestones": (0.75, 0.5)}, "--milestones must be increasing"),
        ({"deterministic": True, "compile": True}, "--deterministic and --compile contradict"),
        ({"amp": "fp16", "device": "cpu"}, "--amp fp16 needs CUDA"),
        ({"warmup": 1.0}, "--warmup is a fraction"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"batch_size": 0}, "batch sizes must be positive"),
        ({"amp": "fp8"}, "--amp must be one of"),
        ({"flip": False, "alternate_flip": True}, "--alternate-flip decides how --flip flips; add --flip"),
        ({"tta": "crop"}, "--tta must be one of none, flip, flip-shift"),
        ({"final_eval_only": True, "eval_every": 10}, "--final-eval-only and --eval-every contradict"),
        ({"progressive_sizes": (20, 0)}, "--progressive-sizes takes image sides in pixels > 0"),
    ],
)
def test_contradictions_are_one_line_errors(changes, message):
    with pytest.raises(Error, match=message):
        dataclasses.replace(TrainConfig(), **changes).check()


def test_progressive_sizes_split_the_run_into_equal_consecutive_parts():
    cfg = TrainConfig(progressive_sizes=(20, 24, 28))
    assert [cfg.train_size(step, 10) for step in range(10)] == [20] * 4 + [24] * 3 + [28] * 3
    assert TrainConfig().train_size(5, 10) is None


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(8, 64), min_size=1, max_size=5, unique=True), total=st.integers(1, 3000))
def test_every_step_gets_a_size_and_the_parts_differ_by_at_most_one_step(sizes: list[int], total: int):
    cfg = TrainConfig(progressive_sizes=tuple(sizes))
    parts = [cfg.progressive_sizes.index(cfg.train_size(step, total)) for step in range(total)]
    assert parts == sorted(parts)  # in order, never back
    if total >= len(sizes):
        lengths = [parts.count(k) for k in range(len(sizes))]
        assert max(lengths) - min(lengths) <= 1 and sum(lengths) == total


def test_linear_scaling_rule_is_explicit():
    cfg = TrainConfig(lr=0.1, batch_size=1024, lr_batch=256)
    assert cfg.peak_lr() == 0.1
    assert dataclasses.replace(cfg, scale_lr=True).peak_lr() == pytest.approx(0.4)  # [Goyal17]


@settings(max_examples=200, deadline=None)
@given(
    schedule=st.sampled_from(["step", "cosine", "onecycle", "constant"]),
    warmup=st.sampled_from([0.0, 0.05, 0.3]),
    total=st.integers(1, 5000),
    frac=st.floats(0, 1, exclude_max=True),
)
def test_lr_factor_stays_in_unit_interval(schedule, warmup, total, frac):
    cfg = TrainConfig(schedule=schedule, warmup=warmup)
    step = min(int(frac * total), total - 1)
    assert 0 <= lr_factor(cfg, step, total) <= 1


def test_schedule_shapes():
    total = 1000
    step = TrainConfig(schedule="step", milestones=(0.5, 0.75), lr_decay=0.1)
    assert [lr_factor(step, s, total) for s in (0, 499, 500, 749, 750, 999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    cosine = TrainConfig(schedule="cosine", warmup=0.1)
    assert lr_factor(cosine, 99, total) == pytest.approx(1.0)  # the end of the warm-up is the peak
    assert lr_factor(cosine, 0, total) == pytest.approx(0.01)
    assert lr_factor(cosine, 550, total) == pytest.approx(0.5)  # half way through the cosine part
    onecycle = TrainConfig(schedule="onecycle", warmup=0.2)
    values = [lr_factor(onecycle, s, total) for s in range(total)]
    peak = values.index(max(values))
    assert peak == 199 and values[-1] < 0.01
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))


def test_error_triggered_warmup_only_for_deep_nets():
    model = torch.nn.Linear(2, 2)
    cfg = get_recipe("paper-cifar")
    optimizer = build_optimizer(cfg, model)
    shallow = LRSchedule(optimizer, cfg, 64_000, depth=56)
    deep = LRSchedule(optimizer, cfg, 64_000, depth=110)
    assert shallow.set(0) == 0.1 and deep.set(0) == 0.01
    deep.observe_train_error(0.85)
    assert deep.set(300) == 0.01
    deep.observe_train_error(0.79)
    assert deep.set(301) == 0.1 and optimizer.param_groups[0]["lr"] == 0.1
    assert deep.set(32_000) == pytest.approx(0.01) and deep.set(48_000) == pytest.approx(0.001)
    restored = LRSchedule(optimizer, cfg, 64_000, depth=110)
    restored.load_state_dict(deep.state_dict())
    assert restored.lr(302) == 0.1


@pytest.mark.parametrize(
    "name, depth", [("resnet20", 20), ("resnet56", 56), ("resnet110", 110), ("resnet50", 50)]
)
def test_depth_counts_weighted_layers_as_he15(name, depth):
    assert count_weighted_layers(create_model(name)) == depth
    if name == "resnet20":
        assert count_weighted_layers(create_model(name, shortcut="B")) == depth  # projections excluded


def test_no_weight_decay_on_norm_and_bias():
    model = create_model("resnet20")
    decay, no_decay = param_groups(model, 5e-4, decay_norm_and_bias=False)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
    assert all(p.ndim == 4 for p in decay["params"][:-1]) and decay["params"][-1].ndim == 2  # convs, fc
    bn_params = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    assert {id(p) for p in bn_params} <= {id(p) for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = param_groups(model, 1e-4, decay_norm_and_bias=True)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_ema_averages_weights_and_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()  # decay min(0.5, 2/11) = 2/11 on the first update
    d = 2 / 11
    torch.testing.assert_close(ema.module[0].weight, d * start + (1 - d) * (start + 1))
    torch.testing.assert_close(ema.module[1].running_mean, torch.full((3,), (1 - d) * 2.0))
    assert int(ema.module[1].num_batches_tracked) == 7
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(50):
        ema.update()
    torch.testing.assert_close(ema.module[0].weight, model[0].weight)
    assert math.isclose(min(0.5, 52 / 61), 0.5)
