"""The measurements behind the experiments, checked against values known by hand or by construction."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.data import load_dataset, per_class_subset, select_classes
from resnetlab.experiments import degradation, gradients, transfer
from resnetlab.experiments.common import build_twin, evaluate, fixed_batches, set_bn_stats
from resnetlab.experiments.gradients import conv_gradients
from resnetlab.experiments.landscape import (
    batch_stats_mode,
    convex_fraction,
    filter_normalized_direction,
    grid,
    local_minima,
    loss_surface,
)
from resnetlab.experiments.lesion import Deleted, lesion_errors, lesioned, reshaping_blocks
from resnetlab.experiments.responses import response_stds
from resnetlab.experiments.shattered import autocorrelation, grid_gradients

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fashion() -> tuple[list, object]:
    """64 real Fashion-MNIST training images in two batches."""
    return fixed_batches("fashion-mnist", "train", examples=64, batch_size=32, device=CPU, seed=0)


def net(arch: str = "resnet", depth: int = 8, **kw: object) -> nn.Module:
    return build_twin(arch, depth, num_classes=10, in_chans=1, seed=0, **kw)


def settle_bn(model: nn.Module, batches: list) -> nn.Module:
    """Give BN non-trivial running statistics, so eval mode is not the identity."""
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    return model.eval()


# ---------------------------------------------------------------- gradients


def test_gradient_norms_equal_the_hand_computed_values() -> None:
    """conv(a) -> conv(b0, b1) -> mean pool on one 2x2 image with label 0.

    logits z_k = b_k a m (m = mean pixel), p = softmax(z), dL/dz = p - e_0, so
    ||dL/db|| = |a m| sqrt((p0 - 1)^2 + p1^2) = sqrt(2) |a m| p1 and dL/da = m p1 (b1 - b0).
    """
    a, b0, b1 = 0.7, -1.3, 0.4
    model = nn.Sequential(
        nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 2, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    with torch.no_grad():
        model[0].weight.fill_(a)
        model[1].weight.copy_(torch.tensor([b0, b1]).view(2, 1, 1, 1))
    x = torch.tensor([[[[1.0, 2.0], [3.0, -2.0]]]])
    m = x.mean().item()
    p1 = torch.softmax(torch.tensor([b0 * a * m, b1 * a * m]), 0)[1].item()
    prof = conv_gradients(model, x, torch.tensor([0]))
    assert prof.layers == ["0", "1"]
    assert prof.grad_norm == pytest.approx(
        [abs(m * p1 * (b1 - b0)), math.sqrt(2) * abs(a * m) * p1], rel=1e-6
    )
    assert prof.weight_norm == pytest.approx([a, math.hypot(b0, b1)], rel=1e-6)
    assert prof.first_last == pytest.approx(prof.grad_norm[0] / prof.grad_norm[1])
    assert prof.grad_to_weight[1] == pytest.approx(prof.grad_norm[1] / math.hypot(b0, b1))


def test_gradient_norms_cover_every_conv_in_forward_order(fashion: tuple) -> None:
    model = net("plain", 14)
    prof = conv_gradients(model, *fashion[0][0])
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert prof.layers == convs and len(convs) == 13  # stem + 2 per block; plain twin has no projection
    assert all(g > 0 for g in prof.grad_norm)
    assert all(p.grad is None for p in model.parameters())  # leaves no gradients behind


def test_at_init_plain_110_gradients_are_far_less_flat_than_resnet_110s(fashion: tuple) -> None:
    """The issue's target: plain-110's first/last ratio at least 10x further from 1 than resnet-110's."""
    x, y = fashion[0][0]
    plain = conv_gradients(net("plain", 110), x, y).first_last
    res = conv_gradients(net("resnet", 110), x, y).first_last
    assert abs(plain - 1) >= 10 * abs(res - 1)
    assert plain > 1e3  # with BN the plain net's gradient explodes toward the input


