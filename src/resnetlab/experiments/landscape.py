"""Loss landscape around the trained weights of a plain net and its residual twin.

Reproduces: [Li18] Fig. 5 (ResNet-56 with and without skip connections) with filter-normalised
random directions [Li18 §4]: each direction is Gaussian, then every filter d_i (a conv's output
channel, an FC row) is rescaled to the norm of the weight filter theta_i it perturbs. BN scales
and shifts are not perturbed (their direction is zero), as in [Li18]. We plot
L(theta + a d1) in 1-D and L(theta + a d1 + b d2) in 2-D (contours and a surface).

BN statistics: every loss is computed with BN in training mode, i.e. from the statistics of the
evaluated batch itself, at every grid point (and at the trained weights), because perturbed
weights make the stored running statistics stale. The running buffers of the trained model are
never touched (the grid is evaluated on a copy). The loss is the mean cross-entropy over a fixed
set of training images, cut into fixed batches.

Presets:
  quick  Fashion-MNIST, depth 56 (the depth where [Li18] Fig. 5 shows the plain net's surface turn
         chaotic), 400 training steps of 32 on 2700 images, a 9x9 grid and 21 1-D points over
         [-1, 1] on 256 training images (under 4 minutes on 2 CPU cores).
  paper  CIFAR-10, depth 56 [Li18 Fig. 5], the [He15] recipe, a 51x51 grid and 101 1-D points
         on 10k training images.

Writes: results.json, landscape_1d.png, landscape_contour.png, landscape_surface.png, report.html.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import (
    ARCHS,
    Batches,
    TrainSettings,
    batch_norms,
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

NAME = "landscape"
TITLE = "Loss landscape: plain vs residual"
REPRODUCES = "[Li18] Fig. 5 (filter-normalised 1-D and 2-D loss surfaces, with and without shortcuts)"


@dataclass(frozen=True)
class LandscapeConfig(TrainSettings):
    depth: int = field(default=56, metadata={"help": "depth 6n+2 of both twins"})
    points_1d: int = field(default=21, metadata={"help": "odd number of points along the 1-D direction"})
    points_2d: int = field(default=9, metadata={"help": "odd number of grid points per 2-D axis"})
    span: float = field(default=1.0, metadata={"help": "coordinates run over [-span, span]"})
    loss_examples: int = field(default=256, metadata={"help": "training images the loss is averaged over"})

    def check(self) -> None:
        require(self.depth >= 8 and (self.depth - 2) % 6 == 0, "--depth must be 6n+2, e.g. 20, 56")
        require(
            self.points_1d % 2 == 1 and self.points_2d % 2 == 1,
            "--points-1d/--points-2d must be odd (0 on the grid)",
        )
        require(self.points_1d >= 3 and self.points_2d >= 3, "--points-1d/--points-2d must be >= 3")
        require(
            self.span > 0 and self.loss_examples > 0 and self.steps > 0,
            "--span, --loss-examples, --steps > 0",
        )


PRESETS = {
    "quick": LandscapeConfig(),
    "paper": LandscapeConfig(
        data="cifar10",
        train_subset=None,
        depth=56,
        steps=64_000,
        batch_size=128,
        lr=0.1,
        amp="none",
        points_1d=101,
        points_2d=51,
        loss_examples=10_000,
    ),
}


def filter_normalized_direction(model: nn.Module, generator: torch.Generator) -> list[Tensor]:
    """A random direction in parameter space, one tensor per parameter, filter-normalised [Li18 §4].

    For every weight with >= 2 dims, each filter d[i] gets the norm of the weight filter theta[i];
    1-D parameters (BN scales and shifts, biases) get a zero direction.
    """
    directions = []
    for p in model.parameters():
        if p.dim() <= 1:
            directions.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p)
        scale = p.detach().flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)  # (filters,)
        directions.append(d * scale.view(-1, *([1] * (p.dim() - 1))))
    return directions


def grid(points: int, span: float) -> Tensor:
    """`points` (odd) evenly spaced coordinates over [-span, span] with exactly 0 in the middle."""
    half = points // 2
    return torch.arange(-half, half + 1, dtype=torch.float64) * (span / half)


def batch_stats_mode(model: nn.Module) -> nn.Module:
    """Eval mode except BN, which normalises each batch with that batch's own statistics."""
    model.eval()
    for bn in batch_norms(model):
        bn.train()
    return model


