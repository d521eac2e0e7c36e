"""What a `.pt2` file may hold before torch reads it.

`torch.export.load` trusts its file (torch 2.13 says so: "never load data from an untrusted
source"). Reading one runs code in four ways: it unpickles weights, constants and example inputs
with `weights_only=False` when the restricted unpickler refuses them; it hands the shape
expressions to `sympy.sympify`, which evaluates Python; `.module()` compiles the archive's guard
code; and it dlopens AOTInductor libraries. So `check_program_archive` reads the zip first, with
the standard library, and passes only what a program of ATen ops with tensor weights holds:

- members from a fixed list of names (no AOTInductor, ExecuTorch or legacy files);
- every pickled member loads under `torch.load(weights_only=True)`;
- every graph target is an ATen op (or `operator.getitem`), every shape expression uses only
  sympy's number and symbol names, and there is no guard code.

Everything `resnetlab export` writes passes. Anything else is refused in one line, before torch
opens the file.
"""

from __future__ import annotations

import json
import re
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resnetlab.errors import Error
from resnetlab.weights.formats import load_restricted

# Member paths below the archive's top folder (torch.export.pt2_archive.constants).
_MEMBERS = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json"
    r"|data/weights/\w+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/\w+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/\w+\.pt"
    r"|extra/[\w.-]+"
)
_PAYLOAD = re.compile(r"(weight|tensor)_\d+")  # a payload config's path_name: tensors, no objects
_ATEN = re.compile(r"torch\.ops\.aten\.\w+(\.\w+)?")
_OPERATORS = frozenset({"_operator.getitem"})
# Names a shape expression may use: sympy numbers, symbols and their assumptions, and the
# integer functions torch.export writes (torch.utils._sympy.functions). No attribute access.
_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod",
        "floor", "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "oo",
        "True", "False", "positive", "negative", "nonnegative", "integer", "real", "finite",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
        "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)  # fmt: skip
_SYMBOL = re.compile(r"(s|u|ps|zf|zuf)\d+")  # torch.export's symbol names (s0 sizes, u3 unbacked, ...)
_EXPR_TOKEN = re.compile(r"\s+|'[a-z]+\d*'|\d+(\.\d+)?|[A-Za-z]\w*|\*\*|[-+*/%(),=<>]")


def check_program_archive(path: str | Path) -> None:
    """Raise `Error` unless the `.pt2` at `path` holds only what torch can load without running
    code from it (see the module docstring); nothing in it is unpickled outside the allow-list."""
    label = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Error(
            f"{label} is not a torch.export archive ({exc}); it may be truncated or corrupt"
        ) from None
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if not names:
            raise Error(f"{label} is an empty archive, not a torch.export program")
        if len(set(names)) != len(names):  # readers disagree on which copy of a name counts
            raise Error(f"refusing to load {label}: it holds two members of one name")
        root = names[0].split("/", 1)[0] + "/"
        members = {}
        for name in names:
            rel = name[len(root) :] if name.startswith(root) else name
            if not name.startswith(root) or not _MEMBERS.fullmatch(rel):
                raise Error(
                    f"refusing to load {label}: it holds {name}, which is not part of a torch.export "
                    "program of tensors and ATen ops (resnetlab loads no AOTInductor, ExecuTorch or "
                    "pickled objects)"
                )
            members[rel] = name
        try:
            _check_members(archive, members, label)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            # damaged or truncated members, unsupported compression, encryption
            raise Error(f"{label} is a damaged archive ({exc}); it may be truncated or corrupt") from None


def _check_members(archive: zipfile.ZipFile, members: dict[str, str], label: str) -> None:
    fmt = members.get("archive_format")
    if fmt is None or archive.read(fmt).strip() != b"pt2":
        raise Error(
            f"{label} is not a torch.export archive of this format (archive_format pt2); export it again"
        )
    for rel, name in members.items():
        where = f"{label}:{rel}"
        if rel.endswith("_config.json"):
            config = _json(archive.read(name), where).get("config", {})
            if not isinstance(config, dict):
                raise Error(f"{where} is not a torch.export payload config; export it again")
            for entry in config.values():
                if not isinstance(entry, dict) or not _PAYLOAD.fullmatch(str(entry.get("path_name"))):
                    raise Error(f"refusing to load {label}: {rel} names a payload that is not a tensor")
                if entry.get("use_pickle"):
                    payload = rel.rsplit("/", 1)[0] + "/" + entry["path_name"]
                    if payload not in members:
                        raise Error(f"{label} lacks {payload}, which {rel} names; export it again")
                    load_restricted(archive.read(members[payload]), f"{label}:{payload}")
        elif rel.startswith("data/sample_inputs/"):
            load_restricted(archive.read(name), where)
        elif rel.startswith("models/"):
            _check_program(_json(archive.read(name), where), label)


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise Error(f"{where} is not JSON ({exc}); the file may be truncated or corrupt") from None
    if not isinstance(value, dict):
        raise Error(f"{where} is not a torch.export record")
    return value


def _check_program(program: dict[str, Any], label: str) -> None:
    """Refuse guard code, non-ATen targets and shape expressions with names outside sympy's."""
    if program.get("guards_code"):
        raise Error(
            f"refusing to load {label}: it carries Python guard code, which torch would compile and run"
        )
    for key, value in _strings(program):
        if key == "target" and not (_ATEN.fullmatch(value) or value in _OPERATORS):
            raise Error(f"refusing to load {label}: its graph calls {value[:80]}, which is not an ATen op")
        if key == "expr_str" and not _safe_expression(value):
            raise Error(
                f"refusing to load {label}: a shape expression in it is not plain arithmetic on "
                f"symbols ({value[:80]!r}); torch would evaluate it as Python"
            )


def _strings(tree: Any) -> Iterator[tuple[str, str]]:
    """(key, value) for every string in a JSON tree, with the key it sits under; iterative, so a
    tree nested as deep as json.loads allows cannot exhaust Python's stack."""
    stack: list[tuple[str, Any]] = [("", tree)]
    while stack:
        key, node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.items())
        elif isinstance(node, list):
            stack.extend((key, item) for item in node)
        elif isinstance(node, str):
            yield key, node


def _safe_expression(text: str) -> bool:
    """Whether `text` is made only of numbers, symbol names (bare or quoted), operators and sympy
    names: then `sympy.sympify` can only build an expression from it."""
    position = 0
    while position < len(text):
        token = _EXPR_TOKEN.match(text, position)
        if token is None:
            return False
        word = token.group()
        if word[0].isalpha() and word not in _SYMPY_NAMES and not _SYMBOL.fullmatch(word):
            return False
        position = token.end()
    return True
