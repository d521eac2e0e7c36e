"""The training loop: `fit(cfg)` trains one model and returns it with its history.

Reading order: `fit` decides where it runs (`Runtime`: device, rank, world size) and which
kernels it may use; `_fit` selects the data, builds the run's state (`train/state.py`: the
model, random or from --init-from, its inputs fed as its weights expect, optimizer, schedule,
EMA and run directory), restores it from the latest checkpoint when resuming, and `_run` is the
loop. Every step (`train_step`) is forward under autocast, loss, backward, optional clipping, SGD
step, EMA update. Train records (`_log_train`), evaluations (`_log_eval`) and checkpoints
(`RunState.save`) are made at fixed step counts, so a resumed run makes the same ones.

Everything rank-dependent goes through `Runtime`, so one process and `torchrun --nproc-per-node N`
take the same path: each rank trains on its stride of the epoch's permutation with batch_size / N
examples, DDP averages the gradients, evaluation counts are summed over ranks, and only rank 0
writes files, prints and draws progress bars. A group that torchrun --max-restarts started again
after a failure resumes its run directory from the latest checkpoint (`rundir.same_run`).

The jobs around the loop live beside it: the data selection in data/selection.py, how inputs
are fed in weights/preprocessing.py (`follow_weights`), the run directory and resuming in
train/rundir.py, the metadata stored with the weights in weights/meta.py.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from resnetlab.data import mirror_warning
from resnetlab.data.augment import resize
from resnetlab.data.selection import batch_that_fits, load_splits
from resnetlab.errors import Error
from resnetlab.models.factory import get_builder
from resnetlab.models.gpt import LANGUAGE_MODELS
from resnetlab.models.table import load_table
from resnetlab.train.config import TrainConfig
from resnetlab.train.distributed import Runtime, setup_runtime, teardown_runtime
from resnetlab.train.kernels import kernel_settings
from resnetlab.train.meter import TrainMeter
from resnetlab.train.precision import autocast
from resnetlab.train.rng import restore_rng_states
from resnetlab.train.rundir import Recorder, same_run
from resnetlab.train.state import RunState, build_state
from resnetlab.weights import Preprocessing

# Steps between checks of the train error that ends [He15]'s warm-up (~400 steps long): each check
# waits for the device and all-reduces, which the other steps never do.
_WARMUP_CHECK_EVERY = 10


@dataclass
class TrainResult:
    model: nn.Module  # trained, unwrapped, in eval mode; the EMA weights when the run kept an EMA
    history: list[dict[str, Any]]  # the records of metrics.jsonl, in order (rank 0's view)
    run_dir: Path | None
    config: TrainConfig


def fit(
    cfg: TrainConfig,
    *,
    model: nn.Module | None = None,
    preprocessing: Preprocessing | None = None,
    resume: bool = False,
    overwrite: bool = False,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Train `cfg.model` (or the given `model`, which must match it) on `cfg.data`.

    preprocessing: how the given `model`'s weights expect their inputs (None: as the data's own;
    with --init-from, the loaded weights say).
    resume: continue the run in `cfg.out` from its latest checkpoint (from scratch if it has none).
    overwrite: replace an existing run directory `cfg.out`. runtime: where to run; by default
    decided from `cfg.device` and torchrun's environment, and torn down afterwards.
    """
    cfg.check()
    if resume and cfg.out is None:
        raise Error("resuming needs the run directory: --resume RUN_DIR")
    if resume and overwrite:
        raise Error("--resume and --overwrite contradict each other; drop one of them")
    own_runtime = runtime is None
    runtime = runtime or setup_runtime(cfg.device)
    try:
        cfg, resume, overwrite = same_run(cfg, runtime, resume=resume, overwrite=overwrite)
        with kernel_settings(cfg.deterministic, runtime.device):
            return _fit(cfg, model, preprocessing, resume=resume, overwrite=overwrite, runtime=runtime)
    finally:
        if own_runtime:
            teardown_runtime(runtime)