@torch.no_grad()
def loss_surface(
    model: nn.Module, directions: list[list[Tensor]], coords: Tensor, batches: Batches
) -> tuple[list[float], list[float]]:
    """Loss and error at theta + sum_k coords[p, k] * directions[k] for every row p of coords (P, K).

    Runs on a copy of `model` in `batch_stats_mode`, so the trained model is left as it was.
    """
    net = batch_stats_mode(copy.deepcopy(model))
    params = list(net.parameters())
    theta = [p.detach().clone() for p in params]
    losses, errors = [], []
    for c in coords.tolist():
        for i, p in enumerate(params):
            p.copy_(theta[i] + sum(ck * d[i] for ck, d in zip(c, directions, strict=True)))
        loss, err = evaluate(net, batches)
        losses.append(loss)
        errors.append(err)
    return losses, errors


def local_minima(z: Tensor) -> int:
    """Interior points of a 2-D grid strictly below all 8 neighbours."""
    count = 0
    for i in range(1, z.shape[0] - 1):
        for j in range(1, z.shape[1] - 1):
            patch = z[i - 1 : i + 2, j - 1 : j + 2].flatten()
            others = torch.cat([patch[:4], patch[5:]])
            count += bool((z[i, j] < others).all())
    return count


def convex_fraction(z: Tensor) -> float:
    """Fraction of interior grid points with a non-negative discrete Laplacian (locally convex)."""
    lap = z[:-2, 1:-1] + z[2:, 1:-1] + z[1:-1, :-2] + z[1:-1, 2:] - 4 * z[1:-1, 1:-1]
    return (lap >= 0).double().mean().item()


def run(cfg: LandscapeConfig, run_dir: Path) -> Outcome:
    device = resolve_device(cfg.device)
    batches, _ = fixed_batches(
        cfg.data,
        "train",
        examples=cfg.loss_examples,
        batch_size=min(cfg.loss_examples, 256),
        device=device,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )
    a1, a2 = grid(cfg.points_1d, cfg.span), grid(cfg.points_2d, cfg.span)
    grid2 = torch.cartesian_prod(a2, a2)  # (P*P, 2): row-major, first coordinate slowest
    nets: dict[str, dict] = {}
    for arch in ARCHS:
        model = train_twin(cfg, arch, cfg.depth, val_size=0, eval_splits=()).model.to(device)
        g = torch.Generator().manual_seed(cfg.seed)
        d1, d2 = filter_normalized_direction(model, g), filter_normalized_direction(model, g)
        center = evaluate(batch_stats_mode(copy.deepcopy(model)), batches)
        log.info("landscape: %s, 1-D curve (%d points)", label(arch, cfg.depth), cfg.points_1d)
        loss1, err1 = loss_surface(model, [d1], a1[:, None], batches)
        log.info("landscape: %s, 2-D grid (%d points)", label(arch, cfg.depth), len(grid2))
        loss2, _ = loss_surface(model, [d1, d2], grid2, batches)
        z = torch.tensor(loss2, dtype=torch.float64).view(cfg.points_2d, cfg.points_2d)
        nets[arch] = {
            "loss_at_weights": center[0],
            "error_at_weights": center[1],
            "loss_1d": loss1,
            "error_1d": err1,
            "loss_2d": z.tolist(),
            "local_minima_2d": local_minima(z),
            "convex_fraction_2d": convex_fraction(z),
        }
    results = {
        "alpha_1d": a1.tolist(),
        "alpha_2d": a2.tolist(),
        "loss_examples": cfg.loss_examples,
        "nets": nets,
    }
    return Outcome(
        results=results,
        figures=_figures(results, cfg, run_dir),
        tables=[_table(results, cfg)],
        findings=findings(results, cfg),
    )


