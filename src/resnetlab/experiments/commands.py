"""CLI: `resnetlab experiment NAME`, `resnetlab report DIR...` and `resnetlab demo`.

Each experiment gets its own subcommand whose flags are its config fields (see `config.py`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from resnetlab.experiments import EXPERIMENTS, run_experiment
from resnetlab.experiments import demo as demo_module
from resnetlab.experiments.config import add_config_args, config_from_args
from resnetlab.experiments.demo import DemoConfig, run_demo, summary_text
from resnetlab.experiments.report import find_runs, format_table, write_combined_report, write_run_report


def _log_progress() -> None:
    """One line per step of an experiment on stderr."""
    logger = logging.getLogger("resnetlab.experiments")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _run_experiment(args: argparse.Namespace) -> int:
    module = EXPERIMENTS[args.experiment]
    cfg = config_from_args(module.PRESETS[args.preset], args)
    _log_progress()
    run_dir, record = run_experiment(args.experiment, cfg, preset=args.preset, out=args.out)
    for table in record.outcome.tables:
        print(format_table(table), end="\n\n")
    for finding in record.outcome.findings:
        print(f"- {finding}")
    print(f"\nreport: {run_dir / 'report.html'}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    runs = find_runs(args.dirs)
    if len(runs) == 1 and args.out is None:
        print(write_run_report(runs[0]))
        return 0
    for run_dir in runs:
        write_run_report(run_dir)
    print(write_combined_report(runs, args.out or Path("report.html")))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    cfg = config_from_args(DemoConfig(), args)
    _log_progress()
    print(summary_text(run_demo(cfg, args.out)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    exp = subparsers.add_parser(
        "experiment",
        help=f"run one of the experiments ({', '.join(EXPERIMENTS)})",
        description="Run an experiment into a run directory: results.json, PNG figures, report.html.",
    )
    names = exp.add_subparsers(dest="experiment", required=True, metavar="NAME")
    for name, module in EXPERIMENTS.items():
        doc = (module.__doc__ or "").strip()
        p = names.add_parser(
            name,
            help=module.TITLE,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_args(p, type(module.PRESETS["quick"]), module.PRESETS)
        p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/NAME-TIMESTAMP)")
        p.set_defaults(func=_run_experiment)

    rep = subparsers.add_parser(
        "report",
        help="(re)write the HTML report of one run, or one page combining several",
        description="Render report.html from results.json. One run: DIR/report.html. Several runs (or a "
        "folder of runs): each run's report plus a combined page with an index at --out.",
    )
    rep.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run directories, or folders of them")
    rep.add_argument("--out", type=Path, default=None, help="combined page (default: ./report.html)")
    rep.set_defaults(func=_run_report)

    demo = subparsers.add_parser(
        "demo",
        help="quick degradation + gradients experiments on Fashion-MNIST and their report "
        "(6-15 min on 2 CPU cores)",
        description=(demo_module.__doc__ or "").strip(),
    )
    add_config_args(demo, DemoConfig, None)
    demo.add_argument("--out", type=Path, default=None, help="output folder (default: runs/demo-TIMESTAMP)")
    demo.set_defaults(func=_run_demo)
