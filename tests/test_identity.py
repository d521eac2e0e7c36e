"""The identity experiment's construction [He15 §1]: deepening a trained shallow net three ways."""

from __future__ import annotations

import pytest
import torch

from resnetlab.experiments.identity import (
    ARMS,
    IdentityConfig,
    deepen,
    distances_from_identity,
    findings,
    identity_init_,
)
from resnetlab.models import BasicBlock, create_model


def trained_like(shortcut: str) -> torch.nn.Module:
    """A resnet/plain-8 whose weights and BN statistics are not the init's."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=8, shortcut=shortcut, num_classes=10, in_chans=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.train()
    model(torch.randn(64, 1, 28, 28))  # running statistics of a batch
    return model


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_zero_init_deepened_resnet_is_the_shallow_one_at_step_0(mode: str) -> None:
    shallow = trained_like("A")
    deep, new = deepen(shallow, 20, "zero")
    assert len(new) == 6 and len(deep.blocks()) == 9
    x = torch.randn(16, 1, 28, 28)
    getattr(shallow, mode)(), getattr(deep, mode)()
    assert torch.equal(shallow(x), deep(x))  # F = 0 exactly: bn2's scale is 0, in either mode
    assert distances_from_identity(deep, new, x) == [0.0] * 6


def test_the_dirac_initialised_plain_block_is_the_identity_in_eval_mode_on_non_negative_input() -> None:
    block = BasicBlock(16, 16, shortcut="none")
    identity_init_(block)
    block.eval()
    x = torch.rand(4, 16, 7, 7)  # the output of a ReLU: non-negative
    assert torch.allclose(block(x), x, rtol=1e-6, atol=0)
    block.train()  # training mode normalises by the batch's own statistics: no longer the identity
    assert not torch.allclose(block(x), x, atol=1e-2)


def test_the_deepened_plain_nets_keep_the_shallow_weights_and_differ_in_the_new_blocks() -> None:
    shallow = trained_like("none").eval()
    x = torch.rand(8, 1, 28, 28)
    identity, new = deepen(shallow, 20, "identity")
    identity.eval()
    assert torch.allclose(identity(x), shallow(x), rtol=1e-5, atol=1e-6)  # eval mode: the construction
    assert all(d < 1e-5 for d in distances_from_identity(identity, new, x))
    default, new = deepen(shallow, 20, "default")
    assert all(d > 0.1 for d in distances_from_identity(default, new, x))
    assert torch.equal(default.conv1.weight, shallow.conv1.weight) and torch.equal(
        default.fc.bias, shallow.fc.bias
    )


def summary_of(**ends: float) -> dict[str, dict]:
    rows = {}
    for arm, (family, init) in ARMS.items():
        shallow = 10.0 if family == "resnet" else 20.0
        start = {"plain, default init": 85.0}.get(arm, shallow)
        end = ends.get(arm, shallow)
        rows[arm] = {"shallow": shallow, "start": start, "worst": max(start, end), "end": end,
                     "distance_start": 0.0 if init == "zero" else 0.9, "distance_end": 0.3}  # fmt: skip
        rows[arm].update({k + "_std": 0.1 for k in ("shallow", "start", "worst", "end")})
        if init is None:
            rows[arm]["distance_start"] = rows[arm]["distance_end"] = float("nan")
    return rows


def test_a_gap_within_the_seeds_spread_is_no_difference() -> None:
    summary = summary_of(**{"residual, zero-init": 13.0})
    summary["residual, zero-init"]["end_std"] = summary["shallow resnet"]["end_std"] = 2.0
    text = findings(summary, IdentityConfig(steps=100))[0]
    assert "as good as the shallow net, within the seeds' spread (+3.00 points, ±4.00)" in text


def test_findings_compare_each_arm_with_the_shallow_net_trained_on() -> None:
    cfg = IdentityConfig(steps=100)
    text = findings(summary_of(**{"residual, zero-init": 8.0, "plain, default init": 35.0}), cfg)
    assert text[0].startswith("residual, zero-init: at step 0 the 20-layer net's training error is 10.00%")
    assert "(the same)" in text[0] and "better than the shallow net by 2.00 points" in text[0]
    assert (
        "(not the same)" in text[1]
        and "worse than the shallow net by 15.00 points, more than the seeds' spread (1.00)" in text[1]
    )
    assert "as good as the shallow net, within the seeds' spread (+0.00 points, ±1.00)" in text[2]
    assert "differ from their inputs by 0.900 of the input's norm at step 0 and 0.300 at the end." in text[2]
    assert text[-1] == (
        "In one sentence: residual, zero-init and plain, identity init kept the shallow net's training "
        "error from step 0 to step 100 (never worse than the shallow net trained on by more than the seeds' "
        "spread); plain, default init did not keep it."
    )
    summary = summary_of()
    summary["plain, identity init"]["worst"] = 60.0  # lost on the way, back by the end
    assert (
        "plain, identity init started from it, lost it on the way and recovered it by the end"
        in (findings(summary, cfg)[-1])
    )
