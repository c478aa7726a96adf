"""The package's import graph has no cycle, counting imports inside functions too (a lazy import that closes a
cycle still ties two modules together), and the leaf modules import nothing of ours."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "iti"
LEAVES = ("constants", "errors", "identity", "metrics")


def imports_of(path: Path) -> set[str]:
    """The iti modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "iti":
            found.add(node.module.split(".")[1] if "." in node.module else node.names[0].name)
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("iti."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}


def test_no_import_cycle():
    edges = graph()
    state: dict[str, str] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_leaves_import_nothing_of_ours():
    edges = graph()
    assert {leaf: edges[leaf] for leaf in LEAVES} == {leaf: set() for leaf in LEAVES}


def test_the_walk_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from iti.data import x\n    import iti.models\n")
    assert imports_of(module) == {"data", "models"}