def _fit(
    cfg: TrainConfig,
    model: nn.Module | None,
    weights: Preprocessing | None,
    *,
    resume: bool,
    overwrite: bool,
    runtime: Runtime,
) -> TrainResult:
    """Load the data, build the run's state, restore it from a checkpoint when resuming, train."""
    _check_runtime(cfg, model, runtime)
    # Rank 0 loads first, so only one process downloads missing files.
    splits = runtime.main_first(lambda: load_splits(cfg.selection(), talk=runtime.is_main))
    train_set = splits.pop("train")
    batch = batch_that_fits(cfg.batch_size, len(train_set), runtime.world_size, talk=runtime.is_main)
    cfg = dataclasses.replace(cfg, batch_size=batch)
    if cfg.flip and runtime.is_main and (warning := mirror_warning(cfg.data, "--flip")):
        print(f"{warning}; --no-flip turns it off", file=sys.stderr)
    if cfg.tta != "none" and runtime.is_main and (warning := mirror_warning(cfg.data, f"--tta {cfg.tta}")):
        print(f"{warning}; --tta none turns it off", file=sys.stderr)
    state = build_state(cfg, model, weights, train_set, splits, runtime, resume=resume, overwrite=overwrite)
    rng, history = state.restore(runtime) if resume else (None, [])
    state.recorder = Recorder(state.run_dir if runtime.is_main else None, history)
    state.bar = tqdm(
        total=state.total_steps,
        initial=state.step,
        unit="step",
        dynamic_ncols=True,
        disable=not (state.talk and sys.stderr.isatty()),  # no bar in logs and pipes: they stay clean
    )
    torch.manual_seed(cfg.seed + runtime.rank)  # dropout-like draws (drop_path) differ between ranks
    if rng is not None:  # nothing draws from the global RNG between here and the first step
        restore_rng_states(rng, runtime)
    try:
        _run(state, runtime)
    finally:
        state.bar.close()
        state.recorder.close()
    runtime.barrier()  # every rank returns once rank 0's files are complete
    return TrainResult(state.eval_model.eval(), state.recorder.history, state.run_dir, cfg)


