"""The package's layers import only downward, lazy imports included:
errors, atomic, flags < models, data < weights < train < export, experiments < cli.

Every `import` and `from ... import` in src/resnetlab is read (inside functions too). The upward
imports that exist today are listed by name, each to be removed by issue 24 (one home for
weights); the test fails on any new one, and on a listed one that is gone, so the list shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "resnetlab"
LAYERS = {
    "errors": 0,
    "atomic": 0,
    "flags": 0,
    "models": 1,
    "data": 1,
    "weights": 2,
    "train": 3,
    "export": 4,
    "experiments": 4,
    "cli": 5,
    "__main__": 5,
}
TOP = 5  # the package itself: `resnetlab.create_model` and friends
# (importer, imported) pairs that run upward today; issue 24 takes each away.
KNOWN_UPWARD = {
    ("resnetlab.models.registry", "resnetlab.weights"),  # create_model(pretrained=...)
    ("resnetlab.train.evaluate", "resnetlab.export.runtime"),  # exported files as eval sources
    ("resnetlab.train.predict", "resnetlab.export.runtime"),
    ("resnetlab.weights.pretrained", "resnetlab.train.checkpoint"),  # run directories as sources
}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "resnetlab":
        return None
    return TOP if len(parts) == 1 else LAYERS.get(parts[1], TOP)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "resnetlab" and {a.name for a in node.names} <= {
                    "__version__",
                    "Error",
                    "CUBLAS_WORKSPACE",
                }:
                    continue  # constants of the package root, defined before anything is imported
                imported = [node.module]
            else:
                continue
            for name in imported:
                if (layer(name) or 0) > (layer(importer) or 0):
                    found.add((importer, name))
    return found


def test_no_layer_imports_a_higher_one_beyond_the_known_ones():
    found = upward_imports()
    assert found - KNOWN_UPWARD == set(), "new imports that run up the layers"
    assert KNOWN_UPWARD - found == set(), "gone: take them off KNOWN_UPWARD"


def test_the_check_sees_lazy_imports_and_relative_layers():
    assert layer("resnetlab.data.pack") == 1 and layer("resnetlab.train.engine") == 3
    assert layer("resnetlab") == TOP and layer("numpy") is None
    assert ("resnetlab.models.registry", "resnetlab.weights") in upward_imports()  # inside a function
