"""Propulsion (methods/propulsion): the layer math, the peft tuner (save / load / merge), presets and the harness hook."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import methods.propulsion as P
from methods.base import MethodConfigError, MethodContext
from methods.registry import get_method
from peft import PeftModel, get_peft_model
from conftest import tiny_llama_config, tiny_roberta_config
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

IDS = torch.tensor([[0, 5, 17, 33, 2, 90, 7, 1], [0, 64, 3, 99, 120, 2, 1, 1]])


def perturb_z(model, std=0.02, seed=0):
    """Move every z away from 1 so that the adapter does something (z**15 then spans roughly 0.5 to 2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "propulsion_z" in name:
                p.copy_(1 + std * torch.randn(p.shape, generator=gen))


def z_names(model):
    return {n for n, _ in model.named_parameters() if "propulsion_z" in n}


def targeted(model):
    return set(model.base_model.targeted_module_names)


def roberta(seed=0, **kw):
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(seed)
    return RobertaForSequenceClassification(tiny_roberta_config(**kw)).eval()


def llama(seed=0, **kw):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**kw)).eval()


# ---------------------------------------------------------------------------------------------------------------
# the layer
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_linear_forward_is_output_times_z_to_the_k(kind):
    torch.manual_seed(0)
    base = nn.Linear(5, 7) if kind == "linear" else Conv1D(7, 5)  # Conv1D(nf=out, nx=in), weight (in, out)
    if kind == "conv1d":
        nn.init.normal_(base.bias)
    layer = P.Linear(base, "default", degree=3)
    z = 1 + 0.3 * torch.randn(7)
    with torch.no_grad():
        layer.propulsion_z["default"].copy_(z)
    x = torch.randn(2, 4, 5)
    weight = base.weight if kind == "linear" else base.weight.T
    expected = (x @ weight.T + base.bias) * z**3
    torch.testing.assert_close(layer(x), expected)
    assert layer.base_layer is base  # wrapped, not copied


def test_embedding_forward_scales_each_column():
    torch.manual_seed(0)
    base = nn.Embedding(11, 6, padding_idx=0)
    layer = P.Embedding(base, "default", degree=4)
    z = 1 + 0.3 * torch.randn(6)
    with torch.no_grad():
        layer.propulsion_z["default"].copy_(z)
    ids = torch.tensor([[0, 3, 10], [5, 5, 1]])
    torch.testing.assert_close(layer(ids), base.weight[ids] * z**4)
    assert layer.propulsion_z["default"].shape == (6,)


def test_scale_backward_matches_autograd_of_a_plain_multiply():
    # the custom backward recovers sum(grad * result) from the saved output; check it against numerical gradients
    result = torch.randn(3, 4, 5, dtype=torch.double, requires_grad=True)
    scale = (1 + 0.3 * torch.randn(5, dtype=torch.double)).requires_grad_()
    from methods.propulsion.layer import _ScaleOutput

    assert torch.autograd.gradcheck(_ScaleOutput.apply, (result, scale))


def test_z_starts_at_one_so_the_model_starts_unchanged(tiny_roberta):
    before = tiny_roberta(input_ids=IDS).logits
    model = get_peft_model(tiny_roberta, P.PropulsionConfig(degree=55))
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in model.named_parameters() if "propulsion_z" in n)
    torch.testing.assert_close(model(input_ids=IDS).logits, before)


# ---------------------------------------------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------------------------------------------
def test_default_targets_are_every_linear_and_embedding_including_the_head(tiny_roberta):
    expected = {n for n, m in tiny_roberta.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))}
    model = get_peft_model(tiny_roberta, P.PropulsionConfig())
    assert targeted(model) == expected
    assert {"classifier.dense", "classifier.out_proj", "roberta.embeddings.token_type_embeddings"} <= expected
    assert not any("LayerNorm" in n for n in targeted(model))


def test_target_modules_list_is_a_suffix_match_and_a_string_a_full_regex():
    model = get_peft_model(roberta(), P.PropulsionConfig(target_modules=["query", "output.dense"]))
    names = targeted(model)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"query", "dense"}
    assert len(names) == 2 * 3  # per layer: query, attention.output.dense, output.dense

    model = get_peft_model(roberta(), P.PropulsionConfig(target_modules=r".*layer\.1\..*(key|value)"))
    assert targeted(model) == {f"roberta.encoder.layer.1.attention.self.{m}" for m in ("key", "value")}

    model = get_peft_model(roberta(), P.PropulsionConfig(exclude_modules=["classifier.dense", "word_embeddings"]))
    assert "classifier.dense" not in targeted(model) and "roberta.embeddings.word_embeddings" not in targeted(model)
    assert "classifier.out_proj" in targeted(model)


