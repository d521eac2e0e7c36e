"""The CUDA paths, checked on the CPU (issue 15): no GPU has run them yet, so each test puts a
stand-in where the GPU would be. torch.cuda.* is monkeypatched to act like a GPU machine, and
2 gloo ranks stand in for an NCCL group. Each test fails on the code before its fix.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import subprocess
import sys
import time
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

import resnetlab
from ddp_harness import free_port, one_thread, rank_env, spawn
from resnetlab.cli import build_parser, main
from resnetlab.data import load_dataset
from resnetlab.errors import Error
from resnetlab.experiments import EXPERIMENTS
from resnetlab.experiments.common import build_twin, fixed_batches
from resnetlab.experiments.common import evaluate as experiment_evaluate
from resnetlab.experiments.responses import response_moments
from resnetlab.models import create_model
from resnetlab.train import fit, get_recipe, precision
from resnetlab.train.distributed import Runtime, resolve_device, setup_runtime, teardown_runtime
from resnetlab.train.ema import EMA
from resnetlab.train.eval_source import evaluate_checkpoint
from resnetlab.train.kernels import kernel_settings
from resnetlab.train.meter import TrainMeter
from resnetlab.train.rundir import read_metrics
from resnetlab.weights.checkpoint import EMA_FILE, latest_checkpoint, load_weights

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

# A 4-block CIFAR ResNet (75k parameters) with real BN, on a slice of real Fashion-MNIST.
TINY = dataclasses.replace(
    get_recipe("fast"),
    model="cifar_resnet",
    model_kwargs={"depth": 8},
    train_subset=256,
    val_size=128,
    eval_splits=("val",),
    batch_size=32,
    epochs=1,
    log_every=4,
    ema_decay=0.9,
    amp="none",
    channels_last=False,
    device="cpu",
    progress=False,
)


# --- 2: CUBLAS_WORKSPACE_CONFIG before any CUDA work ------------------------------------------


def _import_resnetlab_env(env: dict[str, str]) -> str:
    code = "import os, resnetlab; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return done.stdout.strip()


def test_importing_the_package_sets_the_cublas_workspace_unless_the_user_did():
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    assert _import_resnetlab_env(env) == ":4096:8"
    assert _import_resnetlab_env({**env, "CUBLAS_WORKSPACE_CONFIG": ":16:8"}) == ":16:8"


def test_the_workspace_is_left_alone_once_cuda_was_used_before_the_import(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    resnetlab._set_cublas_workspace()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # too late to take effect: fit refuses instead
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    resnetlab._set_cublas_workspace()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_cuda_fit_after_cuda_was_used_without_the_workspace_is_one_clear_error(monkeypatch):
    """A notebook that used the GPU before importing resnetlab: cuBLAS has taken its workspace."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    unset = r"CUBLAS_WORKSPACE_CONFIG=:4096:8 \(it is unset\)"
    with pytest.raises(Error, match=unset), kernel_settings(True, CUDA):
        pass
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # the user's own, not a deterministic one
    with pytest.raises(Error, match="it is ':0:0'"), kernel_settings(True, CUDA):
        pass
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with kernel_settings(True, CUDA):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


# --- 3 and 5, on one pair of gloo ranks -------------------------------------------------------


def _two_rank_report(out: str, port: int) -> dict:
    """In each of 2 ranks: (3) rank 0 loads data for 2.5 s while the other waits, in a group whose
    collectives time out after 1 s (as NCCL's watchdog does after 10 minutes); then (5) `fit` in a
    fresh group, BN statistics updated by each rank's own batches. Returns when each rank's load
    ended and the trained (EMA) model."""
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=1))
    try:
        runtime = Runtime(torch.device("cpu"), rank=rank, world_size=2)

        def load() -> int:
            if runtime.is_main:
                time.sleep(2.5)  # a download, or a scan of a large image folder
            return time.monotonic_ns()

        loaded = runtime.main_first(load)
    finally:
        dist.destroy_process_group()
    os.environ["MASTER_PORT"] = str(port)
    runtime = setup_runtime("cpu")
    try:
        result = fit(dataclasses.replace(TINY, out=out, max_steps=6), runtime=runtime)
        return {"loaded": loaded, "ema": {k: v.clone() for k, v in result.model.state_dict().items()}}
    finally:
        teardown_runtime(runtime)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], Path]:
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    return spawn(_two_rank_report, str(run_dir), free_port(), timeout=120), run_dir


@pytest.mark.xdist_group("process-groups")
def test_ranks_wait_for_rank_0s_data_beyond_the_training_groups_timeout(two_ranks):
    (rank0, rank1), _ = two_ranks
    assert rank1["loaded"] > rank0["loaded"]  # rank 1 loaded after rank 0, and did not time out


