"""Shattered gradients: how the input gradient of plain and residual nets at initialisation
decorrelates along a 1-D line of inputs as depth grows.

Reproduces: [Balduzzi17] Fig. 1-3 on the CIFAR-style twins instead of fully connected nets.
Each "1-D input" is a line x(t) = x0 + t u through image space (x0 a test image, u a Gaussian
direction, t on an even grid over [-span, span]); we take the derivative of a fixed random
readout w.f(x(t)) with respect to t at every grid point, and its autocorrelation over lags.
White noise (autocorrelation ~0 at lag 1) is what [Balduzzi17] calls shattered; brown noise
(close to 1) is a gradient that still carries information about nearby inputs.

BN: the statistics of the whole grid batch are computed once (training mode) and then frozen
(eval mode), so each point's gradient depends on that point only, with normalised activations.

Presets:
  quick  Fashion-MNIST, depths 20/56/110, 256 grid points, 4 lines (about a minute on 2 CPU cores).
  paper  CIFAR-10, depths 20/32/44/56/110, 256 points over [-2, 2] as in [Balduzzi17], 16 lines.

Writes: results.json, grid_gradients.png, autocorrelation.png, lag1_vs_depth.png, report.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import (
    ARCHS,
    build_twin,
    depth_colors,
    fixed_batches,
    log,
    save_figure,
    set_bn_stats,
)
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train.distributed import resolve_device

NAME = "shattered"
TITLE = "Shattered gradients at initialisation: plain vs residual"
REPRODUCES = "[Balduzzi17] Fig. 1-3 (gradient along a 1-D input grid and its autocorrelation)"


@dataclass(frozen=True)
class ShatteredConfig:
    depths: tuple[int, ...] = field(default=(20, 56, 110), metadata={"help": "depths 6n+2 of the twins"})
    points: int = field(default=256, metadata={"help": "grid points along each line"})
    span: float = field(default=2.0, metadata={"help": "t runs over [-span, span] (units of u)"})
    lines: int = field(default=4, metadata={"help": "random lines (image, direction, readout) averaged"})
    max_lag: int = field(default=32, metadata={"help": "largest autocorrelation lag (grid steps)"})
    norm: str = field(default="bn", metadata={"help": "bn or none"})
    data: str = field(default="fashion-mnist", metadata={"help": "data set the line starts from"})
    data_dir: str | None = field(default=None, metadata={"help": "data set folder (none: default search)"})
    seed: int = field(default=0, metadata={"help": "seed for the init and the lines"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})

    def check(self) -> None:
        require(
            all(d >= 8 and (d - 2) % 6 == 0 for d in self.depths), "--depths must be 6n+2, e.g. 20,56,110"
        )
        require(self.points >= 8 and self.lines >= 1, "--points >= 8 and --lines >= 1")
        require(0 < self.max_lag < self.points // 2, "--max-lag must be in (0, points/2)")
        require(self.span > 0, "--span must be positive")


PRESETS = {
    "quick": ShatteredConfig(),
    "paper": ShatteredConfig(data="cifar10", depths=(20, 32, 44, 56, 110), lines=16),
}


def grid_gradients(model: nn.Module, x0: Tensor, u: Tensor, ts: Tensor, readout: Tensor) -> Tensor:
    """d/dt [readout . model(x0 + t u)] at each t: (T,) for x0, u (C,H,W), ts (T,), readout (classes,).

    The model must be in eval mode so that the T grid points do not interact (BN).
    """
    t = ts.detach().clone().requires_grad_(True)
    x = x0 + t.view(-1, 1, 1, 1) * u  # (T, C, H, W)
    (grad,) = torch.autograd.grad((model(x) @ readout).sum(), t)
    return grad


def autocorrelation(g: Tensor, max_lag: int) -> Tensor:
    """Normalised autocorrelation of a 1-D signal at lags 0..max_lag (lag 0 is 1)."""
    g = g - g.mean()
    var = (g * g).mean()
    return torch.stack([(g[: len(g) - k] * g[k:]).mean() / var for k in range(max_lag + 1)])


def run(cfg: ShatteredConfig, run_dir: Path) -> Outcome:
    device = resolve_device(cfg.device)
    batches, dataset = fixed_batches(
        cfg.data,
        "test",
        examples=cfg.lines,
        batch_size=cfg.lines,
        device=device,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    images = batches[0][0]  # (lines, C, H, W)
    g = torch.Generator().manual_seed(cfg.seed)
    directions = torch.randn(images.shape, generator=g).to(device)
    readouts = torch.nn.functional.normalize(torch.randn(cfg.lines, dataset.num_classes, generator=g), dim=1)
    ts = ((torch.arange(cfg.points, dtype=torch.float32) / (cfg.points - 1)) * 2 - 1) * cfg.span
    ts = ts.to(device)

    series: dict[str, dict] = {}
    for arch in ARCHS:
        for depth in cfg.depths:
            model = build_twin(
                arch,
                depth,
                num_classes=dataset.num_classes,
                in_chans=dataset.in_chans,
                seed=cfg.seed,
                norm=cfg.norm,
            ).to(device)
            grads, acs = [], []
            for i in range(cfg.lines):
                x = images[i] + ts.view(-1, 1, 1, 1) * directions[i]
                set_bn_stats(model, x)
                grad = grid_gradients(model, images[i], directions[i], ts, readouts[i].to(device))
                grads.append(grad.cpu())
                acs.append(autocorrelation(grad.double(), cfg.max_lag).cpu())
            ac = torch.stack(acs).mean(0)
            series[f"{arch}{depth}"] = {
                "arch": arch,
                "depth": depth,
                "gradient": grads[0].tolist(),  # the first line, for the picture
                "autocorrelation": ac.tolist(),  # mean over lines
                "lag1": ac[1].item(),
                "lag1_per_line": [a[1].item() for a in acs],
            }
            log.info("shattered: %s-%d lag-1 autocorrelation %.3f", arch, depth, ac[1].item())
    results = {"t": ts.cpu().tolist(), "series": series}
    return Outcome(
        results=results,
        figures=_figures(results, cfg, run_dir),
        tables=[_table(series, cfg)],
        findings=findings(series, cfg),
    )


def _table(series: dict[str, dict], cfg: ShatteredConfig) -> Table:
    rows = [
        [str(d), f"{series[f'plain{d}']['lag1']:.3f}", f"{series[f'resnet{d}']['lag1']:.3f}"]
        for d in cfg.depths
    ]
    return Table(
        title=f"Lag-1 autocorrelation of the input gradient ({cfg.lines} lines; 1 smooth, 0 white noise)",
        columns=["depth", "plain", "resnet"],
        rows=rows,
    )


def findings(series: dict[str, dict], cfg: ShatteredConfig) -> list[str]:
    lo, hi = min(cfg.depths), max(cfg.depths)
    p_lo, p_hi = series[f"plain{lo}"]["lag1"], series[f"plain{hi}"]["lag1"]
    r_lo, r_hi = series[f"resnet{lo}"]["lag1"], series[f"resnet{hi}"]["lag1"]
    higher = [d for d in cfg.depths if series[f"resnet{d}"]["lag1"] > series[f"plain{d}"]["lag1"]]
    if len(higher) == len(cfg.depths):
        where = "at every depth"
    elif higher:
        where = "only at depth " + ", ".join(map(str, higher))
    else:
        where = "at no depth"
    out = [
        f"Lag-1 autocorrelation of the input gradient from depth {lo} to {hi}: "
        f"plain {p_lo:.3f} -> {p_hi:.3f}, "
        f"resnet {r_lo:.3f} -> {r_hi:.3f}.",
        "The residual net's input gradient is smoother (higher lag-1 autocorrelation) than its plain "
        f"twin's {where}.",
    ]
    if p_hi < p_lo:
        out.append(
            f"Plain nets shatter with depth: their gradient's lag-1 autocorrelation falls by "
            f"{p_lo - p_hi:.3f} from {lo} to {hi}."
        )
    else:
        out.append(
            f"Plain nets did not decorrelate with depth here ({p_lo:.3f} at {lo}, {p_hi:.3f} at {hi})."
        )
    return out


def _figures(results: dict, cfg: ShatteredConfig, run_dir: Path) -> list[Figure]:
    series, ts = results["series"], results["t"]
    colors = depth_colors(cfg.depths)
    fig = MplFigure(figsize=(3.2 * len(cfg.depths), 4.8))
    axes = fig.subplots(2, len(cfg.depths), squeeze=False, sharex=True)
    for row, arch in enumerate(ARCHS):
        for col, depth in enumerate(cfg.depths):
            grad = torch.tensor(series[f"{arch}{depth}"]["gradient"])
            ax = axes[row][col]
            ax.plot(ts, (grad / grad.std()).tolist(), lw=0.8, color=colors[depth])
            ax.set_title(f"{arch}-{depth}", fontsize=10)
            ax.set_yticks([])
            if row == 1:
                ax.set_xlabel("t (input along the line)")
    fig.tight_layout()
    figures = [
        Figure(
            save_figure(fig, run_dir, "grid_gradients.png"),
            "d(output)/dt along one line of inputs, scaled to unit std: plain (top) vs residual (bottom), "
            "deeper to the right.",
        )
    ]

    fig = MplFigure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, arch in zip(axes, ARCHS, strict=True):
        for depth in cfg.depths:
            ac = series[f"{arch}{depth}"]["autocorrelation"]
            ax.plot(range(len(ac)), ac, color=colors[depth], label=f"{arch}-{depth}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(arch)
        ax.set_xlabel("lag (grid steps)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("autocorrelation")
    fig.tight_layout()
    figures.append(
        Figure(
            save_figure(fig, run_dir, "autocorrelation.png"),
            f"Autocorrelation of the input gradient against lag, mean over {cfg.lines} lines.",
        )
    )

    fig = MplFigure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    for arch, style in zip(ARCHS, ("--", "-"), strict=True):
        ax.plot(cfg.depths, [series[f"{arch}{d}"]["lag1"] for d in cfg.depths], style, marker="o", label=arch)
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("lag-1 autocorrelation")
    ax.set_xticks(list(cfg.depths))
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        Figure(
            save_figure(fig, run_dir, "lag1_vs_depth.png"),
            "Lag-1 autocorrelation against depth: near 1 is brown noise, near 0 white noise [Balduzzi17].",
        )
    )
    return figures
