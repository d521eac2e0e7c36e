"""The training loop: `fit(cfg)` trains one model and returns it with its history.

Reading order: `fit` decides where it runs (`Runtime`: device, rank, world size) and which
kernels it may use; `_fit` loads the data, then `_build_state` builds the model (random, or from
--init-from, frozen as --freeze says), its input pipeline, optimizer, schedule and EMA and opens
the run directory, all in one `_State`; `_restore` loads a checkpoint into it when resuming, and
`_run` is the loop. Every step is forward (under autocast), loss, backward, optional clipping, SGD
step, EMA update. Train records (`_log_train`), evaluations (`_log_eval`) and checkpoints
(`_write_checkpoint`) are functions of the state, made at fixed step counts, so a resumed run
makes the same ones.

Everything rank-dependent goes through `Runtime`, so one process and `torchrun --nproc-per-node N`
take the same path: each rank trains on its stride of the epoch's permutation with batch_size / N
examples, DDP averages the gradients, evaluation counts are summed over ranks, and only rank 0
writes files, prints and draws progress bars. A group that torchrun --max-restarts started again
after a failure resumes its run directory from the latest checkpoint (`_same_run`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from resnetlab import CUBLAS_WORKSPACE
from resnetlab.data import (
    Augment,
    FolderDataset,
    has_split,
    load_dataset,
    make_loader,
    mirror_warning,
    per_class_subset,
    select_classes,
)
from resnetlab.data.arrays import MIN_STD, floored_channels
from resnetlab.data.augment import resize
from resnetlab.data.folder import MAX_VAL_FRACTION
from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.models.gpt import LANGUAGE_MODELS
from resnetlab.models.registry import get_builder
from resnetlab.train.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    latest_checkpoint,
    load_train_state,
    load_weights,
    save_checkpoint,
)
from resnetlab.train.config import RESUME_MAY_CHANGE, TrainConfig
from resnetlab.train.distributed import Runtime, setup_runtime, teardown_runtime
from resnetlab.train.ema import EMA
from resnetlab.train.evaluate import evaluate
from resnetlab.train.freeze import freeze, pin_frozen_norms
from resnetlab.train.optim import LRSchedule, build_optimizer, count_weighted_layers
from resnetlab.train.precision import autocast, grad_scaler
from resnetlab.train.rundir import (
    CONFIG_FILE,
    Recorder,
    prepare_run_dir,
    read_config,
    read_metrics,
    write_config,
)
from resnetlab.weights import get_weights

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
    resume: bool = False,
    overwrite: bool = False,
    runtime: Runtime | None = None,
) -> TrainResult:
    """Train `cfg.model` (or the given `model`, which must match it) on `cfg.data`.

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
        cfg, resume, overwrite = _same_run(cfg, runtime, resume=resume, overwrite=overwrite)
        with kernel_settings(cfg.deterministic, runtime.device):
            return _fit(cfg, model, resume=resume, overwrite=overwrite, runtime=runtime)
    finally:
        if own_runtime:
            teardown_runtime(runtime)


def _fit(
    cfg: TrainConfig, model: nn.Module | None, *, resume: bool, overwrite: bool, runtime: Runtime
) -> TrainResult:
    """Load the data, build the run's state, restore it from a checkpoint when resuming, train."""
    _check_runtime(cfg, model, runtime)
    # Rank 0 loads first, so only one process downloads missing files.
    splits = runtime.main_first(lambda: _load_splits(cfg, talk=runtime.is_main))
    train_set = splits.pop("train")
    cfg = _batch_that_fits(cfg, len(train_set), runtime)
    if cfg.flip and runtime.is_main and (warning := mirror_warning(cfg.data, "--flip")):
        print(f"{warning}; --no-flip turns it off", file=sys.stderr)
    if cfg.tta != "none" and runtime.is_main and (warning := mirror_warning(cfg.data, f"--tta {cfg.tta}")):
        print(f"{warning}; --tta none turns it off", file=sys.stderr)
    state = _build_state(cfg, model, train_set, splits, runtime, resume=resume, overwrite=overwrite)
    rng, history = _restore(state, runtime) if resume else (None, [])
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
        _restore_rng_state(rng, runtime)
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


