"""The blocks' in-place ReLU and addition: same outputs and gradients, and hooks still see true values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab import create_model

# One of every block kind and norm choice, with the shortcut options that change the forward.
NETS = {
    "basic-A": ("resnet20", {}),
    "basic-B-gn": ("cifar_resnet", {"depth": 8, "shortcut": "B", "norm": "gn"}),
    "plain": ("plain20", {}),
    "bottleneck": ("cifar_resnet", {"depth": 11, "bottleneck": True, "shortcut": "C"}),
    "preact": ("cifar_resnet", {"depth": 8, "preact": True, "shortcut": "B"}),
    "preact-bottleneck-nonorm": (
        "cifar_resnet",
        {"depth": 11, "preact": True, "bottleneck": True, "norm": "none"},
    ),
    "frozen-bn": ("cifar_resnet", {"depth": 8, "norm": "frozen_bn"}),
    "drop-path": ("cifar_resnet", {"depth": 8, "drop_path_rate": 0.5}),
}


def build(key: str) -> nn.Module:
    name, kwargs = NETS[key]
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


def out_of_place(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The forward with every in-place op switched off: any forward hook does that."""
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:
        return model(x)
    finally:
        handle.remove()


@pytest.mark.parametrize("key", NETS)
def test_in_place_forward_equals_out_of_place(key):
    model = build(key).eval()
    x = torch.randn(3, 1, 12, 12)
    x_copy = x.clone()
    with torch.no_grad():
        fast, slow = model(x), out_of_place(model, x)
    assert torch.equal(x, x_copy), "the forward changed its input"
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", ["basic-A", "bottleneck", "preact", "drop-path"])
def test_in_place_training_gives_the_same_gradients(key):
    x = torch.randn(4, 1, 12, 12)
    grads = []
    for run in (lambda m, x: m(x), out_of_place):
        model = build(key).train()
        torch.manual_seed(1)  # same drop-path draws in both runs
        run(model, x).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", NETS)
def test_a_hook_that_keeps_outputs_sees_the_values_each_layer_produced(key):
    """The trap of in-place ops: a hook stores a reference (no copy), the next op overwrites it.
    Every module's stored output must equal the copy taken when the module returned it."""
    model = build(key).eval()
    kept, copies = [], []

    def keep(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        kept.append(out)
        copies.append(out.clone())

    handles = [m.register_forward_hook(keep) for m in model.modules() if m is not model]
    with torch.no_grad():
        model(torch.randn(2, 1, 12, 12))
    for h in handles:
        h.remove()
    assert len(kept) > 20
    for ref, copy in zip(kept, copies, strict=True):
        assert torch.equal(ref, copy)


def test_a_hook_on_one_layer_keeps_its_output_and_the_rest_stays_in_place():
    model = build("basic-A").eval()
    block = model.layer2[1]
    seen = {}
    handle = block.bn1.register_forward_hook(lambda _m, _i, out: seen.setdefault("bn1", out))
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        logits = model(x)
        expected = block.bn1(block.conv1(model.layer2[0](model.layer1(model.stem(x)))))
    handle.remove()
    assert seen["bn1"].min() < 0, "the kept BN output was overwritten by the in-place ReLU"
    torch.testing.assert_close(seen["bn1"], expected)
    torch.testing.assert_close(logits, out_of_place(model, x), rtol=0, atol=1e-6)


def test_forward_intermediates_and_residual_are_unchanged():
    model = build("basic-A").eval()
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        feats = model.forward_intermediates(x)
        reference = out_of_place(model.layer1, feats[0])
        block = model.layer1[0]
        r = block.residual(feats[0])
        assert torch.equal(r, out_of_place(block.residual, feats[0]))
    torch.testing.assert_close(feats[1], reference, rtol=0, atol=1e-6)
    assert r.min() < 0  # F(x) before the final ReLU, not overwritten by it
