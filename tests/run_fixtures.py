"""Helpers for the tests that stop a training run part-way and resume it."""

from __future__ import annotations

import pytest
import torch

from resnetlab.train import TrainConfig, fit
from resnetlab.train import engine as engine_module


def fit_stopped_at_step(
    monkeypatch: pytest.MonkeyPatch, cfg: TrainConfig, step: int, exc: type[BaseException] = KeyboardInterrupt
) -> None:
    """Run `fit(cfg)` with its `step`-th call of `train_step` (counting from 1) raising `exc`, as
    a kill or Ctrl-C at that point would; the real step is back in place afterwards."""
    real_step, calls = engine_module.train_step, []

    def stopping_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise exc
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine_module, "train_step", stopping_step)
    try:
        with pytest.raises(exc):
            fit(cfg)
    finally:
        monkeypatch.setattr(engine_module, "train_step", real_step)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every tensor of the two state dicts equal, bit for bit, in the same order."""
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
