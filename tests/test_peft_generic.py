"""The generic peft method (method=peft, one-YAML presets), MiLoRA's init and AdaLoRA's allocator / regulariser."""

import json
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_cli, run_cli_here, tiny_bert_config, tiny_llama_config
from methods import MethodConfigError, MethodContext, available, get_method

TINY = ["model=tiny-bert", "train.max_steps=2", "train.batch_size=4", "train.progress=false"]


def _bert(seed=0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def _bert_ctx(total_steps=20):
    return MethodContext("seq_cls", model_type="bert", head_modules=["classifier"], total_steps=total_steps)


def _preset(name, **over):
    import yaml

    return {**yaml.safe_load((ROOT / "conf" / "method" / f"{name}.yaml").read_text()), **over}


def _ids(n=3, length=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (n, length), generator=g)
    return ids, torch.ones_like(ids)


def test_presets_are_methods_and_the_generic_one_too():
    names = available()
    for p in ("peft", "dora", "pissa", "milora", "adalora", "vera", "loha", "lokr", "oft", "fourierft",
              "prefix_tuning", "prompt_tuning"):
        assert p in names
        assert get_method(p).name == p


@pytest.mark.parametrize("cfg, fragment", [
    ({"peft_type": "LORRA"}, "unknown method.peft_type 'LORRA' (did you mean 'LORA'?); valid peft types: "),
    ({"peft_type": "LOHA", "rr": 4}, "LoHaConfig (LOHA) has no option 'rr' (did you mean 'r'?); valid options: "),
    ({"peft_type": "LORA", "train_head": "maybe"}, "method.train_head must be auto, true or false"),
    ({"peft_type": "LOHA", "r": 4}, "peft: method.train_head is not set; add `train_head: auto`"),
])
def test_bad_type_or_key_is_one_line(cfg, fragment):
    with pytest.raises(MethodConfigError) as e:
        get_method("peft").validate({"name": "peft", **cfg})
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_type_lists_the_valid_ones():
    with pytest.raises(MethodConfigError) as e:
        get_method("peft").validate({"peft_type": "nope"})
    for t in ("LORA", "HRA", "SHIRA", "VERA", "PROMPT_TUNING"):
        assert t in str(e.value)


def test_roles_map_per_architecture_and_head_trains_apart():
    from transformers import LlamaForCausalLM

    m = get_method("peft")
    bert = m.apply(_bert(), {"peft_type": "LOHA", "r": 2, "target_roles": ["q", "up"], "train_head": "auto"}, _bert_ctx())
    adapted = {n.rsplit(".hada_w1_a", 1)[0] for n, _ in bert.named_parameters() if "hada_w1_a" in n}
    assert sorted(a.split("encoder.")[1] for a in adapted) == [
        f"layer.{i}.{s}" for i in (0, 1) for s in ("attention.self.query", "intermediate.dense")]
    head = [n for n, p in bert.named_parameters() if p.requires_grad and "classifier" in n]
    assert head  # modules_to_save
    torch.manual_seed(0)
    llama = LlamaForCausalLM(tiny_llama_config())
    ctx = MethodContext("causal_lm", model_type="llama", head_modules=[], train_head=False, total_steps=20)
    llama = m.apply(llama, {"peft_type": "LOHA", "r": 2, "target_roles": ["v", "down"], "train_head": "auto"}, ctx)
    adapted = sorted({n.split("layers.")[1].rsplit(".hada", 1)[0] for n, _ in llama.named_parameters() if "hada_w1_a" in n})
    assert adapted == [f"{i}.{s}" for i in (0, 1) for s in ("mlp.down_proj", "self_attn.v_proj")]


def test_targets_matching_nothing_and_prefix_on_an_encoder_are_one_line():
    m = get_method("peft")
    with pytest.raises(MethodConfigError) as e:
        m.apply(_bert(), {"peft_type": "LORA", "target_modules": ["q_proj"], "train_head": "auto"}, _bert_ctx())
    assert "target_modules [q_proj] match no module of this bert model" in str(e.value)
    with pytest.raises(MethodConfigError) as e:
        m.apply(_bert(), _preset("prefix_tuning"), _bert_ctx())
    assert "needs a model whose forward takes past_key_values" in str(e.value)
    with pytest.raises(MethodConfigError) as e:
        m.apply(_bert(), {"peft_type": "LORA", "target_roles": ["gate"], "train_head": "auto"}, _bert_ctx())
    assert "roles ['gate'] unknown for 'bert'" in str(e.value)


# ------------------------------------------------------------------------------------------------ MiLoRA
def test_milora_init_uses_the_smallest_triplets_and_leaves_the_model_unchanged():
    base = _bert()
    ids, mask = _ids()
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask).logits
    W0 = {n: p.detach().clone() for n, p in base.named_parameters() if n.endswith("query.weight")}
    model = get_method("milora").apply(base, _preset("milora", r=4), _bert_ctx()).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # W_res + s B A = W
    for name, w0 in W0.items():
        layer = model.get_submodule("base_model.model." + name.rsplit(".weight", 1)[0])
        s = layer.scaling["default"]
        BA = s * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
        U, S, Vh = torch.linalg.svd(w0)
        minor = U[:, -4:] @ torch.diag(S[-4:]) @ Vh[-4:]
        torch.testing.assert_close(BA, minor, atol=1e-5, rtol=1e-4)  # the minor components, not the principal ones
        torch.testing.assert_close(layer.get_base_layer().weight + BA, w0, atol=1e-5, rtol=1e-5)
        assert torch.linalg.svdvals(BA)[:4].max() <= S[-4] + 1e-5