@dataclass
class _State:
    """What a run carries from step to step; checkpoints hold what `_restore` needs of it."""

    cfg: TrainConfig
    model: nn.Module  # unwrapped, on the device; what checkpoints hold
    train_model: nn.Module  # the model as trained: DDP-wrapped and/or compiled
    eval_model: nn.Module  # the EMA when kept, else `model`
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    ema: EMA | None
    scaler: torch.amp.GradScaler
    loader: Any  # the training batches (DeviceLoader or FolderLoader)
    eval_loaders: dict[str, Any]  # split -> its batches
    num_classes: int
    meta: dict[str, Any]  # stored with the weights (`_model_meta`)
    run_dir: Path | None
    talk: bool  # rank 0 with --progress: prints evaluations
    total_steps: int
    steps_per_epoch: int
    step: int = 0
    last_checkpoint: Path | None = None
    recorder: Recorder = field(init=False)  # made once resuming has read the history back
    bar: tqdm = field(init=False)

    @property
    def epoch(self) -> float:
        return round(self.step / self.steps_per_epoch, 4)


def _build_state(
    cfg: TrainConfig,
    model: nn.Module | None,
    train_set: Any,
    splits: dict[str, Any],
    runtime: Runtime,
    *,
    resume: bool,
    overwrite: bool,
) -> _State:
    """The model (maybe from --init-from, frozen as --freeze says), its input pipeline, optimizer,
    schedule and EMA, and the run directory, all at step 0."""
    device, world = runtime.device, runtime.world_size
    # The initial weights depend on the seed alone, not on the rank.
    torch.manual_seed(cfg.seed)
    if model is None:
        model = _create(cfg, train_set, is_main=runtime.is_main)
    normalization = follow_weights(cfg, getattr(model, "pretrained_cfg", None), [train_set, *splits.values()])
    frozen = freeze(model, cfg.freeze)
    if frozen and runtime.is_main:
        print(f"resnetlab: --freeze {cfg.freeze}: {', '.join(frozen)} frozen", file=sys.stderr)

    augment = Augment(
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        alternate_flip=cfg.alternate_flip,
        erasing=cfg.erasing,
        mixup=cfg.mixup,
        cutmix=cfg.cutmix,
    )
    shared = dict(device=device, rank=runtime.rank, world_size=world, num_workers=cfg.workers)
    loader = make_loader(
        train_set,
        batch_size=cfg.batch_size // world,
        train=True,
        augment=augment,
        seed=cfg.seed,
        channels_last=cfg.channels_last,
        **shared,
    )
    eval_loaders = {
        split: make_loader(
            ds,
            batch_size=cfg.eval_batch_size // world,
            train=False,
            channels_last=cfg.channels_last,
            **shared,
        )
        for split, ds in splits.items()
    }
    steps_per_epoch = len(loader)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg, model)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    train_model = runtime.wrap(model, sync_bn=cfg.sync_bn)
    pin_frozen_norms(model)  # --sync-bn made new BN modules: frozen ones stay in eval mode
    if cfg.compile:
        train_model = torch.compile(train_model)

    description = _describe(train_set, splits, model, normalization)
    run_dir = _open_run_dir(cfg, runtime, resume=resume, overwrite=overwrite, dataset=description)
    talk = cfg.progress and runtime.is_main
    return _State(
        cfg=cfg,
        model=model,
        train_model=train_model,
        eval_model=ema.module if ema is not None else model,
        optimizer=optimizer,
        schedule=LRSchedule(optimizer, cfg, total_steps, depth=count_weighted_layers(model)),
        ema=ema,
        scaler=grad_scaler(device, cfg.amp),
        loader=loader,
        eval_loaders=eval_loaders,
        num_classes=train_set.num_classes,
        meta=_model_meta(cfg, train_set, model),
        run_dir=run_dir,
        talk=talk,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )


