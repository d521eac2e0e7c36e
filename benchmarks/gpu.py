"""Training throughput on a GPU: resnet50 with bf16 and channels_last, resnet20 with its data on the GPU.

Rows, all in one run on the same device:
  resnet50  synthetic 3x224x224, batch 256: fp32 NCHW (TF32 off, the plain baseline), bf16 autocast
            with channels_last, fp16 autocast with loss scaling and channels_last, and with
            --compile the bf16 row again through torch.compile;
  resnet20  real Fashion-MNIST, batch 512: the conventional CPU DataLoader with per-sample transforms
            (4 workers) copied to the GPU in fp32, against uint8 data resident on the GPU with batched
            augmentation in bf16 and channels_last.
The anchor to compare with: NVIDIA's ResNet-50 v1.5 reaches 2,470 img/s with AMP on one A100.

    python -m benchmarks.gpu                     # on a machine with CUDA
    python -m benchmarks.gpu --device cpu --steps 1 --batch-size 4 --image-size 64   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

import torch

from benchmarks.throughput import measure, synthetic
from resnetlab.data import load_dataset

ROW = "{:<9} {:<9} {:<10} {:<13} {:<14} {:>7} {:>11}"  # one timed run per row, ratios to the first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda when present)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row (default: 20)")
    parser.add_argument(
        "--batch-size", type=int, help="examples per step (default: 256 resnet50, 512 resnet20)"
    )
    parser.add_argument(
        "--image-size", type=int, default=224, help="resnet50 input side in pixels (default: 224)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time resnet50 bf16 channels_last under torch.compile"
    )
    args = parser.parse_args(argv)
    device = chosen_device(args.device, "benchmarks.gpu")
    if device is None:
        return 0
    name = device_name(device)
    print(f"training throughput on {name}, torch {torch.__version__}")
    header = ROW.format("model", "input", "pipeline", "precision", "layout", "img/s", "vs first")
    print(header)
    print("-" * len(header))

    batch = args.batch_size or 256
    data = synthetic(batch * 4, args.image_size)
    shape = f"3x{args.image_size}x{args.image_size}"
    rows = [("none", "NCHW", False), ("bf16", "channels_last", False)]
    rows += [("fp16", "channels_last", False)] if device.type == "cuda" else []
    rows += [("bf16", "channels_last", True)] if args.compile else []
    base = None
    for amp, layout, compiled in rows:
        with _tf32(amp != "none"):
            rate = measure(
                "resnet50",
                data,
                batch,
                args.steps,
                pipeline="resnetlab",
                amp=amp,
                layout=layout,
                device=device,
                compile=compiled,
            )
        base = base or rate
        precision = ("fp32" if amp == "none" else amp) + ("+compile" if compiled else "")
        print(
            ROW.format(
                "resnet50", shape, "resident", precision, layout, f"{rate:.0f}", f"{rate / base:.2f}x"
            ),
            flush=True,
        )

    batch = args.batch_size or 512
    fashion = load_dataset("fashion-mnist", "train")
    workers = min(4, os.cpu_count() or 1)
    base = None
    for pipeline, amp, layout in [("baseline", "none", "NCHW"), ("resnetlab", "bf16", "channels_last")]:
        # the baseline as usually written for a GPU: worker processes and pinned memory
        with _tf32(amp != "none"):
            rate = measure(
                "resnet20",
                fashion,
                batch,
                args.steps,
                pipeline=pipeline,
                amp=amp,
                layout=layout,
                device=device,
                workers=workers,
            )
        base = base or rate
        label = f"loader w{workers}" if pipeline == "baseline" else "resident"
        precision = "fp32" if amp == "none" else amp
        print(
            ROW.format("resnet20", "1x28x28", label, precision, layout, f"{rate:.0f}", f"{rate / base:.2f}x"),
            flush=True,
        )
    return 0


def chosen_device(flag: str, prog: str) -> torch.device | None:
    """The device a GPU benchmark runs on: --device as given, or with "auto" CUDA when present;
    None (and a line saying it is skipped) when "auto" finds no GPU."""
    if flag != "auto":
        return torch.device(flag)
    if not torch.cuda.is_available():
        print(f"{prog}: no CUDA device here; skipped (use --device cpu for a smoke run)")
        return None
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls and convolutions on or off, restored afterwards. fp32 rows turn it off: TF32
    tensor cores would make the baseline a different precision (cuDNN allows them by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


if __name__ == "__main__":
    raise SystemExit(main())
