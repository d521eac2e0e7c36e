"""`evaluate`: exact counts, and flip test-time augmentation as the mean of two views' logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.train.evaluate import evaluate


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
    tta = evaluate(model, batches, num_classes=4, flip_tta=True)
    assert tta.loss == pytest.approx(F.cross_entropy(mean, y).item(), rel=1e-6)
    assert tta.loss != pytest.approx(plain.loss, rel=1e-3)  # the mirror view changed the score
    predicted = torch.bincount(y * 4 + mean.argmax(1), minlength=16).view(4, 4)
    assert torch.equal(tta.confusion, predicted)
