"""registry/: the one "did you mean" and the lazy name table behind methods, task families and metrics."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from registry import Registry, closest, did_you_mean

ROOT = Path(__file__).resolve().parents[1]


def test_a_near_name_is_suggested_a_far_one_is_not():
    assert closest("lroa", ["lora", "ia3", "full"]) == "lora"
    assert did_you_mean("lroa", ["lora", "ia3"]) == " (did you mean 'lora'?)"
    assert closest("xyzzy", ["lora", "ia3", "full"]) is None
    assert did_you_mean("xyzzy", ["lora", "ia3"]) == ""
    # the template carries each message's own wording
    assert did_you_mean("stepz", ["steps"], " (did you mean perf.{}?)") == " (did you mean perf.steps?)"
    assert did_you_mean("tabel", ["table", "plot"], " Did you mean {!r}?") == " Did you mean 'table'?"


def test_registry_imports_an_entry_only_when_it_is_looked_up(tmp_path, monkeypatch):
    (tmp_path / "_reg_probe.py").write_text("THING = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("probe", {"thing": "_reg_probe:THING"})
    assert reg.names() == ["thing"] and "thing" in reg
    assert "_reg_probe" not in sys.modules  # listing imported nothing
    assert reg.get("thing") is sys.modules["_reg_probe"].THING


def test_registry_unknown_name_says_the_nearest_and_the_known_ones():
    reg = Registry("family", {"glue": 1, "squad": 2}, error=ValueError)
    with pytest.raises(ValueError, match=r"^Unknown family 'gleu'\. Did you mean 'glue'\? Known: glue, squad\.$"):
        reg.get("gleu")
    with pytest.raises(ValueError, match=r"^Unknown family 'zzz'\. Known: glue, squad\.$"):
        reg.get("zzz")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("glue", 3)
    reg.add("_private", 4)
    assert reg.names() == ["glue", "squad"] and reg.get("_private") == 4


def test_registry_discovers_once_and_names_a_missing_module():
    calls = []
    reg = Registry("thing", discover=lambda: calls.append(1) or reg.add("a", "no_such_module_anywhere:X"),
                   error=RuntimeError)
    assert "a" in reg and reg.names() == ["a"] and calls == [1]
    with pytest.raises(RuntimeError, match="thing 'a' is not available in this version"):
        reg.get("a")


def test_methods_task_families_and_metrics_are_registries():
    from bench.errors import BenchError
    from bench.tasks import metrics
    from bench.tasks.families import FAMILIES, get_family
    from methods.registry import METHODS, UnknownMethodError, get_method

    assert all(isinstance(r, Registry) for r in (METHODS, FAMILIES, metrics.METRICS))
    with pytest.raises(BenchError, match=r"Unknown task family 'gleu'\. Did you mean 'glue'\? Known: glue, "):
        get_family("gleu")
    with pytest.raises(UnknownMethodError, match=r"Unknown method 'lroa'\. Did you mean 'lora'\? Valid methods: "):
        get_method("lroa")
    with pytest.raises(KeyError, match=r"unknown metric\(s\) \['acc'\]; known: \['accuracy', 'f1', "):
        metrics.compute(["acc"], [1], [1])


def test_no_other_did_you_mean_code():
    """difflib is called in registry/ only: every suggestion goes through did_you_mean."""
    offenders = []
    for folder in ("bench", "methods", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                    if "difflib" in names:
                        offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
