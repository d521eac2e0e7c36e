"""A run's inputs: the model it starts from, and the batches its data becomes.

`initial_model` builds cfg.model at random or loads --init-from through `weights.load`, which
also says how those weights expect their inputs; `make_loaders` turns the fed splits into the
training batches (augmented, this rank's stride) and the evaluation batches.
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

from torch import nn

from resnetlab.data import Augment, make_loader
from resnetlab.models.dense import TaskModel, task_model
from resnetlab.models.factory import create_model
from resnetlab.train.config import TrainConfig
from resnetlab.train.distributed import Runtime
from resnetlab.weights import Preprocessing, load


def initial_model(
    cfg: TrainConfig, train_set: Any, *, is_main: bool
) -> tuple[nn.Module, Preprocessing | None]:
    """cfg.model for the data's classes and channels, and how its initial weights expect their
    inputs: randomly initialised (None), or from --init-from (a head of another class count
    starts afresh, a first conv of other channels is adapted)."""
    shape = dict(num_classes=train_set.num_classes, in_chans=train_set.in_chans, **cfg.model_kwargs)
    if cfg.task != "classify":
        return _task_model(cfg, shape, is_main=is_main)
    if cfg.init_from is None:
        return create_model(cfg.model, **shape), None
    with contextlib.redirect_stderr(sys.stderr if is_main else io.StringIO()):  # one rank says it
        model, weights = load(cfg.init_from, model=cfg.model, **shape)
        known = weights.classes
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
    return model.train(), weights


def make_loaders(
    cfg: TrainConfig, train_set: Any, splits: dict[str, Any], runtime: Runtime
) -> tuple[Any, dict[str, Any]]:
    """(the training batches, {split: its evaluation batches}) on this rank; batch sizes in `cfg`
    are global, so each rank takes its 1/world_size share."""
    world = runtime.world_size
    augment = Augment(
        crop_padding=cfg.crop_padding,
        flip=cfg.flip,
        alternate_flip=cfg.alternate_flip,
        erasing=cfg.erasing,
        mixup=cfg.mixup,
        cutmix=cfg.cutmix,
    )
    shared = dict(device=runtime.device, rank=runtime.rank, world_size=world, num_workers=cfg.workers)
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
    return loader, eval_loaders


def _task_model(
    cfg: TrainConfig, shape: dict[str, Any], *, is_main: bool
) -> tuple[nn.Module, Preprocessing | None]:
    """A segmentation or detection model on cfg.model: its backbone random, or from --init-from
    (the weights' stem and stages; their head is not used)."""
    num_classes = shape.pop("num_classes")
    if cfg.init_from is None:
        return task_model(cfg.model, cfg.task, num_classes=num_classes, fpn=cfg.fpn, **shape), None
    with contextlib.redirect_stderr(sys.stderr if is_main else io.StringIO()):
        backbone, weights = load(cfg.init_from, model=cfg.model, features_only=True, **shape)
    return TaskModel(backbone.train(), cfg.task, num_classes, fpn=cfg.fpn), weights
