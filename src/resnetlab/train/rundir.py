"""A run directory: everything one training run leaves behind, so a result traces to its command.

  config.json       the resolved TrainConfig, the command line, library versions, git commit
  metrics.jsonl     one JSON record per line: train records every `log_every` steps, eval records
  curves.png        train and eval loss and error against epoch, redrawn after every eval
  checkpoint-N/     the latest checkpoint (resnetlab.weights.checkpoint)
  tensorboard/      event files, when the optional `tensorboard` package is installed

Only rank 0 touches the directory (the engine builds a `Recorder` without a directory on the
other ranks), and an existing run is never written over without `overwrite`. `open_run_dir`,
`same_run` and `resume_point` make every rank of a torchrun group agree on the directory and on
the checkpoint a resumed run starts from.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import matplotlib
import numpy
import safetensors
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from resnetlab.atomic import write_atomic
from resnetlab.data.arrays import MIN_STD, floored_channels
from resnetlab.errors import Error
from resnetlab.train.config import RESUME_MAY_CHANGE, TrainConfig
from resnetlab.train.distributed import Runtime
from resnetlab.weights.checkpoint import latest_checkpoint

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def prepare_run_dir(path: Path, *, overwrite: bool) -> None:
    """Create an empty run directory; an existing non-empty one only with `overwrite`."""
    if path.exists() and not path.is_dir():
        raise Error(f"--out {path} is a file; give a directory path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise Error(
                f"run directory {path} already exists; pass --overwrite to replace it "
                f"or --resume {path} to continue it"
            )
        if not (path / CONFIG_FILE).is_file():
            raise Error(f"{path} is not empty and is not a resnetlab run directory; refusing to delete it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def _git_commit() -> dict[str, Any]:
    """The commit of the resnetlab source tree and whether it had uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def environment() -> dict[str, Any]:
    """Versions that decide what a run computes, for config.json."""
    return {
        "resnetlab": importlib.metadata.version("resnetlab"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
        "git": _git_commit(),
    }


def write_config(run_dir: Path, cfg: TrainConfig, *, dataset: dict[str, Any], world_size: int = 1) -> None:
    """config.json. `world_size`: the processes that ran `command` (torchrun ranks); with BN each
    rank normalises over batch_size / world_size examples, so the same command on another
    number of processes is a different run."""
    record = {
        "config": dataclasses.asdict(cfg),
        "dataset": dataset,
        "command": sys.argv,
        "world_size": world_size,
        "environment": environment(),
    }
    write_atomic(run_dir / CONFIG_FILE, json.dumps(record, indent=2) + "\n")


def read_config(run_dir: Path) -> TrainConfig:
    """The TrainConfig stored in a run directory's config.json (JSON lists back to tuples)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise Error(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    try:
        stored = json.loads(path.read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise Error(f"{path} is damaged ({exc}); it cannot be resumed") from None
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(stored) - known
    if unknown:
        raise Error(f"{path} has fields this resnetlab does not know ({', '.join(sorted(unknown))})")
    values = {k: tuple(v) if typing.get_origin(hints[k]) is tuple else v for k, v in stored.items()}
    return TrainConfig(**values)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Recorder:
    """The run's history in memory, mirrored into `run_dir` when there is one (rank 0 with --out)."""

    def __init__(self, run_dir: Path | None, history: list[dict[str, Any]] | None = None):
        self.run_dir = run_dir
        self.history: list[dict[str, Any]] = list(history or [])
        self._tensorboard = None
        if run_dir is not None:
            # On resume, records written after the checkpoint are dropped: they will be made again.
            write_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in self.history))
            self._tensorboard = _tensorboard_writer(run_dir / "tensorboard")

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.run_dir is None:
            return
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            prefix = record["kind"] if record["kind"] == "train" else record["split"]
            for key in ("loss", "err", "top5_err", "lr", "img_per_s"):
                if key in record:
                    self._tensorboard.add_scalar(f"{prefix}/{key}", record[key], record["step"])

    def plot(self) -> None:
        if self.run_dir is not None:
            plot_curves(self.history, self.run_dir / CURVES_FILE)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def _tensorboard_writer(path: Path) -> Any:
    """A SummaryWriter when the optional tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and top-1 error (%) against epoch for train records and each eval split, as a PNG."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, err_ax = fig.subplots(1, 2)
    series = {"train": [r for r in history if r["kind"] == "train"]}
    for record in history:
        if record["kind"] == "eval":
            series.setdefault(record["split"], []).append(record)
    for name, records in series.items():
        if not records:
            continue
        epochs = [r["epoch"] for r in records]
        style = {"marker": "o", "markersize": 3} if name != "train" else {"linewidth": 1, "alpha": 0.8}
        loss_ax.plot(epochs, [r["loss"] for r in records], label=name, **style)
        err_ax.plot(epochs, [100 * r["err"] for r in records], label=name, **style)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    err_ax.set(xlabel="epoch", ylabel="top-1 error (%)", yscale="log", title="error")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.3, not 3x10^-1
    for ax in (loss_ax, err_ax):
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def open_run_dir(
    cfg: TrainConfig, runtime: Runtime, *, resume: bool, overwrite: bool, dataset: dict[str, Any]
) -> Path | None:
    """Rank 0 creates (or, resuming, checks) the run directory; its error, if any, stops every rank."""
    if cfg.out is None:
        return None
    path = Path(cfg.out)
    problem = None
    if runtime.is_main:
        try:
            if resume:
                stored = read_config(path)
                changed = [
                    f.name
                    for f in dataclasses.fields(cfg)
                    if f.name not in RESUME_MAY_CHANGE and getattr(cfg, f.name) != getattr(stored, f.name)
                ]
                if changed:
                    raise Error(
                        f"resuming {path} with a different config ({', '.join(changed)}); start a new run"
                    )
            else:
                prepare_run_dir(path, overwrite=overwrite)
                write_config(path, cfg, dataset=dataset, world_size=runtime.world_size)
        except (Error, OSError) as exc:
            problem = str(exc)
    problem = runtime.broadcast_object(problem)
    if problem:
        raise Error(problem)
    return path


def same_run(
    cfg: TrainConfig, runtime: Runtime, *, resume: bool, overwrite: bool
) -> tuple[TrainConfig, bool, bool]:
    """(cfg, resume, overwrite) as every rank must use them.

    All ranks take rank 0's run directory (a default name holds the time, which differs between
    processes). After a worker failure torchrun --max-restarts starts the group again with the
    same command; once the run directory was started, the new group resumes it instead of
    starting over (or, with --overwrite, deleting it).
    """
    cfg = dataclasses.replace(cfg, out=runtime.broadcast_object(cfg.out))
    if runtime.restart_count and cfg.out is not None:
        started = (Path(cfg.out) / CONFIG_FILE).is_file() if runtime.is_main else None
        if runtime.broadcast_object(started):
            return cfg, True, False
    return cfg, resume, overwrite


def resume_point(run_dir: Path, runtime: Runtime) -> Path | None:
    """Rank 0's latest checkpoint, the same one on every rank (None: start from step 0)."""
    found = latest_checkpoint(run_dir) if runtime.is_main else None
    name = runtime.broadcast_object(None if found is None else found.name)
    if runtime.is_main and runtime.restart_count:
        print(
            f"resnetlab: restart {runtime.restart_count} of {runtime.max_restarts}: resuming {run_dir} "
            f"from {name or 'step 0 (no checkpoint yet)'}",
            file=sys.stderr,
            flush=True,
        )
    if name is None:
        return None
    if not (run_dir / name).is_dir():  # another node, without the storage rank 0 writes to
        raise Error(
            f"rank {runtime.rank} cannot see {run_dir / name}, which rank 0 resumes from; "
            "put --out on storage that every node shares"
        )
    return run_dir / name


def dataset_record(
    train_set: Any, eval_sets: dict[str, Any], normalization: str, *, init_from: dict[str, Any] | None
) -> dict[str, Any]:
    """The data as the run sees it, for config.json: sizes, classes and the input pipeline."""
    return {
        "train_examples": len(train_set),
        "eval_examples": {split: len(ds) for split, ds in eval_sets.items()},
        "classes": list(train_set.classes),
        "in_chans": train_set.in_chans,
        "image_size": train_set.image_size,
        "mean": list(train_set.mean),
        "std": list(train_set.std),
        "std_floor": MIN_STD,  # a channel's std is at least this (one grey level), never ~0
        "std_floored_channels": floored_channels(train_set.std),
        "normalization": normalization,  # whose mean/std those are: "weights" or "data"
        "init_from": init_from,
        # fashion-scenes: the generator's parameters, so every scene can be made again
        **({"scene_layout": train_set.layout.record()} if hasattr(train_set, "layout") else {}),
    }
