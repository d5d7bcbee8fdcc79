"""The package layout holds: no import cycle between modules, and no import pointing up.

Dependencies point down: `analysis -> circuits -> replacement`, `training -> replacement`.
Every `import` and `from ... import` in every module counts, also those inside functions (a lazy
import still ties the two modules together); only imports under `if TYPE_CHECKING:` are exempt
(they never run). The checker is tested on small synthetic packages written to tmp_path.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("replacement", "training", "circuits", "analysis")
TOP_MODULES = ("sparse_circuits_cli",)
# package -> the packages it must not import
FORBIDDEN = {
    "replacement": {"circuits", "analysis", "training"},
    "circuits": {"analysis", "training"},
    "training": {"circuits", "analysis"},
}


def module_files(root: Path, packages=PACKAGES, top=TOP_MODULES) -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages (a package is its __init__)."""
    modules = {name: root / f"{name}.py" for name in top if (root / f"{name}.py").is_file()}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module name an import statement names, outside `if TYPE_CHECKING:` blocks;
    `from m import x` names both `m` and `m.x` (the caller keeps the one that is a module)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            names.extend(f"{base}.{alias.name}|{base}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(root: Path, packages=PACKAGES, top=TOP_MODULES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere but under TYPE_CHECKING)."""
    files = module_files(root, packages, top)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for name in _imported_names(tree, module, path.name == "__init__.py"):
            submodule, _, parent = name.partition("|")
            candidates = [submodule, parent] if parent else [submodule]
            # `import a.b.c` or `from a.b import c`: the deepest project module named
            for candidate in candidates:
                while candidate and candidate not in files:
                    candidate = candidate.rpartition(".")[0]
                if candidate:
                    targets.add(candidate)
                    break
        targets.discard(module)
        graph[module] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(_cycle_path(graph, set(group)))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def _cycle_path(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """One cycle through the group's first module, as a readable path a -> b -> ... -> a."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return sorted(group)


def upward_imports(graph: dict[str, set[str]], forbidden=FORBIDDEN) -> list[str]:
    """'a.x -> b.y' for every import from a package into one it must not depend on."""
    found = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] in forbidden.get(package, ()):
                found.append(f"{module} -> {target}")
    return found


# ---- the project ------------------------------------------------------------------------------


def test_the_project_has_no_import_cycle():
    cycles = import_cycles(import_graph(ROOT))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_package_imports_upward():
    up = upward_imports(import_graph(ROOT))
    assert not up, "imports against the layout (analysis -> circuits -> replacement, " + (
        "training -> replacement):\n" + "\n".join(up)
    )


def test_the_walk_sees_the_projects_lazy_imports():
    """The graph object's methods import prune and the views inside functions: counted."""
    graph = import_graph(ROOT)
    assert "circuits.graph.prune" in graph["circuits.graph.attribution_graph"]
    assert "circuits.views.draw" in graph["circuits.graph.attribution_graph"]
    assert "circuits.attribution.attribute" in graph["analysis.compare"]  # a lazy import


# ---- the checker, on synthetic packages -------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import g\n",
            "pkg/b.py": "def g():\n    from pkg.a import f  # lazy, still a cycle\n",
            "pkg/c.py": "from . import a\n",
        },
    )
    graph = import_graph(tmp_path, packages=("pkg",), top=())
    assert graph["pkg.c"] == {"pkg.a"}  # relative `from . import a` resolves to the module
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_checker_finds_a_cycle_through_a_package_init(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.sub.x import X\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/x.py": "import pkg\nX = 1\n",
        },
    )
    cycles = import_cycles(import_graph(tmp_path, packages=("pkg",), top=()))
    assert cycles == [["pkg", "pkg.sub.x", "pkg"]]


def test_checker_exempts_only_type_checking_blocks(tmp_path):
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import g\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\nimport typing\n"
                "if TYPE_CHECKING:\n    from pkg.a import f\n"
                "if typing.TYPE_CHECKING:\n    import pkg.a\n"
                "else:\n    import json\n"
            ),
        },
    )
    assert import_cycles(import_graph(tmp_path, packages=("pkg",), top=())) == []
    # the same import in an ordinary `if` is a cycle
    (tmp_path / "pkg/b.py").write_text("import os\nif os.name:\n    from pkg.a import f\n")
    assert import_cycles(import_graph(tmp_path, packages=("pkg",), top=())) == [
        ["pkg.a", "pkg.b", "pkg.a"]
    ]


def test_checker_finds_an_upward_import(tmp_path):
    _write(
        tmp_path,
        {
            "replacement/__init__.py": "",
            "replacement/m.py": "def f():\n    from circuits.graph import G\n",
            "circuits/__init__.py": "",
            "circuits/graph.py": "from replacement.m import f\n",
        },
    )
    graph = import_graph(tmp_path, packages=("replacement", "circuits"), top=())
    assert upward_imports(graph) == ["replacement.m -> circuits.graph"]
    assert import_cycles(graph) == [["circuits.graph", "replacement.m", "circuits.graph"]]


# ---- public names and the subcommand table ----------------------------------------------------


def test_public_names_resolve_from_the_packages():
    """`from circuits import ...` and `from replacement import ...` keep working after moves:
    every name of a package's `__all__` loads from the module its table names."""
    import importlib

    for package in ("replacement", "circuits", "circuits.graph"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
    from circuits import AttributionGraph, attribute, prune, prune_graph, virtual_weights

    assert prune is prune_graph and callable(attribute) and callable(virtual_weights)
    assert AttributionGraph.__module__ == "circuits.graph.attribution_graph"


def test_the_subcommand_table_lists_every_command_module():
    """Every `*_cli.py` module is in `SUBCOMMANDS`, and the parser has exactly those commands."""
    import sparse_circuits_cli

    table = sparse_circuits_cli.SUBCOMMANDS
    on_disk = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for package in PACKAGES
        for p in (ROOT / package).rglob("*_cli.py")
    }
    assert on_disk <= set(table.values()), f"not in SUBCOMMANDS: {on_disk - set(table.values())}"
    parser = sparse_circuits_cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert list(commands) == list(table)
