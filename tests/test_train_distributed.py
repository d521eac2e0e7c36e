"""`torchrun -m resnetlab train` on 2 gloo processes: the real CLI and engine, on real Fashion-MNIST.

The reference is the same config trained in this process. BN is frozen (eval-mode statistics)
and augmentation is off, so 2 ranks of 8 examples compute the same steps as 1 process of 16,
up to fp32 rounding; everything else is the `fast` recipe (Nesterov, one-cycle, label
smoothing, EMA).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from ddp_harness import (
    RESTARTABLE,
    drift,
    launched,
    one_thread,
    spawn,
    torchrun,
    torchrun_command,
    worker_pids,
)
from resnetlab.cli import build_parser, main
from resnetlab.models import create_model
from resnetlab.train import TrainConfig, fit
from resnetlab.train.commands import config_from_args
from resnetlab.train.distributed import setup_runtime, teardown_runtime
from resnetlab.train.eval_source import evaluate_checkpoint
from resnetlab.train.rundir import read_metrics
from resnetlab.weights import load
from resnetlab.weights.checkpoint import EMA_FILE, MODEL_FILE, latest_checkpoint, load_weights

# Both modules start real process groups (2 ranks, plus torchrun's agent); on one xdist worker
# (`--dist loadgroup`) they run one group at a time instead of oversubscribing 2 cores with 4-6
# processes, and their module fixtures (the reference runs) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("process-groups")

FLAGS = [
    "--recipe", "fast",
    "--model", "cifar_resnet",
    "--model-kwargs", "depth=8,norm=frozen_bn",
    "--train-subset", "256",
    "--val-size", "128",
    "--eval-splits", "val",
    "--batch-size", "16",  # global: 8 per rank
    "--epochs", "2",  # 32 steps
    "--lr", "0.05",
    "--crop-padding", "0",
    "--no-flip",
    "--amp", "none",
    "--no-channels-last",
    "--checkpoint-every", "4",
    "--log-every", "4",
    "--device", "cpu",
    "--no-progress",
]  # fmt: skip
TOTAL_STEPS = 32
CRASH_STEP = 15  # the single-process run stops here; its last checkpoint is step 12
TRAIN = ["-m", "resnetlab", "train"]
LOGS = ["--log-dir", "logs", "--redirects", "3"]  # each rank's stdout/stderr in its own file


def _config(out: Path) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *FLAGS, "--out", str(out)]))[0]


def _model(cfg: TrainConfig) -> torch.nn.Module:
    """The network the engine builds for `cfg`: created right after seeding with cfg.seed."""
    torch.manual_seed(cfg.seed)
    return create_model(cfg.model, num_classes=10, in_chans=1, **cfg.model_kwargs)


class _Crash(Exception):
    pass


def _crash_at(model: torch.nn.Module, step: int) -> torch.nn.Module:
    """Make the `step`-th training forward raise, as if the process died there."""
    calls = itertools.count(1)

    def hook(module, args):
        if module.training and next(calls) == step:
            raise _Crash

    model.register_forward_pre_hook(hook)
    return model


@pytest.fixture(scope="module", autouse=True)
def _single_threaded():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict[str, Path]:
    """In this process: the whole run, and the same run stopped at CRASH_STEP (checkpoint at 12)."""
    root = tmp_path_factory.mktemp("single")
    whole = fit(_config(root / "whole"), model=_model(_config(root / "whole")))
    with pytest.raises(_Crash):
        fit(_config(root / "half"), model=_crash_at(_model(_config(root / "half")), CRASH_STEP))
    assert latest_checkpoint(root / "half").name == "checkpoint-00000012"
    return {"whole": whole.run_dir, "half": root / "half"}


def _weights(run_dir: Path, name: str = MODEL_FILE) -> dict[str, torch.Tensor]:
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint.name == f"checkpoint-{TOTAL_STEPS:08d}"
    return load_weights(checkpoint / name)[0]


def _assert_same_weights(run_dir: Path, reference: Path) -> None:
    start = _model(_config(reference)).state_dict()
    for name in (MODEL_FILE, EMA_FILE):
        ours, theirs = _weights(run_dir, name), _weights(reference, name)
        assert ours.keys() == theirs.keys()  # the bare model: no "module." prefix from DDP
        assert drift(ours, theirs, start) < 1e-2, name


def _rank_logs(logs: Path, attempt: int, rank: int) -> tuple[str, str]:
    """(stdout, stderr) of one worker, as torchrun --log-dir --redirects 3 kept them."""
    (folder,) = logs.glob(f"*/attempt_{attempt}/{rank}")
    return (folder / "stdout.log").read_text(), (folder / "stderr.log").read_text()


def _workers_stderr(logs: Path) -> str:
    """The end of every worker's stderr: why a rank failed, for the assertion message."""
    return "".join(f"\n--- {f}\n{f.read_text()[-2000:]}" for f in sorted(logs.rglob("stderr.log")))


