"""The benchmark scripts run (tiny sizes, on the CPU): no import errors, a table comes out."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a package at the repository root
    import benchmarks

    return benchmarks


def test_throughput_table(benchmarks, capsys):
    from benchmarks import throughput

    argv = ["--models", "resnet20", "--steps", "1", "--batch-size", "8", "--baseline-workers", "0"]
    assert throughput.main([*argv, "--repeats", "2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("resnet20")]
    assert len(rows) == 5 and rows[0][2:4] == ["loader", "w0"] and rows[0][-2] == "1.00x"
    for row in rows:  # the median lies in the range of the rounds
        low, high = map(float, row[-1].split("-"))
        assert low <= float(row[-3]) <= high


def test_throughput_rejects_zero_repeats(benchmarks, capsys):
    from benchmarks import throughput

    with pytest.raises(SystemExit) as exit_info:
        throughput.main(["--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats must be at least 1" in capsys.readouterr().err


def test_pipeline_table(benchmarks, capsys):
    from benchmarks import pipeline

    assert pipeline.main(["--images", "6", "--sizes", "64", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1] in (["per-image"], ["full"], ["reduced"], ["pack-320"], ["pack-256"], ["raw-256"])
    ]
    names = ["per-image", "full", "reduced", "pack-320", "pack-256", "raw-256"]
    assert [r[:2] for r in rows] == [[name, "64"] for name in names]
    assert rows[0][4] == "1.00x" and "one core of:" in out and out.count("packed in") == 3
    for row in rows:
        low, high = map(float, row[3].split("-"))
        assert low <= float(row[2]) <= high


def test_decode_accuracy_table(benchmarks, capsys):
    from benchmarks import decode_accuracy

    assert decode_accuracy.main(["--images", "60"]) == 0
    out = capsys.readouterr().out
    rows = {line[:32].strip(): line[32:].split() for line in out.splitlines()[2:]}
    assert list(rows) == [
        "in memory (28 px originals)",
        "--decode full",
        "--decode reduced",
        "pack (--max-side 56), reduced",
    ]
    assert rows["--decode full"][1] == "+0.00" and float(rows["in memory (28 px originals)"][2]) == 0.0
    assert all(0 < float(row[2]) < 20 for name, row in rows.items() if not name.startswith("in memory"))


def test_first_batch_table(benchmarks, capsys):
    from benchmarks import first_batch

    assert first_batch.main(["--files", "600"]) == 0
    out = capsys.readouterr().out
    rows = [line.rsplit(None, 2) for line in out.splitlines()[3:]]
    assert [row[0] for row in rows] == ["folder, cold", "folder, cached", "pack"]
    assert [row[1] for row in rows] == ["480", "480", "480"]  # 600 minus the val hold-out (at most 20%)
    assert all(0 < float(row[2]) < 120 for row in rows)


def test_gpu_script_runs_on_the_cpu(benchmarks, capsys):
    from benchmarks import gpu

    assert gpu.main(["--device", "cpu", "--steps", "1", "--batch-size", "2", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert out.count("resnet50") == 2 and out.count("resnet20") == 2


TINY_RUN = [
    "--recipe", "speedrun", "--model", "cifar_resnet", "--model-kwargs", "depth=8", "--epochs", "1",
    "--batch-size", "32", "--amp", "none",  # bf16 is emulated, 7.6x slower, on CPUs without AVX512-BF16
]  # fmt: skip


def test_time_to_accuracy_runs_one_train_process_per_seed_and_summarises(benchmarks, capsys, tmp_path):
    from benchmarks import time_to_accuracy

    argv = [*TINY_RUN, "--train-subset", "1024", "--seeds", "2", "--first-seed", "3", "--target", "0.2"]
    assert time_to_accuracy.main([*argv, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "Fashion-MNIST" in lines[0] and "CPUs" in lines[0]  # the CPU is named beside the times
    assert lines[1].startswith("resnetlab train --recipe speedrun --model cifar_resnet")
    assert lines[2].split() == ["seed", "minutes", "val", "acc", "test", "acc", "one", "view", "target"]
    rows = [line.split() for line in lines[3:]]
    assert [row[0] for row in rows] == ["3", "4", "mean"]
    for seed, row in zip((3, 4), rows, strict=False):  # each row is its run's own final test record
        final = [
            json.loads(r) for r in (tmp_path / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()
        ]
        test = [r for r in final if r.get("split") == "test"][-1]
        assert row[2] == "-" and row[3] == f"{100 * (1 - test['err']):.2f}%"  # speedrun: no val split
        assert row[4] == f"{100 * (1 - test['single_err']):.2f}%"  # speedrun scores flip TTA
        assert float(row[1]) > 0 and row[-1] == "met"
    assert rows[2][-3:] == ["in", "2/2", "seeds"] and "±" in rows[2][3]


def test_time_to_accuracy_tuning_probe_reports_val_only(benchmarks, capsys, tmp_path):
    from benchmarks import time_to_accuracy

    argv = [*TINY_RUN, "--train-subset", "256", "--val-size", "500", "--no-test", "--tta", "none"]
    assert time_to_accuracy.main([*argv, "--out", str(tmp_path)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[0] == "0" and row[2].endswith("%") and row[3:5] == ["-", "-"] and row[-1] == "-"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--val-size", "0", "--no-test"], "needs --val-size > 0"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--data", "cifar10"], "defined on fashion-mnist"),
        (["--alternate-flip", "--no-flip"], "--alternate-flip decides how --flip flips"),
        (["--lr", "fast"], "argument --lr: expected FLOAT"),
    ],
)
def test_time_to_accuracy_refuses_bad_flags_before_training(benchmarks, capsys, argv, message):
    from benchmarks import time_to_accuracy

    with pytest.raises(SystemExit) as exit_info:
        time_to_accuracy.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_throughput_times_autotuned_kernels_as_fit_does(benchmarks, monkeypatch):
    from benchmarks import throughput

    seen, real = [], throughput.train_step

    def recording(*args):
        seen.append(torch.backends.cudnn.benchmark)
        return real(*args)

    monkeypatch.setattr(throughput, "train_step", recording)
    saved = torch.backends.cudnn.benchmark
    data = throughput.synthetic(8, 16, num_classes=10)
    throughput.measure("resnet20", data, 4, 1, pipeline="resnetlab", amp="none", layout="NCHW")
    assert seen == [True] * 3 and torch.backends.cudnn.benchmark == saved


def test_the_dataloader_baselines_clock_starts_after_its_prefetched_batches(benchmarks, monkeypatch):
    """A loader-bound baseline: 2 workers make a batch of 4 in 0.2 s each, so 40 img/s, and the
    step itself costs nothing. The first 2 steps are slow (kernel selection on a GPU), which lets
    the workers fill their prefetch slots (2 x 2 batches) before the clock starts."""
    from benchmarks import throughput

    item, calls = throughput.PerSampleDataset.__getitem__, []

    def slow_item(self, i):
        time.sleep(0.05)
        return item(self, i)

    def step(*args):
        calls.append(1)
        if len(calls) <= 2:
            time.sleep(1.0)

    monkeypatch.setattr(throughput.PerSampleDataset, "__getitem__", slow_item)
    monkeypatch.setattr(throughput, "train_step", step)
    data = throughput.synthetic(64, 16, num_classes=10)
    rate = throughput.measure(
        "resnet20", data, 4, 4, pipeline="baseline", amp="none", layout="NCHW", workers=2
    )
    assert rate < 80, rate  # about 40; counting the 4 prefetched batches as instant gave thousands


def test_the_gpu_scripts_fp32_rows_run_without_tf32(benchmarks, monkeypatch, capsys):
    from benchmarks import gpu

    rows = []

    def fake_measure(model, data, batch, steps, *, amp, **kw):
        rows.append((model, amp, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return 100.0

    monkeypatch.setattr(gpu, "measure", fake_measure)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    assert gpu.main(["--device", "cpu", "--steps", "1", "--batch-size", "2", "--image-size", "32"]) == 0
    fp32 = [r for r in rows if r[1] == "none"]
    assert fp32 == [("resnet50", "none", False, False), ("resnet20", "none", False, False)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved
