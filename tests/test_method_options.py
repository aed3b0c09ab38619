"""Method options defined once (methods/options.py): a typed config per method, its defaults only in the YAML preset,
and the one "train the head" rule (methods.base.trains_head / head_to_save)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_bert_config

import methods.options as O
from methods import MethodConfigError, MethodContext, available, get_method
from methods.base import head_to_save, is_head, task_trains_head, trains_head

ROOT = Path(__file__).resolve().parents[1]
PYTHON_METHODS = [m for m in available() if get_method(m).options_class is not None]


def test_every_python_method_has_typed_options():
    assert {"full", "lora", "ia3", "lora_dash", "propulsion", "id3", "bitfit", "pafi", "random_mask",
            "adapter_series", "adapter_parallel"} <= set(PYTHON_METHODS)
    # the rest are the peft presets: their typed config is the peft config class itself
    assert all(type(get_method(m)).__name__ == "PeftMethod" for m in available() if m not in PYTHON_METHODS)


@pytest.mark.parametrize("name", PYTHON_METHODS)
def test_the_yaml_holds_every_option_and_python_none(name):
    """The option names are exactly the preset's keys, and no option has a default in Python."""
    options = get_method(name).options_class
    keys = set(yaml.safe_load((ROOT / "conf" / "method" / f"{name}.yaml").read_text())) - set(O.SUITE_KEYS)
    assert set(options.keys()) == keys, f"conf/method/{name}.yaml and {options.__name__} name other options"
    with_default = [f.name for f in dataclasses.fields(options) if f.name in options.keys()
                    and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
    assert not with_default, f"{options.__name__}: defaults belong in conf/method/{name}.yaml, not {with_default}"


@pytest.mark.parametrize("name", PYTHON_METHODS)
def test_a_method_alone_gets_the_yaml_defaults(name):
    """methods/ without the harness: an empty config is the preset, the same options a composed run gets."""
    preset = yaml.safe_load((ROOT / "conf" / "method" / f"{name}.yaml").read_text())
    method = get_method(name)
    assert method.options({}) == method.options(preset) == method.options({"name": name})


@pytest.mark.parametrize("name", PYTHON_METHODS)
def test_an_unknown_option_is_refused_in_one_message(name):
    key = (get_method(name).options_class.keys() or ("x",))[0]
    with pytest.raises(MethodConfigError) as e:
        get_method(name).validate({"name": name, key + "z": 1})
    assert str(e.value).startswith(f"unknown {name} option(s): '{key}z'")
    assert "\n" not in str(e.value) and "valid options: " in str(e.value)
    if get_method(name).options_class.keys():
        assert f"(did you mean '{key}'?)" in str(e.value)


def test_lora_dropout_comes_from_the_yaml_not_from_python():
    """Issue 24's example: code said 0.0 where conf/method/lora.yaml says 0.1."""
    from conftest import tiny_bert_config  # noqa: F401  (the tiny model's config, built below)

    ctx = MethodContext("seq_cls", model_type="bert", head_modules=["classifier"])
    config = get_method("lora").peft_config({"name": "lora", "r": 4}, ctx)
    assert config.lora_dropout == 0.1 and config.r == 4 and config.lora_alpha == 16


def test_a_planted_default_mismatch_is_caught(tmp_path, monkeypatch):
    """An option the YAML lacks (a default living only in Python) is an error naming the YAML, never a silent value."""
    @dataclasses.dataclass(frozen=True)
    class Planted(O.Options):
        r: object
        dropout: object = 0.0  # a Python default: the typed config ignores it and asks the YAML

    (tmp_path / "planted.yaml").write_text("name: planted\nr: 8\n")
    monkeypatch.setattr(O, "PRESET_DIR", tmp_path)
    with pytest.raises(MethodConfigError, match=r"^planted option\(s\) dropout missing: conf/method/planted.yaml"):
        Planted.parse({"r": 4}, "planted")
    assert Planted.parse({"r": 4, "dropout": 0.2}, "planted") == Planted(4, 0.2)


def test_no_method_reads_an_option_with_a_default_of_its_own():
    """Source check: no `cfg.get(key, default)` and no raw `cfg[key]` in methods/: every option is read from the parsed
    options. Left out: the parser itself, the registry (a config's peft_type makes a preset) and the peft presets'
    method, whose typed config is the peft config class."""
    offenders = []
    for path in sorted((ROOT / "methods").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "peft_generic" or rel.name in ("options.py", "registry.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            target = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                target = node.func.value
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                target = node.value
            if isinstance(target, ast.Name) and target.id == "cfg":
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------------------------ the head rule
def test_the_head_rule():
    ctx = MethodContext("seq_cls", head_modules=["classifier"], train_head=True)
    assert trains_head("auto", True) and not trains_head("auto", False)
    assert trains_head(True, False) and not trains_head(False, True)
    assert head_to_save("auto", ctx) == ["classifier"] and head_to_save(False, ctx) is None
    assert head_to_save("auto", ctx, auto=False) is None  # a method's own auto (Propulsion's paper protocol)
    assert head_to_save(True, MethodContext("seq_cls", head_modules=[])) is None
    assert task_trains_head("seq_cls") and task_trains_head("qa") and not task_trains_head("causal_lm")


def test_no_method_decides_the_head_itself():
    """Source check: ctx.train_head is read only as the `auto` of trains_head / head_to_save, and modules_to_save
    comes from head_to_save."""
    offenders = []
    for path in sorted((ROOT / "methods").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel == Path("methods/base.py"):
            continue
        tree = ast.parse(path.read_text())
        allowed = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("trains_head", "head_to_save"):
                allowed |= {id(a) for a in node.args}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "train_head" and isinstance(node.value, ast.Name)
                    and node.value.id == "ctx" and isinstance(node.ctx, ast.Load) and id(node) not in allowed):
                offenders.append(f"{rel}:{node.lineno} reads ctx.train_head")
            if isinstance(node, ast.keyword) and node.arg == "modules_to_save":
                value = node.value
                call = value if isinstance(value, ast.Call) else None
                if not (call and getattr(call.func, "id", None) == "head_to_save") and not (
                        isinstance(value, ast.Subscript) or isinstance(value, ast.Attribute)):
                    offenders.append(f"{rel}:{node.lineno} sets modules_to_save without head_to_save")
    assert not offenders, offenders


HEAD_CASES = [("auto", True, True), ("auto", False, False), (True, False, True), (False, True, False)]
HEAD_METHODS = [("lora", {}), ("ia3", {}), ("lora_dash", {"t": 1}), ("adapter_series", {"r": 4}), ("dora", {}),
                ("pafi", {"budget": 50}), ("bitfit", {})]


@pytest.mark.parametrize("name, extra", HEAD_METHODS, ids=[m for m, _ in HEAD_METHODS])
@pytest.mark.parametrize("option, task_says, trains", HEAD_CASES, ids=[f"{o}-{t}" for o, t, _ in HEAD_CASES])
def test_every_method_trains_the_head_by_the_one_rule(name, extra, option, task_says, trains, tmp_path):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    preset = yaml.safe_load((ROOT / "conf" / "method" / f"{name}.yaml").read_text())
    cfg = {**preset, **extra, "train_head": option}
    ctx = MethodContext("seq_cls", model_type="bert", head_modules=["classifier"], train_head=task_says,
                        total_steps=4, cache_dir=str(tmp_path))
    model = get_method(name, cfg).apply(model, cfg, ctx)
    head = [p.requires_grad for n, p in model.named_parameters() if is_head(n, ["classifier"])
            and "original_module" not in n]
    assert head and all(h == trains for h in head), (name, option, task_says)


def test_propulsions_auto_is_the_paper_protocol_through_the_same_rule():
    from methods.propulsion import resolve_train_head

    assert resolve_train_head("auto", "stsb") is True and resolve_train_head("auto", "sst2") is False
    assert resolve_train_head(True, "sst2") is True and resolve_train_head(False, "stsb") is False
