"""peft registration in one place (methods/peft_compat.py), and Propulsion / LoRA-Dash through peft's own API,
tested the way peft tests its tuners: save / load, merge_and_unload, unload, safe_merge, delete_adapter, two
adapters on one model, disable_adapter. A fresh process with `import methods` + plain peft loads, runs and merges
saved adapters (also those saved before the import hint); without the import peft's error says what to import."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_bert_config

KINDS = ["propulsion", "lora_dash"]
IDS = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only cost CPU on a shared machine
    yield
    torch.set_num_threads(before)


def _base(seed: int = 0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def _config(kind: str):
    if kind == "propulsion":
        from methods.propulsion import PropulsionConfig

        return PropulsionConfig(degree=5, target_modules=["query", "value", "dense"])
    from methods.lora_dash import LoraDashConfig

    return LoraDashConfig(r=2, lora_alpha=4, target_modules=["query", "value"], dash_s=2, dash_t=0,
                          init_lora_weights=False)


def _move_off_start(model, kind: str, adapter: str = "default", seed: int = 1) -> None:
    """Give one adapter outputs of its own: LoRA-Dash chooses its directions (the dash term joins the forward pass),
    then every tensor of the adapter (z; A, B, d) moves off its start, so its weights matter for the outputs."""
    if kind == "lora_dash":
        from methods.lora_dash import switch_to_dash

        switch_to_dash(model, step=0, adapter=adapter)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(f".{adapter}") or f".{adapter}." in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _adapted(kind: str):
    from peft import get_peft_model

    model = get_peft_model(_base(), _config(kind))
    _move_off_start(model, kind)
    return model.eval()


def _run(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _tuner_layers(model) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


BASE_OUT = None


def _base_out() -> torch.Tensor:
    global BASE_OUT
    if BASE_OUT is None:
        BASE_OUT = _run(_base())
    return BASE_OUT


# ------------------------------------------------------------------------------------------------
# peft's tuner API
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unload_equals_the_unmerged_model(kind):
    model = _adapted(kind)
    out = _run(model)
    assert not torch.allclose(out, _base_out(), atol=1e-4)  # the adapter changes the outputs
    merged = model.merge_and_unload()
    assert not _tuner_layers(merged) and type(merged).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(_run(merged), out, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_safe_merge_merges_a_sound_adapter_and_refuses_a_broken_one(kind):
    model = _adapted(kind)
    out = _run(model)
    torch.testing.assert_close(_run(model.merge_and_unload(safe_merge=True)), out, atol=1e-5, rtol=0)

    broken = _adapted(kind)
    layer = broken.base_model.model.bert.encoder.layer[0].attention.self.query
    weight = layer.get_base_layer().weight.detach().clone()
    tensor = layer.propulsion_z["default"] if kind == "propulsion" else layer.lora_B["default"].weight
    with torch.no_grad():
        tensor.view(-1)[0] = float("nan")
    with pytest.raises(ValueError):
        broken.merge_and_unload(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, weight)  # the broken adapter never reached W
    layer.merge()  # an unsafe merge takes the NaN into W: what safe_merge guards against
    assert torch.isnan(layer.get_base_layer().weight).any()


@pytest.mark.parametrize("kind", KINDS)
def test_unload_gives_back_the_base_weights(kind):
    base_state = {k: v.clone() for k, v in _base().state_dict().items()}
    model = _adapted(kind)
    out = _run(model)
    unloaded = model.unload()
    assert not _tuner_layers(unloaded)
    state = unloaded.state_dict()
    assert set(state) == set(base_state)
    assert all(torch.equal(state[k], v) for k, v in base_state.items())
    torch.testing.assert_close(_run(unloaded), _base_out(), atol=0, rtol=0)
    assert not torch.allclose(out, _base_out(), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_disable_adapter_gives_the_base_outputs(kind):
    model = _adapted(kind)
    out = _run(model)
    with model.disable_adapter():
        torch.testing.assert_close(_run(model), _base_out(), atol=1e-6, rtol=0)
    torch.testing.assert_close(_run(model), out, atol=0, rtol=0)
    assert not torch.allclose(out, _base_out(), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_two_adapters_save_load_and_delete_one(kind, tmp_path):
    from peft import PeftModel

    model = _adapted(kind)
    model.add_adapter("other", _config(kind))
    _move_off_start(model, kind, "other", seed=2)
    out_default = _run(model)  # adding an adapter leaves the active one active
    model.set_adapter("other")
    out_other = _run(model)
    assert not torch.allclose(out_default, out_other, atol=1e-4)

    model.save_pretrained(tmp_path)  # default at the top, "other" in its own folder
    saved = json.loads((tmp_path / "other" / "adapter_config.json").read_text())
    assert saved["peft_type"].startswith(kind.upper() + " ") and "import methods" in saved["peft_type"]
    loaded = PeftModel.from_pretrained(_base(), tmp_path)
    loaded.load_adapter(str(tmp_path / "other"), adapter_name="other")
    torch.testing.assert_close(_run(loaded), out_default, atol=1e-6, rtol=0)
    loaded.set_adapter("other")
    torch.testing.assert_close(_run(loaded), out_other, atol=1e-6, rtol=0)

    model.set_adapter("default")
    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert not [n for n, _ in model.named_parameters() if ".other" in n]
    assert not [n for n, _ in model.named_buffers() if ".other" in n]
    torch.testing.assert_close(_run(model), out_default, atol=0, rtol=0)


def test_registration_is_idempotent():
    from peft.config import PeftConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType

    from methods.lora_dash import LoraDashConfig
    from methods.peft_compat import peft_type, register_tuner, saved_name
    from methods.propulsion import PropulsionConfig, PropulsionModel

    before = list(PeftType)
    assert register_tuner("propulsion", PropulsionConfig, PropulsionModel) is PeftType.PROPULSION
    assert peft_type("PROPULSION") is PeftType("PROPULSION") and list(PeftType) == before
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PROPULSION] is PropulsionModel
    for name, cls in (("PROPULSION", PropulsionConfig), ("LORA_DASH", LoraDashConfig)):
        saved = saved_name(name)
        assert "import methods" in saved and PeftType(saved) is PeftType[name] and PeftType[name].value == name
        assert PEFT_TYPE_TO_CONFIG_MAPPING[saved] is cls and PEFT_TYPE_TO_CONFIG_MAPPING[name] is cls
        config = _config(name.lower())
        assert config.to_dict()["peft_type"] == saved and config.peft_type is PeftType[name]
        again = PeftConfig.from_peft_type(**config.to_dict())  # the dict round trip peft does when loading
        assert type(again) is cls and again.peft_type is PeftType[name]


ENUM_CHECK = textwrap.dedent("""
    import enum, importlib.util, json, pickle, sys
    spec = importlib.util.spec_from_file_location("peft_compat", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # the module imports peft only inside its functions

    class Kind(str, enum.Enum):  # shaped like peft's PeftType
        LORA = "LORA"
        IA3 = "IA3"

    m = mod.add_enum_member(Kind, "PROPULSION")
    assert mod.add_enum_member(Kind, "PROPULSION") is m and mod.add_enum_member(Kind, "LORA") is Kind.LORA
    assert Kind("PROPULSION") is m and Kind["PROPULSION"] is m and Kind.PROPULSION is m
    assert isinstance(m, Kind) and m == "PROPULSION" and m.value == m.name == "PROPULSION"
    assert list(Kind) == [Kind.LORA, Kind.IA3, m] and len(Kind) == 3 and "PROPULSION" in Kind.__members__
    assert json.dumps({"peft_type": m}) == '{"peft_type": "PROPULSION"}' and pickle.loads(pickle.dumps(m)) is m
    Kind._value2member_map_["PROPULSION (hint)"] = m  # register_tuner's alias of the saved spelling
    assert Kind("PROPULSION (hint)") is m
    print(sys.version_info[:2])
""")


def _python(version: str):
    """An interpreter of that version on this machine (PATH or pyenv), else None."""
    import glob

    pyenv = sorted(glob.glob(str(Path.home() / f".pyenv/versions/{version}.*/bin/python{version}")))
    if pyenv:
        return pyenv[-1]
    found = shutil.which(f"python{version}")
    return found if found and "/shims/" not in found else None  # a pyenv shim of an inactive version fails


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13"])
def test_enum_member_is_added_on_every_supported_python(version):
    """The one piece of peft registration that depends on Python's enum internals, run under each Python the
    project supports (3.13 stores members through Enum._add_member_, earlier ones by hand)."""
    exe = sys.executable if sys.version_info[:2] == tuple(map(int, version.split("."))) else _python(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine")
    out = subprocess.run([exe, "-c", ENUM_CHECK, str(ROOT / "methods" / "peft_compat.py")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tuple(map(int, version.split("."))))


# ------------------------------------------------------------------------------------------------
# a fresh process: plain peft, with and without `import methods`
# ------------------------------------------------------------------------------------------------
LOAD = textwrap.dedent("""
    import json, sys, torch
    import methods  # registers PROPULSION and LORA_DASH with peft
    from peft import PeftModel
    from transformers import BertForSequenceClassification
    ids = torch.load(sys.argv[2])
    out = {}
    for adapter in json.loads(sys.argv[3]):
        base = BertForSequenceClassification.from_pretrained(sys.argv[1])
        model = PeftModel.from_pretrained(base, adapter).eval()
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            merged = model.merge_and_unload()(input_ids=ids).logits
        out[adapter] = {"out": logits, "merged": merged, "type": str(model.peft_config["default"].peft_type)}
    torch.save(out, sys.argv[4])
""")

NO_IMPORT = textwrap.dedent("""
    import json, sys
    from peft import PeftModel
    from transformers import BertForSequenceClassification
    errors = {}
    for adapter in json.loads(sys.argv[2]):
        try:
            PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(sys.argv[1]), adapter)
            errors[adapter] = None
        except Exception as e:
            errors[adapter] = f"{type(e).__name__}: {e}"
    assert "methods" not in sys.modules
    print(json.dumps(errors))
