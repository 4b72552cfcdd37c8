"""The package's layering (docs/development.md, "Layout"), read from its imports: a module
imports only from its own layer or below, the report only from layers 1-2 (it reads run
directories, never the training code), and no modules import each other in a circle.

Every `import` and `from ... import` of the package's own modules counts, at module level
or inside a function (a deferred import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import wcnorm

PACKAGE = Path(wcnorm.__file__).resolve().parent

# The layers of docs/development.md, lowest first: a dotted prefix names a module or a
# whole subpackage.
LAYERS = [
    ["wcnorm.modules", "wcnorm.errors"],
    ["wcnorm.data", "wcnorm.loaders", "wcnorm.provenance", "wcnorm.outputs", "wcnorm.rundirs", "wcnorm.presets",
     "wcnorm.models", "wcnorm.fields"],
    ["wcnorm.methods", "wcnorm.tasks"],
    ["wcnorm.training"],
    ["wcnorm.report"],
    ["wcnorm.bench", "wcnorm.cli", "wcnorm.__main__", "wcnorm"],
]

REPORT = "wcnorm.report"  # sits on layer 5 but imports only from layers 1 and 2



def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """The package's modules that `name` imports; `from pkg import sub` counts as pkg.sub."""
    found = set()
    base = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "wcnorm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "wcnorm":
                continue
            if target == "wcnorm" and [a.name for a in node.names] == ["__version__"]:
                continue  # the version, from the root package Python loads before any module
            subs = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            found |= subs or {target}
    return found - {name}


GRAPH = {name: imports_of(name) for name in MODULES}


def within(name: str, prefix: str) -> bool:
    """`name` is the module `prefix` or inside the subpackage `prefix` (the root package
    names itself only: a module outside every listed one belongs to no layer)."""
    return name == prefix or (prefix != "wcnorm" and name.startswith(prefix + "."))


def layer_of(name: str) -> int:
    """The layer of the longest prefix that names `name`."""
    best = max(((len(p), i) for i, layer in enumerate(LAYERS) for p in layer
                if within(name, p)), default=None)
    assert best is not None, f"{name} is in no layer of docs/development.md: add it there and to LAYERS"
    return best[1]


def test_every_module_has_a_layer():
    assert len(MODULES) > 50  # the walk found the package
    for name in MODULES:
        layer_of(name)


def forbidden(name: str, target: str) -> bool:
    if within(name, REPORT) and not within(target, REPORT):
        return layer_of(target) > 1
    return layer_of(target) > layer_of(name)


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = [f"{name} (layer {layer_of(name) + 1}) may not import {target} (layer {layer_of(target) + 1})"
             for name, targets in GRAPH.items() for target in targets if forbidden(name, target)]
    assert not wrong, "\n".join(wrong)


def test_the_layers_of_the_docs_are_the_ones_checked():
    docs = (PACKAGE.parent / "docs" / "development.md").read_text()
    for number, layer in enumerate(LAYERS, start=1):
        row = next(line for line in docs.splitlines() if line.startswith(f"| {number} "))
        for prefix in layer:
            path = prefix.replace(".", "/")
            path += ".py" if prefix in MODULES and not is_package(prefix) else "/"
            shown = "`wcnorm/__init__.py`" if prefix == "wcnorm" else f"`{path}`"
            assert shown in row, f"layer {number} of docs/development.md does not list {shown}"


def test_no_import_circles():
    """Depth-first search for a back edge (a package's `__init__` importing its own
    modules is an edge like any other: a circle only if one of them imports it back)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if target in GRAPH and not state.get(target):
                visit(target)
        state[name] = 2
        path.pop()

    for name in sorted(GRAPH):
        if not state.get(name):
            visit(name)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: an upward import is found where one is written."""
    assert "wcnorm.training.trainer" in GRAPH["wcnorm.training.callbacks"]
    assert {"wcnorm.methods.enorm.ops", "wcnorm.methods.enorm.unionfind"} <= GRAPH["wcnorm.methods.enorm.channels"]
    fake = tmp_path / "outputs.py"
    fake.write_text("def f():\n    from .training.trainer import Trainer\n")
    monkeypatch.setitem(MODULES, "wcnorm.outputs", fake)
    assert imports_of("wcnorm.outputs") == {"wcnorm.training.trainer"}
    assert forbidden("wcnorm.outputs", "wcnorm.training.trainer")
    assert forbidden("wcnorm.report.table", "wcnorm.methods.wc")  # below the report, still not allowed
    assert not forbidden("wcnorm.report.table", "wcnorm.outputs")
    assert not forbidden("wcnorm.training.trainer", "wcnorm.outputs")
