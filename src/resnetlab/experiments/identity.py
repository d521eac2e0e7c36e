"""The key point of [He15 §1], by its own construction: is the identity easy to learn?

Reproduces: the argument of [He15 §1]. A deeper net made of a trained shallow net plus added
identity layers is no worse than the shallow net, so if training makes the deeper net worse, the
optimiser failed to find the identity. The experiment builds that construction and watches the
optimiser: it trains resnet-S and plain-S, deepens each to D layers by appending blocks to every
stage, in three arms, and keeps training every arm (and the shallow nets, as controls) with the
same steps, batches and learning rate:

  residual, zero-init   the new blocks' last BN scale is 0: F = 0, so at step 0 the deep net is the
                        shallow one exactly, in training mode too
  plain, default init   the new plain blocks start from He init and must learn the identity
  plain, identity init  the new blocks' convs are Dirac identities and their BNs the identity in
                        eval mode (running mean 0, running variance 1 - eps): on the non-negative
                        output of the previous ReLU the block is the identity, until training mode's
                        batch statistics take it away

Training error is measured in eval mode on `eval_examples` fixed training images, at step 0 and
`log_points` times during the continued training; each new block's ||H(x) - x|| / ||x|| (its
output against its input) on 128 of them, at the same points.

Presets:
  quick  Fashion-MNIST, resnet/plain-8 deepened to 20 (1 + 2 blocks per stage), 250 SGD steps
         of 32 images (lr 0.02) to train the shallow nets, 150 more for every arm, 2700 training
         images, training error on 500 of them, 3 seeds; about 4 minutes on 2 CPU cores.
  full   resnet/plain-20 deepened to 56, 2000 + 1000 steps of 128 on all 60,000 images.

Writes: results.json, training_error.png, distance_from_identity.png, report.html.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure as MplFigure
from torch import Tensor, nn

from resnetlab.experiments.common import InMemoryImages, log, mean_std, run_parallel, save_figure
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.models import ResNet, create_model
from resnetlab.train.distributed import resolve_device

NAME = "identity"
TITLE = "Is the identity easy to learn? A trained shallow net, deepened three ways"
REPRODUCES = "the construction argument of [He15 §1]: deeper = shallow + identity layers"

# (arm, net it deepens or continues, how its new blocks start)
ARMS = {
    "shallow resnet": ("resnet", None),
    "shallow plain": ("plain", None),
    "residual, zero-init": ("resnet", "zero"),
    "plain, default init": ("plain", "default"),
    "plain, identity init": ("plain", "identity"),
}


@dataclass(frozen=True)
class IdentityConfig:
    data: str = field(default="fashion-mnist", metadata={"help": "fashion-mnist, mnist, cifar10, cifar100"})
    data_dir: str | None = field(default=None, metadata={"help": "data set folder (none: default search)"})
    train_subset: int | None = field(default=2700, metadata={"help": "training images used (none: all)"})
    shallow_depth: int = field(default=8, metadata={"help": "depth 6n+2 of the trained shallow nets"})
    deep_depth: int = field(default=20, metadata={"help": "depth 6n+2 they are deepened to"})
    shallow_steps: int = field(default=250, metadata={"help": "SGD steps that train the shallow nets"})
    steps: int = field(default=150, metadata={"help": "SGD steps of continued training, every arm"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=0.02, metadata={"help": "SGD learning rate (momentum 0.9), constant"})
    weight_decay: float = field(default=1e-4, metadata={"help": "L2 weight decay [He15]"})
    seeds: int = field(default=3, metadata={"help": "runs per arm (seeds seed..seed+N-1): mean ± std"})
    eval_examples: int = field(default=500, metadata={"help": "training images the error is measured on"})
    log_points: int = field(default=8, metadata={"help": "measurements during the continued training"})
    seed: int = field(default=0, metadata={"help": "seed of the first run (init, subset, batches)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    workers: int = field(
        default=0, metadata={"help": "CPU only: trainings run at once, one thread each (0: one per core)"}
    )

    def check(self) -> None:
        for name in ("shallow_depth", "deep_depth"):
            d = getattr(self, name)
            require(d >= 8 and (d - 2) % 6 == 0, f"--{name.replace('_', '-')} must be 6n+2, e.g. 8, 20, 56")
        require(self.deep_depth > self.shallow_depth, "--deep-depth must be larger than --shallow-depth")
        require(self.shallow_steps >= 1 and self.steps >= 1, "--shallow-steps and --steps must be >= 1")
        require(self.batch_size >= 1 and self.seeds >= 1 and self.lr > 0, "--batch-size, --seeds, --lr > 0")
        require(self.eval_examples >= 1 and self.log_points >= 1, "--eval-examples, --log-points >= 1")


PRESETS = {
    "quick": IdentityConfig(),
    "full": IdentityConfig(
        train_subset=None,
        shallow_depth=20,
        deep_depth=56,
        shallow_steps=2000,
        steps=1000,
        batch_size=128,
        lr=0.1,
        eval_examples=5000,
        log_points=20,
    ),
}


# ----------------------------------------------------------------- the construction


def identity_init_(block: nn.Module) -> None:
    """Make a plain BasicBlock the identity on non-negative input in eval mode: Dirac convs, and
    BNs whose running statistics (mean 0, variance 1 - eps) and affine terms (1, 0) pass x through."""
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            nn.init.dirac_(conv.weight)
        for bn in (block.bn1, block.bn2):
            bn.weight.fill_(1.0)
            bn.bias.zero_()
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x exactly


def deepen(shallow: ResNet, depth: int, init: str) -> tuple[ResNet, list[nn.Module]]:
    """`shallow` with blocks appended to every stage up to `depth`: (the deep net, its new blocks).

    The stem, the FC and every shallow block keep their trained weights (their positions are
    the same); the new blocks are stride-1 blocks of the stage's width, started by `init`:
    "zero" (zero_init_last: F = 0), "identity" (identity_init_) or "default" (as built).
    """
    deep = create_model(
        "cifar_resnet",
        depth=depth,
        shortcut=shallow.shortcut_type,
        num_classes=shallow.num_classes,
        in_chans=shallow.in_chans,
    )
    missing, unexpected = deep.load_state_dict(shallow.state_dict(), strict=False)
    assert not unexpected, unexpected
    kept = len(getattr(shallow, shallow.stage_names[0]))
    new = [block for name in deep.stage_names for block in list(getattr(deep, name))[kept:]]
    for block in new:
        if init == "zero":
            block.zero_init_last()
        elif init == "identity":
            identity_init_(block)
    return deep, new


@torch.no_grad()
def distances_from_identity(model: ResNet, blocks: list[nn.Module], x: Tensor) -> list[float]:
    """||H(x) - x|| / ||x|| of each block in `blocks`, on the input it receives inside `model`, in
    eval mode (training mode would also move the BN running statistics)."""
    model.eval()
    wanted = {id(b) for b in blocks}
    out, h = [], model.stem(x)
    for block in model.blocks():
        after = block(h)
        if id(block) in wanted:
            out.append(float((after - h).norm() / h.norm()))
        h = after
    return out


# ----------------------------------------------------------------- data and training


class Images(InMemoryImages):
    """The training images (one subset for every seed and arm) and the fixed first `eval_examples`
    of them that the training error is measured on."""

    def __init__(self, cfg: IdentityConfig, device: torch.device) -> None:
        super().__init__(
            cfg.data,
            data_dir=cfg.data_dir,
            train_subset=cfg.train_subset,
            subset_seed=cfg.seed,
            device=device,
        )
        self.eval_x, self.eval_y = self.x[: cfg.eval_examples], self.y[: cfg.eval_examples]


@torch.no_grad()
def train_error(model: nn.Module, images: Images) -> float:
    """Error (%) on the fixed training images, in eval mode."""
    model.eval()
    wrong = sum(
        int((model(x).argmax(1) != y).sum())
        for x, y in zip(images.eval_x.split(500), images.eval_y.split(500), strict=True)
    )
    return 100 * wrong / len(images.eval_y)


def sgd_steps(
    model: nn.Module,
    images: Images,
    cfg: IdentityConfig,
    seed: int,
    first: int,
    steps: int,
    measure: Any = None,
) -> list[dict]:
    """`steps` SGD steps on batches first..first+steps-1 of `seed`; `measure(model, step)` in eval
    mode at step 0 and at `log_points` evenly spaced steps, its records returned."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    at = {round(steps * (i + 1) / cfg.log_points) for i in range(cfg.log_points)}
    records = [measure(model, 0)] if measure else []
    for step in range(1, steps + 1):
        model.train()
        x, y = images.batch(seed, first + step - 1, cfg.batch_size)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if measure and step in at:
            records.append(measure(model, step))
    return records