def _measured(record: dict) -> dict:
    """A metrics record's numbers that depend on the weights: loss, err, top5_err (and lr)."""
    return {k: v for k, v in record.items() if k not in ("kind", "split", "step", "epoch", "img_per_s")}


@pytest.fixture(scope="module")
def resumed(single, tmp_path_factory) -> Path:
    """`torchrun --nproc-per-node 2 ... train --resume half`: 2 ranks finish a 1-process run."""
    cwd = tmp_path_factory.mktemp("resumed")
    shutil.copytree(single["half"], cwd / "run")
    done = torchrun([*TRAIN, "--resume", "run"], cwd=cwd, launcher=LOGS, timeout=180)
    assert done.returncode == 0, done.stderr[-1500:] + _workers_stderr(cwd / "logs")
    return cwd


def test_two_ranks_continue_a_single_process_run_to_the_same_weights(resumed, single):
    _assert_same_weights(resumed / "run", single["whole"])
    ours, theirs = read_metrics(resumed / "run"), read_metrics(single["whole"])
    assert [(r["kind"], r["step"]) for r in ours] == [(r["kind"], r["step"]) for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert _measured(a) == pytest.approx(_measured(b), rel=1e-3, abs=2 / 64), (a, b)  # err: 2 flips of 64


def test_only_rank_0_writes_files_and_prints(resumed):
    assert sorted(p.name for p in resumed.iterdir()) == ["logs", "run"]
    run_files = sorted(p.name for p in (resumed / "run").iterdir())
    assert run_files == ["checkpoint-00000032", "config.json", "curves.png", "metrics.jsonl"]
    steps = [(r["kind"], r["step"]) for r in read_metrics(resumed / "run")]
    assert len(steps) == len(set(steps))  # one writer: no record twice
    stdout0, _ = _rank_logs(resumed / "logs", 0, 0)
    assert stdout0.count("final: val accuracy") == 1 and "run directory: run" in stdout0
    assert _rank_logs(resumed / "logs", 0, 1) == ("", "")  # rank 1 said nothing


def test_distributed_eval_equals_single_process_eval_of_the_same_checkpoint(resumed, tmp_path):
    final = read_metrics(resumed / "run")[-1]  # evaluated by 2 ranks, 64 examples each
    assert (final["kind"], final["split"], final["step"]) == ("eval", "val", TOTAL_STEPS)
    report = evaluate_checkpoint(resumed / "run", split="val", device="cpu", figure=tmp_path / "c.png")
    assert report.result.count == 128  # on one process, written by two: the checkpoint loads on 1 CPU
    assert report.result.err == final["err"] and report.result.top5_err == final["top5_err"]
    assert report.result.loss == pytest.approx(final["loss"], rel=1e-5)


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the workers through Linux /proc")
def test_a_killed_worker_restarts_the_group_which_resumes_and_finishes(single, tmp_path):
    command = torchrun_command([*TRAIN, *FLAGS, "--out", "run"], launcher=["--max-restarts", "1", *LOGS])
    with launched(command, cwd=tmp_path, env=RESTARTABLE) as agent:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "run").glob("checkpoint-*")):  # renamed into place when complete
            assert agent.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.02)
        os.kill(worker_pids(agent.pid)[1], signal.SIGKILL)  # rank 1, mid-run
        _, launcher_log = agent.communicate(timeout=180)
    assert agent.returncode == 0, launcher_log[-1500:] + _workers_stderr(tmp_path / "logs")
    _, restarted = _rank_logs(tmp_path / "logs", 1, 0)
    assert "restart 1 of 1: resuming run from checkpoint-" in restarted
    resumed_from = int(restarted.split("checkpoint-")[1].split()[0])
    assert 0 < resumed_from < TOTAL_STEPS  # the kill landed mid-run
    # The final checkpoint loads on one CPU, and training lost nothing: it equals the
    # uninterrupted single-process run, records included (those after the checkpoint were redone).
    model, _ = load(tmp_path / "run")
    meta = model.pretrained_cfg
    assert meta["step"] == TOTAL_STEPS and not model.training
    _assert_same_weights(tmp_path / "run", single["whole"])
    steps = [(r["kind"], r["step"]) for r in read_metrics(tmp_path / "run")]
    assert steps == [(r["kind"], r["step"]) for r in read_metrics(single["whole"])]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2


def _stochastic_depth_runs(root: str) -> list[str]:
    """In each of 2 ranks: a 16-step run with stochastic depth, and the same run crashed at step 7
    (checkpoint at 4) and resumed, in one process group; returns the names of the resumed runs."""
    runtime = setup_runtime("cpu")
    resumed = []
    try:
        for name, crash in (("whole", None), ("half", 7)):
            cfg = dataclasses.replace(_config(Path(root) / name), epochs=1)
            cfg = dataclasses.replace(cfg, model_kwargs={**cfg.model_kwargs, "drop_path_rate": 0.5})
            model = _model(cfg)
            try:
                fit(cfg, model=_crash_at(model, crash) if crash else model, runtime=runtime)
            except _Crash:
                assert latest_checkpoint(Path(root) / name).name == "checkpoint-00000004"
                fit(cfg, resume=True, runtime=runtime)
                resumed.append(name)
    finally:
        teardown_runtime(runtime)
    return resumed


