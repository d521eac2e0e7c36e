"""The degradation problem: deeper plain nets train worse; deeper residual nets do not.

Reproduces: [He15] Fig. 1 and Fig. 6 (left: plain-20..56, middle: ResNet-20..110). Plain and
residual twins at several depths train with one recipe and the same seeds. Training error is
the mean error on the training batches over each logging window (dashed in the figure, as in the
paper); "final train error" is its mean over the last tenth of the steps. Test error (bold) is
measured on the test set: at the end on `test_examples` images, and during the run on the full
test set when `curve_evals` > 0.

Presets:
  quick  Fashion-MNIST, depths 20 and 56, 400 SGD steps of 32 images (lr 0.01, /10 at 50% and
         75%) on 2700 training images (4.7 epochs), crop+flip, bf16 autocast, final test error on
         2000 test images; about 10 CPU-minutes for 3 seeds (`make demo` runs them on 2 cores).
         Shorter runs, or lr 0.02, do not separate ResNet-20 from ResNet-56 reliably
         (docs/experiments.md).
  paper  CIFAR-10, depths 20/32/44/56/110, the [He15 §4.2] recipe: 64k steps of 128, lr 0.1
         /10 at 32k and 48k, crop+flip, 45k/5k split, warm-up for 110, test error every 1k steps.

On the CPU the trainings run in parallel processes, one thread each (`workers`), so the numbers
do not depend on the number of cores.

Writes: results.json (every curve of every seed), degradation.png, report.html.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure as MplFigure

from resnetlab.experiments.common import (
    ARCHS,
    TrainSettings,
    depth_colors,
    evaluate,
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

NAME = "degradation"
TITLE = "Degradation: training error of plain and residual nets against depth"
REPRODUCES = "[He15] Fig. 1 and Fig. 6 (training and test error of plain vs residual nets)"


@dataclass(frozen=True)
class DegradationConfig(TrainSettings):
    depths: tuple[int, ...] = field(default=(20, 56), metadata={"help": "depths 6n+2 of the twins"})
    seeds: int = field(default=1, metadata={"help": "runs per net (seeds seed..seed+N-1): mean ± std"})
    test_examples: int | None = field(default=2000, metadata={"help": "test images for the final error"})
    curve_evals: int = field(default=0, metadata={"help": "full test-set evaluations during training"})
    log_points: int = field(default=30, metadata={"help": "training-error points per curve"})
    workers: int = field(
        default=0, metadata={"help": "CPU only: trainings run at once, one thread each (0: one per core)"}
    )

    def check(self) -> None:
        require(len(self.depths) >= 2, "--depths needs at least two depths to compare, e.g. 20,56")
        require(
            all(d >= 8 and (d - 2) % 6 == 0 for d in self.depths), "--depths must be 6n+2, e.g. 20,56,110"
        )
        require(self.seeds >= 1 and self.steps > 0, "--seeds and --steps must be positive")
        require(self.curve_evals >= 0 and self.log_points >= 1, "--curve-evals >= 0, --log-points >= 1")
        require(self.workers >= 0, "--workers must be >= 0 (0: one per CPU core)")


PRESETS = {
    "quick": DegradationConfig(),
    "paper": DegradationConfig(
        data="cifar10",
        train_subset=None,
        depths=(20, 32, 44, 56, 110),
        steps=64_000,
        batch_size=128,
        lr=0.1,
        amp="none",
        test_examples=None,
        curve_evals=64,
        log_points=320,
    ),
}


def final_train_error(history: list[dict], steps: int) -> float:
    """Mean training-batch error over the records of the last tenth of the run."""
    train = [r for r in history if r["kind"] == "train"]
    last = [r["err"] for r in train if r["step"] > 0.9 * steps] or [train[-1]["err"]]
    return sum(last) / len(last)


def train_one(cfg: DegradationConfig, seed: int, arch: str, depth: int) -> dict:
    """Train `arch`-`depth` with `seed`: its curves and its final train and test error."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    test, _ = fixed_batches(
        cfg.data,
        "test",
        examples=cfg.test_examples,
        batch_size=500,
        device=device,
        seed=0,
        data_dir=cfg.data_dir,
    )  # the same test images for every net and seed
    if cfg.curve_evals:
        evals = {"eval_splits": ("test",), "eval_every": max(1, cfg.steps // cfg.curve_evals)}
    else:
        evals = {"eval_splits": (), "val_size": 0}
    log_every = max(1, cfg.steps // cfg.log_points)
    result = train_twin(cfg, arch, depth, seed=seed, log_every=log_every, **evals)
    test_err = evaluate(result.model.to(device).eval(), test)[1]
    train = [r for r in result.history if r["kind"] == "train"]
    curve = [r for r in result.history if r["kind"] == "eval" and r["split"] == "test"]
    return {
        "arch": arch,
        "depth": depth,
        "seed": seed,
        "train_steps": [r["step"] for r in train],
        "train_err": [r["err"] for r in train],
        "test_steps": [r["step"] for r in curve],
        "test_err": [r["err"] for r in curve],
        "final_train_err": final_train_error(result.history, cfg.steps),
        "final_test_err": test_err,
        "test_examples": sum(len(y) for _, y in test),
        "seconds": round(time.perf_counter() - start, 1),
    }


def run(cfg: DegradationConfig, run_dir: Path) -> Outcome:
    jobs = [(seed, arch, depth) for seed in range(cfg.seed, cfg.seed + cfg.seeds) for arch in ARCHS
            for depth in cfg.depths]  # fmt: skip
    device = resolve_device(cfg.device)
    runs = run_parallel(train_one, [(cfg, *job) for job in jobs], device=device, workers=cfg.workers)
    runs = [_logged(run) for run in runs]
    summary = summarize(runs, cfg)
    results = {"test_examples": runs[0]["test_examples"], "runs": runs, "summary": summary}
    return Outcome(
        results=results,
        figures=_figures(runs, cfg, run_dir),
        tables=[headline_table(summary, cfg)],
        findings=findings(runs, summary, cfg),
    )


def _logged(run: dict) -> dict:
    log.info(
        "degradation: %s seed %d: train error %.2f%%, test error %.2f%% (%.0f s)",
        label(run["arch"], run["depth"]), run["seed"], 100 * run["final_train_err"],
        100 * run["final_test_err"], run["seconds"],
    )  # fmt: skip
    return run


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), t.std(correction=0).item()


def summarize(runs: list[dict], cfg: DegradationConfig) -> dict[str, dict]:
    """Per net: mean and std over seeds of the final train and test error."""
    out = {}
    for arch in ARCHS:
        for depth in cfg.depths:
            mine = [r for r in runs if r["arch"] == arch and r["depth"] == depth]
            tr, tr_sd = _mean_std([r["final_train_err"] for r in mine])
            te, te_sd = _mean_std([r["final_test_err"] for r in mine])
            out[label(arch, depth)] = {
                "train": tr,
                "train_std": tr_sd,
                "test": te,
                "test_std": te_sd,
                "n": len(mine),
            }
    return out


def _pct(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if n > 1 else f"{100 * mean:.2f}"


def headline_table(summary: dict[str, dict], cfg: DegradationConfig) -> Table:
    """Plain vs residual, shallow vs deep: final train and test error (%)."""
    rows = [
        [name, _pct(s["train"], s["train_std"], s["n"]), _pct(s["test"], s["test_std"], s["n"])]
        for name, s in summary.items()
    ]
    seeds = f"mean ± std over {cfg.seeds} seeds" if cfg.seeds > 1 else "one seed"
    return Table(
        title=f"Final error (%) after {cfg.steps} steps of {cfg.batch_size} on {cfg.data} ({seeds})",
        columns=["net", "train error", "test error"],
        rows=rows,
    )


def findings(runs: list[dict], summary: dict[str, dict], cfg: DegradationConfig) -> list[str]:
    lo, hi = min(cfg.depths), max(cfg.depths)
    final = {(r["arch"], r["depth"], r["seed"]): r["final_train_err"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = []
    for arch in ARCHS:
        shallow, deep = summary[label(arch, lo)], summary[label(arch, hi)]
        wins = sum(final[(arch, hi, s)] > final[(arch, lo, s)] for s in seeds)
        if deep["train"] > shallow["train"]:
            verdict = "higher than"
        elif math.isclose(deep["train"], shallow["train"], abs_tol=1e-9):
            verdict = "equal to"
        else:
            verdict = "lower than"
        out.append(
            f"{arch}-{hi}'s training error ({100 * deep['train']:.2f}%) is {verdict} {arch}-{lo}'s "
            f"({100 * shallow['train']:.2f}%); deeper was worse in {wins} of {cfg.seeds} seed(s)."
        )
    plain_deg = summary[label("plain", hi)]["train"] > summary[label("plain", lo)]["train"]
    res_ok = summary[label("resnet", hi)]["train"] <= summary[label("resnet", lo)]["train"]
    if plain_deg and res_ok:
        out.append(
            "Both halves of [He15]'s finding hold here: depth hurts the plain net and not the residual net."
        )
    elif plain_deg:
        out.append(
            "The plain net degrades with depth as in [He15], but in this run the deeper ResNet did not "
            "reach a lower training error than the shallower one."
        )
    elif res_ok:
        out.append(
            "The deeper ResNet trains at least as well, but this run shows no degradation of the plain net."
        )
    else:
        out.append(
            "Neither half of [He15]'s finding shows in this run; it is too short or too noisy to tell."
        )
    gap_lo = summary[label("plain", lo)]["train"] - summary[label("resnet", lo)]["train"]
    gap_hi = summary[label("plain", hi)]["train"] - summary[label("resnet", hi)]["train"]
    out.append(
        f"Training error of the ResNet minus its plain twin: {-100 * gap_lo:+.2f} points at depth {lo}, "
        f"{-100 * gap_hi:+.2f} points at depth {hi}."
    )
    return out


def _mean_curve(runs: list[dict], steps_key: str, err_key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds; runs with one recipe log at the same steps."""
    steps = runs[0][steps_key]
    n = min(len(r[err_key]) for r in runs)
    return steps[:n], [sum(r[err_key][i] for r in runs) / len(runs) for i in range(n)]


def _figures(runs: list[dict], cfg: DegradationConfig, run_dir: Path) -> list[Figure]:
    colors = depth_colors(cfg.depths)
    fig = MplFigure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, arch in zip(axes, ARCHS, strict=True):
        for depth in cfg.depths:
            mine = [r for r in runs if r["arch"] == arch and r["depth"] == depth]
            steps, err = _mean_curve(mine, "train_steps", "train_err")
            ax.plot(steps, [100 * e for e in err], "--", lw=1, color=colors[depth])
            if mine[0]["test_steps"]:
                steps, err = _mean_curve(mine, "test_steps", "test_err")
                ax.plot(
                    steps, [100 * e for e in err], "-", lw=2.2, color=colors[depth], label=f"{arch}-{depth}"
                )
            else:
                final = sum(r["final_test_err"] for r in mine) / len(mine)
                ax.plot([cfg.steps], [100 * final], "o", ms=8, color=colors[depth], label=f"{arch}-{depth}")
        ax.plot([], [], "k--", lw=1, label="train error")
        ax.plot([], [], "k-" if cfg.curve_evals else "ko", lw=2.2, label="test error")
        ax.set_title("plain" if arch == "plain" else "ResNet")
        ax.set_xlabel("iterations")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("error (%)")
    fig.tight_layout()
    test_how = "bold lines" if cfg.curve_evals else "dots at the end"
    seeds = f", mean of {cfg.seeds} seeds" if cfg.seeds > 1 else ""
    caption = (
        f"Training error (dashed) and test error ({test_how}) on {cfg.data}{seeds}; plain nets left, "
        "ResNets right, as in [He15 Fig. 6]."
    )
    return [Figure(save_figure(fig, run_dir, "degradation.png"), caption)]
