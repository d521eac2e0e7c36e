"""Shared by the bad-input tests: run the CLI in-process and check for its one-line refusal."""

from __future__ import annotations

from resnetlab.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `resnetlab ARGV...`; argparse's own errors exit via SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(capsys, *argv: str, match: str) -> str:
    """The command exits 2 with exactly one stderr line containing `match`; returns that line."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err
    return lines[0]
