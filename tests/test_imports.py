"""The layering holds: no import cycle among the project's modules (function-local imports
included, read with ``ast``), and the trainer package ``mm1model`` imports nothing of ``scaling``."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("mm1model", "scaling")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def imports_of(source: str, this: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The project modules the module ``this`` imports, anywhere in its ``source`` (module level or
    in a function). ``from pkg import name`` counts as importing ``pkg.name`` when that is a
    module, else ``pkg``."""
    package = this if is_package else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != this}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path.read_text(), name, path.name == "__init__.py", modules)
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_imports_inside_functions():
    modules = project_modules()
    source = "import os\ndef f():\n    from mm1model.sizes import get_size\n    from . import loss\n"
    assert imports_of(source, "mm1model.model", False, modules) == {"mm1model.sizes", "mm1model.loss"}
    assert len(import_graph()) > 40  # every module of both packages was read


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_mm1model_imports_nothing_of_scaling():
    offenders = {name: sorted(d for d in deps if d.split(".")[0] == "scaling")
                 for name, deps in import_graph().items() if name.split(".")[0] == "mm1model"}
    assert {name: deps for name, deps in offenders.items() if deps} == {}