def test_a_target_that_is_not_a_linear_or_embedding_is_an_error():
    with pytest.raises(ValueError, match="Propulsion scales only"):
        get_peft_model(roberta(), P.PropulsionConfig(target_modules=["LayerNorm"]))


# ---------------------------------------------------------------------------------------------------------------
# merge / unmerge
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_roberta"])
def test_merged_model_equals_unmerged(fixture, request):
    base = request.getfixturevalue(fixture)
    model = get_peft_model(base, P.PropulsionConfig(degree=15))
    perturb_z(model)
    expected = model(input_ids=IDS).logits
    with model.disable_adapter():
        assert not torch.allclose(model(input_ids=IDS).logits, expected, atol=1e-4)  # the adapter does something
    merged = model.merge_and_unload()
    assert not any(isinstance(m, P.PropulsionLayer) for m in merged.modules())
    torch.testing.assert_close(merged(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)


def test_merged_weights_are_rows_and_columns_scaled(tiny_roberta):
    model = get_peft_model(tiny_roberta, P.PropulsionConfig(degree=5))
    perturb_z(model, std=0.1)
    layers = model.base_model.propulsion_layers()
    query, emb = layers["roberta.encoder.layer.0.attention.self.query"], layers["roberta.embeddings.word_embeddings"]
    s_q, s_e = (m.get_scale("default").detach() for m in (query, emb))
    w, b, e = query.base_layer.weight.clone(), query.base_layer.bias.clone(), emb.base_layer.weight.clone()
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged.roberta.encoder.layer[0].attention.self.query.weight, s_q[:, None] * w)
    torch.testing.assert_close(merged.roberta.encoder.layer[0].attention.self.query.bias, s_q * b)
    torch.testing.assert_close(merged.roberta.embeddings.word_embeddings.weight, e * s_e[None, :])


def test_merge_adapter_then_unmerge_restores_the_weights(tiny_roberta):
    model = get_peft_model(tiny_roberta, P.PropulsionConfig(degree=15))
    perturb_z(model)
    base_state = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "propulsion" not in k}
    expected = model(input_ids=IDS).logits
    model.merge_adapter()
    assert all(m.merged for m in model.base_model.propulsion_layers().values())
    torch.testing.assert_close(model(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)  # not scaled twice
    changed = [k for k, v in model.get_base_model().state_dict().items() if k in base_state and not torch.equal(v, base_state[k])]
    assert changed  # merging really changed the base weights
    model.unmerge_adapter()
    for k, v in model.get_base_model().state_dict().items():
        if k in base_state:
            torch.testing.assert_close(v, base_state[k], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------------
def test_save_and_from_pretrained_round_trip_holds_only_z(tmp_path):
    model = get_peft_model(roberta(), P.PropulsionConfig(degree=20))
    perturb_z(model)
    with torch.no_grad():  # the reloaded model runs without grad, so compare like with like (see test_fused_...)
        expected = model(input_ids=IDS).logits
    model.save_pretrained(tmp_path)

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == {f"base_model.model.{n}.propulsion_z" for n in targeted(model)}
    assert all(v.dim() == 1 for v in saved.values())
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    # the type name plus what to import (methods/peft_compat.saved_name), so plain peft says what is missing
    assert config["peft_type"] == "PROPULSION (peft-bench tuner: `import methods` registers it with peft)"
    assert config["degree"] == 20

    loaded = PeftModel.from_pretrained(roberta(), tmp_path)  # a fresh base with the same (seeded) weights
    assert isinstance(loaded.peft_config["default"], P.PropulsionConfig)
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, atol=0, rtol=0)
    assert not any(p.requires_grad for p in loaded.parameters())  # from_pretrained loads for inference


def test_trained_head_is_saved_and_not_scaled(tmp_path):
    model = get_peft_model(roberta(), P.PropulsionConfig(modules_to_save=["classifier"]))
    assert not any(n.startswith("classifier") for n in targeted(model))  # a dense trainable head needs no scale
    perturb_z(model)
    with torch.no_grad():  # simulate a trained head
        for n, p in model.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.1)
        expected = model(input_ids=IDS).logits  # no grad, as the reloaded model runs
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    head = {k for k in saved if ".classifier." in k}
    assert head == {f"base_model.model.classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}
    assert all(k.endswith("propulsion_z") for k in set(saved) - head)
    loaded = PeftModel.from_pretrained(roberta(), tmp_path)
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, atol=0, rtol=0)


