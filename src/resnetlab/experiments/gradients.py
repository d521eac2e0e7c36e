"""Gradient flow through plain and residual nets: per-conv-layer gradient norms, at initialisation
and after some training, with BN and without any normalisation.

Reproduces: the vanishing/exploding-gradient argument behind [He15 §1] (not a figure of the
paper): for every conv layer, ||dL/dW|| and ||dL/dW|| / ||W|| of the cross-entropy on one fixed
batch of training images, for plain-d and resnet-d at d in `depths`. The summary number is
first/last, the first conv's gradient norm over the last conv's: > 1 means gradients grow toward
the input (exploding), < 1 that they shrink (vanishing), ~1 a flat profile.

Presets:
  quick  Fashion-MNIST, depths 20/56/110, BN and norm="none" at init (seconds), then the BN nets
         again after 20 SGD steps of 32 images (under a minute on 2 CPU cores).
  paper  CIFAR-10, the same depths, the BN nets measured again after 2000 steps of 128 (~5 epochs)
         of the [He15] recipe at constant lr. Add --trained-norms bn,none with a smaller --lr to
         train the no-norm nets too (at lr 0.1 the no-norm ResNets diverge).

Writes: results.json (every profile), grad_norm.png, grad_to_weight.png, first_last.png, report.html.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn.functional as F
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import (
    ARCHS,
    TrainSettings,
    build_twin,
    depth_colors,
    fixed_batches,
    label,
    log,
    save_figure,
    train_twin,
)
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train.distributed import resolve_device

NAME = "gradients"
TITLE = "Gradient norms per layer: plain vs residual"
REPRODUCES = "the vanishing/exploding-gradient argument of [He15 §1, §4.2]"


@dataclass(frozen=True)
class GradientsConfig(TrainSettings):
    depths: tuple[int, ...] = field(default=(20, 56, 110), metadata={"help": "depths 6n+2 of the twins"})
    norms: tuple[str, ...] = field(default=("bn", "none"), metadata={"help": "norms measured at init"})
    trained_norms: tuple[str, ...] = field(
        default=("bn",), metadata={"help": "norms also measured after --steps of training"}
    )
    measure_batch: int = field(default=128, metadata={"help": "training images in the measured batch"})

    def check(self) -> None:
        require(
            all(d >= 8 and (d - 2) % 6 == 0 for d in self.depths), "--depths must be 6n+2, e.g. 20,56,110"
        )
        require(bool(self.norms), "--norms needs at least one of bn, none")
        require(set(self.trained_norms) <= set(self.norms), "--trained-norms must be a subset of --norms")
        require(self.measure_batch > 0 and self.steps >= 0, "--measure-batch > 0 and --steps >= 0")


PRESETS = {
    "quick": GradientsConfig(steps=20),
    "paper": GradientsConfig(
        data="cifar10",
        train_subset=None,
        steps=2000,
        batch_size=128,
        lr=0.1,
        amp="none",
    ),
}


@dataclass
class GradProfile:
    """Per-conv-layer norms, in forward order (the order `named_modules` registers them)."""

    layers: list[str]
    grad_norm: list[float]
    weight_norm: list[float]

    @property
    def grad_to_weight(self) -> list[float]:
        return [g / w if w > 0 else math.nan for g, w in zip(self.grad_norm, self.weight_norm, strict=True)]

    @property
    def first_last(self) -> float:
        """First conv's gradient norm over the last conv's: > 1 grows toward the input."""
        return self.grad_norm[0] / self.grad_norm[-1] if self.grad_norm[-1] > 0 else math.inf


def conv_gradients(model: nn.Module, x: Tensor, y: Tensor) -> GradProfile:
    """Gradient and weight Frobenius norms of every Conv2d for the mean cross-entropy on (x, y).

    The model runs in training mode (BN uses the batch statistics), as during an SGD step.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    layers, grads, weights = [], [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            layers.append(name)
            grads.append(module.weight.grad.norm().item())
            weights.append(module.weight.detach().norm().item())
    model.zero_grad(set_to_none=True)
    return GradProfile(layers, grads, weights)


def log_distance(ratio: float) -> float:
    """How far a ratio is from 1 on a log scale (decades); inf/nan for a broken profile."""
    return abs(math.log10(ratio)) if ratio > 0 and math.isfinite(ratio) else math.inf


def run(cfg: GradientsConfig, run_dir: Path) -> Outcome:
    device = resolve_device(cfg.device)
    batches, dataset = fixed_batches(
        cfg.data,
        "train",
        examples=cfg.measure_batch,
        batch_size=cfg.measure_batch,
        device=device,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    x, y = batches[0]
    profiles: list[dict] = []
    for norm in cfg.norms:
        for depth in cfg.depths:
            for arch in ARCHS:
                model = build_twin(
                    arch,
                    depth,
                    num_classes=dataset.num_classes,
                    in_chans=dataset.in_chans,
                    seed=cfg.seed,
                    norm=norm,
                ).to(device)
                stages = [("init", model)]
                if norm in cfg.trained_norms and cfg.steps > 0:
                    # Constant lr: "after some training" should not depend on where a decay falls.
                    trained = train_twin(
                        cfg,
                        arch,
                        depth,
                        model=copy.deepcopy(model),
                        model_kwargs={"norm": norm},
                        schedule="constant",
                        val_size=0,
                        eval_splits=(),
                    ).model
                    stages.append(("trained", trained))
                for stage, net in stages:
                    prof = conv_gradients(net, x, y)
                    profiles.append(
                        {
                            "norm": norm,
                            "stage": stage,
                            "arch": arch,
                            "depth": depth,
                            "first_last": prof.first_last,
                            "layers": prof.layers,
                            "grad_norm": prof.grad_norm,
                            "weight_norm": prof.weight_norm,
                            "grad_to_weight": prof.grad_to_weight,
                        }
                    )
                    log.info(
                        "gradients: %s norm=%s %s: first/last %.3g",
                        label(arch, depth),
                        norm,
                        stage,
                        prof.first_last,
                    )
    results = {"measure_batch": cfg.measure_batch, "profiles": profiles}
    return Outcome(
        results=results,
        figures=_figures(profiles, cfg, run_dir),
        tables=[_table(profiles, cfg)],
        findings=findings(profiles, cfg),
    )


def _conditions(profiles: list[dict]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for p in profiles:
        seen[(p["stage"], p["norm"])] = None
    return sorted(seen, key=lambda c: (c[0] != "init", c[1] != "bn"))


def _pick(profiles: list[dict], stage: str, norm: str, arch: str, depth: int) -> dict:
    return next(
        p for p in profiles if (p["stage"], p["norm"], p["arch"], p["depth"]) == (stage, norm, arch, depth)
    )


def _label(stage: str, norm: str) -> str:
    return f"{'at init' if stage == 'init' else 'after training'}, norm={norm}"


def _fmt_ratio(r: float) -> str:
    return "non-finite" if not math.isfinite(r) else f"{r:.3g}"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _table(profiles: list[dict], cfg: GradientsConfig) -> Table:
    rows = []
    for stage, norm in _conditions(profiles):
        for depth in cfg.depths:
            plain, res = (_pick(profiles, stage, norm, arch, depth) for arch in ARCHS)
            rows.append(
                [
                    _label(stage, norm),
                    str(depth),
                    _fmt_ratio(plain["first_last"]),
                    _fmt_ratio(res["first_last"]),
                    f"{_median(plain['grad_norm']):.3g}",
                    f"{_median(res['grad_norm']):.3g}",
                ]
            )
    return Table(
        title="Conv gradient norms: first / last layer (1 = flat, > 1 grows toward the input), and median",
        columns=[
            "condition",
            "depth",
            "plain first/last",
            "resnet first/last",
            "plain median",
            "resnet median",
        ],
        rows=rows,
    )


def _direction(r: float) -> str:
    """Words for a first/last ratio; within a factor of 2 of 1 counts as flat."""
    if not math.isfinite(r) or r <= 0:
        return "is not finite (the forward pass overflowed)"
    if 0.5 <= r <= 2:
        return f"stays within a factor of 2 from the last conv to the first (ratio {r:.3g}: flat)"
    if r > 1:
        return f"grows {r:.3g}x from the last conv to the first (exploding toward the input)"
    return f"shrinks {1 / r:.3g}x from the last conv to the first (vanishing toward the input)"


def _size_trend(arch: str, medians: dict[int, float]) -> str:
    """How the typical gradient size changes with depth; a 10x change counts as a trend."""
    lo, hi = min(medians), max(medians)
    change = medians[hi] / medians[lo] if medians[lo] > 0 else math.inf
    values = ", ".join(f"{d}: {v:.3g}" for d, v in medians.items())
    if change < 0.1:
        verdict = f"shrinks {1 / change:.3g}x from depth {lo} to {hi} (vanishing in size)"
    elif change > 10:
        verdict = f"grows {change:.3g}x from depth {lo} to {hi} (exploding in size)"
    else:
        verdict = f"stays within 10x from depth {lo} to {hi}"
    return f"the median conv gradient of the {arch} nets ({values}) {verdict}"


def findings(profiles: list[dict], cfg: GradientsConfig) -> list[str]:
    """Statements computed from the profiles; the words follow the numbers, not the textbook."""
    deep = max(cfg.depths)
    out = []
    for stage, norm in _conditions(profiles):
        plain = _pick(profiles, stage, norm, "plain", deep)["first_last"]
        res = _pick(profiles, stage, norm, "resnet", deep)["first_last"]
        text = (
            f"{_label(stage, norm)}: across plain-{deep}'s layers the gradient norm {_direction(plain)}; "
            f"across resnet-{deep}'s it {_direction(res)}."
        )
        if all(math.isfinite(r) and r > 0 for r in (plain, res)) and res != 1:
            text += (
                f" plain-{deep}'s ratio is {abs(plain - 1) / abs(res - 1):.3g}x further from 1 than"
                f" resnet-{deep}'s"
                f" ({log_distance(plain) / max(log_distance(res), 1e-12):.3g}x on a log scale)."
            )
        if len(cfg.depths) > 1:
            sizes = [
                _size_trend(
                    arch, {d: _median(_pick(profiles, stage, norm, arch, d)["grad_norm"]) for d in cfg.depths}
                )
                for arch in ARCHS
            ]
            text += f" In size, {sizes[0]}; {sizes[1]}."
        out.append(text)
    return out


def _figures(profiles: list[dict], cfg: GradientsConfig, run_dir: Path) -> list[Figure]:
    colors = depth_colors(cfg.depths)
    conditions = _conditions(profiles)
    figures = []
    for key, file, ylabel in (
        ("grad_norm", "grad_norm.png", "||dL/dW||"),
        ("grad_to_weight", "grad_to_weight.png", "||dL/dW|| / ||W||"),
    ):
        fig = MplFigure(figsize=(10, 3.2 * len(conditions)))
        axes = fig.subplots(len(conditions), 2, squeeze=False, sharey="row")
        for row, (stage, norm) in enumerate(conditions):
            for col, arch in enumerate(ARCHS):
                ax = axes[row][col]
                for depth in cfg.depths:
                    values = _pick(profiles, stage, norm, arch, depth)[key]
                    finite = [v if math.isfinite(v) and v > 0 else math.nan for v in values]
                    ax.plot(range(1, len(values) + 1), finite, color=colors[depth], label=f"{arch}-{depth}")
                ax.set_yscale("log")
                ax.set_title(f"{arch}, {_label(stage, norm)}", fontsize=10)
                ax.set_xlabel("conv layer (input → output)")
                ax.set_ylabel(ylabel)
                ax.legend(fontsize=8)
                ax.grid(True, which="major", alpha=0.3)
        fig.tight_layout()
        caption = (
            f"{ylabel} of every conv layer on one batch of {cfg.measure_batch} {cfg.data} training images, "
            "plain (left) and residual (right), log scale."
        )
        figures.append(Figure(save_figure(fig, run_dir, file), caption))

    fig = MplFigure(figsize=(6, 4))
    ax = fig.subplots()
    for i, (stage, norm) in enumerate(conditions):
        for arch, style in zip(ARCHS, ("--", "-"), strict=True):
            ratios = [_pick(profiles, stage, norm, arch, d)["first_last"] for d in cfg.depths]
            shown = [r if math.isfinite(r) and r > 0 else math.nan for r in ratios]
            ax.plot(
                cfg.depths, shown, style, marker="o", color=f"C{i}", label=f"{arch}, {_label(stage, norm)}"
            )
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("first / last conv gradient norm")
    ax.set_xticks(list(cfg.depths))
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        Figure(
            save_figure(fig, run_dir, "first_last.png"),
            "First-to-last gradient-norm ratio against depth; plain dashed, residual solid; 1 is flat.",
        )
    )
    return figures
