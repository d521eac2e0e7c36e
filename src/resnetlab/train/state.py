"""`RunState`: what a training run carries from step to step, built at step 0 (`build_state`),
restored from the latest checkpoint when resuming (`RunState.restore`) and written to a new one
(`RunState.save`). A checkpoint holds exactly what `restore` needs, so a resumed run goes on as
if it had never stopped: weights, EMA, optimizer, schedule, AMP scaler, every rank's RNG
streams, and how much of the history it had recorded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from resnetlab.data import FolderDataset
from resnetlab.errors import Error
from resnetlab.train.config import TrainConfig
from resnetlab.train.distributed import Runtime
from resnetlab.train.ema import EMA
from resnetlab.train.freeze import freeze, pin_frozen_norms
from resnetlab.train.inputs import initial_model, make_loaders
from resnetlab.train.optim import LRSchedule, build_optimizer, count_weighted_layers
from resnetlab.train.precision import grad_scaler
from resnetlab.train.rng import gather_rng_states
from resnetlab.train.rundir import Recorder, dataset_record, open_run_dir, read_metrics, resume_point
from resnetlab.train.tasks import make_task
from resnetlab.weights import Preprocessing
from resnetlab.weights.checkpoint import EMA_FILE, MODEL_FILE, load_train_state, load_weights, save_checkpoint
from resnetlab.weights.meta import init_record, run_meta
from resnetlab.weights.preprocessing import follow_weights


@dataclass
class RunState:
    """What a run carries from step to step; checkpoints hold what `restore` needs of it."""

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
    task: Any  # the loss and training error (train/tasks.py), bound to the training split
    eval_tasks: dict[str, Any]  # split -> the task bound to it: its evaluation
    num_classes: int
    meta: dict[str, Any]  # stored with the weights (`weights.meta.run_meta`)
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

    def restore(self, runtime: Runtime) -> tuple[dict[str, torch.Tensor] | None, list[dict]]:
        """Load the latest checkpoint of a resumed run into this state; returns its RNG states and the
        history up to it (None and [] when the run has no checkpoint yet and starts from step 0)."""
        checkpoint = resume_point(self.run_dir, runtime)
        if checkpoint is None:
            return None, []
        saved = load_train_state(checkpoint)
        if saved["total_steps"] != self.total_steps:
            raise Error(
                f"{checkpoint} was made for a {saved['total_steps']}-step run but this one has "
                f"{self.total_steps} steps; resume with the run's own data and batch size"
            )
        self.model.load_state_dict(load_weights(checkpoint / MODEL_FILE)[0])
        if self.ema is not None:
            self.ema.module.load_state_dict(load_weights(checkpoint / EMA_FILE)[0])
            self.ema.updates = saved["ema_updates"]
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.scaler.load_state_dict(saved["scaler"])
        self.step, self.last_checkpoint = saved["step"], checkpoint
        history = read_metrics(self.run_dir)[: saved["history_len"]] if runtime.is_main else []
        return saved["rng"], history

    def save(self, runtime: Runtime) -> Path | None:
        """Write a checkpoint of everything `restore` needs (rank 0, with a run directory); returns
        the latest checkpoint. A collective: every rank must call it."""
        rng_states = gather_rng_states(runtime)  # a collective: every rank takes part
        if self.run_dir is None or not runtime.is_main:
            return self.last_checkpoint
        ema = self.ema
        train_state = {
            "total_steps": self.total_steps,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_updates": ema.updates if ema is not None else 0,
            "rng": rng_states,
            "history_len": len(self.recorder.history),
        }
        return save_checkpoint(
            self.run_dir,
            self.step,
            model=self.model.state_dict(),
            ema=ema.module.state_dict() if ema is not None else None,
            meta=self.meta,
            train_state=train_state,
        )


def build_state(
    cfg: TrainConfig,
    model: nn.Module | None,
    weights: Preprocessing | None,
    train_set: Any,
    splits: dict[str, Any],
    runtime: Runtime,
    *,
    resume: bool,
    overwrite: bool,
) -> RunState:
    """The model (maybe from --init-from, frozen as --freeze says), its input pipeline, optimizer,
    schedule and EMA, and the run directory, all at step 0."""
    device = runtime.device
    # The initial weights depend on the seed alone, not on the rank.
    torch.manual_seed(cfg.seed)
    if model is None:
        model, weights = initial_model(cfg, train_set, is_main=runtime.is_main)
    preprocessing, normalization = follow_weights(
        Preprocessing.of_dataset(train_set),
        weights,
        normalize=cfg.normalize,
        resizable=isinstance(train_set, FolderDataset) and cfg.image_size == 0,
        source=cfg.init_from,
    )
    # Every split is fed as the model expects (copies: the loaded data sets stay as they were).
    train_set = preprocessing.feed(train_set)
    splits = {split: preprocessing.feed(ds) for split, ds in splits.items()}
    frozen = freeze(model, cfg.freeze)
    if frozen and runtime.is_main:
        print(f"resnetlab: --freeze {cfg.freeze}: {', '.join(frozen)} frozen", file=sys.stderr)
    loader, eval_loaders = make_loaders(cfg, train_set, splits, runtime)
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

    described = dataset_record(train_set, splits, normalization, init_from=init_record(model))
    run_dir = open_run_dir(cfg, runtime, resume=resume, overwrite=overwrite, dataset=described)
    talk = cfg.progress and runtime.is_main
    return RunState(
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
        task=make_task(cfg.task, train_set, device=device, model=model, label_smoothing=cfg.label_smoothing),
        eval_tasks={
            split: make_task(cfg.task, ds, device=device, model=model) for split, ds in splits.items()
        },
        num_classes=train_set.num_classes,
        meta=run_meta(cfg.model, model, preprocessing, given_kwargs=cfg.model_kwargs, run=cfg.eval_facts()),
        run_dir=run_dir,
        talk=talk,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )
