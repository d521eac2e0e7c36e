"""Lesion study: delete blocks of a trained residual net at test time, and the same blocks of
its trained plain twin.

Reproduces: [Veit16] Fig. 3-5. Deleting block i means its output becomes `block.shortcut(x)`
(the identity, or option A's zero-pad-and-subsample where the block changes shape), done by
swapping `model.layerK[j]` for a `Deleted(block)` wrapper inside `lesioned(...)`. The plain twin's
block is deleted the same way, which removes two of its conv layers. Both nets are trained
with the same recipe and seed.

Presets:
  quick  Fashion-MNIST, ResNet-20 vs plain-20 (9 blocks each), 400 steps of 32 on 2700 training
         images, 1000 test images, 5 random draws per k (under 2 minutes on 2 CPU cores).
  paper  CIFAR-10, pre-activation ResNet-110 vs its plain twin as in [Veit16], the [He15] recipe
         (64k steps of 128), full test set, 50 draws per k.

Writes: results.json, single_block.png, k_blocks.png, report.html.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import (
    ARCHS,
    TrainSettings,
    evaluate,
    fixed_batches,
    label,
    log,
    save_figure,
    train_twin,
)
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train.distributed import resolve_device

NAME = "lesion"
TITLE = "Lesion study: deleting blocks at test time"
REPRODUCES = "[Veit16] Fig. 3-5 (single-block and k-block deletion)"


@dataclass(frozen=True)
class LesionConfig(TrainSettings):
    depth: int = field(default=20, metadata={"help": "depth 6n+2 of both twins"})
    preact: bool = field(default=False, metadata={"help": "pre-activation blocks [He16], as in [Veit16]"})
    test_examples: int | None = field(default=2000, metadata={"help": "test images evaluated (none: all)"})
    draws: int = field(default=10, metadata={"help": "random block sets averaged per k"})

    def check(self) -> None:
        require(self.depth >= 8 and (self.depth - 2) % 6 == 0, "--depth must be 6n+2, e.g. 20, 56, 110")
        require(self.draws >= 1 and self.steps > 0, "--draws and --steps must be positive")


PRESETS = {
    "quick": LesionConfig(test_examples=1000, draws=5),
    "paper": LesionConfig(
        data="cifar10",
        train_subset=None,
        depth=110,
        preact=True,
        steps=64_000,
        batch_size=128,
        lr=0.1,
        amp="none",
        test_examples=None,
        draws=50,
    ),
}


class Deleted(nn.Module):
    """A block removed at test time: only its shortcut path remains [Veit16]."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return self.block.shortcut(x)


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """(parent module, attribute name) of every submodule, by id: a block's place in any net,
    a ResNet stage (`layer2.3`) or a transformer layer (`h.0.attn`) alike."""
    return {
        id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()
    }


@contextmanager
def lesioned(model: nn.Module, indices: Sequence[int]) -> Iterator[nn.Module]:
    """`model` with the blocks at `indices` (positions in `model.blocks()`) deleted; restored on exit."""
    where = _parents(model)
    blocks = model.blocks()
    swapped = []
    try:
        for i in indices:
            parent, name = where[id(blocks[i])]
            swapped.append((parent, name, blocks[i]))
            setattr(parent, name, Deleted(blocks[i]))
        yield model
    finally:
        for parent, name, block in reversed(swapped):
            setattr(parent, name, block)


@torch.no_grad()
def reshaping_blocks(model: nn.Module, x: Tensor) -> list[int]:
    """Indices of the blocks whose shortcut changes the shape (the downsampling blocks)."""
    out = []
    h = model.forward_intermediates(x)[0]  # the stem output feeds the first block
    for i, block in enumerate(model.blocks()):
        if block.shortcut(h).shape != h.shape:
            out.append(i)
        h = block(h)
    return out


def lesion_errors(model: nn.Module, batches: list, *, draws: int, seed: int) -> dict:
    """Test error with nothing deleted, with each single block deleted, and with k random blocks."""
    model.eval()
    n = len(model.blocks())
    base = evaluate(model, batches)[1]
    single = []
    for i in range(n):
        with lesioned(model, [i]):
            single.append(evaluate(model, batches)[1])
    g = torch.Generator().manual_seed(seed)
    k_mean, k_std = [], []
    for k in range(1, n + 1):
        errs = []
        for _ in range(draws if k < n else 1):  # all n blocks can be chosen one way only
            chosen = torch.randperm(n, generator=g)[:k].tolist()
            with lesioned(model, chosen):
                errs.append(evaluate(model, batches)[1])
        t = torch.tensor(errs, dtype=torch.float64)
        k_mean.append(t.mean().item())
        k_std.append(t.std(correction=0).item())
    return {"base": base, "single": single, "k_mean": k_mean, "k_std": k_std}


