"""Pieces the experiments share: twin model names, fixed evaluation batches, evaluation, training
through `resnetlab.train.fit`, and BN statistics taken from one fixed batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from resnetlab.data import load_dataset, make_loader
from resnetlab.models import create_model
from resnetlab.train import TrainResult, fit, get_recipe
from resnetlab.train.distributed import resolve_device
from resnetlab.train.precision import resolve_amp

log = logging.getLogger("resnetlab.experiments")

AMP_HELP = (
    "autocast dtype: auto (bf16 where the hardware has it natively, else none), bf16, fp16 (CUDA) or none"
)
ARCHS = ("plain", "resnet")  # the twins: same layers, with and without shortcuts [He15 §4.2]
Batches = list[tuple[Tensor, Tensor]]


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_parallel(
    fn: Callable[..., Any],
    jobs: Sequence[tuple],
    *,
    device: torch.device,
    workers: int,
    cost: Callable[[tuple], float] | None = None,
) -> list[Any]:
    """[fn(*job) for job in jobs], in job order. On the CPU in `workers` spawned processes of one
    thread each (0: one per core): small nets use two cores better this way than one two-thread
    run, and the numbers do not depend on the core count. Costliest jobs first (by `cost`, if
    given), so the workers finish together. One worker, or a GPU, runs them here in turn (one
    thread on the CPU)."""
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if device.type != "cpu":
        return [fn(*job) for job in jobs]
    if workers <= 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same numbers as in a worker process
        try:
            return [fn(*job) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_one_thread) as pool:
        order = sorted(range(len(jobs)), key=lambda i: -cost(jobs[i])) if cost else range(len(jobs))
        futures = {i: pool.submit(fn, *jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


def twin(arch: str, depth: int, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """(model name, create_model kwargs) of the CIFAR-style net `arch`-`depth`, any depth 6n+2.

    `plain` is the residual net's layers with shortcut="none" [He15 §4.2]; both use option A.
    `preact` is the pre-activation ResNet [He16], whose shortcut path is a clean identity.
    """
    shortcut = "none" if arch == "plain" else "A"
    return "cifar_resnet", {
        "depth": depth,
        "shortcut": shortcut,
        **({"preact": True} if arch == "preact" else {}),
        **kwargs,
    }


def label(arch: str, depth: int) -> str:
    return f"{arch}-{depth}"


@dataclass(frozen=True)
class TrainSettings:
    """How the experiments that need trained nets train them: a recipe plus a few overrides.

    Experiment configs inherit these fields, so every experiment exposes the same flags.
    """

    recipe: str = field(default="paper-cifar", metadata={"help": "training recipe the fields below override"})
    data: str = field(default="fashion-mnist", metadata={"help": "fashion-mnist, mnist, cifar10, cifar100"})
    data_dir: str | None = field(default=None, metadata={"help": "data set folder (none: default search)"})
    train_subset: int | None = field(default=2700, metadata={"help": "training images used (none: all)"})
    steps: int = field(default=400, metadata={"help": "optimizer steps per net"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    lr: float = field(default=0.01, metadata={"help": "peak learning rate per step of --batch-size examples"})
    augment: bool = field(default=True, metadata={"help": "the recipe's augmentation (off: none at all)"})
    amp: str = field(default="auto", metadata={"help": AMP_HELP})
    seed: int = field(default=0, metadata={"help": "seed of the first run (init, subset, data order)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})


def train_twin(
    s: TrainSettings,
    arch: str,
    depth: int,
    *,
    seed: int | None = None,
    model: nn.Module | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train `arch`-`depth` (or the given `model`, built as it) with the settings `s`, writing
    nothing to disk; `overrides` are TrainConfig fields, e.g. eval_every."""
    name, kwargs = twin(arch, depth, **overrides.pop("model_kwargs", {}))
    recipe = get_recipe(s.recipe)
    if not s.augment:
        recipe = dataclasses.replace(recipe, crop_padding=0, flip=False, erasing=0.0, mixup=0.0, cutmix=0.0)
    cfg = dataclasses.replace(
        recipe,
        model=name,
        model_kwargs=kwargs,
        data=s.data,
        data_dir=s.data_dir,
        train_subset=s.train_subset,
        max_steps=s.steps,
        batch_size=s.batch_size,
        lr=s.lr,
        amp=resolve_amp(resolve_device(s.device), s.amp),
        seed=s.seed if seed is None else seed,
        device=s.device,
        out=None,
        progress=False,
        **overrides,
    )
    cfg.check()
    log.info("training %s (seed %d, %d steps of %d)", label(arch, depth), cfg.seed, s.steps, s.batch_size)
    return fit(cfg, model=model)


