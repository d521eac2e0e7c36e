"""The shortcut in a transformer: plain against residual byte-level GPTs on real English text.

Reproduces: the seed's closing claim for natural-language processing, as three questions (see
`twins`): does depth still train (validation bits per byte), how does the signal travel at init
(unit gradient norms; rank collapse of the token representations, which [Dong21] proves for
attention without skips), and does ReZero [Bachlechner20] replace layer norm. The nets are `gpt`
and `plain_gpt`; the text is Debian's fortunes corpus, read as bytes (`resnetlab data fortunes`).

Anchors: [Dong21]: pure attention loses rank doubly exponentially with depth. He, Martens et al.
2023 ("Deep Transformers without Shortcuts"): vanilla transformers without skips or norms need
about 5x more iterations to match standard ones. nanoGPT's CPU configuration (4 layers, 128
wide, context 64) reaches 1.88 nats per character on Shakespeare in about 3 minutes.

Presets:
  quick  depths 1/4/16 (layers; 2 units each), width 64, 4 heads, context 64, 250 AdamW steps of
         8 windows (lr 2e-3), val bits per byte on 64 windows, 3 seeds; 3.7 min on 2 idle cores
         of an AMD EPYC. That is 128k bytes per run: enough to show which nets train at all, not what
         depth buys a net that trains.
  full   depths 2/8/32, width 128, context 128, 3,000 steps of 32 windows (lr 1e-3), 512 val windows.

Writes: results.json (with the corpus sha256), training_loss.png, metric_vs_depth.png,
signal_at_init.png, report.html.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.data.text import batch_windows, eval_windows, load_corpus
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Outcome
from resnetlab.experiments.twins import TwinsConfig, run_twins
from resnetlab.models import create_model

NAME = "transformer"
TITLE = "Beyond the convnet: plain vs residual transformers on English text"
REPRODUCES = "the shortcut in transformers: depth, rank collapse [Dong21] and ReZero [Bachlechner20] on bytes"


@dataclass(frozen=True)
class TransformerConfig(TwinsConfig):
    depths: tuple[int, ...] = field(
        default=(1, 4, 16), metadata={"help": "transformer layers (2 units each)"}
    )
    width: int = field(default=64, metadata={"help": "width of the residual stream"})
    steps: int = field(default=250, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=8, metadata={"help": "windows of --context bytes per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate, the same for every arm"})
    measure_batch: int = field(default=16, metadata={"help": "windows in the batch measured at init"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    context: int = field(default=64, metadata={"help": "bytes per window"})
    eval_windows: int = field(default=64, metadata={"help": "validation windows for bits per byte"})
    data_dir: str | None = field(default=None, metadata={"help": "folder of the fortunes corpus"})

    def check(self) -> None:
        super().check()
        require(self.width % self.n_head == 0, "--width must be a multiple of --n-head")
        require(self.context >= 2 and self.eval_windows >= 1, "--context >= 2, --eval-windows >= 1")


PRESETS = {
    "quick": TransformerConfig(),
    "full": TransformerConfig(
        depths=(2, 8, 32),
        width=128,
        context=128,
        steps=3000,
        batch_size=32,
        lr=1e-3,
        warmup=200,
        measure_batch=32,
        log_points=60,
        eval_windows=512,
    ),
}


class TextTask:
    """Byte windows of the fortunes corpus into `gpt`/`plain_gpt`; metric: val bits per byte."""

    depth_noun = "layers"
    metric = "val bits per byte"

    def __init__(self, cfg: TransformerConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        corpus = load_corpus(cfg.data_dir)
        self.sha256 = corpus.sha256
        self.train = corpus.train
        self.val = [
            t.to(device) for t in eval_windows(corpus.val, context=cfg.context, max_windows=cfg.eval_windows)
        ]

    def build(self, depth: int, *, shortcut: bool, norm: str, branch_scale: str) -> nn.Module:
        return create_model(
            "gpt" if shortcut else "plain_gpt",
            depth=depth,
            width=self.cfg.width,
            n_head=self.cfg.n_head,
            context=self.cfg.context,
            norm=norm,
            branch_scale=branch_scale,
        )

    def train_batch(self, seed: int, step: int) -> tuple[Tensor, Tensor]:
        x, y = batch_windows(
            self.train, batch=self.cfg.batch_size, context=self.cfg.context, seed=seed, step=step
        )
        return x.to(self.device), y.to(self.device)

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out.float().flatten(0, 1), y.flatten())  # nats per byte

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        model.eval()
        x, y = self.val
        nats = sum(
            float(F.cross_entropy(model(xb).float().flatten(0, 1), yb.flatten(), reduction="sum"))
            for xb, yb in zip(x.split(16), y.split(16), strict=True)
        )
        return nats / y.numel() / math.log(2)

    def baseline(self) -> dict[str, Any]:
        """The byte frequencies of the training split (a unigram model) scored on the val windows:
        what a net scores when its prediction ignores the context."""
        counts = (
            torch.bincount(self.train.long(), minlength=256).double() + 1
        )  # add-one: no byte is impossible
        log2p = (counts / counts.sum()).log2()
        return {
            "name": "the training split's byte frequencies",
            "metric": float(-log2p[self.val[1].cpu()].mean()),
        }

    def measure_batch(self) -> tuple[Tensor, Tensor]:
        # The first training batch of the first seed: measured before any step is taken.
        x, y = batch_windows(
            self.train, batch=self.cfg.measure_batch, context=self.cfg.context, seed=self.cfg.seed, step=0
        )
        return x.to(self.device), y.to(self.device)


def make_task(cfg: TransformerConfig, device: torch.device) -> TextTask:
    return TextTask(cfg, device)


def run(cfg: TransformerConfig, run_dir: Path) -> Outcome:
    corpus = load_corpus(cfg.data_dir)  # a missing corpus fails here, before any training
    outcome = run_twins(make_task, cfg, run_dir)
    outcome.results["corpus"] = {
        "folder": str(corpus.folder),
        "sha256": corpus.sha256,
        "release": corpus.known_as,
        "documents": corpus.documents,
    }
    return outcome
