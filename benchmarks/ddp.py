"""Data-parallel scaling on this machine: `resnetlab train` on 1 and 2 CPU processes, in one run.

Rows, all the same command line (recipe, model, global batch) on real Fashion-MNIST:
  plain      `resnetlab train`: one process with a thread per core (torch's default);
  torchrun   `torchrun --nproc-per-node 1`: one process, one thread (OMP_NUM_THREADS=1);
  torchrun   `torchrun --nproc-per-node 2`: two gloo ranks of one thread each, DDP, half the
             global batch per rank.
img/s is the engine's own train record (all ranks' images over the training time, evaluation
excluded), averaged over the records after the first, which holds the warm-up steps. The scaling
ratio is against one single-threaded process; on 2 shared cores expect well under 2x, since the
ranks also share memory bandwidth and each step waits for a gradient all-reduce.

    python -m benchmarks.ddp                                # resnet20, batch 128, a minute or two
    python -m benchmarks.ddp --model resnet56 --steps 40 --processes 1,2,4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from resnetlab.data.loader import available_cpus

ROW = "{:<10} {:>9} {:>14} {:>12} {:>9} {:>11} {:>12}"


def _launch(processes: int | None) -> list[str]:
    """The launcher prefix: none for the plain run, else one-node torchrun (a store on a free port)."""
    if processes is None:
        return [sys.executable, "-m", "resnetlab"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "resnetlab",
    ]


def _cores() -> int:
    return available_cpus()


def measure(processes: int | None, threads: int, train_args: list[str], window: int, timeout: float) -> float:
    """img/s of one `resnetlab train` run (plain when `processes` is None), from its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        run = Path(tmp) / "run"
        # Threads per process; TMPDIR catches the torchelastic_* folder torchrun leaves behind.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TMPDIR": tmp}
        command = [*_launch(processes), "train", *train_args, "--log-every", str(window), "--out", str(run)]
        # Own session, so a timeout takes torchrun's workers down with it.
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark run failed ({' '.join(command)}):\n{stderr[-2000:]}")
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["img_per_s"] for r in records if r["kind"] == "train"][1:]  # the first holds warm-up
    return sum(rates) / len(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ddp", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", help="registered model (default: resnet20)")
    parser.add_argument("--recipe", default="fast", help="training recipe (default: fast)")
    parser.add_argument("--batch-size", type=int, default=128, help="GLOBAL examples per step (default: 128)")
    parser.add_argument("--steps", type=int, default=5, help="steps per img/s record (default: 5)")
    parser.add_argument("--records", type=int, default=2, help="timed records after the warm-up one (2)")
    parser.add_argument(
        "--processes", default="1,2", help="torchrun process counts to compare (default: 1,2)"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per row (600)")
    args = parser.parse_args(argv)

    train_args = [
        "--recipe",
        args.recipe,
        "--model",
        args.model,
        "--data",
        "fashion-mnist",
        "--batch-size",
        str(args.batch_size),
        "--max-steps",
        str(args.steps * (args.records + 1)),
        "--eval-splits",
        "",
        "--device",
        "cpu",
        "--no-progress",
    ]
    counts = [int(n) for n in args.processes.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"data-parallel throughput, {args.model} on Fashion-MNIST 28x28, recipe {args.recipe}, "
        f"global batch {args.batch_size}, CPU ({_cores()} cores), gloo, torch {torch.__version__}, "
        f"load average {load:.1f}"
    )
    header = ROW.format("launch", "processes", "threads/proc", "batch/rank", "img/s", "vs 1x1", "vs plain")
    print(header)
    print("-" * len(header))
    plain = measure(None, _cores(), train_args, args.steps, args.timeout)
    rows = [("plain", 1, _cores(), args.batch_size, plain)]
    for n in counts:
        rate = measure(n, 1, train_args, args.steps, args.timeout)  # torchrun's default with N > 1
        rows.append(("torchrun", n, 1, args.batch_size // n, rate))
    single = next((rate for launch, n, *_, rate in rows if launch == "torchrun" and n == 1), None)
    for launch, n, threads, per_rank, rate in rows:
        vs_single = f"{rate / single:.2f}x" if single else "-"
        print(ROW.format(launch, n, threads, per_rank, f"{rate:.0f}", vs_single, f"{rate / plain:.2f}x"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
