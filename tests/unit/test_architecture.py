"""The code's shape (issue "One shape for the code"), checked from the source by
scripts/import-graph: no import cycles, no private names imported across modules, the pytest
plugin not used as a library, no source file over 500 lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import-graph"


def _load() -> ModuleType:
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader("import_graph", str(SCRIPT))
    spec = importlib.util.spec_from_loader("import_graph", loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_graph"] = mod
    loader.exec_module(mod)
    return mod


GRAPH = _load()


def test_no_import_cycles() -> None:
    assert GRAPH.analyse()["cycles"] == []


def test_no_private_names_imported_across_modules() -> None:
    assert GRAPH.analyse()["private_imports"] == []


def test_the_pytest_plugin_is_not_a_library() -> None:
    assert GRAPH.analyse()["plugin_imported_by"] == []


def test_no_source_file_over_the_limit() -> None:
    assert GRAPH.analyse()["over_max_lines"] == {}


def test_the_checker_finds_a_cycle() -> None:
    # The rule must be able to fail: a two-module cycle is found.
    assert GRAPH.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