def run_family(cfg: IdentityConfig, seed: int, family: str) -> list[dict]:
    """Train the shallow `family` net ("resnet" or "plain") with `seed`, build each of its arms
    from it, and continue training every arm on the same batches."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    images = Images(cfg, device)
    torch.manual_seed(seed)
    shallow = create_model(
        "cifar_resnet",
        depth=cfg.shallow_depth,
        shortcut="A" if family == "resnet" else "none",
        num_classes=images.num_classes,
        in_chans=images.in_chans,
    ).to(device)
    sgd_steps(shallow, images, cfg, seed, 0, cfg.shallow_steps)
    shallow_error = train_error(shallow, images)
    arms = {}
    for arm, (arm_family, init) in ARMS.items():
        if arm_family != family:
            continue
        if init is None:
            arms[arm] = (copy.deepcopy(shallow), [])
        else:
            torch.manual_seed(seed + 10_000)  # the new blocks' draw, apart from the shallow net's
            deep, new = deepen(shallow, cfg.deep_depth, init)
            arms[arm] = (deep.to(device), new)
    probe = images.eval_x[:128]
    out = []
    for arm, (model, new) in arms.items():

        def measure(net: nn.Module, step: int, new: list[nn.Module] = new) -> dict:
            dist = distances_from_identity(net, new, probe) if new else []
            return {"step": step, "train_error": train_error(net, images), "distance": dist}

        records = sgd_steps(model, images, cfg, seed, cfg.shallow_steps, cfg.steps, measure)
        out.append(
            {
                "arm": arm,
                "seed": seed,
                "shallow_error": shallow_error,
                "steps": [r["step"] for r in records],
                "train_error": [r["train_error"] for r in records],
                "distance": [r["distance"] for r in records],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return out


def run(cfg: IdentityConfig, run_dir: Path) -> Outcome:
    device = resolve_device(cfg.device)
    jobs = [
        (cfg, seed, family)
        for seed in range(cfg.seed, cfg.seed + cfg.seeds)
        for family in ("plain", "resnet")
    ]
    plain_first = lambda job: job[2] == "plain"  # noqa: E731  (three arms to the resnet's two)
    runs = [
        r
        for group in run_parallel(run_family, jobs, device=device, workers=cfg.workers, cost=plain_first)
        for r in group
    ]
    for r in runs:
        log.info("identity: %s seed %d: train error %.2f%% -> %.2f%% (%.0f s)", r["arm"], r["seed"],
                 r["train_error"][0], r["train_error"][-1], r["seconds"])  # fmt: skip
    summary = summarize(runs)
    results = {"runs": runs, "summary": summary}
    return Outcome(
        results=results,
        figures=_figures(runs, summary, cfg, run_dir),
        tables=[_table(summary, cfg)],
        findings=findings(summary, cfg),
    )


# ----------------------------------------------------------------- summary, table, findings


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Per arm, over seeds: the training error at step 0 and at the end, the shallow net's error it
    started from, the mean distance from identity of the new blocks at step 0 and at the end."""
    out = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        row = {}
        for key, values in (
            ("start", [r["train_error"][0] for r in mine]),
            ("end", [r["train_error"][-1] for r in mine]),
            ("shallow", [r["shallow_error"] for r in mine]),
            ("worst", [max(r["train_error"]) for r in mine]),
        ):
            row[key], row[key + "_std"] = mean_std(values)
        dist = [r["distance"] for r in mine if r["distance"] and r["distance"][0]]
        row["distance_start"] = float(np.mean([np.mean(d[0]) for d in dist])) if dist else math.nan
        row["distance_end"] = float(np.mean([np.mean(d[-1]) for d in dist])) if dist else math.nan
        row["seeds"] = len(mine)
        out[arm] = row
    return out


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def _table(summary: dict[str, dict], cfg: IdentityConfig) -> Table:
    def dist(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.3f}"

    rows = [
        [arm, *(_pm(s[k], s[k + "_std"]) for k in ("shallow", "start", "worst", "end")),
         dist(s["distance_start"]), dist(s["distance_end"])]
        for arm, s in summary.items()
    ]  # fmt: skip
    return Table(
        title=f"Training error (%) of {cfg.shallow_depth}-layer nets deepened to {cfg.deep_depth}, "
        f"then {cfg.steps} more steps (mean ± std of {cfg.seeds} seeds); ||H(x) - x|| / ||x|| of new blocks",
        columns=["arm", "shallow net", "step 0", "worst", f"step {cfg.steps}", "new blocks at 0", "at end"],
        rows=rows,
    )