def _create(cfg: TrainConfig, train_set: Any, *, is_main: bool) -> nn.Module:
    """cfg.model for the data's classes and channels: randomly initialised, or from --init-from
    (a head of another class count starts afresh, a first conv of other channels is adapted)."""
    shape = dict(num_classes=train_set.num_classes, in_chans=train_set.in_chans, **cfg.model_kwargs)
    if cfg.init_from is None:
        return create_model(cfg.model, **shape)
    with contextlib.redirect_stderr(sys.stderr if is_main else io.StringIO()):  # one rank says it
        model = create_model(cfg.model, pretrained=cfg.init_from, **shape)
        known = model.pretrained_cfg.get("classes")
        if known is not None and list(known) != list(train_set.classes):
            # As many classes, but other ones (the transfer experiment's 5 + 5): a head that
            # predicts the old ones is no start, so it starts fresh as for another class count.
            model.reset_classifier(train_set.num_classes)
            model.pretrained_cfg = {**model.pretrained_cfg, "classes": None}
            print(
                f"resnetlab: {cfg.init_from}: its head predicts other classes ({', '.join(known[:3])}, ...); "
                "fc starts fresh",
                file=sys.stderr,
            )
    return model


def _restore(state: _State, runtime: Runtime) -> tuple[dict[str, torch.Tensor] | None, list[dict]]:
    """Load the latest checkpoint of a resumed run into `state`; returns its RNG states and the
    history up to it (None and [] when the run has no checkpoint yet and starts from step 0)."""
    checkpoint = _resume_point(state.run_dir, runtime)
    if checkpoint is None:
        return None, []
    saved = load_train_state(checkpoint)
    if saved["total_steps"] != state.total_steps:
        raise Error(
            f"{checkpoint} was made for a {saved['total_steps']}-step run but this one has "
            f"{state.total_steps} steps; resume with the run's own data and batch size"
        )
    state.model.load_state_dict(load_weights(checkpoint / MODEL_FILE)[0])
    if state.ema is not None:
        state.ema.module.load_state_dict(load_weights(checkpoint / EMA_FILE)[0])
        state.ema.updates = saved["ema_updates"]
    state.optimizer.load_state_dict(saved["optimizer"])
    state.schedule.load_state_dict(saved["schedule"])
    state.scaler.load_state_dict(saved["scaler"])
    state.step, state.last_checkpoint = saved["step"], checkpoint
    history = read_metrics(state.run_dir)[: saved["history_len"]] if runtime.is_main else []
    return saved["rng"], history


def _run(state: _State, runtime: Runtime) -> None:
    """The loop, from `state.step` to the end: steps, and the records, evaluations and
    checkpoints due at fixed step counts (so a resumed run makes the same ones)."""
    cfg, per_epoch, total = state.cfg, state.steps_per_epoch, state.total_steps
    window = _Window(runtime.device)
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
                state.train_model, state.model, state.optimizer, state.scaler, x, y, cfg, runtime.device
            )
            if state.ema is not None:
                state.ema.update()
            window.add(loss, errors, len(x))
            state.step += 1
            state.bar.update()
            if state.schedule.in_error_warmup and state.step % _WARMUP_CHECK_EVERY == 0:
                state.schedule.observe_train_error(window.error_so_far(runtime))
            epoch_end, last = state.step % per_epoch == 0, state.step == total
            if state.step % cfg.log_every == 0 or epoch_end or last:
                _log_train(state, window, lr, runtime)
            paused = time.perf_counter()
            if _eval_due(cfg, state.step, epoch_end) or last:
                _log_eval(state, runtime)
            if (state.step % cfg.checkpoint_every == 0 if cfg.checkpoint_every else epoch_end) or last:
                state.last_checkpoint = _write_checkpoint(state, window, runtime)
            window.started += time.perf_counter() - paused  # img/s counts training time only
            if last:
                return


def _eval_due(cfg: TrainConfig, step: int, epoch_end: bool) -> bool:
    """Whether the evaluation of a step before the last is due (the last one always is)."""
    if cfg.final_eval_only:
        return False
    return step % cfg.eval_every == 0 if cfg.eval_every else epoch_end


def _log_train(state: _State, window: _Window, lr: float, runtime: Runtime) -> None:
    """A train record: the loss, error and speed since the last one."""
    loss, err, img_per_s = window.flush(runtime)
    if not math.isfinite(loss):
        _diverged(loss, state.step, state.step / state.steps_per_epoch, state.last_checkpoint)
    record = {"kind": "train", "step": state.step, "epoch": state.epoch}
    state.recorder.log({**record, "loss": loss, "err": err, "lr": lr, "img_per_s": img_per_s})
    state.bar.set_postfix(
        loss=f"{loss:.3f}", acc=f"{100 * (1 - err):.1f}%", img_s=f"{img_per_s:.0f}", refresh=False
    )


