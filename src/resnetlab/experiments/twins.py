"""Plain against residual beyond the convnet: the procedure the `mlp` and `transformer` experiments share.

A `Task` gives the data, the nets and the metric (lower is better); this module asks it three
questions, with `seeds` seeds per arm and the same seed giving both twins the same initial draw
and the same batches:

  1. Does depth still train? Plain and residual twins (norm `norm`, branch scale 1) at every depth
     train `steps` steps of AdamW at one learning rate (linear warm-up, then constant).
  2. How does the signal travel at initialisation? For plain and residual, with layer norm and
     without, and for ReZero: each unit's gradient norm, and each layer's rank-1 distance and
     effective rank (`measures`) on one fixed batch.
  3. Does ReZero/SkipInit replace normalisation? A residual stack with no norm and a learned
     branch scale initialised at 0 [Bachlechner20, De20] trains at the largest depth where the
     plain twin fails (its metric is worse than the residual twin's by more than the seeds'
     spread), or at the largest depth if it never does. It trains beside the twins at the
     largest depth, and again at a smaller one only if the plain twin fails there alone.

On the CPU the trainings run in parallel processes of one thread each (`workers`, see
`common.run_parallel`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import depth_colors, log, mean_std, run_parallel, save_figure
from resnetlab.experiments.config import require
from resnetlab.experiments.measures import (
    effective_rank,
    input_recoverability,
    rank1_distance,
    unit_gradient_norms,
)
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train.distributed import resolve_device


@dataclass(frozen=True)
class TwinsConfig:
    """The fields both experiments share; each adds its data and model fields."""

    depths: tuple[int, ...] = field(default=(4, 16, 64), metadata={"help": "depths of the twins (units)"})
    width: int = field(default=128, metadata={"help": "width of the residual stream"})
    seeds: int = field(default=3, metadata={"help": "runs per arm (seeds seed..seed+N-1): mean ± std"})
    steps: int = field(default=250, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=64, metadata={"help": "examples (sequences) per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate, the same for every arm"})
    warmup: int = field(default=25, metadata={"help": "steps of linear learning-rate warm-up"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0: off)"})
    norm: str = field(default="ln", metadata={"help": "norm of the question-1 twins: ln or none"})
    rezero: bool = field(default=True, metadata={"help": "question 3: train ReZero (no norm, s = 0 at init)"})
    measure_batch: int = field(default=128, metadata={"help": "examples in the batch measured at init"})
    log_points: int = field(default=25, metadata={"help": "training-loss points per curve"})
    amp: str = field(default="none", metadata={"help": "autocast dtype: none or bf16"})
    seed: int = field(default=0, metadata={"help": "seed of the first run (init and batches)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    workers: int = field(
        default=0, metadata={"help": "CPU only: trainings run at once, one thread each (0: one per core)"}
    )

    def check(self) -> None:
        require(
            len(self.depths) >= 2 and all(d >= 1 for d in self.depths),
            "--depths needs two or more depths >= 1",
        )
        require(
            self.width >= 4 and self.seeds >= 1 and self.steps >= 1, "--width >= 4, --seeds and --steps >= 1"
        )
        require(self.batch_size >= 1 and self.measure_batch >= 2, "--batch-size >= 1, --measure-batch >= 2")
        require(
            self.lr > 0 and self.warmup >= 0 and self.grad_clip >= 0,
            "--lr > 0, --warmup and --grad-clip >= 0",
        )
        require(self.norm in ("ln", "none"), "--norm must be ln or none")
        require(self.amp in ("none", "bf16"), "--amp must be none or bf16")
        require(self.log_points >= 1 and self.workers >= 0, "--log-points >= 1, --workers >= 0")


class Task(Protocol):
    """What an experiment supplies: nets, batches and a metric where lower is better."""

    metric: str  # e.g. "test error (%)", "val bits per byte"
    depth_noun: str  # what `depths` count: "units" (MLP) or "layers" (transformer, 2 units each)

    def build(self, depth: int, *, shortcut: bool, norm: str, branch_scale: str) -> nn.Module: ...

    def train_batch(self, seed: int, step: int) -> tuple[Tensor, Tensor]: ...

    def loss(self, out: Tensor, y: Tensor) -> Tensor: ...

    def evaluate(self, model: nn.Module) -> float: ...

    def measure_batch(self) -> tuple[Tensor, Tensor]: ...

    # {"name": ..., "metric": ...}: what a net that learned nothing scores (chance, unigram)
    def baseline(self) -> dict[str, Any]: ...


TaskFactory = Callable[[Any, torch.device], Task]


@dataclass(frozen=True)
class Arm:
    """One kind of net: plain or residual, its norm and its branch scale."""

    arch: str  # "plain", "residual" or "rezero"
    norm: str
    branch_scale: str = "one"

    @property
    def shortcut(self) -> bool:
        return self.arch != "plain"

    def label(self, depth: int) -> str:
        return f"{self.arch}-{depth}" + ("" if self.arch == "rezero" else f" ({self.norm})")


def main_arms(cfg: TwinsConfig) -> tuple[Arm, Arm]:
    return Arm("plain", cfg.norm), Arm("residual", cfg.norm)


REZERO = Arm("rezero", "none", "zero")
# Question 2's conditions: both twins with and without layer norm, and ReZero.
SIGNAL_ARMS = (
    Arm("plain", "ln"),
    Arm("residual", "ln"),
    Arm("plain", "none"),
    Arm("residual", "none"),
    REZERO,
)


def lr_at(step: int, cfg: TwinsConfig) -> float:
    """Linear warm-up over `warmup` steps, then constant: no decay to confound the comparison."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def train_arm(factory: TaskFactory, cfg: Any, arm: Arm, depth: int, seed: int) -> dict:
    """Train one net; its loss curve, final training loss (mean of the last tenth) and metric."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    task = factory(cfg, device)
    torch.manual_seed(seed)
    model = task.build(depth, shortcut=arm.shortcut, norm=arm.norm, branch_scale=arm.branch_scale).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    every = max(1, cfg.steps // cfg.log_points)
    steps, losses, window, diverged = [], [], [], False
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = task.train_batch(seed, step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
            loss = task.loss(model(x), y)
        if not torch.isfinite(loss):
            diverged = True
            break
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        window.append(loss.item())
        if len(window) == every or step == cfg.steps - 1:
            steps.append(step + 1)
            losses.append(sum(window) / len(window))
            window = []
    last = [v for s, v in zip(steps, losses, strict=True) if s > 0.9 * cfg.steps] or losses[-1:]
    model.eval()
    x, _ = task.measure_batch()
    return {
        "arch": arm.arch,
        "norm": arm.norm,
        "branch_scale": arm.branch_scale,
        "depth": depth,
        "seed": seed,
        "steps": steps,
        "loss": losses,
        "diverged": diverged,
        "final_train_loss": math.nan if diverged or not last else sum(last) / len(last),
        "metric": math.nan if diverged else task.evaluate(model),
        "input_r2": [math.nan] if diverged else input_r2(model, x),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _logged(run: dict) -> dict:
    arm = Arm(run["arch"], run["norm"], run["branch_scale"])
    log.info(
        "%s seed %d: train loss %.3f, metric %.4g (%.0f s)",
        arm.label(run["depth"]), run["seed"], run["final_train_loss"], run["metric"], run["seconds"],
    )  # fmt: skip
    return run


def _train_all(factory: TaskFactory, cfg: Any, jobs: list[tuple[Arm, int, int]]) -> list[dict]:
    """Every job's run, in job order; the deepest first."""
    device = resolve_device(cfg.device)
    runs = run_parallel(
        train_arm,
        [(factory, cfg, *job) for job in jobs],
        device=device,
        workers=cfg.workers,
        cost=lambda j: j[3],
    )
    return [_logged(run) for run in runs]