@pytest.mark.xdist_group("process-groups")
def test_two_ranks_evaluate_the_saved_model_with_bn_in_train_mode(two_ranks, tmp_path):
    (rank0, rank1), run_dir = two_ranks
    ema0, ema1 = rank0["ema"], rank1["ema"]
    assert ema0.keys() == ema1.keys() and any("running_mean" in k for k in ema0)
    assert all(torch.equal(ema0[k], ema1[k]) for k in ema0)  # rank 0's BN statistics on both ranks
    saved = load_weights(latest_checkpoint(run_dir) / EMA_FILE)[0]
    assert all(torch.equal(ema0[k], saved[k]) for k in saved)
    # The evaluation the 2 ranks logged is that of the checkpoint, evaluated on one process.
    final = [r for r in read_metrics(run_dir) if r["kind"] == "eval"][-1]
    with one_thread():
        report = evaluate_checkpoint(run_dir, split="val", device="cpu", figure=tmp_path / "c.png")
    assert report.result.count == 128 and report.result.err == final["err"]
    assert report.result.loss == pytest.approx(final["loss"], rel=1e-6)


# --- 8: the error-triggered warm-up does not wait for the device every step ----------------------


def test_error_triggered_warmup_checks_the_error_every_10_steps_not_every_step(monkeypatch):
    checked = []
    real = TrainMeter.error_so_far

    def counting(self, runtime):
        checked.append(1)
        return real(self, runtime)

    monkeypatch.setattr(TrainMeter, "error_so_far", counting)
    cfg = dataclasses.replace(
        TINY, batch_size=16, warmup_lr=0.01, warmup_until_err=0.0, warmup_min_depth=8, eval_splits=()
    )
    history = fit(cfg).history  # 16 steps; an error below 0 never ends the warm-up
    assert {r["lr"] for r in history if r["kind"] == "train"} == {0.01}
    assert len(checked) == 1  # at step 10; the other 15 steps neither sync nor all-reduce


# --- 6: the EMA update is two foreach kernels, with the per-tensor loop's results ------------------


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops called at the top level (what a GPU would launch kernels for)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_ema_update_is_two_foreach_ops_bit_equal_to_the_per_tensor_loop():
    torch.manual_seed(0)
    model = create_model("cifar_resnet", depth=20, in_chans=1)  # 57 BN layers: buffers of 2 dtypes
    ema = EMA(model, decay=0.99)
    reference = copy.deepcopy(ema.module)
    x = torch.randn(8, 1, 28, 28)
    for updates in range(1, 6):
        with torch.no_grad():  # a training step's changes: weights move, BN statistics update
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.01)
        model.train()(x)
        with _OpCounter() as counter:
            ema.update()
        assert counter.ops == {"_foreach_lerp_": 1, "_foreach_copy_": 1}
        decay = min(0.99, (1 + updates) / (10 + updates))
        with torch.no_grad():
            for e, m in zip(reference.state_dict().values(), model.state_dict().values(), strict=True):
                if e.is_floating_point():
                    e.lerp_(m, 1 - decay)
                else:
                    e.copy_(m)
    ours, theirs = ema.module.state_dict(), reference.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# --- 1: the experiments keep their sums on the model's device ----------------------------------

META = torch.device("meta")  # shapes without data: a tensor left on the CPU by mistake meets it


def _meta_twin() -> tuple[torch.nn.Module, list]:
    model = build_twin("resnet", 8, num_classes=10, in_chans=1, seed=0).to(META)
    x = torch.empty(4, 1, 28, 28, device=META)
    return model, [(x, torch.zeros(4, dtype=torch.int64, device=META))] * 2


def test_response_moments_are_summed_on_the_models_device():
    model, batches = _meta_twin()
    moments = response_moments(model, batches)  # on a CPU-side sum: "found ... meta and cpu"
    assert moments.device == META and moments.shape == (6, 3)  # 3 blocks x 2 BN


def test_experiment_evaluation_waits_for_the_device_once_per_call_not_twice_per_batch():
    model = build_twin("resnet", 8, num_classes=10, in_chans=1, seed=0).eval()
    batches = fixed_batches("fashion-mnist", "test", examples=64, batch_size=16, device=torch.device("cpu"))[
        0
    ]
    with _OpCounter() as counter:
        loss, err = experiment_evaluate(model, batches)
    assert counter.ops["_local_scalar_dense"] == 2  # .item() / float() / int(): one for each result
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in batches])
        y = torch.cat([y for _, y in batches])
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert err == float((logits.argmax(1) != y).double().mean())


# --- 4: --device cuda:N ------------------------------------------------------------------------