def _check_runtime(cfg: TrainConfig, model: nn.Module | None, runtime: Runtime) -> None:
    """What the config asks of this runtime, checked before any data is read."""
    world = runtime.world_size
    if model is None:
        get_builder(cfg.model)  # an unknown model name fails now, not after the data is read
        row = load_table().get(cfg.model)  # a model registered at run time is checked when built
        if cfg.task != "classify" and row is not None and row.family not in ("cifar", "imagenet"):
            raise Error(
                f"{cfg.model} has no features_only interface; --task {cfg.task} needs a ResNet backbone"
            )
        if cfg.model in LANGUAGE_MODELS:
            raise Error(
                f"{cfg.model} is a byte-level language model and `resnetlab train` trains image "
                "classifiers; `resnetlab experiment transformer` trains it on text"
            )
    if cfg.batch_size % world or cfg.eval_batch_size % world:
        raise Error(f"--batch-size and --eval-batch-size are global and must divide by the {world} ranks")
    if cfg.amp == "fp16" and runtime.device.type != "cuda":
        raise Error("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    if cfg.sync_bn:
        runtime.check_sync_bn()


def _run(state: RunState, runtime: Runtime) -> None:
    """The loop, from `state.step` to the end: steps, and the records, evaluations and
    checkpoints due at fixed step counts (so a resumed run makes the same ones)."""
    cfg, per_epoch, total = state.cfg, state.steps_per_epoch, state.total_steps
    meter = TrainMeter(runtime.device)
    start_epoch, skip = divmod(state.step, per_epoch)
    if state.step == total:  # a finished run resumed, or restarted after its last checkpoint
        start_epoch = math.ceil(total / per_epoch)
    state.model.train()
    for epoch in range(start_epoch, math.ceil(total / per_epoch)):
        # A mid-epoch resume starts at the next batch: the loader's draws depend on (seed, epoch,
        # batch) only, so the batches before it are neither produced nor decoded.
        state.loader.set_epoch(epoch, first_batch=skip)
        skip = 0
        state.bar.set_description(f"epoch {epoch + 1}/{math.ceil(total / per_epoch)}", refresh=False)
        for x, y in state.loader:
            if (size := cfg.train_size(state.step, total)) is not None:
                x = resize(x, size)  # progressive resizing: smaller images early, cheaper steps
            lr = state.schedule.set(state.step)
            loss, errors = train_step(
                state.train_model,
                state.model,
                state.optimizer,
                state.scaler,
                x,
                y,
                cfg,
                runtime.device,
                state.task,
            )
            if state.ema is not None:
                state.ema.update()
            meter.add(loss, errors, len(x))
            state.step += 1
            state.bar.update()
            if state.schedule.in_error_warmup and state.step % _WARMUP_CHECK_EVERY == 0:
                state.schedule.observe_train_error(meter.error_so_far(runtime))
            epoch_end, last = state.step % per_epoch == 0, state.step == total
            if state.step % cfg.log_every == 0 or epoch_end or last:
                _log_train(state, meter, lr, runtime)
            paused = time.perf_counter()
            if _eval_due(cfg, state.step, epoch_end) or last:
                _log_eval(state, runtime)
            if (state.step % cfg.checkpoint_every == 0 if cfg.checkpoint_every else epoch_end) or last:
                if not meter.finite(runtime):
                    _diverged(math.nan, state.step, state.step / state.steps_per_epoch, state.last_checkpoint)
                state.last_checkpoint = state.save(runtime)
            meter.started += time.perf_counter() - paused  # img/s counts training time only
            if last:
                return


def _eval_due(cfg: TrainConfig, step: int, epoch_end: bool) -> bool:
    """Whether the evaluation of a step before the last is due (the last one always is)."""
    if cfg.final_eval_only:
        return False
    return step % cfg.eval_every == 0 if cfg.eval_every else epoch_end


def _log_train(state: RunState, meter: TrainMeter, lr: float, runtime: Runtime) -> None:
    """A train record: the loss, error and speed since the last one."""
    loss, err, img_per_s = meter.flush(runtime)
    if not math.isfinite(loss):
        _diverged(loss, state.step, state.step / state.steps_per_epoch, state.last_checkpoint)
    record = {"kind": "train", "step": state.step, "epoch": state.epoch}
    state.recorder.log({**record, "loss": loss, "err": err, "lr": lr, "img_per_s": img_per_s})
    state.bar.set_postfix(
        loss=f"{loss:.3f}", acc=f"{100 * (1 - err):.1f}%", img_s=f"{img_per_s:.0f}", refresh=False
    )


def _log_eval(state: RunState, runtime: Runtime) -> None:
    """An eval record per split, and the curves redrawn."""
    # Each rank's BN statistics (and so their EMA) hold its own last batches: evaluate one
    # model on every rank, rank 0's, which is the one checkpointed.
    runtime.broadcast_buffers(state.model)
    if state.ema is not None:
        runtime.broadcast_buffers(state.ema.module)
    for split, split_loader in state.eval_loaders.items():
        result = state.eval_tasks[split].evaluate(
            state.eval_model, split_loader, runtime=runtime, amp=state.cfg.amp, tta=state.cfg.tta
        )
        record = {"kind": "eval", "split": split, "step": state.step, "epoch": state.epoch}
        state.recorder.log({**record, **result.record()})
        if state.talk:
            state.bar.write(f"epoch {state.epoch:g} step {state.step} {split}: {result.summary()}")
    state.recorder.plot()


def train_step(
    train_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
    task: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns (mean loss, errors: the task's count, top-1 errors for
    a classifier), both still on the device."""
    with autocast(device, cfg.amp):
        outputs = train_model(x)
    loss, errors = task.loss(outputs, y)  # in fp32 (train/tasks.py)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), errors


def _diverged(loss: float, step: int, epoch: float, checkpoint: Path | None) -> None:
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been written"
    raise Error(
        f"training diverged: the loss became {loss} by step {step} (epoch {epoch:.2f}); {kept}. "
        "Try a lower --lr, --grad-clip 1.0, or --amp none"
    )
