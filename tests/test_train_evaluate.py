"""`evaluate`: exact counts, and test-time augmentation as the weighted mean of views' logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.errors import Error
from resnetlab.train.evaluate import evaluate
from resnetlab.train.tta import tta_logits


@pytest.fixture
def lopsided() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A linear classifier that sees left and right differently, and two batches of 2x3 images."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    x, y = torch.randn(10, 1, 2, 3), torch.randint(0, 4, (10,))
    return model, [(x[:6], y[:6]), (x[6:], y[6:])]


def test_evaluate_counts_every_example_against_its_logits(lopsided) -> None:
    model, batches = lopsided
    result = evaluate(model, batches, num_classes=4)
    x, y = (torch.cat(parts) for parts in zip(*batches, strict=True))
    with torch.no_grad():
        logits = model(x)
    assert result.count == 10
    assert result.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert result.err == pytest.approx((logits.argmax(1) != y).float().mean().item())


def test_flip_tta_scores_the_mean_logits_of_each_image_and_its_mirror(lopsided) -> None:
    model, batches = lopsided
    x, y = (torch.cat(parts) for parts in zip(*batches, strict=True))
    with torch.no_grad():
        mean = (model(x) + model(x.flip(-1))) / 2
    plain = evaluate(model, batches, num_classes=4)
    tta = evaluate(model, batches, num_classes=4, tta="flip")
    assert tta.loss == pytest.approx(F.cross_entropy(mean, y).item(), rel=1e-6)
    assert tta.loss != pytest.approx(plain.loss, rel=1e-3)  # the mirror view changed the score
    predicted = torch.bincount(y * 4 + mean.argmax(1), minlength=16).view(4, 4)
    assert torch.equal(tta.confusion, predicted)
    assert plain.single_err is None and "single_err" not in plain.record()
    assert tta.single_err == pytest.approx(plain.err) and tta.record()["single_err"] == tta.single_err


def test_flip_shift_views_are_the_image_shifted_one_pixel_with_reflected_borders() -> None:
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])  # (1, 1, 2, 3)
    # Reflect-padded by 1, the crops at (0, 0) and (2, 2), written out by hand:
    down_right = torch.tensor([[[[5.0, 4.0, 5.0], [2.0, 1.0, 2.0]]]])
    up_left = torch.tensor([[[[5.0, 6.0, 5.0], [2.0, 3.0, 2.0]]]])
    seen = []

    def model(v: torch.Tensor) -> torch.Tensor:
        seen.append(v.clone())
        return v.flatten(1)  # logits: the pixels themselves

    logits, single = tta_logits(model, x, "flip-shift")
    views = [x, x.flip(-1), down_right, down_right.flip(-1), up_left, up_left.flip(-1)]
    assert len(seen) == 6 and all(torch.equal(a, b) for a, b in zip(seen, views, strict=True))
    flat = [v.flatten(1) for v in views]
    expected = (flat[0] + flat[1]) / 4 + (flat[2] + flat[3]) / 8 + (flat[4] + flat[5]) / 8
    assert torch.equal(single, x.flatten(1)) and torch.allclose(logits, expected)
    with pytest.raises(Error, match="unknown test-time augmentation 'crop'; choose one of none, flip"):
        tta_logits(model, x, "crop")
