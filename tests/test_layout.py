"""The codebase stays walkable: short modules, short functions, no import cycle between
packages. Measured on the source with ``ast`` and networkx, the same checks a reviewer runs by
hand (``python tests/test_layout.py`` prints the figures)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> installed package (pyproject's package-dir).
PACKAGES = {
    "manas_infer": "manas_infer",
    "export": "manas_infer.export",
    "dicom_node": "manas_infer.dicom_node",
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# A function may run longer when its docstring says why, on a line that starts "Long:".
LONG_REASON = "Long:"


def modules() -> dict[str, Path]:
    """Every library module by its dotted name."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [
                p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"
            ]
            found[".".join([package, *parts])] = path
    return found


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body after its docstring: a typer command's option declarations
    are its signature, a table, and are not counted."""
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
    ):
        body = body[1:] or body
    return node.end_lineno - body[0].lineno + 1


def long_functions() -> list[tuple[int, str]]:
    """(body lines, module.function) of every function over the limit without a stated reason."""
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = body_lines(node)
            doc = ast.get_docstring(node) or ""
            if lines > MAX_FUNCTION_LINES and LONG_REASON not in doc:
                found.append((lines, f"{name}.{node.name}"))
    return sorted(found, reverse=True)


def long_modules() -> list[tuple[int, str]]:
    """(lines, module) of every module over the limit; a table module says so in its first
    docstring line with "Table:"."""
    found = []
    for name, path in modules().items():
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES and not doc.startswith("Table:"):
            found.append((lines, name))
    return sorted(found, reverse=True)


def package_of(module: str) -> str:
    """``manas_infer.train.run`` -> ``manas_infer.train``; a top-level module such as
    ``manas_infer.hu`` is a node of its own."""
    return ".".join(module.split(".")[:2])


def import_graph() -> nx.DiGraph:
    """Package -> package edges for every absolute import inside the project, lazy ones too."""
    known = modules()
    graph = nx.DiGraph()
    for name, path in known.items():
        source = package_of(name)
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] != "manas_infer":
                    continue
                destination = package_of(target)
                if destination != source:
                    graph.add_edge(source, destination)
    return graph


def test_no_library_module_is_over_400_lines() -> None:
    assert long_modules() == []


def test_no_function_is_over_60_lines_without_a_reason() -> None:
    assert long_functions() == []


def test_no_import_cycle_between_packages() -> None:
    assert list(nx.simple_cycles(import_graph())) == []


def test_the_checks_see_the_whole_project() -> None:
    """The measures above would pass on nothing: they must find the packages they guard."""
    graph = import_graph()
    assert {"manas_infer.train", "manas_infer.data", "manas_infer.runtime"} <= set(graph)
    assert len(modules()) > 60


if __name__ == "__main__":
    for lines, name in long_modules():
        print(f"module   {lines:4d}  {name}")
    for lines, name in long_functions():
        print(f"function {lines:4d}  {name}")
    cycles = list(nx.simple_cycles(import_graph()))
    print("package cycles:", cycles or "none")
    sys.exit(1 if cycles else 0)
