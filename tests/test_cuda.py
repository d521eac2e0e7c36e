"""On a real GPU: the CUDA paths of issue 15, as a user runs them. Skipped where no GPU is visible
(so far everywhere: no GPU has been lent to this project); `tests/test_gpu_standins.py` checks
the same logic on the CPU. On a CUDA machine:

    python -m pytest -q tests/test_cuda.py && python -m benchmarks.gpu
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from resnetlab.experiments.common import build_twin, evaluate, fixed_batches
from resnetlab.experiments.responses import response_stds
from resnetlab.models import create_model
from resnetlab.train import fit, get_recipe
from resnetlab.train.ema import EMA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
TINY = dataclasses.replace(
    get_recipe("fast"),
    model="cifar_resnet",
    model_kwargs={"depth": 8},
    train_subset=512,
    val_size=256,
    eval_splits=("val",),
    batch_size=64,
    epochs=1,
    ema_decay=0.9,
    device="cuda",
    progress=False,
)


def test_a_deterministic_fit_twice_in_one_process_gives_the_same_weights():
    fit(dataclasses.replace(TINY, max_steps=2))  # CUDA and cuBLAS already in use, not deterministic
    cfg = dataclasses.replace(TINY, deterministic=True, amp="none")
    first, second = fit(cfg).model.state_dict(), fit(cfg).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_fit_on_the_gpu_learns_with_each_precision(amp):
    result = fit(dataclasses.replace(TINY, amp=amp, lr=0.2, train_subset=4096, epochs=2))
    final = [r for r in result.history if r["kind"] == "eval"][-1]
    assert final["err"] < 0.4 and next(result.model.parameters()).is_cuda  # ~0.3 on the CPU


def test_responses_and_experiment_evaluation_run_on_the_gpu():
    batches, _ = fixed_batches("fashion-mnist", "test", examples=64, batch_size=32, device=CUDA)
    model = build_twin("resnet", 8, num_classes=10, in_chans=1, seed=0).to(CUDA)
    stds = response_stds(model, batches)
    reference = response_stds(model.cpu(), [(x.cpu(), y.cpu()) for x, y in batches])
    assert stds == pytest.approx(reference, rel=1e-3)
    loss, err = evaluate(model.to(CUDA).eval(), batches)
    assert loss > 0 and 0 <= err <= 1


def test_ema_foreach_update_equals_the_per_tensor_loop_on_the_gpu():
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=20, in_chans=1).to(CUDA)
    ema = EMA(model, decay=0.99)
    reference = copy.deepcopy(ema.module)
    for updates in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        model.train()(torch.randn(8, 1, 28, 28, device=CUDA))
        ema.update()
        decay = min(0.99, (1 + updates) / (10 + updates))
        with torch.no_grad():
            for e, m in zip(reference.state_dict().values(), model.state_dict().values(), strict=True):
                if e.is_floating_point():
                    e.lerp_(m, 1 - decay)
                else:
                    e.copy_(m)
    ours, theirs = ema.module.state_dict(), reference.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