def findings(summary: dict[str, dict], cfg: IdentityConfig) -> list[str]:
    """Statements computed from the numbers. [He15 §1]'s yardstick is the shallow net itself, so
    each arm is compared at step 0 with the shallow net it was built from, and at the end with
    the shallow net trained on for the same steps (the control). A difference counts when it is
    more than 1 point and more than the seeds' spread (the two standard deviations added)."""
    out = []
    deep = f"{cfg.deep_depth}-layer"
    kept: list[str] = []
    recovered: list[str] = []
    for arm, (family, init) in ARMS.items():
        if init is None:
            continue
        s, control = summary[arm], summary[f"shallow {family}"]
        same_start = abs(s["start"] - s["shallow"]) < 1.0
        gap = s["end"] - control["end"]
        spread = max(1.0, s["end_std"] + control["end_std"])
        if gap <= -spread:
            verdict = f"better than the shallow net by {-gap:.2f} points"
        elif gap < spread:
            verdict = (
                f"as good as the shallow net, within the seeds' spread ({gap:+.2f} points, ±{spread:.2f})"
            )
        else:
            verdict = (
                f"worse than the shallow net by {gap:.2f} points, more than the seeds' spread ({spread:.2f})"
            )
        worst_spread = max(1.0, s["worst_std"] + control["worst_std"])
        held = s["worst"] - control["worst"] < worst_spread  # no worse on the way than the control
        if same_start and gap < spread:
            (kept if held else recovered).append(arm)
        text = (
            f"{arm}: at step 0 the {deep} net's training error is {s['start']:.2f}% against the "
            f"{cfg.shallow_depth}-layer net's {s['shallow']:.2f}% "
            f"({'the same' if same_start else 'not the same'}); "
            f"it is at worst {s['worst']:.2f}% (the shallow net trained on: {control['worst']:.2f}%), and "
            f"after {cfg.steps} steps {s['end']:.2f}% against "
            f"{control['end']:.2f}% for the shallow net trained on: {verdict}"
        )
        if not math.isnan(s["distance_start"]):
            text += (
                f". Its new blocks' outputs differ from their inputs by {s['distance_start']:.3f} of the "
                f"input's norm at step 0 and {s['distance_end']:.3f} at the end"
            )
        out.append(text + ".")
    lost = [arm for arm in ARMS if ARMS[arm][1] and arm not in kept + recovered]
    sentence = (
        f"In one sentence: {' and '.join(kept) if kept else 'no arm'} kept the shallow net's training "
        f"error from step 0 to step {cfg.steps} (never worse than the shallow net trained on by more than "
        "the seeds' spread)"
    )
    if recovered:
        sentence += (
            f"; {' and '.join(recovered)} started from it, lost it on the way and recovered it by the end"
        )
    if lost:
        sentence += f"; {' and '.join(lost)} did not keep it"
    out.append(sentence + ".")
    return out


