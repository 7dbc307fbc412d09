"""The package's shape: layers in data-flow order, no import cycles counting every
import, no private names across modules, each choice list written once, one
atomic-write helper, modules small enough to read.

Every ``from .x import y`` is resolved to the module it names, wherever it stands: at
module level, inside a function, or under ``TYPE_CHECKING``. A module may import its
own subpackage and the subpackages before it in :data:`LAYERS`, never one after it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kerastl"
# The data flow, bottom up: each subpackage may import only itself and those before it.
LAYERS = ("core", "config", "data", "models", "training", "outputs", "recipes", "deploy",
          "commands")
# Optional or heavy third-party modules that may be imported inside a function, so that
# `import kerastl` stays quick and works without them. Nothing else is imported lazily.
# core/ and config/ import no TensorFlow, Keras or NumPy at module level either.
LAZY_THIRD_PARTY = {"onnx", "onnxruntime", "tf2onnx", "ai_edge_litert", "matplotlib",
                    "sklearn", "scipy", "PIL", "pandas", "h5py", "threadpoolctl", "yaml",
                    "tensorflow", "keras", "numpy"}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _package(name: str) -> list[str]:
    parts = name.split(".")
    return parts if MODULES[name].name == "__init__.py" else parts[:-1]


def _imports(name: str):
    """(target module, node, is top-level) for every kerastl import of module ``name``."""
    tree = TREES[name]
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package(name)[:len(_package(name)) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("kerastl"):
                continue
            for alias in node.names:  # `from . import x` may name a module
                candidate = f"{module}.{alias.name}"
                yield (candidate if candidate in MODULES else module), node, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("kerastl"):
                    yield alias.name, node, id(node) in top


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


GRAPH = {name: {target for target, _, _ in _imports(name) if target in MODULES
                and target != name} for name in MODULES}


def test_the_package_has_its_layers():
    missing = [layer for layer in LAYERS if f"kerastl.{layer}" not in MODULES]
    assert not missing, f"subpackages missing: {missing}"


def test_no_import_cycle_counting_every_import():
    """Function-level and TYPE_CHECKING imports included (a package imports its
    subpackages' modules, never the other way round)."""
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import cycle: {' -> '.join([*path, name])}"
        state[name] = 1
        for child in sorted(GRAPH[name]):
            if child.startswith(name + ".") or child == "kerastl":
                continue  # a package reaching into its own modules is not a cycle
            visit(child, [*path, name])
        state[name] = 2

    for name in sorted(MODULES):
        visit(name, [])


def test_each_layer_imports_only_itself_and_the_layers_before_it():
    upward = []
    for name in MODULES:
        own = _layer(name)
        if own is None:
            continue
        for target in GRAPH[name]:
            theirs = _layer(target)
            if target == "kerastl" or (theirs is not None and theirs > own):
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_kerastl_modules_are_imported_at_module_level():
    """A lazy import of a kerastl module hides a dependency (and was how cycles hid)."""
    lazy = [f"{name}:{node.lineno} imports {target}" for name in MODULES
            for target, node, top in _imports(name)
            if not top and not _under_type_checking(name, node)]
    assert not lazy, lazy


def _under_type_checking(name: str, node: ast.AST) -> bool:
    for parent in TREES[name].body:
        if isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test):
            if any(child is node for child in ast.walk(parent)):
                return True
    return False


def test_lazy_third_party_imports_are_the_listed_optional_ones():
    found = []
    for name, tree in TREES.items():
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top \
                    and not (isinstance(node, ast.ImportFrom) and node.level):
                modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""])
                for module in modules:
                    root = module.split(".")[0]
                    if root not in LAZY_THIRD_PARTY and root != "kerastl" \
                            and not _under_type_checking(name, node) \
                            and root not in _STDLIB:
                        found.append(f"{name}:{node.lineno} imports {module}")
    assert not found, found


_STDLIB = sys.stdlib_module_names


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short_enough_to_read(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by idea (<= {MAX_LINES})"


def test_no_module_imports_a_private_name_from_another():
    found = [f"{name}: from {node.module} import {alias.name}"
             for name in MODULES for _, node, _ in _imports(name)
             if isinstance(node, ast.ImportFrom)
             for alias in node.names
             if alias.name.startswith("_") and alias.name not in ("__version__",)
             and node.module != "core" and alias.name != "_backend"]
    assert not found, found


def test_every_choice_list_is_written_once_in_config():
    """A module-level tuple of strings names a closed set of choices; each is written
    once, in kerastl.config.choices, and the CLI takes its choices from there."""
    constants: dict[tuple[str, ...], list[str]] = {}
    for name, tree in TREES.items():
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
    for name, tree in TREES.items():
        if not name.startswith("kerastl.commands"):
            continue
        literal = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.keyword)
                   and node.arg == "choices" and isinstance(node.value, (ast.Tuple, ast.List))]
        assert not literal, f"literal choices in {name} at lines {literal}"


def test_files_are_renamed_into_place_by_one_helper():
    users = [name for name, path in MODULES.items()
             if "os.replace(" in path.read_text() and name != "kerastl.core.files"]
    assert not users, f"write through kerastl.core.files instead: {users}"
