"""model_table.json, the measured rows `resnetlab models` prints: up to date with the code, read
without torch, and fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnetlab import list_models
from resnetlab.models.summary import summarize, write_table
from resnetlab.models.table import PAPER_FIGURES, TABLE_FILE, load_table

TABLE = load_table()
# Thousands of layers each to trace on the meta device (seconds apiece): `make test-slow`.
DEEPEST = {"resnet1202", "preact_resnet1001"}
FIX = "regenerate it with `python -m resnetlab.models.summary --write`"


def test_table_lists_every_registered_model() -> None:
    assert list(TABLE) == list_models(), f"{TABLE_FILE.name} is stale: {FIX}"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in DEEPEST else n for n in list_models()]
)
def test_table_row_is_what_the_code_measures(name: str) -> None:
    assert TABLE.get(name) == summarize(name), f"{TABLE_FILE.name} is stale for {name}: {FIX}"


def test_paper_figures_name_registered_models() -> None:
    assert set(PAPER_FIGURES) <= set(TABLE)
    assert all(figure.endswith("]") for figure in PAPER_FIGURES.values())  # each one cites its source


def test_write_table_round_trips_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    rows = [TABLE["resnet20"], TABLE["resnext50_32x4d"]]
    path = tmp_path / "table.json"
    write_table(path, rows)
    assert list(load_table(path).values()) == rows
    assert os.listdir(tmp_path) == ["table.json"]
    assert "paper" not in json.loads(path.read_text())["models"][0]  # quoted, not measured: in code


def run_cli(*code: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *code], capture_output=True, text=True, env=env, timeout=60)
    return result, time.perf_counter() - start


def test_resnetlab_models_answers_in_under_a_second() -> None:
    # < 1 s on an idle machine (0.1-0.4 s measured); 3 s leaves room for a loaded one. Importing
    # torch alone takes longer than that, which is why the command reads the table instead.
    result, seconds = run_cli("-m", "resnetlab", "models")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(TABLE)
    assert lines[0].split()[:3] == ["name", "family", "depth"]
    row = next(line for line in lines if line.startswith("resnext50_32x4d "))
    assert "25,028,904" in row and "4.23G" in row and "bottleneck-32x4d" in row
    assert seconds < 3.0, f"`resnetlab models` took {seconds:.2f} s"


def test_resnetlab_models_never_imports_torch() -> None:
    code = (
        "import sys; from resnetlab.cli import main; code = main(['models', 'resnet5*']); "
        "assert 'torch' not in sys.modules, 'torch was imported'; raise SystemExit(code)"
    )
    result, _ = run_cli("-c", code)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == [
        "resnet56",
        "resnet50",
        "resnet50d",
    ]
