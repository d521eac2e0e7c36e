"""The CPU smoke run of `benchmarks/gpu_session.sh`, the script a lent GPU runs: every step at tiny
sizes on the CPU, so the GPU's minutes go to running it, not to debugging it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("cuda-tests", "throughput", "time-to-accuracy", "folder-loader", "inference")


@pytest.mark.slow
def test_every_step_of_the_gpu_session_runs_on_the_cpu(tmp_path):
    script = str(ROOT / "benchmarks" / "gpu_session.sh")
    done = subprocess.run(
        ["bash", script, "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary] == list(STEPS), done.stdout[-3000:]
    assert all(line.split()[1] == "ok" for line in summary), (summary, done.stdout[-3000:])
    assert done.returncode == 0
    log = (tmp_path / "gpu_session.log").read_text()
    assert "training throughput on CPU" in log and "img/s" in log  # benchmarks.gpu's table
    assert "the GPU is" in log and "ONNX Runtime" in log  # the loader verdict and the inference table


def test_the_session_script_refuses_an_unknown_option(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--gpus", "8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown option --gpus" in done.stderr