def _log_eval(state: _State, runtime: Runtime) -> None:
    """An eval record per split, and the curves redrawn."""
    # Each rank's BN statistics (and so their EMA) hold its own last batches: evaluate one
    # model on every rank, rank 0's, which is the one checkpointed.
    runtime.broadcast_buffers(state.model)
    if state.ema is not None:
        runtime.broadcast_buffers(state.ema.module)
    for split, split_loader in state.eval_loaders.items():
        result = evaluate(
            state.eval_model,
            split_loader,
            num_classes=state.num_classes,
            runtime=runtime,
            amp=state.cfg.amp,
            tta=state.cfg.tta,
        )
        record = {"kind": "eval", "split": split, "step": state.step, "epoch": state.epoch}
        state.recorder.log({**record, **result.record()})
        if state.talk:
            views = "" if result.single_err is None else f" ({100 * result.single_err:.2f}% one view)"
            state.bar.write(
                f"epoch {state.epoch:g} step {state.step} {split}: error {100 * result.err:.2f}%{views}, "
                f"top-5 error {100 * result.top5_err:.2f}%, loss {result.loss:.4f}"
            )
    state.recorder.plot()


def _write_checkpoint(state: _State, window: _Window, runtime: Runtime) -> Path | None:
    """Save what `_restore` needs (rank 0, with a run directory); returns the latest checkpoint."""
    if not window.finite(runtime):
        _diverged(math.nan, state.step, state.step / state.steps_per_epoch, state.last_checkpoint)
    rng_states = _rng_states(runtime)  # a collective: every rank takes part
    if state.run_dir is None or not runtime.is_main:
        return state.last_checkpoint
    ema = state.ema
    train_state = {
        "total_steps": state.total_steps,
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.scaler.state_dict(),
        "ema_updates": ema.updates if ema is not None else 0,
        "rng": rng_states,
        "history_len": len(state.recorder.history),
    }
    return save_checkpoint(
        state.run_dir,
        state.step,
        model=state.model.state_dict(),
        ema=ema.module.state_dict() if ema is not None else None,
        meta=state.meta,
        train_state=train_state,
    )