def test_milora_saved_adapter_reloads_on_the_unchanged_base(tmp_path):
    from peft import PeftModel

    method = get_method("milora")
    model = method.apply(_bert(), _preset("milora", r=4), _bert_ctx())
    with torch.no_grad():  # a "trained" adapter: move A and B
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.add_(0.05 * torch.randn_like(p))
    model.eval()
    ids, mask = _ids()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
    method.save(model, _preset("milora"), str(tmp_path / "a"))
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["init_lora_weights"] is True  # converted to a plain LoRA of rank 2r
    reloaded = PeftModel.from_pretrained(_bert(), str(tmp_path / "a")).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ AdaLoRA
def test_adalora_orthogonal_regulariser_is_in_the_loss():
    method = get_method("adalora")
    model = method.apply(_bert(), _preset("adalora", orth_reg_weight=0.7), _bert_ctx())
    ids, mask = _ids()
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        for n, p in model.named_parameters():  # E starts at 0: move it so that the LoRA branch is live
            if "lora_E" in n:
                p.normal_()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        logits = model(input_ids=ids, attention_mask=mask).logits
        plain = torch.nn.functional.cross_entropy(logits, labels)
        regs = []
        for n, p in model.named_parameters():
            if "lora_A" in n:
                regs.append(torch.linalg.matrix_norm(p @ p.T - torch.eye(p.shape[0])))
            elif "lora_B" in n:
                regs.append(torch.linalg.matrix_norm(p.T @ p - torch.eye(p.shape[1])))
    assert len(regs) == 2 * 2 * 6
    torch.testing.assert_close(loss, plain + 0.7 * torch.stack(regs).mean(), atol=1e-5, rtol=1e-5)


def test_adalora_allocator_steps_after_every_optimizer_step_with_the_true_total(tmp_path):
    from transformers import Trainer, TrainingArguments

    method = get_method("adalora")
    cfg = _preset("adalora", deltaT=1, tinit=0.25, tfinal=0.25)
    model = method.apply(_bert(), cfg, _bert_ctx(total_steps=1000))  # a wrong guess: the run takes 8 steps
    (callback,) = method.callbacks(model, cfg, _bert_ctx())
    seen_grads = []
    tuner = model.base_model
    original = tuner.update_and_allocate

    def spy(step):
        seen_grads.append(any(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n))
        return original(step)

    tuner.update_and_allocate = spy
    ids = torch.randint(3, 120, (32, 8))
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": i % 2} for i in range(32)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             max_steps=8, learning_rate=1e-2, report_to=[], use_cpu=True, logging_steps=100,
                             save_strategy="no", disable_tqdm=True)
    Trainer(model=model.train(), args=args, train_dataset=data, callbacks=[callback]).train()
    conf = model.peft_config["default"]
    assert callback.steps_seen == list(range(8))  # once per optimizer step (not per micro-batch), 0-based
    assert all(seen_grads)  # before zero_grad: the importance scores read the step's gradients
    assert (conf.total_step, conf.tinit, conf.tfinal) == (8, 2, 2)
    assert conf.rank_pattern  # the budget was allocated: ranks masked towards target_r
    kept = sum(int(sum(v)) if isinstance(v, list) else int(v.sum()) for v in conf.rank_pattern.values())
    assert kept == cfg["target_r"] * 12


# ------------------------------------------------------------------------------------------------ end to end
def test_a_peft_type_not_preset_runs_from_a_yaml_in_a_searchpath_folder(tmp_path, glue_dir):
    folder = tmp_path / "mine" / "method"
    folder.mkdir(parents=True)
    (folder / "hra_mine.yaml").write_text(
        "name: hra_mine\npeft_type: HRA\nr: 4\ntarget_roles: [q, v]\ntrain_head: auto\n")
    r = run_cli(["run", *TINY, "method=hra_mine", "task=rte", f"hydra.searchpath=[file://{tmp_path / 'mine'}]",
                 f"data_dir={glue_dir}", f"results_dir={tmp_path}/runs"])
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = [json.loads(p.read_text()) for p in Path(tmp_path / "runs").rglob("*.json")]
    assert rec["status"] == "ok" and rec["config"]["method"]["name"] == "hra_mine"
    # HRA: r Householder vectors of d_in per adapted matrix (2 layers x q, v of width 32)
    assert rec["params"]["trainable_method"] == 2 * 2 * 4 * 32


@pytest.mark.parametrize("args, fragment", [
    (["method=peft", "method.peft_type=LORRA"], "unknown method.peft_type 'LORRA' (did you mean 'LORA'?)"),
    (["method=loha", "+method.rr=3"], "has no option 'rr' (did you mean 'r'?)"),
    (["method=dora", "method.target_roles=[gate]"], "roles ['gate'] unknown for 'bert'"),
    (["method=peft", "+method.target_modules=[q_proj]"], "match no module of this bert model"),
    (["method=prefix_tuning"], "needs a model whose forward takes past_key_values"),
])
def test_bad_peft_input_at_the_command_line_is_one_line(tmp_path, glue_dir, args, fragment):
    r = run_cli_here(["run", *TINY, *args, "task=rte", f"data_dir={glue_dir}", f"results_dir={tmp_path}/runs"])
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], r.stderr[-2000:]
