"""The HTML report and results.json: rendering, combining, the `report` command, config flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
from matplotlib.figure import Figure as MplFigure

from resnetlab.cli import main
from resnetlab.errors import Error
from resnetlab.experiments import EXPERIMENTS
from resnetlab.experiments.config import add_config_args, command_for, config_from_args
from resnetlab.experiments.record import Figure, Outcome, RunRecord, Table, git_commit, provenance
from resnetlab.experiments.report import find_runs, format_table, write_combined_report, write_run_report


def make_run(
    run_dir: Path, *, title: str = "Test run", finding: str = "plain-56 <b>worse</b> & deeper"
) -> Path:
    """A run directory with one real PNG, one table and one finding that needs escaping."""
    run_dir.mkdir(parents=True)
    fig = MplFigure(figsize=(2, 1.5))
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(run_dir / "curve.png")
    record = RunRecord(
        experiment="degradation",
        title=title,
        reproduces="[He15] Fig. 6",
        preset="quick",
        command="resnetlab experiment degradation --preset quick --seeds 3",
        config={"depths": [20, 56], "seeds": 3},
        outcome=Outcome(
            results={"x": [1.0, float("nan")]},
            figures=[Figure("curve.png", "a <curve>")],
            tables=[Table("Errors", ["net", "train error"], [["plain-20", "5.00"], ["plain-56", "9.00"]])],
            findings=[finding],
        ),
        provenance={"resnetlab": "0.1.0", "commit": "abc123"},
    )
    record.save(run_dir)
    return run_dir


def test_results_json_round_trips(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    record = RunRecord.load(run)
    assert record.outcome.tables[0].rows[1] == ["plain-56", "9.00"]
    assert record.outcome.figures[0].file == "curve.png"
    assert record.outcome.results["x"][0] == 1.0
    assert json.loads((run / "results.json").read_text())["config"]["seeds"] == 3


def test_run_report_has_everything_and_escapes_text(tmp_path: Path) -> None:
    page = write_run_report(make_run(tmp_path / "run")).read_text()
    assert "plain-56 &lt;b&gt;worse&lt;/b&gt; &amp; deeper" in page  # findings are text, not markup
    assert '<img src="curve.png" alt="a &lt;curve&gt;">' in page  # a relative path next to the page
    assert '<td>plain-56</td><td class="num">9.00</td>' in page
    assert "resnetlab experiment degradation --preset quick --seeds 3" in page
    assert "abc123" in page and "[He15] Fig. 6" in page
    assert "<td>depths</td><td>[20, 56]</td>" in page and '<td>seeds</td><td class="num">3</td>' in page
    # A static page: no scripts, and nothing fetched from anywhere but the run directory.
    assert "<script" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_combined_report_indexes_runs_and_links_their_figures(tmp_path: Path) -> None:
    a = make_run(tmp_path / "runs" / "a", title="Run A")
    b = make_run(tmp_path / "runs" / "b", title="Run B")
    out = write_combined_report([a, b], tmp_path / "pages" / "all.html")
    page = out.read_text()
    anchors = re.findall(r'<a href="#([^"]+)">', page)
    assert len(anchors) == 2 and all(f'id="{x}"' in page for x in anchors)
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == ["../runs/a/curve.png", "../runs/b/curve.png"]
    assert all((out.parent / s).resolve().is_file() for s in srcs)


def test_missing_figure_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "curve.png").unlink()
    with pytest.raises(Error, match="curve.png .* missing"):
        write_run_report(run)


def test_find_runs_expands_folders_of_runs(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "r" / "a"), make_run(tmp_path / "r" / "b")
    assert find_runs([tmp_path / "r"]) == [a, b]
    assert find_runs([b, a]) == [b, a]
    (tmp_path / "empty").mkdir()
    with pytest.raises(Error, match="holds no results.json"):
        find_runs([tmp_path / "empty"])


def test_broken_results_file_is_a_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"experiment": "x"}')
    with pytest.raises(Error, match="not a resnetlab results file"):
        RunRecord.load(run)


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    assert main(["report", str(a)]) == 0
    assert capsys.readouterr().out.strip() == str(a / "report.html")
    out = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert out.is_file() and (b / "report.html").is_file()
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resnetlab: error:") and "\n" not in err


def test_format_table_aligns_columns() -> None:
    text = format_table(Table("T", ["net", "err"], [["plain-20", "5.1"], ["resnet-110", "12.25"]]))
    lines = text.splitlines()
    assert lines[0] == "T"
    body = [line for line in lines if line.startswith(("plain", "resnet"))]
    assert body == ["plain-20      5.1", "resnet-110  12.25"]


def test_provenance_names_version_and_commit() -> None:
    import datetime

    prov = provenance("cpu", 1.234, datetime.datetime(2024, 1, 2, 3, 4, 5))
    assert prov["resnetlab"] and prov["seconds"] == 1.2 and prov["device"] == "cpu"
    assert prov["commit"] == git_commit()
    assert prov["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", prov["commit"])


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_reproduce_command_rebuilds_the_config(name: str) -> None:
    """The command every report quotes parses back, through the real flags, to the same config."""
    module = EXPERIMENTS[name]
    cls = type(module.PRESETS["quick"])
    big = next(p for p in module.PRESETS if p != "quick")  # "paper", or transfer's "full"
    fields = {f.name: getattr(module.PRESETS[big], f.name) for f in dataclasses.fields(cls)}
    changes = {**fields, "seed": 7, "data_dir": "/tmp/x y"}
    if "augment" in fields:  # a bool flag the other way round: --no-augment
        changes["augment"] = not module.PRESETS["quick"].augment
    cfg = dataclasses.replace(module.PRESETS["quick"], **changes)
    command = command_for(name, "quick", module.PRESETS, cfg)
    parser = argparse.ArgumentParser()
    add_config_args(parser, cls, module.PRESETS)
    argv = shlex.split(command)
    assert argv[:3] == ["resnetlab", "experiment", name]
    args = parser.parse_args(argv[3:])
    assert config_from_args(module.PRESETS[args.preset], args) == cfg
    assert command_for(name, big, module.PRESETS, module.PRESETS[big]).endswith(f"--preset {big}")


def test_config_flags_reject_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["experiment", "degradation", "--depths", "20,abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "expected A,B,..." in err and err.count("\n") == 1
    assert main(["experiment", "degradation", "--depths", "20,21", "--out", "/nonexistent/x"]) == 2
    assert "6n+2" in capsys.readouterr().err