def train_step(
    train_model: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a batch; returns (mean loss, number of top-1 errors), both still on the device."""
    with autocast(device, cfg.amp):
        logits = train_model(x)
    # The loss in fp32: log-softmax over bf16 logits loses the small probabilities.
    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    target = y if y.ndim == 1 else y.argmax(1)  # mixup/CutMix: the dominant class
    return loss.detach(), (logits.detach().argmax(1) != target).sum()


class _Window:
    """Loss and error sums since the last train record, on the device: steps never wait for them."""

    def __init__(self, device: torch.device):
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # sum of loss * batch
        self.errors = torch.zeros((), dtype=torch.float64, device=self.device)
        self.count = 0  # examples
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, errors: torch.Tensor, n: int) -> None:
        self.loss_sum += loss.double() * n
        self.errors += errors
        self.count += n

    def _reduced(self, runtime: Runtime) -> tuple[float, float, float]:
        """(loss sum, errors, examples), summed over ranks."""
        count = torch.tensor(float(self.count), dtype=torch.float64, device=self.device)
        loss_sum, errors, n = runtime.all_reduce_sum(
            torch.stack([self.loss_sum, self.errors, count])
        ).tolist()
        return loss_sum, errors, n

    def finite(self, runtime: Runtime) -> bool:
        return math.isfinite(self._reduced(runtime)[0])

    def error_so_far(self, runtime: Runtime) -> float:
        _, errors, n = self._reduced(runtime)
        return errors / max(n, 1)

    def flush(self, runtime: Runtime) -> tuple[float, float, float]:
        """(mean loss, error fraction, images per second over all ranks) since the last flush."""
        loss_sum, errors, n = self._reduced(runtime)
        seconds = time.perf_counter() - self.started
        self._reset()
        n = max(n, 1)
        return loss_sum / n, errors / n, n / seconds


def _diverged(loss: float, step: int, epoch: float, checkpoint: Path | None) -> None:
    kept = f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint had been written"
    raise Error(
        f"training diverged: the loss became {loss} by step {step} (epoch {epoch:.2f}); {kept}. "
        "Try a lower --lr, --grad-clip 1.0, or --amp none"
    )


def _rng_states(runtime: Runtime) -> dict[str, torch.Tensor]:
    """Every rank's global RNG states, one row per rank: {"cpu": (world, n) uint8, "cuda": ...}.

    Each rank draws its own stochastic-depth masks, so each needs its own stream back on resume.
    """
    states = {"cpu": runtime.all_gather(torch.get_rng_state())}
    if runtime.device.type == "cuda":
        states["cuda"] = runtime.all_gather(torch.cuda.get_rng_state(runtime.device))
    return states


def _restore_rng_state(states: dict[str, torch.Tensor], runtime: Runtime) -> None:
    """This rank's row of `_rng_states`. A rank the checkpoint has no row for (the group grew)
    keeps the stream seeded from `cfg.seed + rank`, as a fresh run would give it."""
    for kind, rows in states.items():
        rows = rows if rows.ndim == 2 else rows.unsqueeze(0)  # checkpoints before per-rank states
        if runtime.rank >= len(rows):
            continue
        # A copy, not the row view: torch 2.13's set_rng_state mishandles a tensor that starts past
        # the beginning of its storage (rows 1.. here): "Invalid mt19937 state", or a segfault.
        state = rows[runtime.rank].clone()
        if kind == "cpu":
            torch.set_rng_state(state)
        elif kind == "cuda" and runtime.device.type == "cuda":
            torch.cuda.set_rng_state(state, runtime.device)


@contextlib.contextmanager
def kernel_settings(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for --deterministic, autotuned cuDNN otherwise; restored afterwards."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if deterministic:
        if device.type == "cuda":
            _check_cublas_workspace()
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic  # autotuning may pick other kernels per run
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark = saved[1]


def _check_cublas_workspace() -> None:
    """Deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first use in the process (the
    package sets it on import); set it now if CUDA is still unused, else refuse with the fix."""
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config is None and not torch.cuda.is_initialized():
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    elif config not in (":4096:8", ":16:8"):
        now = "unset" if config is None else f"{config!r}"
        raise Error(
            f"--deterministic on CUDA needs CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} (it is {now}) "
            "before CUDA is first used: export it before starting Python, or import resnetlab first"
        )


def _load_splits(cfg: TrainConfig, *, talk: bool) -> dict[str, Any]:
    """{"train": ..., and each of cfg.eval_splits the data has}; --train-subset picks its examples
    by --seed. talk: say which splits are skipped and when a folder's hold-out is capped."""
    kw = dict(
        data_dir=cfg.data_dir,
        val_size=cfg.val_size,
        seed=cfg.seed,
        strict=cfg.strict,
        image_size=cfg.image_size,
        decode=cfg.decode,
    )
    train = load_dataset(cfg.data, "train", **kw)
    if cfg.classes:
        train = select_classes(train, cfg.classes)
    if cfg.per_class is not None:
        train = per_class_subset(train, cfg.per_class, cfg.seed)
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train):
            raise Error(
                f"--train-subset {cfg.train_subset} is larger than the {len(train)} training examples"
            )
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
        train = train.subset(pick[: cfg.train_subset].sort().values)
    present = torch.as_tensor(train.labels).unique().tolist()
    if len(present) < 2:  # one class: the loss is 0 from the first step and nothing is learned
        names = ", ".join(train.classes[c] for c in present)
        raise Error(
            f"{cfg.data} has training images of {len(present)} class ({names}); a classifier needs "
            "at least 2 classes with images"
        )
    splits = {"train": train}
    for split in cfg.eval_splits:
        if has_split(cfg.data, split, val_size=cfg.val_size):
            ds = load_dataset(cfg.data, split, **kw)
            splits[split] = select_classes(ds, cfg.classes) if cfg.classes else ds
        elif talk:
            folder = "the folder has" if cfg.data.startswith("imagefolder:") else "the pack's folder had"
            why = "--val-size is 0" if split == "val" else f"{folder} no val/ beside train/"
            print(f"resnetlab: no {split} split to evaluate ({why})", file=sys.stderr)
    if talk and (flat := floored_channels(train.std)):
        print(
            f"resnetlab: warning: channel(s) {', '.join(map(str, flat))} of {cfg.data} have (almost) no "
            f"spread; their std is floored at {MIN_STD:.4f} (one grey level), as config.json records",
            file=sys.stderr,
        )
    if talk and "val" in splits and len(splits["val"]) < cfg.val_size and not cfg.classes:
        total = len(splits["val"]) + len(train)
        print(
            f"resnetlab: holding out {len(splits['val'])} of the {total} training images as the val split "
            f"(--val-size {cfg.val_size} is capped at {MAX_VAL_FRACTION:.0%} of a folder or pack)",
            file=sys.stderr,
        )
    return splits


