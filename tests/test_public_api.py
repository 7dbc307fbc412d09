"""The public surface is explicit: every exported name exists and the list is sorted."""

import kerastl


def test_all_names_exist_and_are_sorted():
    assert all(hasattr(kerastl, name) for name in kerastl.__all__)
    assert kerastl.__all__ == sorted(kerastl.__all__)


def test_public_functions_have_docstrings_with_examples():
    for name in ("build_model", "set_regime", "list_backbones", "load_model", "export"):
        assert "Example:" in getattr(kerastl, name).__doc__, name
