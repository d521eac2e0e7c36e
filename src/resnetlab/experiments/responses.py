"""Layer responses of trained plain and residual nets.

Reproduces: [He15] Fig. 7: the standard deviation of every 3x3 layer's output "after BN and
before other nonlinearity (ReLU/addition)", in layer order and sorted in descending order. The
responses are read with forward hooks on `block.response_layers()` (the BN after each 3x3 conv;
the conv itself without BN), in eval mode on test images; the std is over all elements of the
response (images, channels, positions). The stem conv is not in a block and is left out.

In eval mode a BN layer's channel c outputs gamma_c * (x - mu_c) / sigma_c + beta_c with the
running statistics, so over test images that match them its std is |gamma_c| and the pooled std
is about sqrt(mean gamma^2 + var beta): the figure is a picture of the BN scales, and shows
[He15]'s trend only once training has moved them from their init of 1. Every net's scales are
recorded beside its responses, and the findings say when they have not moved enough.

Presets:
  quick  Fashion-MNIST, plain-20/56 and ResNet-20/56/110, 400 steps of 32 (lr 0.01) on 2700
         training images each, 1000 test images: the nets train in parallel, one per core (8 min
         on a 2-core AMD EPYC in fp32). Too short for the BN scales to move (the findings say so).
  full   all 60,000 training images, 2000 steps of 32 at lr 0.05 with the recipe's step schedule
         and weight decay 1e-4 on every parameter, BN scales included, as in [He15]; the full
         test set. 54 minutes on a 2-core AMD EPYC in fp32 (--amp none, which --amp auto picks
         on a CPU without native bf16).
  paper  CIFAR-10, the same five nets, the [He15] recipe (64k steps of 128), full test set.

Writes: results.json, responses.png, report.html.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import (
    Batches,
    TrainSettings,
    depth_colors,
    fixed_batches,
    label,
    log,
    run_parallel,
    save_figure,
    train_twin,
)
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train.distributed import resolve_device

NAME = "responses"
TITLE = "Standard deviation of layer responses"
REPRODUCES = "[He15] Fig. 7 (std of 3x3 layer responses, in layer order and sorted)"


@dataclass(frozen=True)
class ResponsesConfig(TrainSettings):
    plain_depths: tuple[int, ...] = field(default=(20, 56), metadata={"help": "depths of the plain nets"})
    resnet_depths: tuple[int, ...] = field(default=(20, 56, 110), metadata={"help": "depths of the ResNets"})
    test_examples: int | None = field(default=1000, metadata={"help": "test images (none: all)"})
    workers: int = field(default=0, metadata={"help": "CPU processes that train nets (0: one per core)"})

    def check(self) -> None:
        depths = self.plain_depths + self.resnet_depths
        require(bool(depths), "give at least one of --plain-depths, --resnet-depths")
        require(all(d >= 8 and (d - 2) % 6 == 0 for d in depths), "depths must be 6n+2, e.g. 20,56,110")
        require(self.steps > 0, "--steps must be positive")
        require(self.workers >= 0, "--workers must be >= 0")


PRESETS = {
    "quick": ResponsesConfig(),
    "full": ResponsesConfig(train_subset=None, steps=2000, lr=0.05, test_examples=None),
    "paper": ResponsesConfig(
        data="cifar10",
        train_subset=None,
        steps=64_000,
        batch_size=128,
        lr=0.1,
        amp="none",
        test_examples=None,
    ),
}


# Below this mean |gamma - 1| no net's responses can have moved far from their value at init.
SCALES_MOVED = 0.1


@torch.no_grad()
def response_moments(model: nn.Module, batches: Batches) -> Tensor:
    """(count, sum, sum of squares) of every `response_layers()` output over `batches`, in forward
    order (eval mode): (layers, 3) float64, on the model's device, so the hooks never sync."""
    layers = [m for block in model.blocks() for m in block.response_layers()]
    device = next(model.parameters()).device
    sums = torch.zeros(len(layers), 3, dtype=torch.float64, device=device)

    def record(k: int, output: Tensor) -> None:
        out = output.double()
        sums[k, 0] += out.numel()
        sums[k, 1] += out.sum()
        sums[k, 2] += (out * out).sum()

    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: record(k, out)) for k, m in enumerate(layers)]
    try:
        model.eval()
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return sums


def response_stds(model: nn.Module, batches: Batches) -> list[float]:
    """Std of every `response_layers()` output over `batches`, in forward order (eval mode)."""
    n, s, ss = response_moments(model, batches).cpu().unbind(1)
    return ((ss / n - (s / n) ** 2).clamp_min(0)).sqrt().tolist()


def bn_scales(model: nn.Module) -> list[float]:
    """RMS of the BN scale gamma of every response layer, in forward order; NaN for a response
    layer that is not a BN (a pre-activation unit's conv)."""
    return [
        float(m.weight.detach().double().square().mean().sqrt())
        if isinstance(m, nn.BatchNorm2d)
        else math.nan
        for block in model.blocks()
        for m in block.response_layers()
    ]


