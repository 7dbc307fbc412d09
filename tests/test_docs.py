"""Generated docs stay in sync with the code that generates them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_and_configuration_references_are_up_to_date():
    docs = _make_docs()
    assert (ROOT / "docs" / "cli.md").read_text() == docs.cli_reference()
    assert (ROOT / "docs" / "configuration.md").read_text() == docs.config_reference()


def test_readme_backbone_table_is_generated_from_the_registry():
    docs = _make_docs()
    readme = (ROOT / "README.md").read_text()
    assert readme == docs.readme_with_backbones(readme)
    import kerastl

    assert all(f"| {name} |" in readme for name in kerastl.list_backbones())


def test_readme_measurements_are_generated_from_the_results_files():
    # The README quotes benchmarks/results/*.json through make_docs, never by hand.
    docs = _make_docs()
    readme = (ROOT / "README.md").read_text()
    assert docs.MEASURED_START in readme
    assert readme == docs.readme_with_measurements(readme)


@pytest.mark.parametrize(("value", "shown"), [(5.98, "5.98"), (0.99999, "0.9999"),
                                              (3.4602495, "3.460"), (1.2, "1.2"),
                                              (0.000123456, "0.0001234"), (False, "no")])
def test_readme_figures_are_cut_never_rounded_up(value, shown):
    assert _make_docs().figure(value) == shown


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # the example writes runs/readme in the working directory
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "readme" / "model.keras").is_file()
    assert "Unfreeze plan" in capsys.readouterr().out