def test_gradient_findings_follow_the_numbers() -> None:
    cfg = gradients.GradientsConfig(depths=(20, 110), norms=("bn",))

    def prof(arch: str, depth: int, first: float, median: float) -> dict:
        return {"stage": "init", "norm": "bn", "arch": arch, "depth": depth, "first_last": first,
                "grad_norm": [first * median, median, median]}  # fmt: skip

    text = gradients.findings(
        [prof("plain", 20, 30.0, 1.0), prof("resnet", 20, 1.5, 1.0), prof("plain", 110, 1e4, 1.0),
         prof("resnet", 110, 0.25, 1.0)], cfg,
    )[0]  # fmt: skip
    assert "plain-110's layers the gradient norm grows 1e+04x" in text
    assert "shrinks 4x from the last conv to the first (vanishing" in text
    flat = gradients.findings([prof("plain", 20, 1.2, 1), prof("resnet", 20, 0.9, 1),
                               prof("plain", 110, 1.9, 1e-3), prof("resnet", 110, 0.6, 1e3)], cfg)[0]  # fmt: skip  # noqa: E501
    assert flat.count("within a factor of 2") == 2
    assert "plain nets (20: 1, 110: 0.001) shrinks 1e+03x" in flat and "exploding in size" in flat


# ---------------------------------------------------------------- lesion


@pytest.mark.parametrize("preact", [False, True])
def test_deleting_a_block_with_a_zeroed_residual_branch_changes_nothing(fashion: tuple, preact: bool) -> None:
    model = settle_bn(net("resnet", 14, preact=preact), fashion[0])
    x = fashion[0][0][0]
    blocks = model.blocks()
    with torch.no_grad():
        before = model(x)
        for i in (1, 2):  # one identity block, one downsampling block
            blocks[i].zero_init_last()
            if not preact:
                blocks[i].bn2.bias.zero_()  # eval-mode BN then outputs exactly 0
        zeroed = model(x)
        with lesioned(model, [1, 2]):
            assert isinstance(model.layer1[1], Deleted) and isinstance(model.layer2[0], Deleted)
            deleted = model(x)
        with lesioned(model, [3]):
            other = model(x)
    assert not torch.allclose(before, zeroed)  # zeroing did change the net...
    torch.testing.assert_close(deleted, zeroed, rtol=0, atol=1e-6)  # ...deleting the zeroed blocks did not
    assert not torch.allclose(other, zeroed, atol=1e-3)  # deleting a live block does
    assert model.blocks() == blocks  # everything put back


def test_lesion_errors_and_downsampling_blocks(fashion: tuple) -> None:
    model = settle_bn(net("resnet", 14), fashion[0])
    x = fashion[0][0][0]
    assert reshaping_blocks(model, x) == [2, 4]  # first blocks of layer2 and layer3 (n = 2)
    result = lesion_errors(model, fashion[0][:1], draws=1, seed=0)
    n = len(model.blocks())
    assert len(result["single"]) == n and len(result["k_mean"]) == n and result["k_std"][-1] == 0
    with lesioned(model, list(range(n))):  # every block gone: stem -> shortcuts -> head
        _, all_gone = evaluate(model, fashion[0][:1])
    assert result["k_mean"][-1] == pytest.approx(all_gone)


# ---------------------------------------------------------------- landscape


