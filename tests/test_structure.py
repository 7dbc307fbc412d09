"""The package's shape: no import cycles, no private names across modules, each choice
list written once, one atomic-write helper."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kerastl"
MODULES = {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}


def _trees():
    return {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _relative_imports(tree, *, top_level_only: bool):
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            yield node


def test_module_level_imports_form_no_cycle():
    graph = {name: {node.module for node in _relative_imports(tree, top_level_only=True)
                    if node.module} for name, tree in _trees().items()}

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join([*path, name])}"
        for child in graph.get(name, ()):
            visit(child, [*path, name])

    for name in graph:
        visit(name, [])


def test_no_module_imports_a_private_name_from_another():
    found = [f"{name}: from .{node.module} import {alias.name}"
             for name, tree in _trees().items()
             for node in _relative_imports(tree, top_level_only=False)
             for alias in node.names
             if alias.name.startswith("_") and node.module not in (None, "_backend")]
    assert not found, found


def test_every_choice_list_is_written_once():
    """A module-level tuple of strings names a closed set of choices; no two are equal,
    and the CLI takes its choices from them (no literal choices= in cli.py)."""
    constants = {}
    for name, tree in _trees().items():
        for node in tree.body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple)
                    and len(node.value.elts) >= 2
                    and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                            for e in node.value.elts)):
                values = tuple(e.value for e in node.value.elts)
                for target in node.targets:
                    constants.setdefault(values, []).append(f"{name}.{target.id}")
    duplicated = {values: where for values, where in constants.items() if len(where) > 1}
    assert not duplicated, duplicated
    cli = ast.parse(MODULES["cli"].read_text())
    literal = [node.lineno for node in ast.walk(cli) if isinstance(node, ast.keyword)
               and node.arg == "choices" and isinstance(node.value, (ast.Tuple, ast.List))]
    assert not literal, f"literal choices in cli.py at lines {literal}"


def test_files_are_renamed_into_place_by_one_helper():
    users = [name for name, path in MODULES.items()
             if "os.replace(" in path.read_text() and name != "outputs"]
    assert not users, f"write through kerastl.outputs instead: {users}"