def test_stop_and_resume_on_two_ranks_keeps_each_ranks_stochastic_depth_draws(tmp_path):
    """Each rank draws its own drop-path masks; the checkpoint keeps every rank's RNG state, so a
    resumed 2-rank run ends with the uninterrupted run's weights, bit for bit."""
    assert spawn(_stochastic_depth_runs, str(tmp_path), timeout=120) == [["half"], ["half"]]
    for name in (MODEL_FILE, EMA_FILE):
        whole = load_weights(latest_checkpoint(tmp_path / "whole") / name)[0]
        resumed = load_weights(latest_checkpoint(tmp_path / "half") / name)[0]
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name


def test_max_restarts_without_out_is_refused_up_front(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_MAX_RESTARTS": "2"}.items():
        monkeypatch.setenv(name, value)
    assert main(["train", *FLAGS]) == 2
    assert "--max-restarts needs --out" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_half_set_launch_environment_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", *FLAGS, "--out", "run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnetlab: error: WORLD_SIZE is set but RANK is not") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_restarted_group_resumes_its_run_even_one_that_had_finished(tmp_path, monkeypatch, capsys):
    """torchrun restarts with the same command line, --overwrite included: the run is continued,
    never deleted, and a run whose last checkpoint is its final step trains no further."""
    cfg = dataclasses.replace(_config(tmp_path / "run"), max_steps=6)  # not a whole epoch (16 steps)
    fit(cfg)
    before = read_metrics(tmp_path / "run")
    restart = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "TORCHELASTIC_MAX_RESTARTS": "1",
    }
    for name, value in restart.items():
        monkeypatch.setenv(name, value)
    result = fit(cfg, overwrite=True)
    assert f"restart 1 of 1: resuming {tmp_path / 'run'} from checkpoint-00000006" in capsys.readouterr().err
    assert read_metrics(tmp_path / "run") == before == result.history
    assert latest_checkpoint(tmp_path / "run").name == "checkpoint-00000006"


@pytest.mark.slow
def test_ddp_benchmark_prints_its_table(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # benchmarks/ at the root
    from benchmarks import ddp

    argv = ["--batch-size", "8", "--steps", "1", "--records", "1", "--processes", "2"]
    assert ddp.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[3:]]
    assert [row[:3] for row in rows] == [
        ["plain", "1", str(ddp._cores())],
        ["torchrun", "2", "1"],
    ]
    assert rows[0][-1] == "1.00x" and float(rows[1][4]) > 0


def _task_runs(root: str) -> list[dict]:
    """In each of 2 ranks: a 4-step segmentation and a 4-step detection run on 48 px scenes, each
    evaluated on 31 val scenes split between the ranks (uneven shards); the last eval records."""
    runtime = setup_runtime("cpu")
    records = []
    try:
        for task in ("segment", "detect"):
            argv = [
                "train", "--task", task, "--fpn", "--data", "fashion-scenes", "--image-size", "48",
                "--model", "cifar_resnet", "--model-kwargs", "depth=8", "--train-subset", "64",
                "--val-size", "31", "--eval-splits", "val", "--batch-size", "16", "--max-steps", "4",
                "--amp", "none", "--device", "cpu", "--no-progress", "--out", str(Path(root) / task),
            ]  # fmt: skip
            result = fit(config_from_args(build_parser().parse_args(argv))[0], runtime=runtime)
            records.append([r for r in result.history if r["kind"] == "eval"][-1])
    finally:
        teardown_runtime(runtime)
    return records


def test_segmentation_and_detection_runs_on_two_ranks_score_every_scene_once(tmp_path):
    """Both ranks score their shard; the pixel confusion is summed and the boxes gathered before
    COCO counts, so the record equals one process's evaluation of the same checkpoint."""
    records = spawn(_task_runs, str(tmp_path), timeout=180)[0]
    for task, record in zip(("segment", "detect"), records, strict=True):
        report = evaluate_checkpoint(tmp_path / task, split="val", device="cpu")
        assert report.result.count == (31 if task == "detect" else 31 * 48 * 48)  # scenes, or pixels
        ours = report.result.record()
        assert ours == pytest.approx({k: v for k, v in record.items() if k in ours}, rel=1e-5, abs=1e-6)


def test_the_harness_kills_an_orphan_holding_the_launchers_output(tmp_path):
    """A process in a session of its own, left behind by its launcher with the output pipes open
    (as a torchrun worker can be): found by the pipes and killed, so reading the output ends."""
    start = time.monotonic()
    with launched(["sh", "-c", "setsid sleep 300 & echo $!"], cwd=tmp_path) as proc:
        orphan = int(proc.stdout.readline())
        proc.wait(timeout=10)
    stat = Path(f"/proc/{orphan}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone, or a zombie
    assert time.monotonic() - start < 30
