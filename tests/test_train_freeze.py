"""Freezing for fine-tuning: what each --freeze covers, BN pinned in eval mode whoever calls
train(), the optimizer's groups (no frozen tensor, no decay on it, the head's lr multiplier)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.train import TrainConfig
from resnetlab.train.freeze import freeze, frozen_module_names, is_frozen, pin_frozen_norms
from resnetlab.train.optim import LRSchedule, build_optimizer, param_groups


@pytest.mark.parametrize(
    "spec, frozen",
    [
        ("none", []),
        ("stem", ["conv1", "bn1", "maxpool"]),
        ("layer1", ["conv1", "bn1", "maxpool", "layer1"]),
        ("layer3", ["conv1", "bn1", "maxpool", "layer1", "layer2", "layer3"]),
        ("head-only", ["conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "final_norm"]),
    ],
)
def test_each_spec_freezes_the_stem_and_stages_it_names(spec, frozen):
    model = create_model("resnet20")
    assert frozen_module_names(model, spec) == frozen
    freeze(model, spec)
    for name, p in model.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen), name
    assert model.fc.weight.requires_grad  # the head always trains


@pytest.mark.parametrize(
    "spec, message",
    [("layer4", "this model's stages are layer1, layer2, layer3"), ("layer0", "--freeze takes none")],
)
def test_a_spec_the_model_lacks_is_a_one_line_error(spec, message):
    with pytest.raises(Error, match=message):
        freeze(create_model("resnet20"), spec)
    with pytest.raises(Error, match="needs a ResNet-style model"):
        freeze(nn.Sequential(nn.Linear(2, 2)), "stem")


def test_frozen_bn_stays_in_eval_mode_through_train_and_deepcopy():
    model = create_model("resnet20")
    freeze(model, "layer1")
    model.train()
    assert not model.bn1.training and not model.layer1[0].bn1.training
    assert model.layer2[0].bn1.training and model.training  # the rest trains
    assert not copy.deepcopy(model).train().layer1[0].bn2.training  # the EMA copy keeps it
    assert is_frozen(model.bn1) and not is_frozen(model.layer2[0].bn1)
    model.eval()
    model.train(True)
    assert not model.layer1[2].bn2.training


def test_frozen_tensors_and_bn_statistics_do_not_move_in_training():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=3, in_chans=1)
    freeze(model, "layer2")
    before = copy.deepcopy(model.state_dict())
    optimizer = build_optimizer(TrainConfig(lr=0.1, weight_decay=1e-2, head_lr_mult=10), model)
    model.train()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 3, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    for key, value in before.items():
        same = torch.equal(value, after[key])
        assert same == key.startswith(frozen), key  # bit-identical iff frozen: weights and BN stats
    assert after["layer1.0.bn1.num_batches_tracked"] == 0 and after["layer3.0.bn1.num_batches_tracked"] == 3


def test_the_optimizer_holds_only_what_trains_with_the_head_at_its_multiplier():
    model = create_model("resnet20")
    freeze(model, "layer1")
    cfg = TrainConfig(lr=0.05, weight_decay=5e-4, wd_norm_bias=False, head_lr_mult=10.0)
    optimizer = build_optimizer(cfg, model)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert held == trainable and all(not p.requires_grad or id(p) in held for p in model.parameters())
    head = {id(model.fc.weight), id(model.fc.bias)}
    assert LRSchedule(optimizer, cfg, 100, depth=20).set(10) == 0.05  # the logged lr: the backbone's
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        in_head = bool(ids & head)
        assert in_head == ("lr_mult" in group) and (not in_head or ids <= head)
        assert group["lr"] == pytest.approx(0.05 * (10.0 if in_head else 1.0))
        assert group["weight_decay"] == 0.0 or all(p.ndim > 1 for p in group["params"])
    with pytest.raises(Error, match="nothing to train"):
        build_optimizer(cfg, create_model("resnet20").requires_grad_(False))


def test_without_a_multiplier_the_groups_are_as_before():
    model = create_model("resnet20")
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=True)) == 1
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=False)) == 2
    assert len(param_groups(model, 1e-4, decay_norm_and_bias=False, head_lr_mult=5)) == 4


def test_bn_layers_replaced_after_freezing_are_pinned_again():
    model = create_model("resnet20")
    freeze(model, "stem")
    replacement = torch.nn.BatchNorm2d(16)  # as SyncBatchNorm conversion does: new module, same params
    replacement.weight, replacement.bias = model.bn1.weight, model.bn1.bias
    model.bn1 = replacement
    pin_frozen_norms(model)
    assert not model.train().bn1.training and model.layer1[0].bn1.training
