"""The public surface is explicit, sorted, complete for the docs, and documented."""

import inspect
import pkgutil
import re
from pathlib import Path

import kerastl

ROOT = Path(__file__).resolve().parents[1]
SUBMODULES = {m.name for m in pkgutil.iter_modules(kerastl.__path__)}


def test_all_names_exist_and_are_sorted():
    assert all(hasattr(kerastl, name) for name in kerastl.__all__)
    assert kerastl.__all__ == sorted(kerastl.__all__)
    assert len(set(kerastl.__all__)) == len(kerastl.__all__)


def test_every_name_the_docs_use_is_exported():
    """README, docs and notebooks call `kerastl.X` only for X in __all__ (or a submodule)."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "notebooks").glob("*.ipynb")), ROOT / "scripts" / "make_notebooks.py"]
    used = set()
    for path in texts:
        used |= set(re.findall(r"\bkerastl\.([A-Za-z_]\w*)\b(?!\.)", path.read_text()))
    missing = sorted(used - set(kerastl.__all__) - SUBMODULES - {"__version__"})
    assert not missing, f"documented but not exported: {missing}"


def test_every_exported_name_is_documented_with_an_example():
    for name in kerastl.__all__:
        if name == "__version__":
            continue
        obj = getattr(kerastl, name)
        doc = inspect.getdoc(obj) or ""
        assert doc, f"{name} has no docstring"
        if inspect.isfunction(obj):
            assert "Example:" in doc, f"{name} has no example"