# ----------------------------------------------------------------- figures

_COLORS = {
    "shallow resnet": "0.6",
    "shallow plain": "0.3",
    "residual, zero-init": "C2",
    "plain, default init": "C3",
    "plain, identity init": "C1",
}


def _figures(runs: list[dict], summary: dict[str, dict], cfg: IdentityConfig, run_dir: Path) -> list[Figure]:
    fig = MplFigure(figsize=(7, 4.2))
    ax = fig.subplots()
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        steps = mine[0]["steps"]
        curve = np.mean([r["train_error"] for r in mine], axis=0)
        style = "--" if ARMS[arm][1] is None else "-"
        ax.plot(steps, curve, style, marker="o", ms=3, color=_COLORS[arm], label=arm)
    ax.set_xlabel(f"steps after deepening {cfg.shallow_depth} → {cfg.deep_depth} layers")
    ax.set_ylabel("training error (%), eval mode")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures = [
        Figure(
            save_figure(fig, run_dir, "training_error.png"),
            f"Training error of the three deepened arms and the shallow controls (dashed), mean of "
            f"{cfg.seeds} seeds; step 0 is the construction.",
        )
    ]
    fig = MplFigure(figsize=(7, 4.2))
    ax = fig.subplots()
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm and r["distance"][0]]
        if mine:
            steps = mine[0]["steps"]
            curve = np.mean([[np.mean(d) for d in r["distance"]] for r in mine], axis=0)
            ax.plot(steps, curve, marker="o", ms=3, color=_COLORS[arm], label=arm)
    ax.set_xlabel("steps after deepening")
    ax.set_ylabel("||H(x) - x|| / ||x||, mean over new blocks")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    figures.append(
        Figure(
            save_figure(fig, run_dir, "distance_from_identity.png"),
            "How far the new blocks are from the identity (0 = identity), eval mode, mean of seeds.",
        )
    )
    return figures
