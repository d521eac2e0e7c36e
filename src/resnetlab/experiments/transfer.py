"""What transfer buys: a net pretrained on five classes, fine-tuned on the other five from k labels each.

Demonstrates: the fine-tuning path (`resnetlab train --init-from`, `--freeze`) on real data, offline,
in the setting of [Yosinski14, "How transferable are features in deep neural networks?"], which
splits ImageNet's classes into two halves A and B, trains on A and transfers to B. Here the
halves are Fashion-MNIST's classes 0-4 (T-shirt, trouser, pullover, dress, coat) and 5-9 (sandal,
shirt, sneaker, bag, ankle boot). One net is pretrained on A; then for each k labelled images per
class of B (and all of them), four starts are compared, with `seeds` seeds each:
  scratch    random init, every layer trains (the `fast`-style lr, `scratch_lr`)
  probe      the pretrained body frozen, only a new head trains (--freeze head-only)
  finetune   the pretrained net, every layer trains (--freeze none)
  partial    the stem and layer1 frozen (--freeze layer1)
Every run takes the same number of steps of the `finetune` recipe (cosine, head at 10x lr), so
runs differ in their start and in what trains, not in their compute. Test accuracy is measured
on the B classes of the test set (1000 each); `split val` measures on a val split held out of
the training images instead, which is how the recipe was tuned.

Presets:
  quick  an 8-layer CIFAR-style ResNet; pretraining 400 steps of 64 on 600 images per A class;
         k = 10, 50, 250 and all; 100 fine-tuning steps of 32; 3 seeds: a few minutes on 2 cores.
  full   ResNet-20; pretraining 3000 steps on all 30k A images; 500 fine-tuning steps; 3 seeds.
`source` reuses a pretraining run (of this experiment or any resnetlab run on the A classes).

Writes: results.json (every run's accuracy), pretrain/ (the pretrained run directory),
transfer.png, report.html.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure as MplFigure

from resnetlab.data import load_dataset, make_loader, select_classes
from resnetlab.experiments.common import AMP_HELP, evaluate, log, run_parallel, save_figure, stack
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.train import TrainResult, fit, get_recipe
from resnetlab.train.distributed import resolve_device
from resnetlab.train.precision import resolve_amp

NAME = "transfer"
TITLE = "Transfer: what pretraining on five classes buys on the other five, against labels per class"
REPRODUCES = "[Yosinski14]-style A/B class split, on Fashion-MNIST (no paper figure: a demonstration)"

METHODS = {  # name -> (starts from the pretrained net, --freeze)
    "scratch": (False, "none"),
    "probe": (True, "head-only"),
    "finetune": (True, "none"),
    "partial": (True, "layer1"),
}
LABELS = {
    "scratch": "from scratch",
    "probe": "linear probe",
    "finetune": "fine-tune all",
    "partial": "stem+layer1 frozen",
}


@dataclass(frozen=True)
class TransferConfig:
    data: str = field(default="fashion-mnist", metadata={"help": "a 10-class in-memory set"})
    data_dir: str | None = field(default=None, metadata={"help": "data set folder (none: default search)"})
    depth: int = field(default=8, metadata={"help": "depth 6n+2 of the CIFAR-style ResNet"})
    source_classes: tuple[int, ...] = field(
        default=(0, 1, 2, 3, 4), metadata={"help": "class indices A to pretrain on"}
    )
    target_classes: tuple[int, ...] = field(
        default=(5, 6, 7, 8, 9), metadata={"help": "class indices B to transfer to"}
    )
    source: str | None = field(
        default=None, metadata={"help": "reuse this pretraining run directory (none: pretrain here)"}
    )
    pretrain_per_class: int | None = field(
        default=600, metadata={"help": "pretraining images per A class (none: all)"}
    )
    pretrain_steps: int = field(default=400, metadata={"help": "pretraining steps of 64 (the fast recipe)"})
    shots: tuple[int, ...] = field(
        default=(10, 50, 250, 0), metadata={"help": "labelled images per B class, k (0: all of them)"}
    )
    methods: tuple[str, ...] = field(default=tuple(METHODS), metadata={"help": ", ".join(METHODS)})
    steps: int = field(default=100, metadata={"help": "fine-tuning steps per run (the finetune recipe)"})
    batch_size: int = field(default=32, metadata={"help": "examples per fine-tuning step"})
    lr: float = field(default=0.03, metadata={"help": "fine-tuning lr of the body (the head's is 10x)"})
    scratch_lr: float = field(
        default=0.05, metadata={"help": "lr of the from-scratch runs (`fast`'s 0.2 per 128, scaled to 32)"}
    )
    seeds: int = field(default=3, metadata={"help": "runs per (method, k), seeds seed..seed+N-1"})
    seed: int = field(default=0, metadata={"help": "first seed; the pretraining uses it too"})
    split: str = field(default="test", metadata={"help": "test, or val (held out of B's train images)"})
    amp: str = field(default="auto", metadata={"help": AMP_HELP})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    workers: int = field(
        default=0, metadata={"help": "CPU only: runs at once, one thread each (0: one per core)"}
    )

    def check(self) -> None:
        require(self.depth >= 8 and (self.depth - 2) % 6 == 0, "--depth must be 6n+2, e.g. 14 or 20")
        require(
            self.source_classes
            and self.target_classes
            and not set(self.source_classes) & set(self.target_classes),
            "--source-classes and --target-classes must be disjoint and non-empty",
        )
        require(all(k >= 0 for k in self.shots) and self.shots, "--shots are images per class >= 0 (0: all)")
        unknown = set(self.methods) - set(METHODS)
        require(self.methods and not unknown, f"--methods takes {', '.join(METHODS)}")
        require(
            self.steps > 0 and self.pretrain_steps > 0 and self.seeds >= 1, "steps and seeds must be >= 1"
        )
        require(self.split in ("test", "val"), "--split is test or val")
        require(self.workers >= 0, "--workers must be >= 0 (0: one per CPU core)")


PRESETS = {
    "quick": TransferConfig(),
    "full": TransferConfig(depth=20, pretrain_per_class=None, pretrain_steps=3000, steps=500),
}
VAL_SIZE = 2000  # training images held out as the val split under `split val` (200 per class)


def pretrain(cfg: TransferConfig, run_dir: Path) -> Path:
    """Train the net on the A classes with the `fast` recipe; returns its run directory."""
    out = run_dir / "pretrain"
    fit(
        dataclasses.replace(
            get_recipe("fast"),
            model="cifar_resnet",
            model_kwargs={"depth": cfg.depth},
            data=cfg.data,
            data_dir=cfg.data_dir,
            classes=cfg.source_classes,
            per_class=cfg.pretrain_per_class,
            max_steps=cfg.pretrain_steps,
            batch_size=64,
            val_size=0,
            eval_splits=(),
            amp=resolve_amp(resolve_device(cfg.device), cfg.amp),
            seed=cfg.seed,
            device=cfg.device,
            progress=False,
            out=str(out),
        )
    )
    return out


def train_one(cfg: TransferConfig, source: str, method: str, shots: int, seed: int) -> dict:
    """One fine-tuning (or from-scratch) run on the B classes; its accuracy on `cfg.split`."""
    start = time.perf_counter()
    pretrained, frozen = METHODS[method]
    val_size = VAL_SIZE if cfg.split == "val" else 0
    with contextlib.redirect_stderr(io.StringIO()):  # the head and freeze notes of 48 runs
        result = _fit_one(cfg, source if pretrained else None, frozen, shots, seed, val_size)
    device = resolve_device(cfg.device)
    # Every run's input is normalised with the whole training split's statistics (the
    # pretrained net's are those too), so one evaluation view serves all of them.
    split = load_dataset(cfg.data, cfg.split, data_dir=cfg.data_dir, val_size=val_size, seed=seed)
    evaluation = select_classes(split, cfg.target_classes)
    loader = make_loader(evaluation, batch_size=500, train=False, device=device)
    _, err = evaluate(result.model.to(device).eval(), [(x, y) for x, y in loader])
    return {
        "method": method,
        "shots": shots,
        "seed": seed,
        "accuracy": 1 - err,
        "batch_size": result.config.batch_size,  # smaller than asked when k is small
        "eval_examples": len(evaluation),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _fit_one(
    cfg: TransferConfig, source: str | None, frozen: str, shots: int, seed: int, val_size: int
) -> TrainResult:
    """Train on k = `shots` images per B class (0: all) from `source` (None: random init)."""
    return fit(
        dataclasses.replace(
            get_recipe("finetune"),
            model="cifar_resnet",
            model_kwargs={"depth": cfg.depth},
            init_from=source,
            freeze=frozen,
            head_lr_mult=10.0 if source else 1.0,
            lr=cfg.lr if source else cfg.scratch_lr,
            data=cfg.data,
            data_dir=cfg.data_dir,
            classes=cfg.target_classes,
            per_class=shots or None,
            max_steps=cfg.steps,
            batch_size=cfg.batch_size,
            val_size=val_size,
            eval_splits=(),
            ema_decay=0.0,
            amp=resolve_amp(resolve_device(cfg.device), cfg.amp),
            seed=seed,
            device=cfg.device,
            progress=False,
        )
    )


def run(cfg: TransferConfig, run_dir: Path) -> Outcome:
    if cfg.source is None:
        log.info("transfer: pretraining on classes %s", ",".join(map(str, cfg.source_classes)))
        source = str(pretrain(cfg, run_dir))
    else:
        source = cfg.source
    jobs = [(m, k, s) for m in cfg.methods for k in cfg.shots for s in range(cfg.seed, cfg.seed + cfg.seeds)]
    device = resolve_device(cfg.device)
    runs = run_parallel(train_one, [(cfg, source, *job) for job in jobs], device=device, workers=cfg.workers)
    runs = [_logged(run) for run in runs]
    summary = summarize(runs, cfg)
    return Outcome(
        results={"source": cfg.source or "pretrain", "runs": runs, "summary": summary},
        figures=[_figure(summary, cfg, run_dir)],
        tables=[headline_table(summary, cfg)],
        findings=findings(summary, cfg),
    )


def _logged(run: dict) -> dict:
    log.info(
        "transfer: %s k=%s seed %d: accuracy %.2f%% (%.0f s)",
        run["method"], _k(run["shots"]), run["seed"], 100 * run["accuracy"], run["seconds"],
    )  # fmt: skip
    return run


def _k(shots: int) -> str:
    return str(shots) if shots else "all"


def summarize(runs: list[dict], cfg: TransferConfig) -> dict[str, dict[str, dict]]:
    """{method: {k: {"mean", "std", "n"}}} of the accuracy over seeds; k is "10", ..., "all"."""
    out: dict[str, dict[str, dict]] = {}
    for method in cfg.methods:
        out[method] = {}
        for shots in cfg.shots:
            accuracies = [r["accuracy"] for r in runs if r["method"] == method and r["shots"] == shots]
            (mean,), (std,) = stack([[a] for a in accuracies])
            out[method][_k(shots)] = {"mean": mean, "std": std, "n": len(accuracies)}
    return out


def headline_table(summary: dict[str, dict[str, dict]], cfg: TransferConfig) -> Table:
    """Accuracy (%) per start (rows) and labels per class (columns)."""
    ks = [_k(k) for k in cfg.shots]
    rows = []
    for method, by_k in summary.items():
        cells = [f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}" if c["n"] > 1 else f"{100 * c['mean']:.2f}"
                 for c in (by_k[k] for k in ks)]  # fmt: skip
        rows.append([LABELS[method], *cells])
    seeds = f"mean ± std over {cfg.seeds} seeds" if cfg.seeds > 1 else "one seed"
    return Table(
        title=f"{cfg.split.capitalize()} accuracy (%) on the B classes after {cfg.steps} steps ({seeds})",
        columns=["start", *[f"k = {k}" for k in ks]],
        rows=rows,
    )


def findings(summary: dict[str, dict[str, dict]], cfg: TransferConfig) -> list[str]:
    """Statements computed from `summary`: the best start at each k, and what pretraining bought."""
    ks = [_k(k) for k in cfg.shots]
    out = []
    for k in ks:
        ranked = sorted(summary, key=lambda m: summary[m][k]["mean"], reverse=True)
        best, runner_up = ranked[0], ranked[1] if len(ranked) > 1 else None
        text = f"k = {k}: {LABELS[best]} is best ({100 * summary[best][k]['mean']:.2f}%)"
        if runner_up is not None:
            gap = summary[best][k]["mean"] - summary[runner_up][k]["mean"]
            text += f", {100 * gap:.2f} points above {LABELS[runner_up]}"
        out.append(text + ".")
    if "scratch" in summary:
        pretrained = [m for m in summary if m != "scratch"]
        if pretrained:
            gains = []
            for k in ks:
                best = max(pretrained, key=lambda m: summary[m][k]["mean"])
                gains.append((k, summary[best][k]["mean"] - summary["scratch"][k]["mean"], best))
            parts = ", ".join(f"{100 * g:+.2f} points at k = {k} ({LABELS[m]})" for k, g, m in gains)
            out.append(f"Pretraining on the A classes, best start minus from scratch: {parts}.")
            helped = [k for k, g, _ in gains if g > 0]
            if len(helped) == len(gains):
                out.append("Pretraining helped at every k.")
            elif helped:
                out.append(f"Pretraining helped at k = {', '.join(helped)} only.")
            else:
                out.append("Pretraining did not help at any k in this run.")
            (k0, first, m0), (k1, last, m1) = gains[0], gains[-1]
            # Seed spread of the two differences: the std of each start's mean, added.
            spread = sum(
                summary[m][k]["std"] for m, k in ((m0, k0), ("scratch", k0), (m1, k1), ("scratch", k1))
            )
            if abs(first - last) <= spread:
                trend = "about the same, within the seeds' spread"
            else:
                trend = "smaller" if last < first else "larger"
            out.append(
                f"With more labels the gain is {trend}: {100 * first:+.2f} points at k = {k0}, "
                f"{100 * last:+.2f} at k = {k1}."
            )
    return out


def _figure(summary: dict[str, dict[str, dict]], cfg: TransferConfig, run_dir: Path) -> Figure:
    ks = [_k(k) for k in cfg.shots]
    fig = MplFigure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    positions = list(range(len(ks)))
    for method, by_k in summary.items():
        means = [100 * by_k[k]["mean"] for k in ks]
        stds = [100 * by_k[k]["std"] for k in ks]
        ax.errorbar(positions, means, yerr=stds, marker="o", capsize=3, label=LABELS[method])
    ax.set_xticks(positions, ks)
    ax.set(xlabel="labelled images per B class (k)", ylabel=f"{cfg.split} accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    caption = (
        f"{cfg.split.capitalize()} accuracy on {cfg.data} classes {','.join(map(str, cfg.target_classes))} "
        f"against k, mean ± std of {cfg.seeds} seed(s); the pretrained starts come from a ResNet-"
        f"{cfg.depth} trained on classes {','.join(map(str, cfg.source_classes))}."
    )
    return Figure(save_figure(fig, run_dir, "transfer.png"), caption)
