"""Layer responses of trained plain and residual nets.

Reproduces: [He15] Fig. 7: the standard deviation of every 3x3 layer's output "after BN and
before other nonlinearity (ReLU/addition)", in layer order and sorted in descending order. The
responses are read with forward hooks on `block.response_layers()` (the BN after each 3x3 conv;
the conv itself without BN), in eval mode on test images; the std is over all elements of the
response (images, channels, positions). The stem conv is not in a block and is left out.

Presets:
  quick  Fashion-MNIST, plain-20/56 and ResNet-20/56/110, 400 steps of 32 on 2700 training images
         each (under 4 minutes on 2 CPU cores), 1000 test images.
  paper  CIFAR-10, the same five nets, the [He15] recipe (64k steps of 128), full test set.

Writes: results.json, responses.png, report.html.
"""

from __future__ import annotations

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

    def check(self) -> None:
        depths = self.plain_depths + self.resnet_depths
        require(bool(depths), "give at least one of --plain-depths, --resnet-depths")
        require(all(d >= 8 and (d - 2) % 6 == 0 for d in depths), "depths must be 6n+2, e.g. 20,56,110")
        require(self.steps > 0, "--steps must be positive")


PRESETS = {
    "quick": ResponsesConfig(),
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


def run(cfg: ResponsesConfig, run_dir: Path) -> Outcome:
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
    for arch, depths in (("plain", cfg.plain_depths), ("resnet", cfg.resnet_depths)):
        for depth in depths:
            model = train_twin(cfg, arch, depth, val_size=0, eval_splits=()).model.to(device)
            stds = response_stds(model, batches)
            nets[label(arch, depth)] = {"arch": arch, "depth": depth, "std": stds}
            log.info("responses: %s mean std %.3f", label(arch, depth), sum(stds) / len(stds))
    results = {"test_examples": sum(len(y) for _, y in batches), "nets": nets}
    return Outcome(
        results=results,
        figures=_figures(nets, cfg, run_dir),
        tables=[_table(nets)],
        findings=findings(nets, cfg),
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _table(nets: dict) -> Table:
    rows = [
        [name, str(len(n["std"])), f"{_mean(n['std']):.3f}", f"{max(n['std']):.3f}", f"{min(n['std']):.3f}"]
        for name, n in nets.items()
    ]
    return Table(
        title="Std of 3x3 layer responses", columns=["net", "layers", "mean", "max", "min"], rows=rows
    )


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
    return out


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