@torch.no_grad()
def input_r2(model: nn.Module, x: Tensor) -> list[float]:
    """Per layer: how much of the input `x` a ridge read-out recovers (R^2 on the batch's second
    half, fitted on its first; `measures.input_recoverability`)."""
    return [input_recoverability(h, x) for h in model.forward_intermediates(x)]


@torch.no_grad()
def _representations(model: nn.Module, x: Tensor) -> dict[str, list[float]]:
    """Per layer: rank-1 distance, effective rank, input R^2, and the RMS of the activations (0:
    the signal vanished, where the rank measures are undefined; inf: it overflowed)."""
    feats = model.forward_intermediates(x)
    return {
        "rank1_distance": [rank1_distance(h) for h in feats],
        "effective_rank": [effective_rank(h) for h in feats],
        "input_r2": [input_recoverability(h, x) for h in feats],
        "rms": [float(h.double().square().mean().sqrt()) for h in feats],
    }


def measure_signal(task: Task, arm: Arm, depth: int, seed: int) -> dict:
    """Question 2 for one net at initialisation (training mode; these nets have no batch norm)."""
    torch.manual_seed(seed)
    x, y = task.measure_batch()
    model = task.build(depth, shortcut=arm.shortcut, norm=arm.norm, branch_scale=arm.branch_scale).to(
        x.device
    )
    grads = unit_gradient_norms(model, lambda m: task.loss(m(x), y))
    return {"arch": arm.arch, "norm": arm.norm, "depth": depth, "seed": seed, "grad_norm": grads,
            **_representations(model, x)}  # fmt: skip


