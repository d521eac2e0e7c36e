"""CPU inference speed: the usual ways of running a ResNet against resnetlab's deployment paths.

Rows per model and batch size:
  eager fp32          the baseline: the eager model, fp32, NCHW, under `torch.inference_mode()`
                      (what torchvision users run); ratios are to this row;
  eager fp32 copies   the same with the blocks' in-place ReLU/addition switched off (a no-op
                      global forward hook does that), i.e. resnetlab's blocks before they matched
                      torchvision's;
  eager bf16 CL       bf16 autocast with channels_last model and input;
  compiled fp32       `fold_bn` then `torch.compile` (inductor, freezing on), fp32;
  compiled bf16 CL    the same under bf16 autocast with channels_last;
  ORT fp32 / int8     the file `resnetlab export` writes (BN folded, dynamic batch) in ONNX Runtime,
                      and its int8 QDQ version, calibrated on 256 inputs (resnet50: 32).
PT2E int8 (X86InductorQuantizer) needs torchao, which is not a dependency; it is not measured.

Batch 1 reports the median (p50) and p99 latency over every call; batch 32 the throughput of the
median call. Rows run in interleaved rounds (each row a few calls, then the next row, and again),
so a burst of load from elsewhere hits every row alike; ratios are of medians. resnet20 runs on
real Fashion-MNIST images (1x28x28); resnet50 on synthetic 3x224x224 inputs (ImageNet is not
here). Weights are random with non-trivial BN statistics: speed does not depend on their values.

    python -m benchmarks.inference                          # both models, ~10 min on 2 cores
    python -m benchmarks.inference --models resnet20 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from resnetlab.data import load_dataset
from resnetlab.export import fold_bn
from resnetlab.models import create_model
from resnetlab.weights.exported import OnnxModel, require_extra

# model -> (input shape without batch, calls per round at batch 1, at batch 32)
MODELS = {"resnet20": ((1, 28, 28), 40, 6), "resnet50": ((3, 224, 224), 8, 1)}
BATCHES = (1, 32)
ROW = "{:<9} {:>5}  {:<18} {:>9} {:>9} {:>9} {:>8}"


def _model(name: str) -> nn.Module:
    kwargs = {"in_chans": 1} if name == "resnet20" else {}
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _inputs(name: str, n: int) -> Tensor:
    shape = MODELS[name][0]
    if name == "resnet20":
        test = load_dataset("fashion-mnist", "test")
        x = test.images[:n].float() / 255
        return (x - test.mean[0]) / test.std[0]
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))


def _compiled(model: nn.Module, bf16: bool) -> Callable[[Tensor], Tensor]:
    import torch._inductor.config as inductor

    inductor.freezing = True  # weights become constants: inductor folds and prepacks them
    model = fold_bn(model)
    if bf16:
        model = model.to(memory_format=torch.channels_last)

    def run(x: Tensor) -> Tensor:
        if bf16:
            with torch.autocast("cpu", torch.bfloat16):
                return model(x.contiguous(memory_format=torch.channels_last))
        return model(x)

    # One static graph per batch size: inductor's dynamic-batch bf16 channels_last convs fail a
    # stride check in torch 2.13.
    return torch.compile(run, dynamic=False)


def _rows(name: str, model: nn.Module, folder: Path, calibration: Tensor) -> dict[str, Callable]:
    from resnetlab.export.int8 import quantize_onnx
    from resnetlab.export.onnx_export import export_onnx

    rows: dict[str, Callable] = {"eager fp32": model}

    def copies(x: Tensor) -> Tensor:
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
        try:
            return model(x)
        finally:
            handle.remove()

    rows["eager fp32 copies"] = copies
    cl = _model(name).to(memory_format=torch.channels_last)

    def bf16_cl(x: Tensor) -> Tensor:
        with torch.autocast("cpu", torch.bfloat16):
            return cl(x.contiguous(memory_format=torch.channels_last))

    rows["eager bf16 CL"] = bf16_cl
    rows["compiled fp32"] = _compiled(model, bf16=False)
    rows["compiled bf16 CL"] = _compiled(model, bf16=True)
    fp32, int8 = folder / f"{name}.onnx", folder / f"{name}-int8.onnx"
    export_onnx(fold_bn(model), calibration[:2], fp32, dynamic=True)
    quantize_onnx(fp32, int8, calibration, "input")
    rows["ORT fp32"] = OnnxModel(fp32)
    rows["ORT int8"] = OnnxModel(int8)
    return rows


def _measure(rows: dict[str, Callable], x: Tensor, calls: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every row, `calls` per round, rows interleaved within each round."""
    times: dict[str, list[float]] = {k: [] for k in rows}
    with torch.inference_mode():
        for fn in rows.values():  # warm-up: compilation, ORT's first-run allocations
            for _ in range(2 if len(x) == 1 else 1):
                fn(x)
        for _ in range(rounds):
            for key, fn in rows.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    fn(x)
                    times[key].append(time.perf_counter() - start)
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads")
    args = parser.parse_args(argv)
    for name in ("onnx", "onnxruntime", "onnxscript"):
        require_extra(name)
    torch.set_num_threads(args.threads)
    info = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        info = dict(line.split(":", 1) for line in f if ":" in line)
    cpu = info.get("model name\t", "?").strip()
    flags = info.get("flags\t\t", "").split()
    isa = [f for f in ("avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    print(f"CPU: {cpu}, {args.threads} threads, {' '.join(isa) or 'no VNNI/AMX'}; torch {torch.__version__}")
    print(ROW.format("model", "batch", "row", "p50 ms", "p99 ms", "img/s", "ratio"))
    with tempfile.TemporaryDirectory(prefix="resnetlab-bench-") as tmp:
        for name in args.models:
            model = _model(name)
            calibration = _inputs(name, 256 if name == "resnet20" else 32)
            rows = _rows(name, model, Path(tmp), calibration)
            for batch in BATCHES:
                x = _inputs(name, batch) if name == "resnet20" else calibration[:batch].contiguous()
                if len(x) < batch:
                    x = x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
                calls = MODELS[name][1] if batch == 1 else MODELS[name][2]
                times = _measure(rows, x, calls, args.rounds)
                base = statistics.median(times["eager fp32"])
                for key, t in times.items():
                    med = statistics.median(t)
                    p99 = f"{1000 * _p(t, 0.99):.2f}" if batch == 1 else ""
                    print(
                        ROW.format(
                            name,
                            batch,
                            key,
                            f"{1000 * med:.2f}",
                            p99,
                            f"{batch / med:.1f}",
                            f"{base / med:.2f}x",
                        ),
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