""")


@pytest.fixture(scope="module")
def saved_adapters(tmp_path_factory):
    """A saved base model and, per kind, a saved adapter plus a copy in the format saved before the import hint
    ("peft_type": "PROPULSION"); expected outputs on IDS."""
    root = tmp_path_factory.mktemp("peft_fresh")
    _base().save_pretrained(root / "base")
    torch.save(IDS, root / "ids.pt")
    adapters, expected = {}, {}
    for kind in KINDS:
        model = _adapted(kind)
        model.save_pretrained(root / kind)
        legacy = root / f"{kind}_legacy"
        shutil.copytree(root / kind, legacy)
        config = json.loads((legacy / "adapter_config.json").read_text())
        config["peft_type"] = kind.upper()
        (legacy / "adapter_config.json").write_text(json.dumps(config))
        adapters[kind] = [str(root / kind), str(legacy)]
        expected[kind] = _run(model)
    return root, adapters, expected


def test_fresh_process_loads_and_merges_a_saved_adapter(saved_adapters):
    root, adapters, expected = saved_adapters
    paths = [p for kind in KINDS for p in adapters[kind]]
    r = subprocess.run([sys.executable, "-c", LOAD, str(root / "base"), str(root / "ids.pt"), json.dumps(paths),
                        str(root / "out.pt")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(root / "out.pt")
    for kind in KINDS:
        for path in adapters[kind]:  # the current format and the one saved before the import hint
            assert got[path]["type"].endswith(kind.upper())
            torch.testing.assert_close(got[path]["out"], expected[kind], atol=1e-5, rtol=0)
            torch.testing.assert_close(got[path]["merged"], expected[kind], atol=1e-4, rtol=0)


def test_fresh_process_without_the_import_is_told_what_to_import(saved_adapters):
    root, adapters, _ = saved_adapters
    paths = [adapters[kind][0] for kind in KINDS]
    r = subprocess.run([sys.executable, "-c", NO_IMPORT, str(root / "base"), json.dumps(paths)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    errors = json.loads(r.stdout.strip().splitlines()[-1])
    for kind, path in zip(KINDS, paths):
        assert errors[path] is not None and errors[path].startswith(f"KeyError: '{kind.upper()} (")
        assert "`import methods`" in errors[path]
