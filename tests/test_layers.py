"""The package's layers import only downward, lazy imports included, and no import runs in a
circle: errors, atomic, flags < models, data < weights < train < export, experiments < cli.

Every `import` and `from ... import` in src/resnetlab is read (inside functions too), and the
package is also imported layer by layer in a fresh interpreter, checking after each layer that
nothing above it was loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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
# Constants of the package root, defined before it imports anything: any layer may read them.
ROOT_CONSTANTS = {"__version__", "Error", "CUBLAS_WORKSPACE"}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "resnetlab":
        return None
    return TOP if len(parts) == 1 else LAYERS.get(parts[1], TOP)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its text; `from pkg import name`
    points at pkg.name where that is a module, else at pkg."""
    graph: dict[str, set[str]] = {}
    for importer, text in sources.items():
        found = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = {alias.name for alias in node.names}
                if node.module == "resnetlab" and names <= ROOT_CONSTANTS:
                    continue
                for name in names:
                    sub = f"{node.module}.{name}"
                    found.add(sub if sub in sources else node.module)
        graph[importer] = {name for name in found if layer(name) is not None and name != importer}
    return graph


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets if (layer(b) or 0) > (layer(a) or 0)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_layer_imports_a_higher_one():
    assert upward_imports(import_graph(package_sources())) == set()


def test_no_import_runs_in_a_circle():
    assert cycles(import_graph(package_sources())) == []


def test_the_checks_see_lazy_imports_and_circles():
    assert layer("resnetlab.data.pack") == 1 and layer("resnetlab.train.engine") == 3
    assert layer("resnetlab") == TOP and layer("numpy") is None
    fake = {
        "resnetlab.models.registry": "def create():\n    from resnetlab.weights import load\n",
        "resnetlab.weights": "from resnetlab.weights.load import load\n",
        "resnetlab.weights.load": "import numpy\nfrom resnetlab.models import registry\n",
        "resnetlab.models": "",
    }
    graph = import_graph(fake)
    # the import inside a function counts, and names the submodule it reaches
    assert upward_imports(graph) == {("resnetlab.models.registry", "resnetlab.weights.load")}
    assert cycles(graph) == [["resnetlab.models.registry", "resnetlab.weights.load"]]


_IMPORT_BY_LAYER = """
import importlib, json, sys
modules, layers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def layer(name):
    parts = name.split(".")
    return 5 if len(parts) == 1 else layers.get(parts[1], 5)
above = {}
for level in range(6):
    for name in modules:
        if layer(name) == level:
            importlib.import_module(name)
    loaded = [m for m in sys.modules if m.startswith("resnetlab.") and layer(m) > level]
    above[level] = sorted(loaded)
print(json.dumps(above))
"""


def test_importing_the_layers_bottom_up_loads_nothing_above_them():
    modules = [m for m in package_sources() if m != "resnetlab" and not m.endswith("__main__")]
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_BY_LAYER, json.dumps(modules), json.dumps(LAYERS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    above = json.loads(out)
    assert {int(k): v for k, v in above.items() if v} == {}
