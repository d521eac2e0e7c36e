"""Exact resume after `kill -9`: a real training process is killed mid-epoch by SIGKILL (no
exception handler, no atexit), resumed from its last checkpoint, and ends with the same weights,
bit for bit, as a run that was never interrupted. On the CPU under `make test-slow` (the fast
suite's `test_stop_and_resume_gives_the_same_weights_as_one_run` crashes in-process instead), and
on CUDA where a GPU is visible (`benchmarks/gpu_session.sh` runs it on a lent GPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab.weights.checkpoint import MODEL_FILE, latest_checkpoint, list_checkpoints, load_weights

# (training images, checkpoint every N steps, kill once this checkpoint exists): on a GPU the
# steps are ~100x faster, so the run is longer for the kill to land mid-epoch.
SIZES = {"cpu": (1024, 8, 8), "cuda": (32768, 64, 64)}


def _train(device: str, out: Path, *extra: str) -> subprocess.Popen:
    images, every, _ = SIZES[device]
    argv = [
        sys.executable, "-m", "resnetlab", "train", "--recipe", "fast", "--model", "cifar_resnet",
        "--model-kwargs", "depth=8", "--train-subset", str(images), "--val-size", "256",
        "--eval-splits", "val", "--batch-size", "64", "--epochs", "2", "--checkpoint-every", str(every),
        "--deterministic", "--device", device, "--no-progress", "--out", str(out), *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(latest_checkpoint(run) / MODEL_FILE)[0]


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", marks=pytest.mark.slow),  # three training processes: 1.5 min on 2 cores
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")),
    ],
)
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(device, tmp_path):
    images, _, kill_at = SIZES[device]
    total = 2 * images // 64
    _finish(_train(device, tmp_path / "whole"))

    broken = tmp_path / "broken"
    proc = _train(device, broken)
    deadline = time.monotonic() + 300
    while not (broken / f"checkpoint-{kill_at:08d}").is_dir():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    steps = [int(p.name.split("-")[1]) for p in list_checkpoints(broken)]
    assert proc.returncode == -signal.SIGKILL and kill_at <= max(steps) < total, steps

    _finish(subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "train", "--resume", str(broken), "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ))  # fmt: skip
    whole, resumed = _weights(tmp_path / "whole"), _weights(broken)
    assert latest_checkpoint(broken).name == latest_checkpoint(tmp_path / "whole").name
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole), [
        k for k in whole if not torch.equal(whole[k], resumed[k])
    ]