def _rise(results: dict, arch: str, at: float) -> float:
    """Mean loss increase over the trained weights' loss at coordinate +-at on the 1-D curve."""
    alphas, loss = results["alpha_1d"], results["nets"][arch]["loss_1d"]
    center = loss[len(loss) // 2]
    near = [l for a, l in zip(alphas, loss, strict=True) if math.isclose(abs(a), at, abs_tol=1e-9)]
    return sum(near) / len(near) - center


def _half_point(results: dict) -> float:
    alphas = results["alpha_1d"]
    return min((a for a in alphas if a > 0), key=lambda a: abs(a - alphas[-1] / 2))


def _table(results: dict, cfg: LandscapeConfig) -> Table:
    at = _half_point(results)
    rows = []
    for arch in ARCHS:
        net = results["nets"][arch]
        rows.append(
            [
                label(arch, cfg.depth),
                f"{net['loss_at_weights']:.4f}",
                f"{100 * net['error_at_weights']:.2f}",
                f"{_rise(results, arch, at):.3f}",
                f"{_rise(results, arch, results['alpha_1d'][-1]):.3f}",
                str(net["local_minima_2d"]),
                f"{100 * net['convex_fraction_2d']:.0f}",
            ]
        )
    return Table(
        title=f"Loss around the trained weights ({cfg.loss_examples} training images)",
        columns=[
            "net",
            "loss at weights",
            "train error (%)",
            f"1-D rise at ±{at:.2g}",
            f"1-D rise at ±{results['alpha_1d'][-1]:.2g}",
            "2-D local minima",
            "2-D convex points (%)",
        ],
        rows=rows,
    )


def _minima(n: int) -> str:
    return f"{n} strict local {'minimum' if n == 1 else 'minima'}"


def findings(results: dict, cfg: LandscapeConfig) -> list[str]:
    nets, d = results["nets"], cfg.depth
    at = _half_point(results)
    rp, rr = _rise(results, "plain", at), _rise(results, "resnet", at)
    sharper = label("plain", d) if rp > rr else label("resnet", d)
    plain, res = nets["plain"], nets["resnet"]
    return [
        f"At the trained weights the loss is {plain['loss_at_weights']:.3f} (plain-{d}) and "
        f"{res['loss_at_weights']:.3f} (resnet-{d}).",
        f"Along a filter-normalised direction the loss rises by {rp:.3f} (plain) and {rr:.3f} (resnet) "
        f"at ±{at:.2g}: {sharper} sits in the sharper minimum.",
        f"On the 2-D grid plain-{d} has {_minima(plain['local_minima_2d'])} and "
        f"{100 * plain['convex_fraction_2d']:.0f}% locally convex points; resnet-{d} has "
        f"{_minima(res['local_minima_2d'])} and {100 * res['convex_fraction_2d']:.0f}%.",
    ]


def _figures(results: dict, cfg: LandscapeConfig, run_dir: Path) -> list[Figure]:
    nets, a1, a2 = results["nets"], results["alpha_1d"], results["alpha_2d"]
    fig = MplFigure(figsize=(6.5, 4))
    ax = fig.subplots()
    for arch, color in zip(ARCHS, ("C3", "C0"), strict=True):
        ax.plot(a1, nets[arch]["loss_1d"], "o-", ms=3, color=color, label=label(arch, cfg.depth))
    ax.set_yscale("log")
    ax.set_xlabel("α (filter-normalised direction)")
    ax.set_ylabel("training loss")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures = [
        Figure(
            save_figure(fig, run_dir, "landscape_1d.png"),
            "Loss along one filter-normalised direction [Li18].",
        )
    ]

    all_z = torch.tensor([nets[a]["loss_2d"] for a in ARCHS])
    lo, hi = all_z.min().item(), all_z.max().item()
    levels = torch.logspace(math.log10(max(lo, 1e-6)), math.log10(hi), 20).tolist()
    fig = MplFigure(figsize=(10, 4.4))
    axes = fig.subplots(1, 2)
    for ax, arch in zip(axes, ARCHS, strict=True):
        cs = ax.contour(a2, a2, torch.tensor(nets[arch]["loss_2d"]).T.tolist(), levels=levels, cmap="viridis")
        ax.clabel(cs, fontsize=6, fmt="%.2g")
        ax.plot([0], [0], "k+")
        ax.set_title(label(arch, cfg.depth))
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        ax.set_aspect("equal")
    fig.tight_layout()
    figures.append(
        Figure(
            save_figure(fig, run_dir, "landscape_contour.png"),
            "Contours of the training loss on the 2-D filter-normalised plane; both panels share the levels.",
        )
    )

    fig = MplFigure(figsize=(11, 4.8))
    A, B = torch.meshgrid(torch.tensor(a2), torch.tensor(a2), indexing="ij")
    for k, arch in enumerate(ARCHS):
        ax = fig.add_subplot(1, 2, k + 1, projection="3d")
        ax.plot_surface(A.numpy(), B.numpy(), torch.tensor(nets[arch]["loss_2d"]).numpy(), cmap="viridis")
        ax.set_zlim(lo, hi)
        ax.set_title(label(arch, cfg.depth))
        ax.set_xlabel("α")
        ax.set_ylabel("β")
        ax.set_zlabel("loss")
    figures.append(
        Figure(
            save_figure(fig, run_dir, "landscape_surface.png"),
            "The same 2-D loss as a surface [Li18 Fig. 5].",
        )
    )
    return figures
