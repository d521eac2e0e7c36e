"""`resnetlab models [PATTERN]`: the table a user sees, and its error paths."""

from __future__ import annotations

import os
import subprocess
import sys

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
        "stem",
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
    assert resnet20[:9] == ["resnet20", "cifar", "20", "basic", "3x3", "A", "269,722", "40.55M", "32px"]
    assert "8.75%" in rows[0] and "[He15 Tab.6]" in rows[0]
    assert rows[-1].split()[:9] == [
        "resnet50",
        "imagenet",
        "50",
        "bottleneck",
        "7x7",
        "B",
        "25,557,032",
        "4.09G",
        "224px",
    ]


def test_table_shows_resnet_d(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "*50d")
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[:9] for r in rows] == [
        ["plain50d", "imagenet", "50", "bottleneck", "deep", "none", "22,799,688", "3.97G", "224px"],
        ["resnet50d", "imagenet", "50", "bottleneck", "deep", "B-avg", "25,576,264", "4.33G", "224px"],
    ]
    assert " ".join(rows[1][9:]) == "top-1 ~+1% over ResNet-50 [He19]"


def test_table_shows_plain_twins_and_wide_nets(capsys: pytest.CaptureFixture[str]) -> None:
    _, plain, _ = run(capsys, "plain5?")
    assert "plain56" in plain and "853,018" in plain and " none " in plain and "plain50" in plain
    _, wide, _ = run(capsys, "wrn*")
    assert "36,479,194" in wide and "preact-basic" in wide and "5.24G" in wide


def test_table_shows_resnext_and_wide_resnets(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "*101_*")
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert list(rows) == ["plain101_32x8d", "plain101_64x4d", "resnext101_32x8d", "resnext101_64x4d"] + [
        "wide_plain101_2",
        "wide_resnet101_2",
    ]
    assert rows["resnext101_64x4d"].split()[3:8] == ["bottleneck-64x4d", "7x7", "B", "83,455,272", "15.46G"]
    assert rows["wide_resnet101_2"].split()[3:8] == ["bottleneck-1x128d", "7x7", "B", "126,886,696", "22.75G"]
    assert "83.246%" in rows["resnext101_64x4d"] and "[torchvision V1]" in rows["resnext101_64x4d"]
    assert rows["plain101_64x4d"].split()[5] == "none"


def test_a_model_registered_at_run_time_is_measured_live(capsys: pytest.CaptureFixture[str]) -> None:
    from resnetlab.models import registry
    from resnetlab.models.blocks import BasicBlock
    from resnetlab.models.resnet import _imagenet

    def tiny10(**kwargs: object):
        return _imagenet(BasicBlock, [1, 1, 1, 1], kwargs)

    params = sum(p.numel() for p in tiny10().parameters())
    registry.register_model(tiny10)
    try:
        code, out, _ = run(capsys, "tiny*")
    finally:
        del registry.BUILDERS["tiny10"]
    assert code == 0
    assert out.splitlines()[1].split()[:7] == ["tiny10", "imagenet", "10", "basic", "7x7", "B", f"{params:,}"]


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


def test_a_reader_that_closes_the_pipe_gets_no_traceback() -> None:
    """`resnetlab models | head -1`: the pipe closes before the table is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write into the pipe now fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "resnetlab", "models"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""
