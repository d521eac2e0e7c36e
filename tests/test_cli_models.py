"""`resnetlab models [PATTERN]`: the table a user sees, and its error paths."""

from __future__ import annotations

import pytest

from resnetlab.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_of_cifar_resnets(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "resnet[2-5]?")
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == [
        "name",
        "family",
        "depth",
        "block",
        "shortcut",
        "params",
        "MACs",
        "input",
        "paper",
    ]
    assert [r.split()[0] for r in rows] == [
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet34",
        "resnet50",
    ]
    resnet20 = rows[0].split()
    assert resnet20[:8] == ["resnet20", "cifar", "20", "basic", "A", "269,722", "40.55M", "32px"]
    assert "8.75%" in rows[0] and "[He15 Tab.6]" in rows[0]
    assert rows[-1].split()[:8] == [
        "resnet50",
        "imagenet",
        "50",
        "bottleneck",
        "B",
        "25,557,032",
        "4.09G",
        "224px",
    ]


def test_table_shows_plain_twins_and_wide_nets(capsys: pytest.CaptureFixture[str]) -> None:
    _, plain, _ = run(capsys, "plain5?")
    assert "plain56" in plain and "853,018" in plain and " none " in plain and "plain50" in plain
    _, wide, _ = run(capsys, "wrn*")
    assert "36,479,194" in wide and "preact-basic" in wide and "5.24G" in wide


def test_unknown_model_is_one_line_with_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "resnet21")
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("resnetlab: error: unknown model 'resnet21'; did you mean") and "resnet20" in err


def test_pattern_without_matches(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "vgg*")
    assert code == 2 and err.count("\n") == 1 and "no model matches 'vgg*'" in err


def test_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["models", "--bogus"])
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