def test_filter_normalised_directions_match_each_filters_norm() -> None:
    model = net("resnet", 8)
    with torch.no_grad():  # filters of very different norms, so a global rescale would fail
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(torch.linspace(0.1, 3.0, p.shape[0]).view(-1, *([1] * (p.dim() - 1))))
    directions = filter_normalized_direction(model, torch.Generator().manual_seed(0))
    checked = 0
    for p, d in zip(model.parameters(), directions, strict=True):
        assert d.shape == p.shape
        if p.dim() <= 1:
            assert not d.any()  # BN scales/shifts and biases are not perturbed
            continue
        torch.testing.assert_close(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
        assert not torch.allclose(d, p)  # a random direction, not the weights themselves
        checked += 1
    assert checked == 8  # 7 convs + the FC


def test_landscape_at_the_origin_is_the_loss_at_the_trained_weights(fashion: tuple) -> None:
    model = settle_bn(net("plain", 8), fashion[0])
    state = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    d1, d2 = filter_normalized_direction(model, g), filter_normalized_direction(model, g)
    coords = torch.cartesian_prod(grid(3, 0.5), grid(3, 0.5))
    losses, errors = loss_surface(model, [d1, d2], coords, fashion[0])
    origin = coords.tolist().index([0.0, 0.0])
    net_ = batch_stats_mode(copy.deepcopy(model))
    with torch.no_grad():
        expected = sum(F.cross_entropy(net_(x), y, reduction="sum").item() for x, y in fashion[0]) / 64
    assert losses[origin] == pytest.approx(expected, rel=1e-6)
    assert all(abs(v - expected) > 1e-4 for i, v in enumerate(losses) if i != origin)
    for k, v in model.state_dict().items():  # the trained model, running statistics included, untouched
        torch.testing.assert_close(v, state[k])


def test_grid_and_surface_shape_measures() -> None:
    assert grid(5, 1.0).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    bowl = torch.tensor(
        [[(i - 2) ** 2 + (j - 2) ** 2 for j in range(5)] for i in range(5)], dtype=torch.float64
    )
    assert local_minima(bowl) == 1 and convex_fraction(bowl) == 1.0
    egg = torch.tensor([[math.cos(2 * i) * math.cos(2 * j) for j in range(7)] for i in range(7)])
    assert local_minima(egg) > 1 and convex_fraction(egg) < 1.0


# ---------------------------------------------------------------- shattered, responses, BN


def test_autocorrelation_of_white_and_brown_noise() -> None:
    g = torch.Generator().manual_seed(0)
    white = torch.randn(4096, generator=g, dtype=torch.float64)
    ac_white, ac_brown = autocorrelation(white, 4), autocorrelation(white.cumsum(0), 4)
    assert ac_white[0] == pytest.approx(1.0) and ac_brown[0] == pytest.approx(1.0)
    assert abs(ac_white[1]) < 0.05 and ac_brown[1] > 0.9


def test_grid_gradient_is_the_directional_derivative(fashion: tuple) -> None:
    """Against central differences, in float64 so a tiny step crosses no ReLU kink."""
    model = net("resnet", 8).double()
    x0 = fashion[0][0][0][0].double()
    u = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = torch.linspace(-1, 1, 5, dtype=torch.float64)
    set_bn_stats(model, x0 + ts.view(-1, 1, 1, 1) * u)
    readout = torch.randn(10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grad = grid_gradients(model, x0, u, ts, readout)
    eps = 1e-6
    with torch.no_grad():
        f = lambda t: model(x0 + t.view(-1, 1, 1, 1) * u) @ readout  # noqa: E731
        numeric = (f(ts + eps) - f(ts - eps)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7)


def test_set_bn_stats_makes_eval_mode_match_training_mode_on_that_batch(fashion: tuple) -> None:
    model = net("plain", 8)
    x = fashion[0][0][0]
    with torch.no_grad():
        train_out = model.train()(x)
        set_bn_stats(model, x)
        assert not model.training
        # Equal up to BN's running variance being the unbiased estimate (n / (n - 1), n >= 49*32 here).
        torch.testing.assert_close(model(x), train_out, rtol=1e-2, atol=2e-3)


def test_response_stds_are_the_std_of_the_response_layers(fashion: tuple) -> None:
    model = settle_bn(net("resnet", 8), fashion[0])
    stds = response_stds(model, fashion[0][:1])
    assert len(stds) == 6  # 3 blocks x 2 BN
    x = fashion[0][0][0]
    with torch.no_grad():
        h = model.forward_intermediates(x)[0]
        first = model.blocks()[0]
        expected = first.bn1(first.conv1(h)).std(correction=0).item()
    assert stds[0] == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- degradation bookkeeping


def test_final_train_error_averages_the_last_tenth() -> None:
    history = [{"kind": "train", "step": s, "err": s / 100} for s in (10, 50, 90, 95, 100)]
    history.append({"kind": "eval", "split": "test", "step": 100, "err": 0.5})
    assert degradation.final_train_error(history, 100) == pytest.approx((0.95 + 1.0) / 2)


def test_degradation_findings_report_what_the_numbers_say() -> None:
    cfg = degradation.DegradationConfig(depths=(20, 56), seeds=2)

    def runs(errs: dict[tuple[str, int], tuple[float, float]]) -> list[dict]:
        return [{"arch": a, "depth": d, "seed": s, "final_train_err": e[s], "final_test_err": e[s]}
                for (a, d), e in errs.items() for s in (0, 1)]  # fmt: skip

    paper_like = runs({("plain", 20): (0.1, 0.1), ("plain", 56): (0.2, 0.3), ("resnet", 20): (0.1, 0.1),
                       ("resnet", 56): (0.05, 0.12)})  # fmt: skip
    text = degradation.findings(paper_like, degradation.summarize(paper_like, cfg), cfg)
    assert "plain-56's training error (25.00%) is higher than plain-20's (10.00%)" in text[0]
    assert "deeper was worse in 2 of 2" in text[0] and "deeper was worse in 1 of 2" in text[1]
    assert "Both halves" in text[2]
    reversed_ = runs({("plain", 20): (0.3, 0.3), ("plain", 56): (0.2, 0.2), ("resnet", 20): (0.1, 0.1),
                      ("resnet", 56): (0.2, 0.2)})  # fmt: skip
    text = degradation.findings(reversed_, degradation.summarize(reversed_, cfg), cfg)
    assert "lower than" in text[0] and "Neither half" in text[2]


def test_transfer_findings_follow_the_numbers() -> None:
    cfg = transfer.TransferConfig(shots=(10, 0), seeds=3)
    cell = lambda mean: {"mean": mean, "std": 0.01, "n": 3}  # noqa: E731
    summary = {
        "scratch": {"10": cell(0.50), "all": cell(0.90)},
        "probe": {"10": cell(0.70), "all": cell(0.80)},
        "finetune": {"10": cell(0.65), "all": cell(0.92)},
        "partial": {"10": cell(0.60), "all": cell(0.91)},
    }
    found = transfer.findings(summary, cfg)
    assert found[0] == "k = 10: linear probe is best (70.00%), 5.00 points above fine-tune all."
    assert found[1] == "k = all: fine-tune all is best (92.00%), 1.00 points above stem+layer1 frozen."
    assert "+20.00 points at k = 10 (linear probe), +2.00 points at k = all (fine-tune all)" in found[2]
    assert found[3] == "Pretraining helped at every k."
    assert found[4] == "With more labels the gain is smaller: +20.00 points at k = 10, +2.00 at k = all."
    summary["finetune"]["all"] = summary["partial"]["all"] = cell(0.85)
    found = transfer.findings(summary, cfg)
    assert (
        "-5.00 points at k = all (fine-tune all)" in found[2]
        and found[3] == "Pretraining helped at k = 10 only."
    )
    table = transfer.headline_table(summary, cfg)
    assert table.columns == ["start", "k = 10", "k = all"]
    assert table.rows[1] == ["linear probe", "70.00 ± 1.00", "80.00 ± 1.00"]


def test_classes_and_per_class_pick_and_relabel_examples() -> None:
    train = load_dataset("fashion-mnist", "train")
    picked = select_classes(train, (9, 5))
    assert picked.classes == ["Ankle boot", "Sandal"] and len(picked) == 12_000
    assert torch.equal(picked.labels.bincount(), torch.tensor([6000, 6000]))
    assert torch.equal(picked.images[picked.labels == 0], train.images[train.labels == 9])
    few = per_class_subset(picked, 7, seed=1)
    assert torch.equal(few.labels.bincount(), torch.tensor([7, 7]))
    assert not torch.equal(per_class_subset(picked, 7, seed=2).images, few.images)
