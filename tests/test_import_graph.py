"""The package's import graph has no circle: every layer depends on the ones below it, never back.

Every module of ``medmtl`` is parsed (not imported) and every ``import`` / ``from ... import`` of a
medmtl module counts, also the ones inside functions (a lazy import hides a circle, it does not cut
it). Importing ``a.b.c`` runs ``a/b/__init__.py`` too, so a module also depends on the packages
above what it imports (except its own). Imports under ``if TYPE_CHECKING:`` are never executed and
do not count.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import medmtl

PACKAGE_DIR = Path(medmtl.__file__).parent


def _module_names() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ["medmtl", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        ):
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Dotted names a statement imports (``from x import y`` gives ``x.y`` and ``x``: y may be either)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """``{module: medmtl modules it imports}``, with the packages each import runs."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_only(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in skipped:
                continue
            for name in _imported(module, path, node):
                while name and name not in modules:  # ``medmtl.x.func`` -> the module ``medmtl.x``
                    name = name.rpartition(".")[0]
                if not name or name == module:
                    continue
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):  # the packages an import runs on the way
                    step = ".".join(parts[:depth])
                    if step in modules and step != module and not module.startswith(step + "."):
                        deps.add(step)
        graph[module] = deps
    return graph


def test_the_graph_sees_imports_inside_functions_and_packages() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "medmtl.data.task_keys" in graph
    assert "medmtl.data.datalist" in graph["medmtl.data.spec"]  # spec builds its cases with datalist
    assert "medmtl.experiments.summary" in graph["medmtl.cli"]  # imported inside a function
    assert "medmtl.tracking" in graph["medmtl.experiments.summary"]  # a package counts when imported
    assert graph["medmtl.data.task_keys"] == set()  # the key contract depends on nothing


def test_import_graph_has_no_cycle() -> None:
    try:
        order = list(TopologicalSorter(import_graph()).static_order())
    except CycleError as error:
        raise AssertionError(f"import circle in medmtl: {' -> '.join(error.args[1])}") from None
    assert order.index("medmtl.data.task_keys") < order.index("medmtl.engines.prepare_batch")
