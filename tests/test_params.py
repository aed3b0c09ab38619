"""The one parameter counter against closed-form counts."""

import torch
from conftest import tiny_bert_config, tiny_llama_config

from bench.models.params import count_parameters
from methods import MethodContext, get_method


def bert_total(h, layers, inter, vocab, pos, types=2, labels=2, pooler=True):
    emb = vocab * h + pos * h + types * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    return emb + layers * layer + (h * h + h if pooler else 0) + h * labels + labels


def test_total_and_head_of_tiny_bert(tiny_bert):
    c = count_parameters(tiny_bert, ["classifier"])
    assert c["total"] == bert_total(32, 2, 64, 128, 64)
    assert c["trainable_head"] == 32 * 2 + 2
    assert c["trainable_method"] == c["total"] - c["trainable_head"]


def test_tied_embeddings_counted_once(tiny_llama):
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight
    unique = sum(p.numel() for p in {id(p): p for p in tiny_llama.parameters()}.values())
    assert count_parameters(tiny_llama)["total"] == unique
    assert count_parameters(tiny_llama)["total"] == sum(p.numel() for p in tiny_llama.parameters())  # torch dedups too
    with_dup = sum(p.numel() for _, p in tiny_llama.named_parameters(remove_duplicate=False))
    assert with_dup - count_parameters(tiny_llama)["total"] == 128 * 32


def test_lora_r8_query_value_on_base_encoder_is_294912():
    """LoRA r=8 on query/value of a 12-layer 768-wide encoder: 12 * 2 * 8 * (768 + 768) = 294,912."""
    from transformers import BertConfig, BertForSequenceClassification

    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig(num_labels=2))
    base_total = count_parameters(model)["total"]
    ctx = MethodContext(task_type="seq_cls", model_type="bert", head_modules=["classifier"])
    method = get_method("lora")
    cfg = {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.1, "target_roles": ["q", "v"], "train_head": "auto"}
    peft_model = method.apply(model, cfg, ctx)
    c = count_parameters(peft_model, ["classifier"], base_total=base_total)
    assert c["trainable_method"] == 294_912
    assert c["trainable_head"] == 768 * 2 + 2
    assert c["total"] == base_total


def test_full_finetuning_trains_everything(tiny_bert):
    model = get_method("full").apply(tiny_bert, {"name": "full"}, MethodContext(task_type="seq_cls"))
    c = count_parameters(model, ["classifier"])
    assert c["trainable"] == c["total"]


def test_trainable_override_replaces_method_count(tiny_bert):
    c = count_parameters(tiny_bert, ["classifier"], trainable_override=1000)
    assert c["trainable_method"] == 1000 and c["trainable"] == 1000 + 66


def test_ia3_uses_peft_default_targets(tiny_bert):
    cfg = {"name": "ia3", "target_modules": None, "feedforward_modules": None, "train_head": "auto"}
    ctx = MethodContext(task_type="seq_cls", model_type="bert", head_modules=["classifier"])
    model = get_method("ia3").apply(tiny_bert, cfg, ctx)
    c = count_parameters(model, ["classifier"])
    # peft's bert defaults: key, value (output scales, 32 each) and every "output.dense", which are also its
    # feed-forward modules (input scales): attention.output.dense (in 32) and the FFN output.dense (in 64)
    assert c["trainable_method"] == 2 * (32 + 32 + 32 + 64)
    assert c["trainable_head"] == 66


def test_bert_closed_form_matches_real_config():
    cfg = tiny_bert_config(hidden_size=48, num_hidden_layers=3, intermediate_size=96, num_labels=3)
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(cfg)
    assert count_parameters(model)["total"] == bert_total(48, 3, 96, 128, 64, labels=3)


def test_llama_counts(tiny_llama):
    cfg = tiny_llama_config()
    h, i, layers, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = h // cfg.num_attention_heads * cfg.num_key_value_heads
    layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h
    assert count_parameters(tiny_llama)["total"] == v * h + layers * layer + h


def test_bench_params_gives_a_base_method_its_defaults_as_a_run_does():
    """`bench params method=id3 method.base=lora` counts with LoRA's YAML defaults under method.base_cfg (as
    bench.run.training.apply_method gives them to a run); before, the base got none and LoRA's validation failed."""
    from bench.config.compose import compose
    from bench.perf import paramtable

    cfg = compose(["method=id3", "method.base=lora", "method.budget=1000", "model=roberta-base", "task=rte"])
    counts = paramtable.count_for(cfg)
    assert counts["trainable_method"] == 1000
