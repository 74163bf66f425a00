"""The package's shape: imports flow one way (no cycle, counting imports inside functions), and each
module and class stays small enough to hold one job."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "riffstream"
#: About as much as one reader holds in mind; a room that grows past it is doing two jobs.
MODULE_LINES, CLASS_LINES = 600, 300


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The riffstream modules ``path`` imports anywhere (functions included; ``if TYPE_CHECKING:`` blocks not,
    as they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    # A package's own __init__ is imported with any of its modules; count the module itself.
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := walk(target)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def _is_package_reexport(graph: dict[str, set[str]], source: str, target: str) -> bool:
    """A package's ``__init__`` importing its own submodules (to re-export them) is not a dependency upward."""
    return target.startswith(source + ".")


def test_no_module_imports_one_that_imports_it_back():
    graph = _graph()
    # A submodule importing a name from its own package means the package's __init__, which re-exports
    # the submodules: that is the same room, not a cycle between rooms.
    graph = {source: {target for target in targets
                      if not _is_package_reexport(graph, source, target) and not source.startswith(target + ".")}
             for source, targets in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("import riffstream.b\n")
    second.write_text("def late():\n    from riffstream.a import x\n")
    graph = {"riffstream.a": _imports(first, {"riffstream.b"}), "riffstream.b": _imports(second, {"riffstream.a"})}
    assert _cycle(graph) == ["riffstream.a", "riffstream.b", "riffstream.a"]


def test_no_module_or_class_outgrows_one_job():
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MODULE_LINES:
            too_big.append(f"{path.relative_to(PACKAGE.parent)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES:
                too_big.append(f"{path.relative_to(PACKAGE.parent)}: class {node.name}, "
                               f"{node.end_lineno - node.lineno + 1} lines")
    assert not too_big, "; ".join(too_big)