def _mean_profile(profiles: list[list[float]]) -> list[float]:
    """Per-position mean over seeds, NaN where a seed's value is not finite."""
    t = np.array(profiles, dtype=np.float64)
    return [float(v) for v in t.mean(0)]


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per arm label: the metric's and the final loss's mean and std over seeds, and divergences."""
    out: dict[str, dict] = {}
    for run in runs:
        out.setdefault(Arm(run["arch"], run["norm"], run["branch_scale"]).label(run["depth"]), []).append(run)
    summary = {}
    for name, group in out.items():
        m, s = mean_std([r["metric"] for r in group])
        lm, ls = mean_std([r["final_train_loss"] for r in group])
        summary[name] = {
            "arch": group[0]["arch"],
            "norm": group[0]["norm"],
            "depth": group[0]["depth"],
            "metric": m,
            "metric_std": s,
            "loss": lm,
            "loss_std": ls,
            "diverged": sum(r["diverged"] for r in group),
            "seeds": len(group),
        }
    return summary


def _worse(a: dict, b: dict) -> bool:
    """a's metric is worse than b's by more than the two standard deviations added, or a diverged."""
    if not math.isfinite(a["metric"]):
        return math.isfinite(b["metric"])
    return a["metric"] - b["metric"] > a["metric_std"] + b["metric_std"]


def plain_fails(summary: dict[str, dict], cfg: TwinsConfig, depth: int) -> bool:
    """The plain twin fails at `depth` when its metric is worse than the residual twin's by more
    than the two standard deviations added (or it diverged and the residual twin did not)."""
    plain, res = (summary[arm.label(depth)] for arm in main_arms(cfg))
    return _worse(plain, res)


def rezero_depth(summary: dict[str, dict], cfg: TwinsConfig) -> tuple[int, bool]:
    """(depth for question 3, whether the plain twin fails there)."""
    failing = [d for d in cfg.depths if plain_fails(summary, cfg, d)]
    return (max(failing), True) if failing else (max(cfg.depths), False)


def run_twins(factory: TaskFactory, cfg: Any, run_dir: Any) -> Outcome:
    """Questions 1-3 for the task `factory(cfg, device)` makes; the experiment's `run`."""
    device = resolve_device(cfg.device)
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    task = factory(cfg, device)
    signal = [
        measure_signal(task, arm, depth, seed)
        for arm in SIGNAL_ARMS
        for depth in cfg.depths
        for seed in seeds
    ]
    jobs = [(arm, depth, seed) for depth in cfg.depths for arm in main_arms(cfg) for seed in seeds]
    # ReZero trains beside the twins at the largest depth, where the plain twin fails if it fails
    # anywhere; only if it fails at a smaller depth alone does a second round train it there.
    deepest = max(cfg.depths)
    runs = _train_all(factory, cfg, jobs + ([(REZERO, deepest, s) for s in seeds] if cfg.rezero else []))
    summary = summarize(runs)
    depth, fails = rezero_depth(summary, cfg)
    if cfg.rezero and depth != deepest:
        runs += _train_all(factory, cfg, [(REZERO, depth, seed) for seed in seeds])
        summary = summarize(runs)
    results = {
        "metric": task.metric,
        "depth_noun": task.depth_noun,
        "baseline": task.baseline(),
        "rezero_depth": depth if cfg.rezero else None,
        "plain_fails_at_rezero_depth": fails,
        "runs": runs,
        "summary": summary,
        "signal": signal,
    }
    return Outcome(
        results=results,
        figures=figures(results, cfg, run_dir),
        tables=tables(results, cfg),
        findings=findings(results, cfg),
    )


