"""The layers of DESIGN.md, enforced: imports point downward only, and no module imports itself
back through others (issue 13). A small `ast` reader, so that CI needs no extra package.

Every import counts, also one inside a function (it runs when the function does); imports
under `if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Top to bottom. A module may import from its own layer and the layers below it. The name is the
# first part after the package (fundus_cli.commands.audit -> "commands"); every module of the
# package must be placed, so that a new one is a decision and not an accident.
LAYERS: list[set[str]] = [
    {"__main__", "cli"},
    {"api"},
    {"commands"},
    {"training", "metrics", "privacy"},
    {"data", "models"},
    {"__init__", "errors", "fsio", "progress", "images", "plots", "device", "schemas", "testing", "training_length"},
]

# Cycles allowed for now, each named with its fix; none are left, and a new one fails the test.
KNOWN_CYCLES: list[set[str]] = []


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, tuple[str, ...], int]]:
    """(module, names imported from it, line) of every import that runs; TYPE_CHECKING blocks left out."""
    found: list[tuple[str, tuple[str, ...], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, (), node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((base, tuple(a.name for a in node.names), node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package_dir: Path) -> dict[str, dict[str, int]]:
    """module -> {module of the same package it imports: line of the first such import}.

    `from pkg.x import y` is an edge to pkg.x.y when that is a module, else to pkg.x (y is a
    name defined there). Parent packages that an import runs on the way are not counted."""
    files = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for base, names, line in _imports(tree, name, path.name == "__init__.py"):
            targets = [f"{base}.{n}" if f"{base}.{n}" in files else base for n in names] or [base]
            for target in targets:
                if target in files and target != name:
                    edges.setdefault(target, line)
        graph[name] = edges
    return graph


def _layer(module: str, layers: list[set[str]]) -> int | None:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return next((i for i, names in enumerate(layers) if key in names), None)


def upward_imports(graph: dict[str, dict[str, int]], layers: list[set[str]]) -> list[str]:
    problems = []
    for module, edges in sorted(graph.items()):
        mine = _layer(module, layers)
        if mine is None:
            problems.append(f"{module}: in no layer; add it to LAYERS in tests/test_import_contract.py")
            continue
        for target, line in sorted(edges.items()):
            theirs = _layer(target, layers)
            if theirs is not None and theirs < mine:
                problems.append(f"{module} (line {line}) imports {target}, a layer above it")
    return problems


def cycles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def check(package_dir: Path, layers: list[set[str]], known_cycles: list[set[str]]) -> list[str]:
    """Every breach of the contract, one line each (empty: the package keeps it)."""
    graph = import_graph(package_dir)
    problems = upward_imports(graph, layers)
    for c in cycles(graph):
        if not any(c <= known for known in known_cycles):
            problems.append("import cycle: " + " -> ".join(sorted(c)))
    return problems


def test_fundus_cli_keeps_its_layers_and_has_no_cycles() -> None:
    problems = check(ROOT / "fundus_cli", LAYERS, KNOWN_CYCLES)
    assert not problems, "\n".join(problems)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"__init__.py": "", **files}.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


TOY_LAYERS = [{"cli"}, {"commands"}, {"data"}, {"__init__", "errors"}]


def test_the_check_finds_a_planted_upward_import(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"cli.py": "import pkg.commands.run\n", "commands/__init__.py": "",
                              "commands/run.py": "from pkg.data import read\n", "data/__init__.py": "",
                              "data/read.py": "from pkg import errors\n", "errors.py": ""})
    assert check(pkg, TOY_LAYERS, []) == []
    # A function-level import counts (it runs when the function does); TYPE_CHECKING does not.
    (pkg / "data" / "read.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from pkg.commands import run\n"
                                          "def f():\n    from pkg.commands.run import x\n")
    assert check(pkg, TOY_LAYERS, []) == ["pkg.data.read (line 5) imports pkg.commands.run, a layer above it",
                                          "import cycle: pkg.commands.run -> pkg.data.read"]


def test_the_check_finds_a_planted_cycle_and_an_unplaced_module(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {"data/__init__.py": "", "data/a.py": "from . import b\n",
                              "data/b.py": "from pkg.data.a import thing\n", "extra.py": ""})
    problems = check(pkg, TOY_LAYERS, [])
    assert "import cycle: pkg.data.a -> pkg.data.b" in problems
    assert any(p.startswith("pkg.extra: in no layer") for p in problems)
    assert "import cycle: pkg.data.a -> pkg.data.b" not in check(pkg, TOY_LAYERS, [{"pkg.data.a", "pkg.data.b"}])
