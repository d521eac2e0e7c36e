"""Training throughput (img/s): resnetlab's loop against a conventionally written one, in one run.

Rows per model:
  loader wN  the baseline: a torch DataLoader with N worker processes over a Dataset that
             normalises, pads, crops and flips one image at a time in Python (the usual tutorial
             loop), fp32, NCHW; ratios are to the faster of the baseline rows;
  resnetlab  the engine's path: uint8 data resident on the device, batched augmentation
             (resnetlab.data.make_loader), `engine.train_step`, in fp32 or bf16 autocast, NCHW or
             channels_last.
Every row runs the same SGD step (forward, fp32 loss, backward, Nesterov SGD); only the input
pipeline, the precision and the memory layout differ. resnet20 and resnet56 train on real
Fashion-MNIST (1x28x28); resnet50 on synthetic 3x224x224 images, since ImageNet is not here.

Rows are measured in interleaved rounds (every row once, then again, `--repeats` times) and each
row reports its median and the range of its rounds, so a burst of load from elsewhere hits all
rows alike instead of one; the ratios are of medians.

    python -m benchmarks.throughput                       # the default set, a few minutes on 2 cores
    python -m benchmarks.throughput --steps 60 --models resnet20 --batch-size 256 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from resnetlab.data import Augment, ImageArrays, load_dataset, make_loader
from resnetlab.models import create_model
from resnetlab.train import TrainConfig
from resnetlab.train.engine import train_step
from resnetlab.train.kernels import kernel_settings
from resnetlab.train.optim import build_optimizer
from resnetlab.train.precision import grad_scaler
from resnetlab.train.tasks import Classify

# (model, data, batch size, timed steps): resnet50 at 224 is ~100x the work of resnet20 at 28.
DEFAULT_MODELS = {
    "resnet20": ("fashion-mnist", 128, 30),
    "resnet56": ("fashion-mnist", 128, 12),
    "resnet50": ("synthetic-224", 16, 3),
}
ROW = "{:<9} {:<9} {:<10} {:<9} {:<14} {:>7} {:>11} {:>12}"
# (autocast, memory layout) of the resnetlab rows; autocast "none" is plain fp32.
VARIANTS = [("none", "NCHW"), ("none", "channels_last"), ("bf16", "NCHW"), ("bf16", "channels_last")]


class PerSampleDataset(Dataset):
    """The conventional input pipeline: one image at a time, float conversion, normalisation,
    zero-pad-and-crop and flip in Python, as torchvision-style transforms do."""

    def __init__(self, data: ImageArrays, crop_padding: int):
        self.data = data
        self.padding = crop_padding
        self.mean = torch.tensor(data.mean).view(-1, 1, 1)
        self.std = torch.tensor(data.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = (self.data.images[i].float() / 255 - self.mean) / self.std  # (C, H, W)
        size, p = x.shape[-1], self.padding
        if p:
            x = F.pad(x, (p, p, p, p))
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = x[:, top : top + size, left : left + size]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.data.labels[i])


def synthetic(n: int, size: int, num_classes: int = 1000) -> ImageArrays:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return ImageArrays(images, labels, [str(i) for i in range(num_classes)], (0.5,) * 3, (0.25,) * 3)


def measure(
    model_name: str,
    data: ImageArrays,
    batch_size: int,
    steps: int,
    *,
    pipeline: str,
    amp: str,
    layout: str,
    device: torch.device | str = "cpu",
    workers: int = 0,
    compile: bool = False,
) -> float:
    """Images per second over `steps` SGD steps, after `warmup_steps(pipeline, workers)` untimed ones.

    Kernels are picked as `fit` picks them (cuDNN autotuning on), and the DataLoader's prefetched
    batches are used up before the clock starts, so a loader-bound baseline shows its real rate.
    compile: the forward and backward through `torch.compile`, as `--compile` trains; its
    compilation happens in the untimed steps.
    """
    device = torch.device(device)
    cfg = TrainConfig(model=model_name, amp=amp, nesterov=True, channels_last=layout == "channels_last")
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=data.num_classes, in_chans=data.in_chans)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg, model)
    scaler = grad_scaler(device, amp)
    padding = 2 if data.image_size < 64 else 0
    if pipeline == "baseline":
        batches = DataLoader(
            PerSampleDataset(data, padding),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
        )
    else:
        augment = Augment(crop_padding=padding, flip=True)
        batches = make_loader(
            data,
            batch_size=batch_size,
            train=True,
            device=device,
            augment=augment,
            channels_last=cfg.channels_last,
        )
    model.train()
    task = Classify(data, label_smoothing=cfg.label_smoothing)  # the loss and errors fit computes
    train_model = torch.compile(model) if compile else model
    warmup = warmup_steps(pipeline, workers) + (2 if compile else 0)  # compile, then recompile-free
    with kernel_settings(cfg.deterministic, device):
        it = iter(batches)
        for step in range(steps + warmup):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(batches)
                x, y = next(it)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # the baseline's copy
            train_step(train_model, model, optimizer, scaler, x, y, cfg, device, task)
        _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def warmup_steps(pipeline: str, workers: int) -> int:
    """Untimed steps: 2 to pick and build kernels, then, for the DataLoader baseline, as many as it
    prefetches (workers x prefetch_factor 2), which are ready before the timed steps ask for them."""
    return 2 + (2 * workers if pipeline == "baseline" else 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated subset of the rows"
    )
    parser.add_argument("--steps", type=int, help="timed steps per row (default: per model, see source)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default: per model)")
    parser.add_argument(
        "--baseline-workers",
        default="0,2",
        help="DataLoader worker counts of the baseline rows; ratios are to the fastest (default: 0,2)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds per row; reports the median (default: 3)"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = torch.get_num_threads()
    print(f"training throughput, CPU, {threads} threads, torch {torch.__version__}, load average {load:.1f}")
    print(f"median of {args.repeats} interleaved rounds per row; range = slowest-fastest round")
    header = ROW.format("model", "input", "pipeline", "precision", "layout", "img/s", "vs baseline", "range")
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        data_name, batch_size, steps = DEFAULT_MODELS[name]
        batch_size, steps = args.batch_size or batch_size, args.steps or steps
        if data_name == "synthetic-224":
            most = max(warmup_steps("baseline", int(w)) for w in args.baseline_workers.split(","))
            data = synthetic(batch_size * (steps + most), 224)  # one pass: no worker restart in a row
        else:
            data = load_dataset(data_name, "train")
        shape = "x".join(map(str, (data.in_chans, data.image_size, data.image_size)))
        # (pipeline, autocast, layout, DataLoader workers): the baselines, then resnetlab's variants.
        rows = [("baseline", "none", "NCHW", int(w)) for w in args.baseline_workers.split(",")]
        rows += [("resnetlab", amp, layout, 0) for amp, layout in VARIANTS]
        rounds = [
            [
                measure(
                    name, data, batch_size, steps, pipeline=pipeline, amp=amp, layout=layout, workers=workers
                )
                for pipeline, amp, layout, workers in rows
            ]
            for _ in range(args.repeats)
        ]
        per_row = [sorted(rates) for rates in zip(*rounds, strict=True)]
        medians = [statistics.median(rates) for rates in per_row]
        base = max(rate for rate, row in zip(medians, rows, strict=True) if row[0] == "baseline")
        for (pipeline, amp, layout, workers), rate, rates in zip(rows, medians, per_row, strict=True):
            shown = f"loader w{workers}" if pipeline == "baseline" else pipeline
            precision = "fp32" if amp == "none" else amp
            spread = f"{rates[0]:.0f}-{rates[-1]:.0f}"
            print(
                ROW.format(
                    name, shape, shown, precision, layout, f"{rate:.0f}", f"{rate / base:.2f}x", spread
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
