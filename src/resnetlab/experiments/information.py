"""Is the input kept? How much of it each stage of a plain and a residual net still holds.

Measures: the seed's third reason, that the shortcut keeps the original information where depth
would destroy it. No figure of [He15] shows it; the measure is a linear read-out, in the spirit
of linear probes (Alain & Bengio 2016), pointed at the input instead of the labels. At every stage
output of the CIFAR-style twins (stem, layer1, layer2, layer3), for every net and seed:

  input R^2       `measures.linear_recoverability` of the normalised input pixels from the
                  stage's flattened feature maps: ridge fitted on `fit_examples` training images,
                  scored on `test_examples` test images. A lower bound on what is there: a
                  non-linear read-out or more fitting images can only find more.
  effective rank  of the stage's features over the test images (one row per image) [Roy07]

both at initialisation (BN statistics of the fitting images, then eval mode, so each image's
features are its own) and after training (eval mode, the running statistics).

Presets:
  quick  Fashion-MNIST, plain and ResNet 20/56/110, 3 seeds, 100 SGD steps of 32 (lr 0.02) on
         2700 training images; 600 fitting and 300 test images. The nets train in parallel, one
         per core: 11 minutes on a 2-core AMD EPYC without native bf16 (--amp auto: fp32).
  full   1000 steps of 128 on all 60,000 training images, lr 0.1 with the recipe's step schedule,
         the pre-activation ResNet [He16] beside the twins (--archs plain,resnet,preact adds it to
         any run), 1000 fitting and 500 test images.

Writes: results.json, input_r2.png, effective_rank.png, report.html.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import (
    ARCHS,
    TrainSettings,
    build_twin,
    depth_colors,
    evaluate,
    fixed_batches,
    label,
    log,
    mean_std,
    run_parallel,
    save_figure,
    set_bn_stats,
    stack,
    train_twin,
)
from resnetlab.experiments.config import require
from resnetlab.experiments.measures import effective_rank, linear_recoverability
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train.distributed import resolve_device

NAME = "information"
TITLE = "Is the input kept? Linear recoverability of the input at every stage"
REPRODUCES = "the seed's third reason: the shortcut keeps the original information (no paper figure)"

WHEN = ("init", "trained")
STAGES = ("stem", "layer1", "layer2", "layer3")


@dataclass(frozen=True)
class InformationConfig(TrainSettings):
    steps: int = field(default=100, metadata={"help": "optimizer steps per net"})
    lr: float = field(default=0.02, metadata={"help": "peak learning rate per step of --batch-size examples"})
    depths: tuple[int, ...] = field(default=(20, 56, 110), metadata={"help": "depths 6n+2 of every net"})
    archs: tuple[str, ...] = field(
        default=ARCHS, metadata={"help": "plain and resnet (the twins), and preact: [He16]'s clean identity"}
    )
    seeds: int = field(default=3, metadata={"help": "runs per net (seeds seed..seed+N-1): mean ± std"})
    fit_examples: int = field(default=600, metadata={"help": "training images the read-out is fitted on"})
    test_examples: int = field(default=300, metadata={"help": "test images it is scored on"})
    workers: int = field(default=0, metadata={"help": "CPU processes that train nets (0: one per core)"})

    def check(self) -> None:
        require(bool(self.depths), "give at least one depth")
        require(
            set(ARCHS) <= set(self.archs) <= {*ARCHS, "preact"} and len(set(self.archs)) == len(self.archs),
            "--archs must hold plain and resnet, and may add preact",
        )
        require(all(d >= 8 and (d - 2) % 6 == 0 for d in self.depths), "depths must be 6n+2, e.g. 20,56,110")
        require(self.steps > 0 and self.seeds >= 1, "--steps and --seeds must be positive")
        require(self.fit_examples >= 10 and self.test_examples >= 10, "--fit-examples, --test-examples >= 10")
        require(self.workers >= 0, "--workers must be >= 0")


PRESETS = {
    "quick": InformationConfig(),
    "full": InformationConfig(
        train_subset=None,
        steps=1000,
        batch_size=128,
        lr=0.1,
        archs=(*ARCHS, "preact"),
        fit_examples=1000,
        test_examples=500,
    ),
}


@torch.no_grad()
def stage_features(model: nn.Module, x: Tensor, chunk: int = 250) -> list[Tensor]:
    """Every stage's output for the images `x`, in the model's mode: [(N, C, H, W), ...]."""
    parts = [model.forward_intermediates(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return [torch.cat(stage) for stage in zip(*parts, strict=True)]


def stage_measures(model: nn.Module, fit_x: Tensor, test_x: Tensor) -> dict[str, list[float]]:
    """Per stage: the input R^2 (fitted on `fit_x`, scored on `test_x`) and the effective rank of
    the features of `test_x`."""
    fit, test = stage_features(model, fit_x), stage_features(model, test_x)
    return {
        "input_r2": [linear_recoverability(f, fit_x, t, test_x) for f, t in zip(fit, test, strict=True)],
        "effective_rank": [effective_rank(t.flatten(1)) for t in test],
    }


def measure_twin(cfg: InformationConfig, arch: str, depth: int, seed: int) -> dict:
    """One net's measures at initialisation and after training, and its test error."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    fit_batches, dataset = fixed_batches(
        cfg.data, "train", examples=cfg.fit_examples, batch_size=500, device=device, seed=cfg.seed,
        data_dir=cfg.data_dir,
    )  # fmt: skip
    test_batches, _ = fixed_batches(
        cfg.data, "test", examples=cfg.test_examples, batch_size=500, device=device, seed=cfg.seed,
        data_dir=cfg.data_dir,
    )  # fmt: skip
    fit_x, test_x = (torch.cat([x for x, _ in batches]) for batches in (fit_batches, test_batches))
    model = build_twin(arch, depth, num_classes=dataset.num_classes, in_chans=dataset.in_chans, seed=seed).to(
        device
    )
    at_init = copy.deepcopy(model)
    set_bn_stats(at_init, fit_x)
    measures = {"init": stage_measures(at_init, fit_x, test_x)}
    model = train_twin(cfg, arch, depth, seed=seed, model=model, val_size=0, eval_splits=()).model.eval()
    measures["trained"] = stage_measures(model, fit_x, test_x)
    run = {
        "arch": arch,
        "depth": depth,
        "seed": seed,
        **measures,
        "test_error": 100 * evaluate(model, test_batches)[1],
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info(
        "information: %s seed %d: last-stage input R^2 %.3f at init, %.3f trained (%.0f s)",
        label(arch, depth), seed, run["init"]["input_r2"][-1], run["trained"]["input_r2"][-1], run["seconds"],
    )  # fmt: skip
    return run


def run(cfg: InformationConfig, run_dir: Path) -> Outcome:
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    jobs = [(cfg, arch, depth, seed) for depth in cfg.depths for arch in cfg.archs for seed in seeds]
    runs = run_parallel(
        measure_twin, jobs, device=resolve_device(cfg.device), workers=cfg.workers, cost=lambda j: j[2]
    )
    summary = summarize(runs)
    results = {"stages": list(STAGES), "runs": runs, "summary": summary}
    return Outcome(
        results=results,
        figures=_figures(summary, cfg, run_dir),
        tables=[_table(summary, cfg)],
        findings=findings(summary, cfg),
    )


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per net label: mean and std over seeds of each measure's per-stage profile, and of the
    test error."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(label(r["arch"], r["depth"]), []).append(r)
    out = {}
    for name, group in groups.items():
        entry: dict = {"arch": group[0]["arch"], "depth": group[0]["depth"], "seeds": len(group)}
        for when in WHEN:
            for measure in ("input_r2", "effective_rank"):
                key = f"{when}_{measure}"
                entry[key], entry[key + "_std"] = stack([r[when][measure] for r in group])
        entry["test_error"], entry["test_error_std"] = mean_std([r["test_error"] for r in group])
        out[name] = entry
    return out


def _pm(mean: float, std: float, digits: int = 3) -> str:
    return "nan" if not math.isfinite(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _table(summary: dict[str, dict], cfg: InformationConfig) -> Table:
    rows = []
    for depth in cfg.depths:
        for when in WHEN:
            for arch in cfg.archs:
                s = summary[label(arch, depth)]
                r2 = s[f"{when}_input_r2"]
                rows.append(
                    [
                        label(arch, depth),
                        when,
                        *(f"{v:.3f}" for v in r2),
                        _pm(r2[-1], s[f"{when}_input_r2_std"][-1]),
                        f"{s[f'{when}_effective_rank'][-1]:.1f}",
                        _pm(s["test_error"], s["test_error_std"], 1) if when == "trained" else "",
                    ]
                )
    return Table(
        title=f"Input R^2 at every stage (mean of {cfg.seeds} seeds), the last stage's with its "
        f"std, its effective rank over {cfg.test_examples} test images, and the test error (%)",
        columns=["net", "when", *STAGES, "layer3 ± std", "layer3 eff. rank", "test error"],
        rows=rows,
    )


def _apart(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a's mean above b's by more than the two stds added."""
    return a[0] - b[0] > a[1] + b[1]


def findings(summary: dict[str, dict], cfg: InformationConfig) -> list[str]:
    """Statements computed from the numbers; they say so when the claim does not hold."""
    out = []
    for when, words in (("init", "At initialisation"), ("trained", f"After {cfg.steps} steps")):
        parts, kept_more = [], []
        for depth in cfg.depths:
            p, r = (summary[label(a, depth)] for a in ARCHS)
            pv = (p[f"{when}_input_r2"][-1], p[f"{when}_input_r2_std"][-1])
            rv = (r[f"{when}_input_r2"][-1], r[f"{when}_input_r2_std"][-1])
            parts.append(f"{depth}: {_pm(*rv)} residual vs {_pm(*pv)} plain")
            kept_more.append("residual" if _apart(rv, pv) else "plain" if _apart(pv, rv) else "neither")
        if all(k == "residual" for k in kept_more):
            verdict = "the residual net keeps more of the input at every depth"
        elif all(k == "plain" for k in kept_more):
            verdict = "the plain net keeps more of the input at every depth: the claim does not hold here"
        else:
            verdict = "; ".join(
                f"at {d} "
                + (f"the {k} net keeps more" if k != "neither" else "the two are within their spread")
                for d, k in zip(cfg.depths, kept_more, strict=True)
            )
        out.append(
            f"{words}, the input R^2 of the last stage is, by depth, " + "; ".join(parts) + f": {verdict}."
        )
    if "preact" in cfg.archs:
        for when in WHEN:
            last = {
                d: tuple(summary[label(a, d)][f"{when}_input_r2"][-1] for a in ("preact", "resnet"))
                for d in cfg.depths
            }
            listed = "; ".join(f"{d}: {p:.3f} vs {r:.3f} (resnet)" for d, (p, r) in last.items())
            out.append(f"The pre-activation ResNet's last-stage input R^2 ({when}), by depth: {listed}.")
    if len(cfg.depths) > 1:
        lo, hi = min(cfg.depths), max(cfg.depths)
        for when in WHEN:
            drops = {
                arch: summary[label(arch, lo)][f"{when}_input_r2"][-1]
                - summary[label(arch, hi)][f"{when}_input_r2"][-1]
                for arch in ARCHS
            }
            out.append(
                f"From depth {lo} to {hi} ({when}), the last stage's input R^2 falls by {drops['plain']:.3f} "
                f"in the plain net and by {drops['resnet']:.3f} in the residual net"
                + (
                    ": depth destroys more of the input without the shortcut."
                    if drops["plain"] > drops["resnet"]
                    else ": depth costs the residual net as much or more."
                )
            )
    return out


def _figures(summary: dict[str, dict], cfg: InformationConfig, run_dir: Path) -> list[Figure]:
    colors = depth_colors(cfg.depths)
    out = []
    for measure, file, ylabel, caption in (
        ("input_r2", "input_r2.png", "input R²",
         "Linear recoverability of the input pixels (ridge R² on held-out test images)"),
        ("effective_rank", "effective_rank.png", "effective rank",
         f"Effective rank of each stage's features over {cfg.test_examples} test images [Roy07]"),
    ):  # fmt: skip
        fig = MplFigure(figsize=(10, 3.8))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, when in zip(axes, WHEN, strict=True):
            for name, s in summary.items():
                style = {"plain": "--", "resnet": "-", "preact": ":"}[s["arch"]]
                mean, std = np.array(s[f"{when}_{measure}"]), np.array(s[f"{when}_{measure}_std"])
                ax.errorbar(range(len(STAGES)), mean, yerr=std, fmt=style + "o", color=colors[s["depth"]],
                            capsize=3, markersize=4, label=name)  # fmt: skip
            ax.set_xticks(range(len(STAGES)), STAGES)
            ax.set_title("at initialisation" if when == "init" else f"after {cfg.steps} steps", fontsize=10)
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[1].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        out.append(
            Figure(
                save_figure(fig, run_dir, file),
                f"{caption}, mean ± std of {cfg.seeds} seeds; plain dashed, ResNet solid, pre-activation "
                "ResNet dotted.",
            )
        )
    return out
