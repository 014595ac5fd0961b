"""The package layout keeps its promises: no import cycles, the library never imports the command line,
and no module grows past about 400 lines without saying why at its top. Reads the source as text (ast)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "skinlesion"
MAX_LINES = 430         # "about 400"
LONG_NOTE = "Why this module is long:"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The skinlesion modules an import statement names (a `from X import name` names X.name if it is a module)."""
    if node.level:
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found or ([target] if target in MODULES else [])


def imports(name: str, *, top_level_only: bool) -> set[str]:
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            found.update(resolve(name, path.name == "__init__.py", node))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    return found - {name}


def test_no_import_cycles_at_module_level():
    graph = {name: imports(name, top_level_only=True) for name in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_library_never_imports_the_command_line():
    # `python -m skinlesion` (__main__) is the command line's other door, not library.
    library = [name for name in MODULES if not name.startswith("skinlesion.cli") and name != "skinlesion.__main__"]
    offenders = {name: sorted(m for m in imports(name, top_level_only=False) if m.startswith("skinlesion.cli"))
                 for name in library}
    assert not {k: v for k, v in offenders.items() if v}


def test_long_modules_say_why():
    for path in MODULES.values():
        n_lines = len(path.read_text().splitlines())
        if n_lines > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert LONG_NOTE in docstring, f"{path.relative_to(SRC)}: {n_lines} lines and no '{LONG_NOTE}'"
