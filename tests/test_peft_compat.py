"""peft registration in one place: a fresh process with `import methods` + plain peft loads, runs and merges
saved Propulsion and LoRA-Dash adapters."""

import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, tiny_bert_config

LOAD = textwrap.dedent("""
    import sys, torch
    import methods  # registers PROPULSION and LORA_DASH with peft
    from peft import PeftModel
    from transformers import BertForSequenceClassification
    base = BertForSequenceClassification.from_pretrained(sys.argv[1])
    model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
    ids = torch.load(sys.argv[3])
    with torch.no_grad():
        out = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    torch.save({"out": out, "merged": merged, "type": str(model.peft_config["default"].peft_type)}, sys.argv[4])
""")


@pytest.mark.parametrize("kind", ["propulsion", "lora_dash"])
def test_fresh_process_loads_and_merges_a_saved_adapter(tmp_path, kind):
    from peft import get_peft_model

    from methods.lora_dash import LoraDashConfig
    from methods.propulsion import PropulsionConfig

    torch.manual_seed(0)
    from transformers import BertForSequenceClassification

    base = BertForSequenceClassification(tiny_bert_config()).eval()
    base.save_pretrained(tmp_path / "base")
    if kind == "propulsion":
        cfg = PropulsionConfig(degree=5, target_modules=["query", "value", "dense"])
    else:
        cfg = LoraDashConfig(r=2, lora_alpha=4, target_modules=["query", "value"], dash_s=2, dash_t=0, init_lora_weights=False)
    model = get_peft_model(base, cfg)
    with torch.no_grad():  # move the trainable parameters off their identity start, so loading them matters
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(5, 100, (2, 9))
    torch.save(ids, tmp_path / "ids.pt")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    r = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "base"), str(tmp_path / "adapter"),
                        str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["type"].endswith(kind.upper())
    assert torch.allclose(got["out"], expected, atol=1e-5)
    assert torch.allclose(got["merged"], expected, atol=1e-4)


def test_registration_is_idempotent():
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils.peft_types import PeftType

    from methods.peft_compat import peft_type, register_tuner
    from methods.propulsion import PropulsionConfig, PropulsionModel

    before = list(PeftType)
    assert register_tuner("propulsion", PropulsionConfig, PropulsionModel) is PeftType.PROPULSION
    assert peft_type("PROPULSION") is PeftType("PROPULSION") and list(PeftType) == before
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PROPULSION] is PropulsionModel
