"""`resnetlab demo` (= `make demo`): the quick `degradation` and `gradients` experiments on
Fashion-MNIST, one combined report, and the headline table printed.

Takes about 6 minutes on a quiet 2-core CPU with the default 3 seeds (the budget is 10).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path

from resnetlab.experiments import degradation, gradients, run_experiment
from resnetlab.experiments.record import RunRecord
from resnetlab.experiments.report import format_table, write_combined_report


@dataclass(frozen=True)
class DemoConfig:
    seeds: int = field(default=3, metadata={"help": "degradation runs per net (mean ± std)"})
    data_dir: str | None = field(
        default=None, metadata={"help": "Fashion-MNIST folder (none: default search)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})


@dataclass
class DemoResult:
    report: Path
    degradation: RunRecord
    gradients: RunRecord
    seconds: float


def run_demo(cfg: DemoConfig, out: Path | None = None) -> DemoResult:
    """Both quick experiments into `out` (default runs/demo-TIMESTAMP) and report.html over them."""
    start = time.perf_counter()
    out = Path(out) if out is not None else Path("runs") / f"demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    shared = {"data_dir": cfg.data_dir, "device": cfg.device}
    deg_cfg = dataclasses.replace(degradation.PRESETS["quick"], seeds=cfg.seeds, **shared)
    grad_cfg = dataclasses.replace(gradients.PRESETS["quick"], **shared)
    deg_dir, deg = run_experiment("degradation", deg_cfg, preset="quick", out=out / "degradation")
    grad_dir, grad = run_experiment("gradients", grad_cfg, preset="quick", out=out / "gradients")
    report = write_combined_report([deg_dir, grad_dir], out / "report.html")
    return DemoResult(report, deg, grad, time.perf_counter() - start)


def summary_text(result: DemoResult) -> str:
    """The headline table, the findings of both runs and where the report is."""
    lines = [format_table(result.degradation.outcome.tables[0]), ""]
    lines += [f"- {f}" for f in result.degradation.outcome.findings]
    lines += ["", format_table(result.gradients.outcome.tables[0]), ""]
    lines += [f"- {f}" for f in result.gradients.outcome.findings]
    lines += ["", f"report: {result.report}", f"took {result.seconds / 60:.1f} min"]
    return "\n".join(lines)
