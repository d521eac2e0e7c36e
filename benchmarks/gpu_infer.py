"""Inference on a GPU: resnet50 (random weights; speed does not depend on them), batch 1 latency and
batch-B throughput, eager fp32 against eager bf16 channels_last, torch.compile of the latter, and
the `resnetlab export` ONNX file in ONNX Runtime (its CUDA provider where installed, else said).

    python -m benchmarks.gpu_infer                                   # on a machine with CUDA
    python -m benchmarks.gpu_infer --device cpu --model resnet20 --batch 8 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.gpu import chosen_device, device_name
from resnetlab.export.fold import fold_bn
from resnetlab.models import create_model


def timed(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int, device: torch.device
) -> float:
    """Median seconds of one call over `repeats`, after 3 untimed ones."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        run(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnx_runner(model_name: str, folder: Path, device: torch.device) -> tuple[Callable | None, str]:
    """(runner, provider) of `resnetlab export MODEL` in ONNX Runtime; (None, why) when it cannot run."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    from resnetlab.export.pipeline import ExportOptions, export_model

    path = folder / "m.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        export_model(model_name, ExportOptions(format="onnx", out=path))
    wanted = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if wanted not in ort.get_available_providers():
        return None, f"{wanted} not in this onnxruntime ({', '.join(ort.get_available_providers())})"
    session = ort.InferenceSession(str(path), providers=[wanted])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])

    return run, wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_infer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (default: cuda when present)")
    parser.add_argument("--model", default="resnet50", help="registered model (default: resnet50)")
    parser.add_argument("--batch", type=int, default=256, help="throughput batch (default: 256)")
    parser.add_argument("--rounds", type=int, default=3, help="compile and time torch.compile when > 1")
    args = parser.parse_args(argv)
    device = chosen_device(args.device, "benchmarks.gpu_infer")
    if device is None:
        return 0
    torch.manual_seed(0)
    model = fold_bn(create_model(args.model).eval()).to(device)
    size = 224 if model.family == "imagenet" else 32
    name = device_name(device)
    print(f"{args.model} inference on {name}, {size} px, torch {torch.__version__}")
    print(f"{'runtime':<34} {'batch 1 ms':>10} {f'batch {args.batch} img/s':>16}")
    repeats = 10 * args.rounds

    def eager(dtype: torch.dtype, layout: torch.memory_format) -> Callable:
        net = model.to(memory_format=layout)

        @torch.inference_mode()
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                return net(x.to(device, memory_format=layout))

        return run

    rows: list[tuple[str, Callable | None, str]] = [
        ("eager fp32 NCHW", eager(torch.float32, torch.contiguous_format), ""),
        ("eager bf16 channels_last", eager(torch.bfloat16, torch.channels_last), ""),
    ]
    if args.rounds > 1:  # compilation takes a minute or more: not in a smoke run
        rows.append(
            (
                "torch.compile bf16 channels_last",
                torch.compile(eager(torch.bfloat16, torch.channels_last)),
                "",
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        runner, provider = onnx_runner(args.model, Path(tmp), device)
        rows.append(
            (
                f"ONNX Runtime ({provider.removesuffix('ExecutionProvider') if runner else 'skipped'})",
                runner,
                provider,
            )
        )
        for label, run, why in rows:
            if run is None:
                print(f"{label:<34} {'-':>10} {'-':>16}   {why}")
                continue
            one = timed(run, torch.randn(1, model.in_chans, size, size, device=device), repeats, device)
            many = timed(
                run, torch.randn(args.batch, model.in_chans, size, size, device=device), args.rounds, device
            )
            print(f"{label:<34} {1000 * one:>10.2f} {args.batch / many:>16.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
