"""ResNet as a backbone: plain against residual under a segmentation or detection head, with and
without a feature pyramid, on Fashion-MNIST scenes.

Demonstrates: the residual net's second life [He15 §4.3, where ResNet-101 under Faster R-CNN took
COCO detection; Lin17]. Arms: for each depth (20 and 56), the CIFAR-style ResNet (option A) and
its plain twin [He15 §4.2] as the backbone, each under a single-scale head (the last stage,
stride 4) and under an FPN (the stages at stride 2 and 4, the head on the finest level). Every arm
trains from scratch for the same steps, with the same recipe, on the train scenes
(`data.scenes`), and is scored on the test scenes (items the training never saw):

  segment  mIoU over the background and the 10 classes, and pixel accuracy (`train.tasks`); and
           item recall by size: for each boxed item, the fraction of its pixels (its class, inside
           its box) labelled with its class, averaged over small and over large items
           (`train.detection.area_bounds`: under 24^2 and over 48^2 px on the 96 px canvas)
  detect   CenterNet [Zhou19]: COCO mAP@[.5:.95], mAP@.5, and AP of small and large items
           (pycocotools)

Anchors: torchvision's fcn_resnet50 and deeplabv3_resnet50 reach 60.5 and 66.4 mIoU on COCO
val2017's VOC classes; FPN added 8.0 points of proposal recall on COCO, and 12.9 on small
objects [Lin17 Table 1].

Presets:
  quick  segmentation on a 64 px canvas, 240 steps of 16 scenes, 1 seed, the 1,000 test scenes:
         3.5 minutes on 2 cores of an Intel Xeon with AMX, about 10 on an AMD EPYC. One seed,
         because 3 do not fit 10 minutes on the latter: a gap of a point or two between arms is
         within what another seed moves (`--seeds 3` for the spread).
  full   the 96 px canvas, segmentation and detection, 2 epochs of the 6,000 train scenes in
         steps of 32, 3 seeds: hours on a CPU, minutes on a GPU.

Writes: results.json (every run's numbers), predictions-TASK.png (the same test scenes under every
arm), scores-TASK.png, report.html.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure as MplFigure
from PIL import Image, ImageDraw

from resnetlab.data import SCENES, load_dataset, make_loader
from resnetlab.data.scenes import MIN_CANVAS, draw_scene, save_png
from resnetlab.experiments.common import AMP_HELP, ARCHS, log, mean_std, run_parallel, save_figure, twin
from resnetlab.experiments.config import require
from resnetlab.experiments.record import Figure, Outcome, Table
from resnetlab.models.dense import decode_centers
from resnetlab.train import fit
from resnetlab.train.config import DENSE_OFF, TrainConfig
from resnetlab.train.detection import area_bounds
from resnetlab.train.distributed import resolve_device
from resnetlab.train.precision import resolve_amp
from resnetlab.train.predict import MIN_SCORE
from resnetlab.train.tasks import Detect, Segment

NAME = "backbone"
TITLE = "ResNet as a backbone: plain against residual under dense heads, with and without an FPN"
REPRODUCES = "[He15 §4.3], [Lin17]: the residual backbone and the feature pyramid, on Fashion-MNIST scenes"

DENSE_TASKS = ("segment", "detect")
HEADS = ("single", "fpn")
HEAD_LABELS = {"single": "single-scale", "fpn": "FPN"}
MEASURES = {  # per task: (key, column title), the first is the headline
    "segment": [("miou", "mIoU"), ("pixel_acc", "pixel acc."), ("recall_small", "small-item recall"),
                ("recall_large", "large-item recall")],
    "detect": [("map", "mAP"), ("map_50", "mAP@.5"), ("map_small", "AP small"), ("map_large", "AP large")],
}  # fmt: skip
SMALL = {"segment": "recall_small", "detect": "map_small"}
LARGE = {"segment": "recall_large", "detect": "map_large"}


@dataclass(frozen=True)
class BackboneConfig:
    tasks: tuple[str, ...] = field(default=("segment",), metadata={"help": "segment, detect"})
    depths: tuple[int, ...] = field(default=(20, 56), metadata={"help": "backbone depths 6n+2"})
    archs: tuple[str, ...] = field(default=ARCHS, metadata={"help": "plain, resnet (the twins)"})
    heads: tuple[str, ...] = field(default=HEADS, metadata={"help": "single (last stage), fpn"})
    canvas: int = field(default=64, metadata={"help": "scene side, px (96: the scenes' own; items scale)"})
    steps: int = field(default=240, metadata={"help": "optimizer steps per run"})
    batch_size: int = field(default=16, metadata={"help": "scenes per step"})
    lr: float = field(
        default=0.05, metadata={"help": "peak lr (SGD, momentum 0.9, cosine, warmup over 1/20 of the steps)"}
    )
    test_scenes: int | None = field(default=None, metadata={"help": "test scenes scored (none: all 1,000)"})
    figure_scenes: int = field(default=4, metadata={"help": "test scenes drawn under every arm"})
    seeds: int = field(default=1, metadata={"help": "runs per arm, seeds seed..seed+N-1"})
    seed: int = field(default=0, metadata={"help": "first seed (init and data order)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "Fashion-MNIST folder (none: default search)"}
    )
    amp: str = field(default="auto", metadata={"help": AMP_HELP})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    workers: int = field(
        default=0, metadata={"help": "CPU only: runs at once, one thread each (0: one per core)"}
    )

    def check(self) -> None:
        require(self.tasks and set(self.tasks) <= set(DENSE_TASKS), "--tasks takes segment, detect")
        require(
            self.depths and all(d >= 8 and (d - 2) % 6 == 0 for d in self.depths),
            "--depths must be 6n+2, e.g. 20,56",
        )
        require(self.archs and set(self.archs) <= set(ARCHS), f"--archs takes {', '.join(ARCHS)}")
        require(self.heads and set(self.heads) <= set(HEADS), "--heads takes single, fpn")
        require(
            self.canvas >= MIN_CANVAS and self.canvas % 4 == 0, f"--canvas: a multiple of 4, >= {MIN_CANVAS}"
        )
        require(
            self.steps > 0 and self.batch_size > 0 and self.seeds >= 1, "steps, batch size and seeds >= 1"
        )
        require(self.lr > 0, "--lr must be positive")
        require(self.test_scenes is None or self.test_scenes >= 1, "--test-scenes must be >= 1 (none: all)")
        require(0 <= self.figure_scenes <= 8, "--figure-scenes is 0 to 8")
        require(self.workers >= 0, "--workers must be >= 0 (0: one per CPU core)")


PRESETS = {
    "quick": BackboneConfig(),
    "full": BackboneConfig(tasks=DENSE_TASKS, canvas=96, steps=375, batch_size=32, seeds=3),
}


def arm_label(arch: str, depth: int, head: str) -> str:
    return f"{arch}-{depth}, {HEAD_LABELS[head]}"


def train_one(cfg: BackboneConfig, task: str, arch: str, depth: int, head: str, seed: int) -> dict[str, Any]:
    """Train one arm from scratch and score it on the test scenes; its record, and the drawings of
    the first `figure_scenes` test scenes (popped by `run` before the record is kept)."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    model, kwargs = twin(arch, depth)
    train_cfg = dataclasses.replace(
        TrainConfig(),
        **DENSE_OFF,
        model=model,
        model_kwargs=kwargs,
        task=task,
        fpn=head == "fpn",
        data=SCENES,
        data_dir=cfg.data_dir,
        image_size=cfg.canvas,
        max_steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        schedule="cosine",
        warmup=0.05,
        # NHWC: resnet-56 + FPN at 64 px trains 20.1 scenes/s against NCHW's 17.7 (one AMD EPYC thread).
        channels_last=True,
        val_size=0,
        eval_splits=(),
        amp=resolve_amp(device, cfg.amp),
        seed=seed,
        device=cfg.device,
        progress=False,
    )
    result = fit(train_cfg)
    losses = [r["loss"] for r in result.history if r["kind"] == "train"]
    test = load_dataset(SCENES, "test", data_dir=cfg.data_dir, image_size=cfg.canvas)
    if cfg.test_scenes is not None:
        test = test.subset(range(min(cfg.test_scenes, len(test))))
    net = result.model.to(device).eval()
    score = _segment_scores if task == "segment" else _detect_scores
    scores, drawn = score(net, test, cfg, device, train_cfg.amp)
    record = {
        "task": task, "arch": arch, "depth": depth, "head": head, "seed": seed,
        "final_train_loss": losses[-1] if losses else float("nan"),
        **scores,
        "test_scenes": len(test),
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    return {**record, "drawn": drawn}


class _Recording(torch.nn.Module):
    """`net`, keeping the class map it predicts for each batch it is given (uint8, on the CPU)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.maps = net, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        self.maps.append(logits.argmax(1).to(torch.uint8).cpu())
        return logits


@torch.no_grad()
def _segment_scores(
    net: torch.nn.Module, test: Any, cfg: BackboneConfig, device: torch.device, amp: str
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """mIoU, pixel accuracy and per-class IoU by the task's own evaluation, and item recall by size
    from the class maps of the same pass; the maps of the first `figure_scenes` scenes."""
    recording = _Recording(net)
    loader = make_loader(test, batch_size=100, train=False, device=device, channels_last=True)
    result = Segment(test, device).evaluate(recording, loader, amp=amp)
    maps = torch.cat(recording.maps)  # (N, S, S) in test order: the loader does not shuffle
    small, large = item_recall(maps.numpy(), test, area_bounds(cfg.canvas))
    scores = {
        "miou": result.miou,
        "pixel_acc": 1 - result.err,
        "iou": result.iou(),
        "recall_small": small[0],
        "recall_large": large[0],
        "small_items": small[1],
        "large_items": large[1],
        "test_loss": result.loss,
    }
    return scores, [maps[i].numpy() for i in range(min(cfg.figure_scenes, len(test)))]


def item_recall(
    predicted: np.ndarray, test: Any, bounds: tuple[float, float]
) -> tuple[tuple[float, int], tuple[float, int]]:
    """((mean recall, items) of the small items, the same of the large): an item's recall is the
    fraction of the pixels inside its box that the truth gives its class and `predicted` (N, S, S)
    does too. Small: box area under bounds[0] px^2; large: over bounds[1]."""
    small, large = [], []
    for i, (boxes, labels) in enumerate(zip(test.boxes, test.box_labels, strict=True)):
        truth = test.class_maps[i].numpy()
        for (x0, y0, x1, y1), cls in zip(boxes.astype(int).tolist(), labels.tolist(), strict=True):
            own = truth[y0:y1, x0:x1] == cls + 1
            if not own.any():
                continue
            recall = float((predicted[i, y0:y1, x0:x1][own] == cls + 1).mean())
            area = (x1 - x0) * (y1 - y0)
            if area < bounds[0]:
                small.append(recall)
            elif area > bounds[1]:
                large.append(recall)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return (mean(small), len(small)), (mean(large), len(large))


@torch.no_grad()
def _detect_scores(
    net: torch.nn.Module, test: Any, cfg: BackboneConfig, device: torch.device, amp: str
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """COCO mAP (all, @.5, small, large) of `test` by the task's own evaluation; the boxes found in
    the first `figure_scenes` scenes with a score of at least MIN_SCORE."""
    task = Detect(test, net.stride)
    result = task.evaluate(
        net, make_loader(test, batch_size=100, train=False, device=device, channels_last=True), amp=amp
    )
    drawn = []
    first = test.subset(range(min(cfg.figure_scenes, len(test))))
    shown = (
        make_loader(first, batch_size=len(first), train=False, device=device, channels_last=True)
        if len(first)
        else []  # --figure-scenes 0: nothing to draw
    )
    for x, _ in shown:
        for found in decode_centers(net(x), net.stride):
            keep = found["scores"] >= MIN_SCORE
            drawn.append({key: found[key][keep].cpu().numpy() for key in ("boxes", "labels", "scores")})
    scores = {key: getattr(result, key) for key in ("map", "map_50", "map_small", "map_large")}
    return {**scores, "test_loss": result.loss}, drawn


def run(cfg: BackboneConfig, run_dir: Path) -> Outcome:
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    jobs = [
        (cfg, task, arch, depth, head, seed)
        for task in cfg.tasks
        for depth in cfg.depths
        for arch in cfg.archs
        for head in cfg.heads
        for seed in seeds
    ]
    device = resolve_device(cfg.device)
    # Cost ~ depth, and the FPN adds a little: the deep runs start first, so the workers end together.
    runs = run_parallel(
        train_one, jobs, device=device, workers=cfg.workers, cost=lambda j: j[3] + 4 * (j[4] == "fpn")
    )
    drawings = {}
    for r in runs:
        drawn = r.pop("drawn")
        if r["seed"] == cfg.seed:
            drawings[(r["task"], r["arch"], r["depth"], r["head"])] = drawn
        _logged(r)
    summary = summarize(runs, cfg)
    figures, tables = [], []
    for task in cfg.tasks:
        figures.append(_prediction_figure(task, drawings, cfg, run_dir))
        figures.append(_score_figure(task, summary, cfg, run_dir))
        tables.append(headline_table(task, summary, cfg))
    return Outcome(
        results={
            "canvas": cfg.canvas,
            "area_bounds": area_bounds(cfg.canvas),
            "runs": runs,
            "summary": summary,
        },
        figures=[f for f in figures if f is not None],
        tables=tables,
        findings=[line for task in cfg.tasks for line in findings(task, summary, cfg)],
    )


def _logged(r: dict[str, Any]) -> None:
    key, title = MEASURES[r["task"]][0]
    log.info(
        "backbone: %s %s seed %d: %s %.2f (%.0f s)",
        r["task"], arm_label(r["arch"], r["depth"], r["head"]), r["seed"], title, 100 * r[key], r["seconds"],
    )  # fmt: skip


def summarize(runs: list[dict[str, Any]], cfg: BackboneConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """{task: {arm label: {measure: {"mean", "std", "n"}, and "arch", "depth", "head"}}} over seeds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for task in cfg.tasks:
        out[task] = {}
        for depth in cfg.depths:
            for arch in cfg.archs:
                for head in cfg.heads:
                    mine = [
                        r for r in runs
                        if (r["task"], r["arch"], r["depth"], r["head"]) == (task, arch, depth, head)
                    ]  # fmt: skip
                    cell: dict[str, Any] = {"arch": arch, "depth": depth, "head": head}
                    for key in [k for k, _ in MEASURES[task]] + ["final_train_loss"]:
                        mean, std = mean_std([r[key] for r in mine])
                        cell[key] = {"mean": mean, "std": std, "n": len(mine)}
                    out[task][arm_label(arch, depth, head)] = cell
    return out


def _cell(stat: dict[str, float], scale: float = 100.0) -> str:
    if not np.isfinite(stat["mean"]):
        return "-"
    if stat["n"] > 1:
        return f"{scale * stat['mean']:.2f} ± {scale * stat['std']:.2f}"
    return f"{scale * stat['mean']:.2f}"


def headline_table(task: str, summary: dict[str, dict[str, dict[str, Any]]], cfg: BackboneConfig) -> Table:
    measures = MEASURES[task]
    rows = [
        [label, *(_cell(cell[key]) for key, _ in measures), _cell(cell["final_train_loss"], 1.0)]
        for label, cell in summary[task].items()
    ]
    seeds = f"mean ± std over {cfg.seeds} seeds" if cfg.seeds > 1 else "one seed"
    what = "item recall (%) by size" if task == "segment" else "COCO AP (%)"
    return Table(
        title=(
            f"{task.capitalize()}: test scenes ({cfg.canvas} px), {what}, after {cfg.steps} steps of "
            f"{cfg.batch_size} ({seeds})"
        ),
        columns=["backbone, head", *(title for _, title in measures), "final train loss"],
        rows=rows,
    )


def _gap(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[float, float]:
    """(a - b in points, the two seed spreads added, in points)."""
    return 100 * (a[key]["mean"] - b[key]["mean"]), 100 * (a[key]["std"] + b[key]["std"])


def _verdict(gap: float, spread: float, seeds: int) -> str:
    if seeds > 1 and abs(gap) <= spread:
        return "within the seeds' spread"
    return "better" if gap > 0 else "worse"


def findings(task: str, summary: dict[str, dict[str, dict[str, Any]]], cfg: BackboneConfig) -> list[str]:
    """Statements computed from `summary`: residual against plain at each depth and head, depth
    within each family, and what the pyramid buys for small and for large items."""
    cells = summary[task]
    key, title = MEASURES[task][0]
    out = []

    def at(arch: str, depth: int, head: str) -> dict[str, Any] | None:
        return cells.get(arm_label(arch, depth, head))

    for depth in cfg.depths:
        for head in cfg.heads:
            res, plain = at("resnet", depth, head), at("plain", depth, head)
            if res is None or plain is None:
                continue
            gap, spread = _gap(res, plain, key)
            verdict = _verdict(gap, spread, cfg.seeds)
            what = "beats" if verdict == "better" else "does not beat" if verdict == "worse" else "ties"
            spread_note = ", within the seeds' spread" if verdict.startswith("within") else ""
            out.append(
                f"{task}, depth {depth}, {HEAD_LABELS[head]}: the residual backbone {what} its plain twin: "
                f"{title} {100 * res[key]['mean']:.2f} against {100 * plain[key]['mean']:.2f} "
                f"({gap:+.2f} points{spread_note})."
            )
    if len(cfg.depths) > 1:
        shallow, deep = min(cfg.depths), max(cfg.depths)
        for arch in cfg.archs:
            gaps = [
                _gap(d, s, key)[0]
                for head in cfg.heads
                if (d := at(arch, deep, head)) is not None and (s := at(arch, shallow, head)) is not None
            ]
            if gaps:
                trend = (
                    "better" if all(g > 0 for g in gaps) else "worse" if all(g < 0 for g in gaps) else "mixed"
                )
                out.append(
                    f"{task}, {arch}: depth {deep} against {shallow} is {trend} "
                    f"({', '.join(f'{g:+.2f}' for g in gaps)} points of {title}, "
                    f"{' and '.join(HEAD_LABELS[h] for h in cfg.heads)})."
                )
    if set(cfg.heads) == set(HEADS):
        for size, measure in (("small", SMALL[task]), ("large", LARGE[task])):
            gaps = []
            for depth in cfg.depths:
                for arch in cfg.archs:
                    fpn, single = at(arch, depth, "fpn"), at(arch, depth, "single")
                    if fpn is not None and single is not None and np.isfinite(fpn[measure]["mean"]):
                        gaps.append((f"{arch}-{depth}", *_gap(fpn, single, measure)))
            if not gaps:
                continue
            paid = [g for g in gaps if g[1] > 0 and not (cfg.seeds > 1 and g[1] <= g[2])]
            listed = ", ".join(f"{name} {gap:+.2f}" for name, gap, _ in gaps)
            beyond = ", by more than the seeds' spread," if cfg.seeds > 1 else ""
            verdict = "it pays" if 2 * len(paid) > len(gaps) else "it does not pay, on the whole"
            out.append(
                f"{task}: the FPN over the single-scale head, {size} items "
                f"({dict(MEASURES[task])[measure]}): {verdict}: better{beyond} for {len(paid)} of "
                f"{len(gaps)} backbones ({listed} points)."
            )
    if cfg.seeds == 1:
        out.append("One seed per arm: a gap of a point or two is within what another seed moves.")
    return out


def _score_figure(
    task: str, summary: dict[str, dict[str, dict[str, Any]]], cfg: BackboneConfig, run_dir: Path
) -> Figure:
    """Per backbone: the headline measure and the small-item measure, single-scale against FPN."""
    measures = [MEASURES[task][0], (SMALL[task], dict(MEASURES[task])[SMALL[task]])]
    backbones = [(arch, depth) for depth in cfg.depths for arch in cfg.archs]
    fig = MplFigure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    width = 0.8 / len(cfg.heads)
    for ax, (key, title) in zip(axes, measures, strict=True):
        for h, head in enumerate(cfg.heads):
            cells = [summary[task][arm_label(a, d, head)][key] for a, d in backbones]
            xs = [i + (h - (len(cfg.heads) - 1) / 2) * width for i in range(len(backbones))]
            spread = [100 * c["std"] for c in cells] if cfg.seeds > 1 else None
            ax.bar(
                xs, [100 * c["mean"] for c in cells], width, yerr=spread, capsize=3, label=HEAD_LABELS[head]
            )
        ax.set_xticks(range(len(backbones)), [f"{a}-{d}" for a, d in backbones])
        ax.set(ylabel=f"{title} (%)", title=title)
        ax.set_ylim(0, 1.3 * ax.get_ylim()[1])  # room for the legend above the bars
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", ncols=len(cfg.heads))
    fig.tight_layout()
    caption = (
        f"{task.capitalize()} on the test scenes: {measures[0][1]} and {measures[1][1]} per backbone, "
        f"single-scale head against FPN ({cfg.seeds} seed(s), {cfg.steps} steps from scratch)."
    )
    return Figure(save_figure(fig, run_dir, f"scores-{task}.png"), caption)


def _prediction_figure(
    task: str, drawings: dict[tuple, list[Any]], cfg: BackboneConfig, run_dir: Path
) -> Figure | None:
    """Rows: the truth, then every arm; columns: the same test scenes."""
    if cfg.figure_scenes == 0:
        return None
    test = load_dataset(SCENES, "test", data_dir=cfg.data_dir, image_size=cfg.canvas)
    count = min(cfg.figure_scenes, len(test))
    zoom = max(1, 192 // cfg.canvas)
    images = test.images[:count, 0].numpy()
    rows = [("truth", [
        draw_scene(images[i], test.classes,
                   **({"class_map": test.class_maps[i].numpy()} if task == "segment" else
                      {"boxes": test.boxes[i], "labels": test.box_labels[i]}), zoom=zoom)
        for i in range(count)
    ])]  # fmt: skip
    for depth in cfg.depths:
        for arch in cfg.archs:
            for head in cfg.heads:
                drawn = drawings[(task, arch, depth, head)]
                if task == "segment":
                    tiles = [
                        draw_scene(images[i], test.classes, class_map=drawn[i], zoom=zoom)
                        for i in range(count)
                    ]
                else:
                    tiles = [draw_scene(images[i], test.classes, zoom=zoom, **drawn[i]) for i in range(count)]
                rows.append((arm_label(arch, depth, head), tiles))
    side, margin, gap = rows[0][1][0].width, 150, 4
    sheet = Image.new("RGB", (margin + count * (side + gap), len(rows) * (side + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, tiles) in enumerate(rows):
        top = r * (side + gap)
        draw.text((4, top + side // 2 - 6), label, fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (margin + c * (side + gap), top))
    file = f"predictions-{task}.png"
    save_png(sheet, run_dir / file)
    what = "class maps (tinted by class)" if task == "segment" else f"boxes scored at least {MIN_SCORE}"
    caption = (
        f"{task.capitalize()}: the first {count} test scenes; the truth on top, then each arm's {what} "
        f"(seed {cfg.seed})."
    )
    return Figure(file, caption)
