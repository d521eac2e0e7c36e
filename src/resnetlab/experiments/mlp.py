"""The shortcut in a deep MLP: plain against residual twins on flattened Fashion-MNIST images.

Reproduces: no single figure; the seed's claim that the shortcut is not a convnet trick, asked as
three questions (see `twins`): does depth still train, how does the signal travel at init (unit
gradient norms; rank collapse [Dong21]), and does ReZero [Bachlechner20] / SkipInit [De20]
replace normalisation. The nets are `residual_mlp` and `plain_mlp` (pre-LN units, GELU).

Presets:
  quick  depths 4/16/64, width 128, 250 AdamW steps of 64 images (lr 1e-3) on 10,000 training
         images, test error on 2,000 test images, 3 seeds; 2.8 min on 2 idle cores of an AMD EPYC.
  full   depths 4/16/64/128, width 256, 3,000 steps of 128 on all 60,000 images, the full test set.

Writes: results.json, training_loss.png, metric_vs_depth.png, signal_at_init.png, report.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.experiments.common import InMemoryImages, evaluate, fixed_batches
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Outcome
from resnetlab.experiments.twins import TwinsConfig, run_twins
from resnetlab.models import create_model

NAME = "mlp"
TITLE = "Beyond the convnet: plain vs residual MLPs"
REPRODUCES = (
    "the shortcut beyond convolutions: degradation, rank collapse [Dong21] and ReZero [Bachlechner20] in MLPs"
)


@dataclass(frozen=True)
class MLPConfig(TwinsConfig):
    data: str = field(default="fashion-mnist", metadata={"help": "fashion-mnist or mnist (28x28 grey)"})
    data_dir: str | None = field(default=None, metadata={"help": "data set folder (none: default search)"})
    train_subset: int | None = field(default=10_000, metadata={"help": "training images used (none: all)"})
    test_examples: int | None = field(
        default=2000, metadata={"help": "test images for the error (none: all)"}
    )

    def check(self) -> None:
        super().check()
        require(
            self.train_subset is None or self.train_subset >= self.batch_size,
            "--train-subset >= --batch-size",
        )


PRESETS = {
    "quick": MLPConfig(),
    "full": MLPConfig(
        depths=(4, 16, 64, 128),
        width=256,
        steps=3000,
        batch_size=128,
        warmup=200,
        measure_batch=256,
        log_points=60,
        train_subset=None,
        test_examples=None,
    ),
}


class ImageTask:
    """Flattened images into `residual_mlp`/`plain_mlp`; metric: test error in percent."""

    depth_noun = "units"
    metric = "test error (%)"

    def __init__(self, cfg: MLPConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        # One subset for every arm and seed.
        self.train = InMemoryImages(
            cfg.data,
            data_dir=cfg.data_dir,
            train_subset=cfg.train_subset,
            subset_seed=cfg.seed,
            device=device,
        )
        self.test, _ = fixed_batches(
            cfg.data,
            "test",
            examples=cfg.test_examples,
            batch_size=1000,
            device=device,
            data_dir=cfg.data_dir,
        )

    def build(self, depth: int, *, shortcut: bool, norm: str, branch_scale: str) -> nn.Module:
        return create_model(
            "residual_mlp" if shortcut else "plain_mlp",
            depth=depth,
            width=self.cfg.width,
            norm=norm,
            branch_scale=branch_scale,
            num_classes=self.train.num_classes,
            in_chans=self.train.in_chans,
            image_size=self.train.image_size,
        )

    def train_batch(self, seed: int, step: int) -> tuple[Tensor, Tensor]:
        return self.train.batch(seed, step, self.cfg.batch_size)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out.float(), y)

    def evaluate(self, model: nn.Module) -> float:
        return 100 * evaluate(model.eval(), self.test)[1]

    def baseline(self) -> dict[str, Any]:
        """Chance: always the most frequent test class."""
        labels = torch.cat([y for _, y in self.test])
        top = int(torch.bincount(labels).max())
        return {"name": "always guessing the most frequent class", "metric": 100 * (1 - top / len(labels))}

    def measure_batch(self) -> tuple[Tensor, Tensor]:
        n = self.cfg.measure_batch
        return self.train.x[:n], self.train.y[:n]


def make_task(cfg: MLPConfig, device: torch.device) -> ImageTask:
    return ImageTask(cfg, device)


def run(cfg: MLPConfig, run_dir: Path) -> Outcome:
    return run_twins(make_task, cfg, run_dir)
