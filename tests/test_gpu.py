"""CUDA paths: every method trains in bf16 on the GPU and the record carries CUDA memory; merges hold on the GPU.

Skipped without a CUDA device (CI has none); `make test-gpu` runs them where one is lent.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_cli, tiny_roberta_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = ["model=tiny-bert", "train.max_steps=3", "data.max_train_samples=16", "data.max_eval_samples=8",
        "train.progress=false", "train.precision=bf16"]


@pytest.mark.parametrize("method,extra", [
    ("full", []), ("lora", []), ("ia3", []), ("propulsion", []),
    ("lora_dash", ["method.t=1"]),  # switch after the first optimizer step: steps 2-3 train d on the GPU
    ("id3", ["method.budget=500", "method.T=2"]),
])
def test_bf16_run_on_cuda_records_gpu_memory(method, extra, glue_dir, tmp_path):
    out = tmp_path / "runs"
    r = run_cli(["run", f"method={method}", "task=rte", *TINY, *extra, f"data_dir={glue_dir}", f"results_dir={out}",
                 f"cache_dir={tmp_path}/cache"])
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert rec["status"] == "ok" and rec["device"]["cuda"] and rec["device"]["gpu"]
    assert rec["memory"]["cuda_max_allocated_mb"] > 0
    assert rec["train"]["steps"] == 3 and rec["train"]["loss_curve"]
    assert all(math.isfinite(loss) for _, loss in rec["train"]["loss_curve"])
    if method == "lora_dash":
        assert rec["method_state"]["switch_step"] == 1
    if method == "id3":
        assert rec["method_state"]["unmasked"] == 500


def test_propulsion_merge_on_cuda_equals_unmerged():
    from peft import get_peft_model
    from transformers import RobertaForSequenceClassification

    import methods.propulsion as P

    torch.manual_seed(0)
    base = RobertaForSequenceClassification(tiny_roberta_config()).cuda().eval()
    model = get_peft_model(base, P.PropulsionConfig(degree=15))
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "propulsion_z" in name:
                p.copy_(1 + 0.02 * torch.randn(p.shape, generator=gen, device="cuda"))
    ids = torch.randint(3, 100, (2, 8), device="cuda")
    expected = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_lora_dash_switch_and_merge_on_cuda():
    from test_lora_dash import _dash, _ids, _randomize_d, _randomize_lora

    from methods.lora_dash import is_switched, switch_to_dash

    model = _dash().cuda().eval()
    _randomize_lora(model)
    x = _ids().cuda()
    before = model(input_ids=x).logits
    switch_to_dash(model, step=1)  # SVD of the LoRA update runs on the GPU
    assert is_switched(model)
    torch.testing.assert_close(model(input_ids=x).logits, before, atol=1e-5, rtol=0)  # d starts at 0
    _randomize_d(model)
    expected = model(input_ids=x).logits
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=x).logits, expected, atol=1e-5, rtol=0)
