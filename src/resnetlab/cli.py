"""The `resnetlab` command line: one subcommand per job, each derived from its area's config.

Each area owns its subcommands through a `register(subparsers)` function; this file only wires
them together and turns user errors into one line and exit code 2 (RESNETLAB_DEBUG=1 shows the
traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from resnetlab import __version__
from resnetlab.errors import Error

# Modules that add subcommands; imported lazily so `resnetlab --help` stays fast.
_COMMAND_MODULES = (
    "resnetlab.models.commands",
    "resnetlab.data.commands",
    "resnetlab.train.commands",
    "resnetlab.experiments.commands",
    "resnetlab.weights.commands",
    "resnetlab.export.commands",
)
# Subcommands that load their own module only: `resnetlab models` reads a table and answers
# without importing torch, which alone takes seconds.
_LIGHT_COMMANDS = {"models": "resnetlab.models.commands"}


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line: what was wrong and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> ArgumentParser:
    """The parser of every subcommand, or of `command` alone where it is a light one."""
    parser = ArgumentParser(
        prog="resnetlab",
        description="Build, train, analyse and deploy residual networks and their plain twins.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)
    modules = [_LIGHT_COMMANDS[command]] if command in _LIGHT_COMMANDS else _COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader that closed the pipe shows up here, inside the handlers below
        return code
    except (Error, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if os.environ.get("RESNETLAB_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"resnetlab: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `resnetlab models | head` closed our stdout: stop quietly, and keep Python's exit-time
        # flush from failing on the same pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a command cut off by a pipe