# ----------------------------------------------------------------- tables and findings


def _n(depth: int, results: dict) -> str:
    """ "16 layers", "1 unit": a depth in the task's own word."""
    noun = results["depth_noun"]
    return f"{depth} {noun.removesuffix('s') if depth == 1 else noun}"


def _fmt(mean: float, std: float) -> str:
    return "diverged" if not math.isfinite(mean) else f"{mean:.4g} ± {std:.2g}"


def _r2(mean: float, std: float) -> str:
    """An input R^2; NaN where the features were not finite (an overflow or a diverged run)."""
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(mean) else "undefined"


def _ratio(values: list[float]) -> float:
    """First unit's gradient norm over the last unit's: > 1 grows toward the input."""
    first, last = values[0], values[-1]
    return first / last if math.isfinite(first) and math.isfinite(last) and last > 0 else math.nan


def signal_summary(signal: list[dict], arm: Arm, depth: int) -> dict:
    """Mean over seeds of one net's profiles, and the numbers the table and findings quote."""
    mine = [s for s in signal if (s["arch"], s["norm"], s["depth"]) == (arm.arch, arm.norm, depth)]
    grads = _mean_profile([s["grad_norm"] for s in mine])
    distance = _mean_profile([s["rank1_distance"] for s in mine])
    erank = _mean_profile([s["effective_rank"] for s in mine])
    r2 = _mean_profile([s["input_r2"] for s in mine])
    rms = _mean_profile([s["rms"] for s in mine])
    return {
        "output_rms": rms[-1],
        "grad_norm": grads,
        "rank1_distance": distance,
        "effective_rank": erank,
        "input_r2": r2,
        "first_last": _ratio(grads),
        "median_grad": float(np.median(grads)),
        "input_distance": distance[0],
        "output_distance": distance[-1],
        "input_rank": erank[0],
        "output_rank": erank[-1],
        "input_layer_r2": r2[0],
        "output_r2": r2[-1],
    }


