"""The core's import structure: ``harness`` imports no built-in plugin and has no cycle.

Imports are read with ``ast`` from every module under ``harness/``, function-local and
``TYPE_CHECKING`` imports included: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[1] / "harness"


def _module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every module named by an import statement anywhere in ``path``.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is one of
    ``modules``, else of ``pkg``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else "harness"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package, base]) if base else package
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in HARNESS.rglob("*.py")}
    return {
        name: {m for m in _imports(path, set(modules)) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_walk_sees_function_local_imports():
    edges = _graph()
    assert "harness.registry" in edges["harness.factories"]
    assert "harness.errors" in edges["harness.cli"]
    assert "harness.grid" in edges["harness.cli"]  # imported inside a command


def test_core_imports_no_builtin_plugin():
    offenders = sorted(
        f"{_module_name(path)} imports {name}"
        for path in HARNESS.rglob("*.py")
        for name in _imports(path)
        if name == "plugins" or name.startswith("plugins.")
    )
    assert offenders == []


def test_core_has_no_import_cycle():
    edges = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert [" -> ".join(c) for c in cycles] == []