def _batch_that_fits(cfg: TrainConfig, train_examples: int, runtime: Runtime) -> TrainConfig:
    """`cfg`, with a batch no larger than the training set (a few dozen images of one's own), so
    every step takes all of them instead of no full batch being there to take; said on stderr."""
    fits = train_examples - train_examples % runtime.world_size
    if cfg.batch_size <= fits or fits == 0:
        return cfg
    if runtime.is_main:
        print(
            f"resnetlab: --batch-size {cfg.batch_size} is more than the {train_examples} training "
            f"examples; each step takes {fits}",
            file=sys.stderr,
        )
    return dataclasses.replace(cfg, batch_size=fits)


def follow_weights(cfg: TrainConfig, weights: dict[str, Any] | None, datasets: list[Any]) -> str:
    """Feed `datasets` the way pretrained weights expect, unless the config says otherwise.

    weights: the model's `pretrained_cfg` (None: random init). The input is normalised with the
    weights' mean and std (ImageNet's for an ImageNet model, as timm does) under --normalize
    weights or auto, and a folder is cropped, resized and interpolated as they were evaluated
    unless --image-size is given. Returns whose statistics normalise the input: "weights" or "data".
    """
    weights = weights or {}
    chosen = cfg.normalize if cfg.normalize != "auto" else ("weights" if weights else "data")
    if chosen == "weights":
        if weights.get("mean") is None or weights.get("std") is None:
            if cfg.normalize == "weights":
                raise Error(f"{cfg.init_from} records no mean and std to follow; use --normalize data")
            chosen = "data"  # weights of unknown provenance: the data's own statistics
        else:
            for ds in datasets:
                ds.mean, ds.std = tuple(weights["mean"]), tuple(weights["std"])
    if cfg.image_size == 0 and weights.get("image_size"):
        for ds in datasets:
            if isinstance(ds, FolderDataset):
                ds.image_size = weights["image_size"]
                ds.resize_size = weights.get("resize_size") or round(ds.image_size / 0.875)
                ds.interpolation = weights.get("interpolation") or "bilinear"
    return chosen


def _init_record(model: nn.Module) -> dict[str, Any] | None:
    """Where the initial weights came from (None: random init), as config.json and the weights
    metadata record it."""
    weights = getattr(model, "pretrained_cfg", None)
    if not weights:
        return None
    return {key: weights.get(key) for key in ("tag", "source", "model", "dataset", "num_classes", "in_chans")}