def tables(results: dict, cfg: TwinsConfig) -> list[Table]:
    summary, metric = results["summary"], results["metric"]
    rows = []
    for depth in cfg.depths:
        plain, res = (summary[arm.label(depth)] for arm in main_arms(cfg))
        rows.append(
            [
                str(depth),
                _fmt(plain["metric"], plain["metric_std"]),
                _fmt(res["metric"], res["metric_std"]),
                _fmt(plain["loss"], plain["loss_std"]),
                _fmt(res["loss"], res["loss_std"]),
            ]
        )
    q1 = Table(
        title=f"1. Does depth train? {metric} and final training loss after {cfg.steps} steps, "
        f"norm={cfg.norm} (mean ± std of {cfg.seeds} seeds)",
        columns=[
            results["depth_noun"],
            f"plain {metric}",
            f"residual {metric}",
            "plain train loss",
            "residual train loss",
        ],
        rows=rows,
    )
    rows = []
    for depth in cfg.depths:
        for arm in SIGNAL_ARMS:
            s = signal_summary(results["signal"], arm, depth)
            norm = "none, s=0" if arm.arch == "rezero" else arm.norm
            rows.append(
                [
                    str(depth),
                    norm,
                    arm.arch,
                    f"{s['first_last']:.3g}",
                    f"{s['input_distance']:.3f} → {s['output_distance']:.3f}",
                    f"{s['input_rank']:.1f} → {s['output_rank']:.1f}",
                    f"{s['input_layer_r2']:.3f} → {s['output_r2']:.3f}",
                ]
            )
    q2 = Table(
        title="2. At initialisation: first/last unit gradient norm, rank-1 distance, effective rank "
        "and input R² from the input layer to the last unit",
        columns=[
            results["depth_noun"],
            "norm",
            "net",
            "grad first/last",
            "rank-1 distance",
            "effective rank",
            "input R²",
        ],
        rows=rows,
    )
    out = [q1, q2, _kept_table(results, cfg)]
    if results["rezero_depth"] is not None:
        d = results["rezero_depth"]
        rows = [
            [
                label,
                _fmt(summary[label]["metric"], summary[label]["metric_std"]),
                _fmt(summary[label]["loss"], summary[label]["loss_std"]),
                str(summary[label]["diverged"]),
            ]
            for label in (REZERO.label(d), *(arm.label(d) for arm in main_arms(cfg)))
        ]
        out.append(
            Table(
                title=f"3. Does ReZero replace normalisation? No norm, scale from 0, {_n(d, results)}",
                columns=["net", metric, "train loss", "diverged runs"],
                rows=rows,
            )
        )
    return out


def kept_input(results: dict, cfg: TwinsConfig, depth: int) -> dict[str, tuple[float, float]]:
    """The last unit's input R^2 (mean, std over seeds) of the main twins at `depth`, keyed
    "plain init", "residual init", "plain trained", "residual trained"."""
    out = {}
    for arm in main_arms(cfg):
        for when, rows in (("init", results["signal"]), ("trained", results["runs"])):
            mine = [r for r in rows if (r["arch"], r["norm"], r["depth"]) == (arm.arch, arm.norm, depth)]
            out[f"{arm.arch} {when}"] = mean_std([r["input_r2"][-1] for r in mine])
    return out


def _kept_table(results: dict, cfg: TwinsConfig) -> Table:
    rows = []
    for depth in cfg.depths:
        kept = kept_input(results, cfg, depth)
        keys = ("plain init", "residual init", "plain trained", "residual trained")
        rows.append([str(depth), *(_r2(*kept[k]) for k in keys)])
    return Table(
        title=f"Is the input kept? Input R² of the last unit, norm={cfg.norm}: a ridge read-out fitted on "
        f"half of the measured batch, scored on the other half (mean ± std of {cfg.seeds} seeds)",
        columns=[
            results["depth_noun"],
            "plain, init",
            "residual, init",
            "plain, trained",
            "residual, trained",
        ],
        rows=rows,
    )


def findings(results: dict, cfg: TwinsConfig) -> list[str]:
    """Statements computed from the numbers; they say so when the seed's claim does not show."""
    out = [_depth_finding(results, cfg)]
    out += [_signal_finding(results, cfg, norm) for norm in ("ln", "none")]
    out.append(_kept_finding(results, cfg))
    if results["rezero_depth"] is not None:
        out.append(_rezero_finding(results, cfg))
    return out


