"""The experiments that show why residual learning works, one module each, and their reports.

    degradation  [He15 Fig. 1, 6]  deeper plain nets train worse, deeper ResNets do not
    gradients    [He15 §1]         per-layer gradient norms, plain vs residual, with and without BN
    responses    [He15 Fig. 7]     std of the 3x3 layer responses of trained nets
    lesion       [Veit16]          test error after deleting blocks at test time
    landscape    [Li18]            loss along filter-normalised random directions
    shattered    [Balduzzi17]      input-gradient autocorrelation along a 1-D input grid
    transfer     [Yosinski14]-style  pretrain on 5 classes, fine-tune on the other 5 from k labels each
    mlp          beyond the convnet: plain vs residual MLPs (depth, rank collapse [Dong21], ReZero)
    transformer  beyond the convnet: plain vs residual byte-level GPTs on English text
    identity     [He15 §1]         a trained shallow net deepened with zero-init, default and identity blocks
    information  the seed's third reason: how much of the input each stage keeps (linear read-out)
    backbone     [He15 §4.3, Lin17]  plain vs residual backbones under segmentation and detection heads, +-FPN

Every module has a config dataclass, `PRESETS` ("quick": minutes on a CPU with Fashion-MNIST;
"paper": the paper's setting for a GPU and CIFAR-10; transfer, mlp, transformer, identity,
information and backbone, which reproduce no paper figure, have "full" instead) and
`run(cfg, run_dir) -> Outcome`.
`run_experiment` adds the run directory: results.json, the PNG figures and report.html.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from resnetlab.errors import Error
from resnetlab.experiments import (
    backbone,
    degradation,
    gradients,
    identity,
    information,
    landscape,
    lesion,
    mlp,
    responses,
    shattered,
    transfer,
    transformer,
)
from resnetlab.experiments.config import command_for, validated
from resnetlab.experiments.record import RESULTS_FILE, RunRecord, provenance
from resnetlab.experiments.report import write_run_report
from resnetlab.train.distributed import resolve_device

EXPERIMENTS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        degradation,
        gradients,
        responses,
        lesion,
        landscape,
        shattered,
        transfer,
        mlp,
        transformer,
        identity,
        information,
        backbone,
    )
}


def get_experiment(name: str) -> ModuleType:
    if name not in EXPERIMENTS:
        raise Error(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def default_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """runs/NAME-YYYYmmdd-HHMMSS, in local time."""
    return root / f"{name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"


def run_experiment(name: str, cfg: Any, *, preset: str, out: Path | None = None) -> tuple[Path, RunRecord]:
    """Run one experiment into a new run directory and render its report; returns (dir, record).

    `preset` names the preset `cfg` was derived from; the report's reproduce command is the
    preset plus the fields that differ from it.
    """
    module = get_experiment(name)
    cfg = validated(cfg)
    device = resolve_device(cfg.device)  # a device that is not there fails before any folder is made
    run_dir = Path(out) if out is not None else default_run_dir(name)
    if (run_dir / RESULTS_FILE).exists():
        raise Error(f"{run_dir} already holds a run; pass another --out or remove it")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.datetime.now().astimezone(), time.perf_counter()
    try:
        outcome = module.run(cfg, run_dir)
    except BaseException:
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves nothing behind
        raise
    record = RunRecord(
        experiment=name,
        title=module.TITLE,
        reproduces=module.REPRODUCES,
        preset=preset,
        command=command_for(name, preset, module.PRESETS, cfg),
        config=dataclasses.asdict(cfg),
        outcome=outcome,
        provenance=provenance(str(device), time.perf_counter() - t0, started),
    )
    record.save(run_dir)
    write_run_report(run_dir)
    return run_dir, record


__all__ = ["EXPERIMENTS", "get_experiment", "run_experiment"]