def run(cfg: LesionConfig, run_dir: Path) -> Outcome:
    device = resolve_device(cfg.device)
    batches, _ = fixed_batches(
        cfg.data,
        "test",
        examples=cfg.test_examples,
        batch_size=500,
        device=device,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    nets: dict[str, dict] = {}
    for arch in ARCHS:
        model = train_twin(
            cfg, arch, cfg.depth, model_kwargs={"preact": cfg.preact}, val_size=0, eval_splits=()
        ).model.to(device)
        result = lesion_errors(model, batches, draws=cfg.draws, seed=cfg.seed)
        result["downsampling"] = reshaping_blocks(model, batches[0][0][:2])
        nets[arch] = result
        log.info("lesion: %s base error %.3f", label(arch, cfg.depth), result["base"])
    results = {"test_examples": sum(len(y) for _, y in batches), "nets": nets}
    return Outcome(
        results=results,
        figures=_figures(nets, cfg, run_dir),
        tables=[_table(nets, cfg)],
        findings=findings(nets, cfg),
    )


def _median(values: list[float]) -> float:
    return torch.tensor(values, dtype=torch.float64).median().item() if values else math.nan


def _summary(net: dict) -> dict:
    others = [e for i, e in enumerate(net["single"]) if i not in net["downsampling"]]
    return {
        "median_other": _median(others),
        "max_other": max(others) if others else math.nan,
        "downsampling": [net["single"][i] for i in net["downsampling"]],
    }


def _table(nets: dict, cfg: LesionConfig) -> Table:
    rows = []
    for arch in ARCHS:
        net, s = nets[arch], _summary(nets[arch])
        half = len(net["k_mean"]) // 2
        rows.append(
            [
                label(arch, cfg.depth),
                f"{100 * net['base']:.2f}",
                f"{100 * s['median_other']:.2f}",
                f"{100 * s['max_other']:.2f}",
                ", ".join(f"{100 * e:.1f}" for e in s["downsampling"]) or "-",
                f"{100 * net['k_mean'][half - 1]:.1f}" if half else "-",
            ]
        )
    n = len(nets["resnet"]["single"])
    return Table(
        title=f"Test error (%) after deleting blocks ({n} blocks per net)",
        columns=[
            "net",
            "intact",
            "one block: median",
            "one block: max",
            "downsampling blocks",
            f"{n // 2} random",
        ],
        rows=rows,
    )


def findings(nets: dict, cfg: LesionConfig) -> list[str]:
    res, plain = nets["resnet"], nets["plain"]
    rs, ps = _summary(res), _summary(plain)
    d = cfg.depth
    out = [
        f"Deleting one non-downsampling block of resnet-{d} moves its test error from "
        f"{100 * res['base']:.2f}% "
        f"to a median of {100 * rs['median_other']:.2f}% (worst {100 * rs['max_other']:.2f}%); for plain-{d} "
        f"from {100 * plain['base']:.2f}% to a median of {100 * ps['median_other']:.2f}% "
        f"(worst {100 * ps['max_other']:.2f}%).",
    ]
    if rs["downsampling"]:
        worst = max(rs["downsampling"])
        where = "hurts more than" if worst > rs["max_other"] else "hurts no more than"
        out.append(
            f"Deleting a downsampling block of resnet-{d} (error up to {100 * worst:.2f}%) {where} "
            "deleting any other block."
        )
    steps = [b - a for a, b in pairwise(res["k_mean"])]
    rises = sum(s >= 0 for s in steps)
    out.append(
        f"With k random blocks deleted, resnet-{d}'s mean error rises in {rises} of {len(steps)} steps of k, "
        f"from {100 * res['k_mean'][0]:.1f}% (k=1) to {100 * res['k_mean'][-1]:.1f}% (all blocks); "
        f"plain-{d} is at "
        f"{100 * plain['k_mean'][0]:.1f}% already for k=1."
    )
    return out


def _figures(nets: dict, cfg: LesionConfig, run_dir: Path) -> list[Figure]:
    fig = MplFigure(figsize=(8, 3.8))
    ax = fig.subplots()
    for arch, color in zip(ARCHS, ("C3", "C0"), strict=True):
        net = nets[arch]
        idx = list(range(1, len(net["single"]) + 1))
        ax.plot(
            idx,
            [100 * e for e in net["single"]],
            "o-",
            color=color,
            label=f"{label(arch, cfg.depth)}, one deleted",
        )
        ax.axhline(100 * net["base"], color=color, ls=":", label=f"{label(arch, cfg.depth)}, intact")
        for i in net["downsampling"]:
            ax.axvline(i + 1, color="0.6", lw=0.8, ls="--")
    ax.set_xlabel("deleted block (input → output); dashed: downsampling blocks")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures = [
        Figure(
            save_figure(fig, run_dir, "single_block.png"),
            "Test error when one block is deleted [Veit16 Fig. 3].",
        )
    ]

    fig = MplFigure(figsize=(8, 3.8))
    ax = fig.subplots()
    for arch, color in zip(ARCHS, ("C3", "C0"), strict=True):
        net = nets[arch]
        ks = list(range(1, len(net["k_mean"]) + 1))
        mean = [100 * m for m in net["k_mean"]]
        std = [100 * s for s in net["k_std"]]
        ax.plot(ks, mean, "o-", color=color, label=label(arch, cfg.depth))
        ax.fill_between(
            ks,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=color,
            alpha=0.2,
        )
    ax.set_xlabel("blocks deleted at random (k)")
    ax.set_ylabel("test error (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        Figure(
            save_figure(fig, run_dir, "k_blocks.png"),
            f"Test error with k random blocks deleted, mean ± std over {cfg.draws} draws [Veit16 Fig. 5].",
        )
    )
    return figures