def _depth_finding(results: dict, cfg: TwinsConfig) -> str:
    summary, metric = results["summary"], results["metric"]
    plain_arm, res_arm = main_arms(cfg)
    lo, hi = min(cfg.depths), max(cfg.depths)
    p = {d: summary[plain_arm.label(d)] for d in cfg.depths}
    r = {d: summary[res_arm.label(d)] for d in cfg.depths}
    values = "; ".join(
        f"{_n(d, results)}: plain {_fmt(p[d]['metric'], p[d]['metric_std'])}, "
        f"residual {_fmt(r[d]['metric'], r[d]['metric_std'])}"
        for d in cfg.depths
    )
    gap, at_lo, at_hi = p[hi]["metric"] - r[hi]["metric"], _n(lo, results), _n(hi, results)
    if _worse(p[hi], r[hi]) and _worse(p[hi], p[lo]) and not _worse(r[hi], r[lo]):
        verdict = (
            f"the degradation problem shows beyond the convnet: from {lo} to {at_hi} the plain twin "
            f"gets worse and the residual twin does not, and at {at_hi} the shortcut is worth "
            f"{gap:.3g} in {metric}"
        )
    elif _worse(p[hi], r[hi]):
        verdict = (
            f"at {at_hi} the plain twin trails the residual twin by {gap:.3g} in {metric}, more than "
            "the seeds' spread"
        )
        verdict += (
            ", but the residual twin also gets worse with depth"
            if _worse(r[hi], r[lo])
            else f", though it is not worse than at {at_lo} by more than the spread"
        )
    else:
        verdict = (
            f"at this scale the seed's claim does not show: at {at_hi} the plain twin is within the "
            "seeds' spread of the residual twin, or better"
        )
    text = (
        f"Depth ({metric}, mean ± std of {cfg.seeds} seeds, {cfg.steps} steps, norm={cfg.norm}): "
        f"{values}. So {verdict}."
    )
    # Within 1% of the baseline (or worse) counts as having learned nothing beyond it.
    base = results["baseline"]
    stuck = [
        arm.label(d)
        for d in cfg.depths
        for arm in main_arms(cfg)
        if summary[arm.label(d)]["metric"] >= base["metric"] - 0.01 * abs(base["metric"])
    ]
    if stuck:
        text += (
            f" {', '.join(stuck)} {'is' if len(stuck) == 1 else 'are'} no better than {base['name']} "
            f"({base['metric']:.4g}): {'it' if len(stuck) == 1 else 'they'} learned nothing beyond it."
        )
    return text


def _kept(fraction: float) -> str:
    return f"{fraction:.0%} kept" if math.isfinite(fraction) else "undefined"


def _signal_finding(results: dict, cfg: TwinsConfig, norm: str) -> str:
    hi = max(cfg.depths)
    ps, rs = (signal_summary(results["signal"], Arm(arch, norm), hi) for arch in ("plain", "residual"))
    kept = {name: s["output_rank"] / s["input_rank"] for name, s in (("plain", ps), ("residual", rs))}
    text = (
        f"At initialisation, {_n(hi, results)}, norm={norm}: the first unit's gradient norm is "
        f"{ps['first_last']:.3g}x the last unit's in the plain twin and {rs['first_last']:.3g}x in the "
        f"residual twin, and the median unit's is {ps['median_grad']:.3g} against {rs['median_grad']:.3g}. "
        f"From the input layer to the last unit the effective rank goes from "
        f"{ps['input_rank']:.1f} to {ps['output_rank']:.1f} in the plain twin ({_kept(kept['plain'])}) "
        f"and to {rs['output_rank']:.1f} in the residual twin ({_kept(kept['residual'])}); the rank-1 "
        f"distance from {ps['input_distance']:.3f} to {ps['output_distance']:.3f} and "
        f"{rs['output_distance']:.3f}"
    )
    if not all(math.isfinite(v) for v in kept.values()):
        broken = [
            f"the {name} twin's signal "
            + ("vanished (its last unit outputs 0)" if s["output_rms"] == 0 else "overflowed")
            for name, s in (("plain", ps), ("residual", rs))
            if not math.isfinite(s["output_rank"])
        ]
        text += ": " + " and ".join(broken) + ", so its rank is undefined."
    # A factor of 1.5 in the fraction of rank kept counts as a difference.
    elif kept["plain"] * 1.5 < kept["residual"]:
        text += ": the plain stack collapses toward rank 1 faster [Dong21], the shortcut keeps more."
    elif kept["residual"] * 1.5 < kept["plain"]:
        text += ": here the residual stack is the one that loses rank faster."
    else:
        text += ": the two lose rank alike at this depth."
    grads = {"plain": ps["median_grad"], "residual": rs["median_grad"]}
    big, small = sorted(grads, key=grads.get, reverse=True)
    if grads[small] > 0 and grads[big] / grads[small] > 100:  # two decades apart
        text += (
            f" The {big} twin's median unit gradient is {grads[big] / grads[small]:.2g}x the {small} twin's"
        )
        if grads[big] > 1e3:
            text += ": it explodes."
        elif grads[small] < 1e-6:
            text += f": the {small} twin's vanishes."
        else:
            text += "."
    return text