def _model_kwargs(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """The builder options that rebuild `model`: a checkpoint's own (depth=8) under the config's."""
    weights = getattr(model, "pretrained_cfg", None) or {}
    stored = dict(weights.get("model_kwargs") or {})
    if weights.get("tag"):
        stored = {**get_weights(weights["tag"]).model_kwargs, **stored}
    return {**stored, **cfg.model_kwargs}


def _model_meta(cfg: TrainConfig, train_set: Any, model: nn.Module) -> dict[str, Any]:
    """What eval and predict need to rebuild the model and feed it, stored with the weights."""
    return {
        "model": cfg.model,
        "model_kwargs": _model_kwargs(cfg, model),
        "num_classes": train_set.num_classes,
        "in_chans": train_set.in_chans,
        "classes": list(train_set.classes),
        "mean": list(train_set.mean),
        "std": list(train_set.std),
        "image_size": train_set.image_size,
        "resize_size": getattr(train_set, "resize_size", train_set.image_size),
        "interpolation": getattr(train_set, "interpolation", "bilinear"),
        "data": cfg.data,
        "val_size": cfg.val_size,
        "seed": cfg.seed,
        "tta": cfg.tta,  # what `resnetlab eval` scores with by default, and in this precision
        "amp": cfg.amp,  # and layout, so that it gives the figure the run recorded
        "channels_last": cfg.channels_last,
        "init_from": _init_record(model),
    }


def _describe(
    train_set: Any, eval_sets: dict[str, Any], model: nn.Module, normalization: str
) -> dict[str, Any]:
    """The data as the run sees it, for config.json: sizes, classes and the input pipeline."""
    return {
        "train_examples": len(train_set),
        "eval_examples": {split: len(ds) for split, ds in eval_sets.items()},
        "classes": list(train_set.classes),
        "in_chans": train_set.in_chans,
        "image_size": train_set.image_size,
        "mean": list(train_set.mean),
        "std": list(train_set.std),
        "std_floor": MIN_STD,  # a channel's std is at least this (one grey level), never ~0
        "std_floored_channels": floored_channels(train_set.std),
        "normalization": normalization,  # whose mean/std those are: "weights" or "data"
        "init_from": _init_record(model),
    }


def _same_run(
    cfg: TrainConfig, runtime: Runtime, *, resume: bool, overwrite: bool
) -> tuple[TrainConfig, bool, bool]:
    """(cfg, resume, overwrite) as every rank must use them.

    All ranks take rank 0's run directory (a default name holds the time, which differs between
    processes). After a worker failure torchrun --max-restarts starts the group again with the
    same command; once the run directory was started, the new group resumes it instead of
    starting over (or, with --overwrite, deleting it).
    """
    cfg = dataclasses.replace(cfg, out=runtime.broadcast_object(cfg.out))
    if runtime.restart_count and cfg.out is not None:
        started = (Path(cfg.out) / CONFIG_FILE).is_file() if runtime.is_main else None
        if runtime.broadcast_object(started):
            return cfg, True, False
    return cfg, resume, overwrite


def _resume_point(run_dir: Path, runtime: Runtime) -> Path | None:
    """Rank 0's latest checkpoint, the same one on every rank (None: start from step 0)."""
    found = latest_checkpoint(run_dir) if runtime.is_main else None
    name = runtime.broadcast_object(None if found is None else found.name)
    if runtime.is_main and runtime.restart_count:
        print(
            f"resnetlab: restart {runtime.restart_count} of {runtime.max_restarts}: resuming {run_dir} "
            f"from {name or 'step 0 (no checkpoint yet)'}",
            file=sys.stderr,
            flush=True,
        )
    if name is None:
        return None
    if not (run_dir / name).is_dir():  # another node, without the storage rank 0 writes to
        raise Error(
            f"rank {runtime.rank} cannot see {run_dir / name}, which rank 0 resumes from; "
            "put --out on storage that every node shares"
        )
    return run_dir / name


def _open_run_dir(
    cfg: TrainConfig, runtime: Runtime, *, resume: bool, overwrite: bool, dataset: dict[str, Any]
) -> Path | None:
    """Rank 0 creates (or, resuming, checks) the run directory; its error, if any, stops every rank."""
    if cfg.out is None:
        return None
    path = Path(cfg.out)
    problem = None
    if runtime.is_main:
        try:
            if resume:
                stored = read_config(path)
                changed = [
                    f.name
                    for f in dataclasses.fields(cfg)
                    if f.name not in RESUME_MAY_CHANGE and getattr(cfg, f.name) != getattr(stored, f.name)
                ]
                if changed:
                    raise Error(
                        f"resuming {path} with a different config ({', '.join(changed)}); start a new run"
                    )
            else:
                prepare_run_dir(path, overwrite=overwrite)
                write_config(path, cfg, dataset=dataset, world_size=runtime.world_size)
        except (Error, OSError) as exc:
            problem = str(exc)
    problem = runtime.broadcast_object(problem)
    if problem:
        raise Error(problem)
    return path
