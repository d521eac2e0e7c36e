"""What an experiment run leaves behind: `results.json` (every plotted number, the tables, the
findings, the full config and where the code came from) next to its PNG figures.

The HTML report is rendered from `results.json` alone, so `resnetlab report DIR...` can rebuild
or combine reports long after the run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resnetlab import __version__
from resnetlab.atomic import write_atomic
from resnetlab.errors import Error

RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"


@dataclass
class Table:
    """A small table for the report and the terminal; cells are already formatted strings."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """A PNG in the run directory (`file` is relative to it) and what it shows."""

    file: str
    caption: str


@dataclass
class Outcome:
    """What an experiment's `run` returns: raw numbers, figures, tables and findings."""

    results: dict[str, Any]
    figures: list[Figure]
    tables: list[Table]
    findings: list[str]


@dataclass
class RunRecord:
    """The content of `results.json`."""

    experiment: str
    title: str
    reproduces: str
    preset: str
    command: str
    config: dict[str, Any]
    outcome: Outcome
    provenance: dict[str, Any] = field(default_factory=dict)

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / RESULTS_FILE
        write_atomic(path, json.dumps(dataclasses.asdict(self), indent=1, allow_nan=True) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: Path) -> RunRecord:
        path = Path(run_dir) / RESULTS_FILE
        if not path.is_file():
            raise Error(
                f"{run_dir} holds no {RESULTS_FILE}; pass a directory written by `resnetlab experiment`"
            )
        try:
            raw = json.loads(path.read_text())
            out = raw.pop("outcome")
            outcome = Outcome(
                results=out["results"],
                figures=[Figure(**f) for f in out["figures"]],
                tables=[Table(**t) for t in out["tables"]],
                findings=list(out["findings"]),
            )
            return cls(outcome=outcome, **raw)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise Error(f"{path} is not a resnetlab results file ({exc}); rerun the experiment") from None


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.strip()


def git_commit() -> str:
    """The commit of the resnetlab checkout (with "-dirty" if tracked files changed), or "unknown"."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def provenance(device: str, seconds: float, started: datetime.datetime) -> dict[str, Any]:
    """Where and with what code a run was made."""
    return {
        "resnetlab": __version__,
        "commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "host_cpus": os.cpu_count(),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
    }
