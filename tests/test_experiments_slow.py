"""The issue's target for the quick `degradation` preset on real Fashion-MNIST (about 6 min, 2 cores)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resnetlab.experiments import degradation, run_experiment


@pytest.mark.slow
def test_quick_degradation_shows_both_halves_of_the_paper_over_three_seeds(tmp_path: Path) -> None:
    cfg = dataclasses.replace(degradation.PRESETS["quick"], seeds=3)
    _, record = run_experiment("degradation", cfg, preset="quick", out=tmp_path / "degradation")
    summary = record.outcome.results["summary"]
    assert summary["plain-56"]["train"] > summary["plain-20"]["train"]  # the degradation problem
    assert summary["resnet-56"]["train"] <= summary["resnet-20"]["train"]  # solved by shortcuts
    assert "Both halves" in record.outcome.findings[2]