def test_a_second_adapter_trains_alone_when_active():
    model = get_peft_model(roberta(), P.PropulsionConfig(degree=3))
    model.add_adapter("other", P.PropulsionConfig(degree=5, init_weights=False))
    first = model(input_ids=IDS).logits
    model.set_adapter("other")
    assert not torch.allclose(model(input_ids=IDS).logits, first)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("propulsion_z.other") for n in trainable)


# ---------------------------------------------------------------------------------------------------------------
# gradients and parameter counts
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", [None, ["classifier"]])
def test_only_z_and_the_chosen_head_receive_gradients(head):
    model = get_peft_model(roberta(), P.PropulsionConfig(modules_to_save=head))
    model.train()
    model(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    head_params = {n for n, p in model.named_parameters() if "modules_to_save" in n}
    assert with_grad == z_names(model) | head_params
    assert bool(head_params) == bool(head)
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in z_names(model))  # every z is really used


def test_degree_multiplies_the_gradient_of_z_at_one():
    grads = {}
    for k in (1, 7):
        model = get_peft_model(roberta(), P.PropulsionConfig(degree=k))
        model(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
        grads[k] = {n: p.grad.clone() for n, p in model.named_parameters() if "propulsion_z" in n}
    assert grads[1].keys() == grads[7].keys()
    for n in grads[1]:
        torch.testing.assert_close(grads[7][n], 7 * grads[1][n], rtol=1e-4, atol=1e-8)


def test_gradient_checkpointing_gives_the_same_z_gradients():
    grads = []
    for checkpointing in (False, True):
        model = get_peft_model(roberta(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                               P.PropulsionConfig(init_weights=False))  # fmt: skip
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(input_ids=IDS, labels=torch.tensor([0, 1])).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in sorted(model.named_parameters()) if "propulsion_z" in n]))
    torch.testing.assert_close(grads[1], grads[0])