def _kept_finding(results: dict, cfg: TwinsConfig) -> str:
    hi = max(cfg.depths)
    kept = kept_input(results, cfg, hi)
    parts = []
    for when in ("init", "trained"):
        p, r = kept[f"plain {when}"], kept[f"residual {when}"]
        if not (math.isfinite(p[0]) and math.isfinite(r[0])):
            verdict = "undefined where a signal vanished, overflowed or diverged"
        elif r[0] - p[0] > p[1] + r[1]:
            verdict = "the residual twin keeps more"
        elif p[0] - r[0] > p[1] + r[1]:
            verdict = "the plain twin keeps more: the claim does not hold here"
        else:
            verdict = "the two are within their spread"
        words = "at initialisation" if when == "init" else f"after {cfg.steps} steps"
        parts.append(f"{words} {_r2(*r)} (residual) vs {_r2(*p)} (plain): {verdict}")
    return (
        f"Input kept by the last unit, {_n(hi, results)} (input R² of a ridge read-out): "
        + "; ".join(parts)
        + "."
    )


def _rezero_finding(results: dict, cfg: TwinsConfig) -> str:
    summary, metric, d = results["summary"], results["metric"], results["rezero_depth"]
    plain_arm, res_arm = main_arms(cfg)
    z, pl, rl = summary[REZERO.label(d)], summary[plain_arm.label(d)], summary[res_arm.label(d)]
    if results["plain_fails_at_rezero_depth"]:
        where = f"at {_n(d, results)}, the largest depth where the plain twin fails"
    else:
        where = f"at {_n(d, results)} (the plain twin fails at no depth here, so the largest)"
    if not math.isfinite(z["metric"]):
        verdict = "it does not train: it diverged"
    elif not _worse(z, rl):
        verdict = (
            "it trains as well as the normalised residual twin or better, within the seeds' spread: "
            "the zero-initialised branch scale replaces normalisation here"
        )
    elif _worse(pl, z):
        verdict = "it trains and beats the plain twin, but stays behind the normalised residual twin"
    else:
        verdict = "it trains no better than the plain twin: it does not replace normalisation here"
    return (
        f"ReZero {where}: no norm and a branch scale learned from 0 reach {metric} "
        f"{_fmt(z['metric'], z['metric_std'])}, against {_fmt(rl['metric'], rl['metric_std'])} for the "
        f"residual twin with norm={cfg.norm} and {_fmt(pl['metric'], pl['metric_std'])} for the plain "
        f"twin; {verdict}."
    )


# ----------------------------------------------------------------- figures

_STYLE = {"plain": "--", "residual": "-", "rezero": ":"}


def _curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    """Mean loss curve over seeds, up to the shortest run (a diverged run stops early)."""
    n = min(len(r["loss"]) for r in runs)
    return runs[0]["steps"][:n], [float(np.mean([r["loss"][i] for r in runs])) for i in range(n)]