def measure_net(cfg: ResponsesConfig, arch: str, depth: int) -> dict:
    """Train `arch`-`depth`, then its response stds on the test images and its BN scales."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    model = train_twin(cfg, arch, depth, val_size=0, eval_splits=()).model.to(device)
    batches, _ = fixed_batches(
        cfg.data,
        "test",
        examples=cfg.test_examples,
        batch_size=500,
        device=device,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    stds = response_stds(model, batches)
    log.info("responses: %s mean std %.3f", label(arch, depth), _mean(stds))
    return {
        "arch": arch,
        "depth": depth,
        "std": stds,
        "bn_scale": bn_scales(model),
        "test_examples": sum(len(y) for _, y in batches),
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(cfg: ResponsesConfig, run_dir: Path) -> Outcome:
    jobs = [(cfg, arch, d) for arch, depths in (("plain", cfg.plain_depths), ("resnet", cfg.resnet_depths))
            for d in depths]  # fmt: skip
    measured = run_parallel(
        measure_net, jobs, device=resolve_device(cfg.device), workers=cfg.workers, cost=lambda j: j[2]
    )
    nets = {label(n["arch"], n["depth"]): n for n in measured}
    results = {"test_examples": measured[0]["test_examples"], "nets": nets}
    return Outcome(
        results=results,
        figures=_figures(nets, cfg, run_dir),
        tables=[_table(nets)],
        findings=findings(nets, cfg),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _scale_moved(net: dict) -> float:
    """Mean |gamma - 1| over the net's response BNs (RMS per layer): how far training moved the
    scales from their init of 1."""
    scales = [g for g in net["bn_scale"] if math.isfinite(g)]
    return _mean([abs(g - 1) for g in scales]) if scales else math.nan


def _table(nets: dict) -> Table:
    rows = [
        [
            name,
            str(len(n["std"])),
            f"{_mean(n['std']):.3f}",
            f"{max(n['std']):.3f}",
            f"{min(n['std']):.3f}",
            f"{_mean_finite(n['bn_scale']):.3f}",
            f"{_mean_finite(n['bn_scale'][1::2]):.3f}",
        ]
        for name, n in nets.items()
    ]
    return Table(
        title="Std of 3x3 layer responses, and the RMS BN scale of the same layers",
        columns=[
            "net",
            "layers",
            "mean std",
            "max",
            "min",
            "mean BN scale",
            "mean BN scale, 2nd of each block",
        ],
        rows=rows,
    )


def _mean_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return _mean(finite) if finite else math.nan


def findings(nets: dict, cfg: ResponsesConfig) -> list[str]:
    out = []
    for depth in sorted(set(cfg.plain_depths) & set(cfg.resnet_depths)):
        p, r = _mean(nets[label("plain", depth)]["std"]), _mean(nets[label("resnet", depth)]["std"])
        verdict = "smaller than" if r < p else "not smaller than"
        out.append(
            f"Depth {depth}: mean response std {r:.3f} (resnet) vs {p:.3f} (plain): the residual "
            f"responses are {verdict} the plain ones."
        )
    depths = sorted(cfg.resnet_depths)
    if len(depths) > 1:
        means = [_mean(nets[label("resnet", d)]["std"]) for d in depths]
        shrinking = all(b < a for a, b in pairwise(means))
        listed = ", ".join(f"{d}: {m:.3f}" for d, m in zip(depths, means, strict=True))
        out.append(
            f"ResNet mean response std by depth ({listed}) "
            + (
                "falls with every step in depth, as in [He15 Fig. 7]."
                if shrinking
                else "does not fall steadily with depth."
            )
        )
        scales = ", ".join(
            f"{d}: {_mean_finite(nets[label('resnet', d)]['bn_scale'][1::2]):.3f}" for d in depths
        )
        out.append(f"The ResNets' BN scales before the addition, mean RMS by depth: {scales}.")
    ratios = ", ".join(f"{name} {_median_ratio(n):.2f}" for name, n in nets.items())
    out.append(
        "In eval mode a response's std is its BN scale when the running statistics match the test "
        f"images; median std / scale over each net's layers: {ratios}."
    )
    resnets = [n for n in nets.values() if n["arch"] == "resnet"] or list(nets.values())
    moved = max(_scale_moved(n) for n in resnets)
    which = "ResNets'" if any(n["arch"] == "resnet" for n in nets.values()) else "nets'"
    if moved < SCALES_MOVED:
        longer = (
            "" if cfg.steps >= PRESETS["full"].steps else f" (--preset full trains {PRESETS['full'].steps})"
        )
        out.append(
            f"Training moved the {which} BN scales at most {moved:.3f} from their init of 1 (mean "
            f"|gamma - 1| of the one that moved most): their responses still show the initialisation, "
            f"and {cfg.steps} steps are too short to show [He15]'s trend{longer}."
        )
    else:
        out.append(
            f"Training moved the {which} BN scales up to {moved:.3f} from their init of 1 (mean "
            "|gamma - 1| of the one that moved most), enough for the responses to show what training "
            "learned."
        )
    return out


def _median_ratio(net: dict) -> float:
    """Median over layers of response std / BN scale (layers whose scale is 0 or not a BN left out)."""
    ratios = [s / g for s, g in zip(net["std"], net["bn_scale"], strict=True) if math.isfinite(g) and g]
    return statistics.median(ratios) if ratios else math.nan


def _figures(nets: dict, cfg: ResponsesConfig, run_dir: Path) -> list[Figure]:
    colors = depth_colors(cfg.plain_depths + cfg.resnet_depths)
    fig = MplFigure(figsize=(9, 6.4))
    axes = fig.subplots(2, 1)
    for name, net in nets.items():
        style = "--" if net["arch"] == "plain" else "-"
        std = net["std"]
        idx = range(1, len(std) + 1)
        axes[0].plot(idx, std, style, color=colors[net["depth"]], label=name)
        axes[1].plot(idx, sorted(std, reverse=True), style, color=colors[net["depth"]], label=name)
    axes[0].set_xlabel("layer index (original)")
    axes[1].set_xlabel("layer index (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return [
        Figure(
            save_figure(fig, run_dir, "responses.png"),
            "Std of each 3x3 layer's response after BN, before ReLU/addition; plain dashed, ResNet solid "
            "[He15 Fig. 7].",
        )
    ]