def build_twin(
    arch: str, depth: int, *, num_classes: int, in_chans: int, seed: int, **kwargs: Any
) -> nn.Module:
    """`arch`-`depth` initialised from `seed`: twins built with one seed start from the same draw
    (option A adds no parameters, so their parameter lists match one to one)."""
    name, options = twin(arch, depth, **kwargs)
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, in_chans=in_chans, **options)


class InMemoryImages:
    """A training split, or `train_subset` of its images chosen by `subset_seed`, normalised once
    and kept on `device` as x (N, C, H, W) float32 and y (N,) int64. Batches are drawn with
    replacement from (seed, step) alone, so a run restarted at any step sees the same batches."""

    def __init__(
        self,
        data: str,
        *,
        data_dir: str | None,
        train_subset: int | None,
        subset_seed: int,
        device: torch.device,
    ) -> None:
        train = load_dataset(data, "train", data_dir=data_dir)
        if train_subset is not None and train_subset < len(train):
            g = torch.Generator().manual_seed(subset_seed)
            train = train.subset(torch.randperm(len(train), generator=g)[:train_subset].sort().values)
        self.num_classes, self.in_chans, self.image_size = train.num_classes, train.in_chans, train.image_size
        mean = torch.tensor(train.mean).view(1, -1, 1, 1)
        std = torch.tensor(train.std).view(1, -1, 1, 1)
        self.x = ((train.images.float() / 255 - mean) / std).to(device)
        self.y = train.labels.to(device)

    def batch(self, seed: int, step: int, size: int) -> tuple[Tensor, Tensor]:
        idx = np.random.default_rng([seed, step]).integers(0, len(self.y), size=size)
        idx_t = torch.from_numpy(idx).to(self.y.device)
        return self.x[idx_t], self.y[idx_t]


def fixed_batches(
    data: str,
    split: str,
    *,
    examples: int | None,
    batch_size: int,
    device: torch.device,
    seed: int = 0,
    data_dir: str | None = None,
) -> tuple[Batches, Any]:
    """`examples` images of `split` chosen by `seed` (None: all), normalised, on `device`.

    Returns the batches [(x (B,C,H,W) float32, y (B,) int64), ...] and the data set (for
    `num_classes`, `in_chans`).
    """
    dataset = load_dataset(data, split, data_dir=data_dir)
    if examples is not None and examples < len(dataset):
        g = torch.Generator().manual_seed(seed)
        dataset = dataset.subset(torch.randperm(len(dataset), generator=g)[:examples].sort().values)
    loader = make_loader(dataset, batch_size=batch_size, train=False, device=device)
    return [(x, y) for x, y in loader], dataset


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """(mean cross-entropy, error fraction) of `model` over `batches`, in the model's current mode.

    The sums stay on the device until the end: one wait for it per call, not two per batch.
    """
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for x, y in batches:
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        wrong += (logits.argmax(1) != y).sum()
        count += len(y)
    return float(loss_sum) / count, int(wrong) / count


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def set_bn_stats(model: nn.Module, x: Tensor) -> None:
    """Replace every BN's running statistics by those of the fixed batch `x`, then switch to eval.

    After this, each sample's output depends on that sample alone (no batch coupling), while the
    activations stay normalised as in training mode.
    """
    model.train()
    bns = batch_norms(model)
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: after one batch, exactly that batch's statistics
    model(x)
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.eval()


def save_figure(fig: Figure, run_dir: Path, file: str) -> str:
    """Write `fig` as `run_dir/file` (PNG) and return `file` for the record."""
    fig.savefig(Path(run_dir) / file, dpi=110, bbox_inches="tight")
    return file


def depth_colors(depths: Sequence[int]) -> dict[int, str]:
    """One colour per depth, the same in every figure of a run."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    return {d: palette[i % len(palette)] for i, d in enumerate(sorted(depths))}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population std of the finite values; NaN when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return float(np.mean(finite)), float(np.std(finite))


def stack(values: Sequence[Sequence[float]]) -> tuple[list[float], list[float]]:
    """Mean and (population) std over the first axis of a seeds x points table."""
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean(0).tolist(), t.std(0, correction=0).tolist()