def figures(results: dict, cfg: TwinsConfig, run_dir: Any) -> list[Figure]:
    runs, summary, metric = results["runs"], results["summary"], results["metric"]
    colors = depth_colors(cfg.depths)
    out = []

    fig = MplFigure(figsize=(4 * len(cfg.depths), 3.4))
    axes = fig.subplots(1, len(cfg.depths), squeeze=False)[0]
    for ax, depth in zip(axes, cfg.depths, strict=True):
        for arm in (*main_arms(cfg), REZERO):
            mine = [r for r in runs if (r["arch"], r["depth"]) == (arm.arch, depth) and r["loss"]]
            if mine:
                steps, loss = _curve(mine)
                ax.plot(steps, loss, _STYLE[arm.arch], color=colors[depth], label=arm.label(depth))
        ax.set_title(f"{_n(depth, results)}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats)")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.append(
        Figure(
            save_figure(fig, run_dir, "training_loss.png"),
            f"Question 1: training loss, mean of {cfg.seeds} seeds; plain dashed, residual solid, "
            "ReZero dotted.",
        )
    )

    fig = MplFigure(figsize=(6, 4))
    ax = fig.subplots()
    for arm in main_arms(cfg):
        rows = [summary[arm.label(d)] for d in cfg.depths]
        ax.errorbar(
            cfg.depths,
            [s["metric"] for s in rows],
            yerr=[s["metric_std"] for s in rows],
            fmt=_STYLE[arm.arch],
            marker="o",
            capsize=3,
            label=f"{arm.arch} ({arm.norm})",
        )
    if results["rezero_depth"] is not None:
        z = summary[REZERO.label(results["rezero_depth"])]
        ax.errorbar(
            [results["rezero_depth"]],
            [z["metric"]],
            yerr=[z["metric_std"]],
            fmt="s",
            capsize=3,
            label="rezero (no norm, s = 0 at init)",
        )
    ax.set_xscale("log")
    ax.set_xticks(list(cfg.depths), [str(d) for d in cfg.depths])
    ax.set_xlabel(results["depth_noun"])
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.append(
        Figure(
            save_figure(fig, run_dir, "metric_vs_depth.png"),
            f"Questions 1 and 3: {metric} against depth, mean ± std of {cfg.seeds} seeds.",
        )
    )

    hi = max(cfg.depths)
    sig = {arm: signal_summary(results["signal"], arm, hi) for arm in SIGNAL_ARMS}
    fig = MplFigure(figsize=(20, 3.6))
    axes = fig.subplots(1, 4)
    for arm, s in sig.items():
        color = {"ln": "C0", "none": "C3"}[arm.norm] if arm.arch != "rezero" else "C2"
        name = f"{arm.arch}, {arm.norm}" if arm.arch != "rezero" else "rezero"
        grads = [v if math.isfinite(v) and v > 0 else math.nan for v in s["grad_norm"]]
        axes[0].plot(range(1, len(grads) + 1), grads, _STYLE[arm.arch], color=color, label=name)
        axes[1].plot(s["rank1_distance"], _STYLE[arm.arch], color=color, label=name)
        axes[2].plot(s["effective_rank"], _STYLE[arm.arch], color=color, label=name)
        axes[3].plot(s["input_r2"], _STYLE[arm.arch], color=color, label=name)
    axes[0].set_yscale("log")
    for ax, title, xlabel in zip(
        axes,
        (
            "gradient norm of each unit's weights",
            "distance from the best rank-1 approximation",
            "effective rank",
            "input R² (ridge read-out)",
        ),
        ("unit (input → output)", *["layer (0 = input layer)"] * 3),
        strict=True,
    ):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out.append(
        Figure(
            save_figure(fig, run_dir, "signal_at_init.png"),
            f"Question 2, {_n(hi, results)} at initialisation, mean of {cfg.seeds} seeds: gradient norms, "
            "rank collapse [Dong21], effective rank and the input R² of a ridge read-out; plain "
            "dashed, residual solid, ReZero dotted; "
            "blue with layer norm, red without.",
        )
    )
    return out