@pytest.fixture
def two_gpus(monkeypatch) -> list[torch.device]:
    """torch.cuda as on a machine with 2 GPUs; returns the devices passed to set_device."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_cuda_n_in_one_process_becomes_the_current_device(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert two_gpus == [torch.device("cuda", 1)]  # the pin-memory thread and NCCL follow it
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda:2", r"--device cuda:2: only 2 GPU\(s\) are visible, cuda:0 to cuda:1"),
        ("cuda:x", "unknown device 'cuda:x'"),
        ("cuda:", "unknown device 'cuda:'"),
        ("gpu", "unknown device 'gpu'"),
    ],
)
def test_cuda_n_out_of_range_or_malformed_is_one_clear_error(two_gpus, name, message):
    with pytest.raises(Error, match=message):
        resolve_device(name)
    assert two_gpus == []


def test_cuda_n_under_torchrun_is_refused_before_the_group_starts(two_gpus, monkeypatch):
    for key, value in rank_env(1, 2, 29500).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Error, match="--device cuda:0 would put all 2 ranks on one GPU.*--device cuda,"):
        setup_runtime("cuda:0")
    assert two_gpus == [] and not dist.is_initialized()


# --- the --device sweep: every command that has the flag ---------------------------------------


NO_GPU = "--device cuda was asked for but this torch build sees no CUDA GPU; use --device cpu"


def _device_commands(parser=None, path=()) -> list[tuple[str, ...]]:
    """Every (sub)command of the CLI with a --device flag, as the words that name it."""
    parser = parser or build_parser()
    found = [path] if any("--device" in a.option_strings for a in parser._actions) else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _device_commands(sub, (*path, name))
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-step run made on the CPU through the CLI, and one real test image: for eval and predict."""
    root = tmp_path_factory.mktemp("sweep")
    flags = [
        "--model",
        "cifar_resnet",
        "--model-kwargs",
        "depth=8",
        "--train-subset",
        "64",
        "--val-size",
        "32",
    ]
    argv = [
        "train",
        *flags,
        "--batch-size",
        "32",
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        "--amp",
        "none",
    ]
    assert main([*argv, "--out", str(root / "run")]) == 0
    image = root / "shoe.png"
    Image.fromarray(load_dataset("fashion-mnist", "test").images[0, 0].numpy()).save(image)
    return root / "run", image


def _arguments(command: tuple[str, ...], tiny_run: tuple[Path, Path]) -> list[str]:
    run_dir, image = tiny_run
    return {("eval",): [str(run_dir)], ("predict",): [str(run_dir), str(image)]}.get(command, [])


def test_the_sweep_finds_every_command_with_a_device_flag():
    experiments = [("experiment", name) for name in EXPERIMENTS]
    assert sorted(_device_commands()) == sorted(
        [("train",), ("eval",), ("predict",), ("demo",), *experiments]
    )


@pytest.mark.parametrize("command", _device_commands(), ids=" ".join)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_visible_gpu_is_one_line_exit_2_and_leaves_nothing(
    command, device, tiny_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main([*command, *_arguments(command, tiny_run), "--device", device]) == 2
    out, err = capsys.readouterr()
    assert err == f"resnetlab: error: {NO_GPU}\n"
    assert out == "" and list(tmp_path.iterdir()) == []


def test_eval_and_predict_accept_cpu(tiny_run, capsys):
    """train is the fixture itself; every experiment runs with --device cpu in test_experiments_e2e."""
    run_dir, image = tiny_run
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0
    assert "top-1 error" in capsys.readouterr().out
    assert main(["predict", str(run_dir), str(image), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


# --- 8: bf16 autocast on a GPU without native bf16 ----------------------------------------------


@pytest.mark.parametrize(("capability", "warned"), [((7, 0), True), ((7, 5), True), ((8, 0), False)])
def test_bf16_on_a_pre_ampere_gpu_warns_once(capability, warned, monkeypatch, capsys):
    precision._warn_if_bf16_is_emulated.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Tesla V100-SXM2-16GB")
    for _ in range(3):  # every training step enters autocast
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # this CPU build's "CUDA is not available" for autocast
            precision.autocast(torch.device("cuda", 0), "bf16")
    err = capsys.readouterr().err
    assert err.count("Tesla V100-SXM2-16GB (compute capability") == warned
    assert ("use --amp fp16" in err) == warned
    precision._warn_if_bf16_is_emulated.cache_clear()


@pytest.mark.parametrize(("native", "warned"), [(False, True), (True, False)])
def test_bf16_on_a_cpu_without_native_bf16_warns_once(native, warned, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    precision._warn_once_cpu_bf16_is_emulated.cache_clear()
    for _ in range(2):
        with precision.autocast(CPU, "bf16"):
            pass
    err = capsys.readouterr().err
    assert err.count("no native bf16") == (1 if warned else 0)
    precision._warn_once_cpu_bf16_is_emulated.cache_clear()


@pytest.mark.parametrize(("native", "expected"), [(False, "none"), (True, "bf16")])
def test_auto_amp_is_bf16_only_where_the_cpu_runs_it_natively(native, expected, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_amp(CPU, "auto") == expected
    assert [precision.resolve_amp(CPU, amp) for amp in ("none", "bf16")] == ["none", "bf16"]


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "none"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_amp_on_a_gpu_follows_its_compute_capability(capability, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    assert precision.resolve_amp(torch.device("cuda"), "auto") == expected