def test_roberta_base_has_the_papers_86018_trainable_parameters():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    with torch.device("meta"):
        base = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    model = get_peft_model(base, P.PropulsionConfig())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 3 * 768 + 12 * (4 * 768 + 3072 + 768) + 768 + 2 == 86_018
    assert not any(p.requires_grad for n, p in model.named_parameters() if "propulsion_z" not in n)

    with torch.device("meta"):
        base = RobertaForSequenceClassification(RobertaConfig(num_labels=2))
    model = get_peft_model(base, P.PropulsionConfig(modules_to_save=["classifier"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 86_018 - (768 + 2) + (768 * 768 + 768) + (768 * 2 + 2)


# ---------------------------------------------------------------------------------------------------------------
# causal LMs and other architectures
# ---------------------------------------------------------------------------------------------------------------
def test_llama_targets_projections_and_embeddings_but_not_the_tied_lm_head():
    model = get_peft_model(llama(), P.PropulsionConfig(degree=15, task_type="CAUSAL_LM"))
    roles = {n.rsplit(".", 1)[-1] for n in targeted(model)}
    assert roles == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"}
    assert "lm_head" not in targeted(model)


@pytest.mark.parametrize("targets", [None, ["embed_tokens", "lm_head", "q_proj"]])
def test_llama_with_tied_embeddings_merges_exactly_by_untying(targets, tmp_path):
    model = get_peft_model(llama(), P.PropulsionConfig(degree=15, target_modules=targets, task_type="CAUSAL_LM"))
    base = model.get_base_model()
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied
    table = base.lm_head.weight.detach().clone()
    perturb_z(model)
    with torch.no_grad():  # as the reloaded model runs
        expected = model(input_ids=IDS).logits

    model.save_pretrained(tmp_path, save_embedding_layers=False)
    assert all(k.endswith("propulsion_z") for k in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(llama(), tmp_path)
    torch.testing.assert_close(loaded(input_ids=IDS).logits, expected, atol=0, rtol=0)

    with pytest.warns(UserWarning, match="Untied"):
        merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=IDS).logits, expected, atol=1e-5, rtol=0)
    assert merged.lm_head.weight is not merged.model.embed_tokens.weight
    assert merged.config.tie_word_embeddings is False
    if targets is None:  # the unscaled lm_head kept the original table
        assert torch.equal(merged.lm_head.weight, table)


def test_deberta_heads_work_and_the_relative_position_table_is_not_wrapped():
    from transformers import DebertaV2Config, DebertaV2ForQuestionAnswering

    config = DebertaV2Config(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                             position_buckets=8, pos_att_type=["p2c", "c2p"], position_biased_input=False)  # fmt: skip
    torch.manual_seed(0)
    model = get_peft_model(DebertaV2ForQuestionAnswering(config), P.PropulsionConfig(degree=35))
    assert "deberta.encoder.rel_embeddings" not in targeted(model)  # read as .weight, a scale would never act
    assert "qa_outputs" in targeted(model)
    out = model(input_ids=IDS, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    out.loss.backward()
    assert all(model.get_parameter(n).grad is not None and model.get_parameter(n).grad.abs().sum() > 0 for n in z_names(model))


# ---------------------------------------------------------------------------------------------------------------
# presets and the harness hook
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task, degree",
    [("sst2", 15), ("qqp", 15), ("rte", 15), ("qnli", 55), ("mrpc", 55), ("cola", 20), ("mnli", 20), ("stsb", 20),
     ("STS-B", 20), ("squad", 35), ("squad_v2", 35), ("gsm8k", 15), ("gsm_symbolic", 15), ("math", 15),
     ("boolq", 15), ("hellaswag", 15)],
)  # fmt: skip
def test_auto_degree_follows_the_paper(task, degree):
    assert P.resolve_degree("auto", task) == degree
    assert P.resolve_degree(3, task) == 3


def test_auto_train_head_is_false_except_stsb():
    assert P.resolve_train_head("auto", "stsb") is True
    assert P.resolve_train_head("auto", "sst2") is False
    assert P.resolve_train_head("auto", "squad") is False
    assert P.resolve_train_head(True, "sst2") is True


def test_degrees_come_from_the_yaml_for_every_task_of_conf():
    """conf/propulsion_paper.yaml is the table: every task of conf/task/ has its degree there, read by methods/ alone."""
    import yaml

    root = P.config.PAPER_FILE.parents[0]
    table = yaml.safe_load(P.config.PAPER_FILE.read_text())["degrees"]
    assert P.paper_degrees() == table and table["qnli"] == 55
    for task in sorted((root / "task").glob("*.yaml")):
        assert P.resolve_degree("auto", task.stem) == table[P.config.normalize_task_name(task.stem)], task.stem


def test_a_new_task_needs_only_a_line_of_yaml(tmp_path, monkeypatch):
    """A task the paper never ran gets its degree (and head rule) from the YAML: no Python changes."""
    paper = tmp_path / "propulsion_paper.yaml"
    paper.write_text(P.config.PAPER_FILE.read_text().replace("  sst2: 15\n", "  sst2: 15\n  my_task: 7\n")
                     .replace("head_trains: [stsb]", "head_trains: [stsb, my_task]"))
    with pytest.raises(MethodConfigError, match="conf/propulsion_paper.yaml"):
        P.resolve_degree("auto", "my-task")
    monkeypatch.setattr(P.config, "PAPER_FILE", paper)
    assert P.resolve_degree("auto", "my-task") == 7 and P.resolve_train_head("auto", "my_task") is True
    model = get_method("propulsion").apply(roberta(), {"name": "propulsion"}, ctx("my_task"))
    assert model.peft_config["default"].degree == 7 and model.peft_config["default"].modules_to_save == ["classifier"]
    paper.write_text("degrees: {my_task: 0}\n")
    with pytest.raises(ValueError, match="positive integers"):
        P.paper_degree("my_task")


def ctx(task_name="sst2", task_type="seq_cls", head=("classifier",)):
    return MethodContext(task_type=task_type, task_name=task_name, model_type="roberta", head_modules=list(head))


@pytest.mark.parametrize(
    "cfg, message",
    [({"degree": 0}, "positive integer"), ({"degree": -3}, "positive integer"), ({"degree": 2.5}, "positive integer"),
     ({"degree": True}, "positive integer"), ({"degree": "fast"}, "positive integer"),
     ({"train_head": "yes"}, "train_head"), ({"target_modules": "(unclosed"}, "regular expression"),
     ({"target_modules": []}, "target_modules"), ({"degre": 5}, "did you mean 'degree'")],
)  # fmt: skip
def test_validate_rejects_bad_options(cfg, message):
    method = get_method("propulsion")
    with pytest.raises(MethodConfigError, match=message):
        method.validate({"name": "propulsion", **cfg})


def test_auto_degree_for_a_task_without_a_preset_asks_for_an_integer():
    with pytest.raises(MethodConfigError, match="method.degree=<int>"):
        get_method("propulsion").apply(roberta(), {"name": "propulsion", "degree": "auto"}, ctx("my_task"))


def test_harness_apply_uses_the_paper_protocol():
    method = get_method("propulsion")
    assert isinstance(method, P.PropulsionMethod)
    cfg = {"name": "propulsion", "degree": "auto", "train_head": "auto", "target_modules": None, "exclude_modules": None}

    model = method.apply(roberta(), cfg, ctx("qnli"))
    assert isinstance(model, PeftModel) and model.peft_config["default"].degree == 55
    assert {n for n, p in model.named_parameters() if p.requires_grad} == z_names(model)  # head frozen, scaled
    assert {"classifier.dense", "classifier.out_proj"} <= targeted(model)
    state = method.record_state(model, cfg)
    assert state["degree"] == 55 and state["train_head"] is False and state["scale_min"] == state["scale_max"] == 1.0

    model = method.apply(roberta(), cfg, ctx("stsb"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert model.peft_config["default"].degree == 20
    assert any(n.startswith("base_model.model.classifier.modules_to_save") for n in trainable)  # STS-B head trains


def test_harness_apply_on_a_causal_lm_and_save(tmp_path):
    method = get_method("propulsion")
    model = method.apply(llama(), {"name": "propulsion", "degree": "auto"}, ctx("gsm8k", "causal_lm", ["lm_head"]))
    assert model.peft_config["default"].degree == 15 and "lm_head" not in targeted(model)
    method.save(model, {}, str(tmp_path))
    assert all(k.endswith("propulsion_z") for k in load_file(tmp_path / "adapter_model.safetensors"))


def test_fused_linear_path_equals_the_plain_multiply_in_values_and_gradients(monkeypatch):
    """Training scales a frozen Linear's weight (diag(s) W) instead of its output: same outputs and z gradients."""
    results = []
    for fuse in (True, False):
        monkeypatch.setattr(P.layer, "FUSE_LINEAR", fuse)
        model = get_peft_model(roberta(), P.PropulsionConfig(degree=15))
        perturb_z(model)
        out = model(input_ids=IDS).logits
        out.pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.detach(), grads))
    (fused, g_fused), (plain, g_plain) = results
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-5)
    assert g_fused.keys() == g_plain.keys() and any("query" in n for n in g_fused)
    for n in g_fused:
        torch.testing.assert_close(g_fused[n], g_plain[n], atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("degree", [1, 2, 15, 55])
def test_fused_linear_computes_z_to_the_k_inside_and_trains_z_bit_for_bit_as_autograd(degree, autocast):
    """The fused node takes z and k (no separate pow node): its output and z gradient equal, bit for bit, the
    composition autograd would run (s = z**k with autograd's pow backward, then the node of s), in fp32 and under
    bf16 autocast (where the scaled weight is written straight in bf16)."""
    from methods.propulsion.layer import _ScaledLinear, _autocast_dtype, _grad_of_scale

    g = torch.Generator().manual_seed(degree)
    lin = nn.Linear(12, 7).requires_grad_(False)
    x = torch.randn(3, 5, 12, generator=g)
    z = nn.Parameter(1 + 0.02 * torch.randn(7, generator=g))
    grad = torch.randn(3, 5, 7, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = _ScaledLinear.apply(x, lin.weight, lin.bias, z, degree)
        dtype = _autocast_dtype(x, lin.weight.dtype)
    out.backward(grad.to(out.dtype))
    # the reference: z**k through autograd, the weight scaled then cast, F.linear, the scale's gradient from the output
    zr = z.detach().clone().requires_grad_(True)
    s = zr.pow(degree)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref = nn.functional.linear(x, (lin.weight * s.detach().unsqueeze(1)).to(dtype), (lin.bias * s.detach()).to(dtype))
    assert torch.equal(out, ref)
    s.backward(_grad_of_scale(grad.to(ref.dtype), ref, s.detach()))
    assert torch.equal(z.grad, zr.grad)
