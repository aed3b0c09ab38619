"""LoRA-Dash: parameter counts, direction selection, the optimizer-step switch, save / reload / merge,
checkpoint resume, SVD cache. Tiny models from conftest; every Trainer run is a few CPU steps."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_bert_config

from methods import MethodConfigError, MethodContext, get_method
from methods.lora_dash import (
    DashLinear,
    LoraDashConfig,
    LoraDashSwitchCallback,
    dash_layers,
    is_switched,
    switch_step,
    switch_to_dash,
)
from methods.lora_dash.svd import direction_change, select_directions

BERT_CTX = dict(task_type="seq_cls", model_type="bert", head_modules=["classifier"])
# q k v o in out of a 2-layer tiny BERT: 12 adapted matrices
ALL_SIX = ["q", "k", "v", "o", "in", "out"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models gain nothing from intra-op threads; on a shared 2-core box spinning threads cost 4x CPU
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ctx(tmp_path=None, **kw) -> MethodContext:
    args = dict(BERT_CTX)
    if tmp_path is not None:
        args["cache_dir"] = str(tmp_path / "cache")
    args.update(kw)
    return MethodContext(**args)


def _cfg(**kw) -> dict:
    """conf/method/lora_dash.yaml (the one place with every option's default), then the tests' small settings."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "method" / "lora_dash.yaml").read_text())
    cfg.update({"r": 4, "alpha": 8, "dropout": 0.0, "target_roles": ALL_SIX, "t": 3, "s": 3})
    cfg.update(kw)
    return cfg


def _tiny_bert(seed: int = 0, **config_kw):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**config_kw)).eval()


def _dash(seed=0, tmp_path=None, cfg=None, **config_kw):
    cfg = cfg or _cfg()
    return get_method("lora_dash").apply(_tiny_bert(seed, **config_kw), cfg, _ctx(tmp_path))


def _randomize_lora(model, seed=1, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dash_layers(model):
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * std)


def _randomize_d(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dash_layers(model):
            d = layer.lora_dash_d["default"]
            d.copy_(torch.randn(d.shape, generator=g))


def _ids(seed=3, batch=3, seq=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (batch, seq), generator=g)


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- registration, config ---------------------------------------------------------------------------


def test_registered_and_callback_is_trainer_callback(tmp_path):
    from transformers import TrainerCallback

    method = get_method("lora_dash")
    cbs = method.callbacks(None, _cfg(), _ctx(tmp_path))
    assert len(cbs) == 1 and isinstance(cbs[0], TrainerCallback) and isinstance(cbs[0], LoraDashSwitchCallback)
    assert cbs[0].t == 3 and cbs[0].cache_dir == str(tmp_path / "cache")
    assert method.callbacks(None, _cfg(svd_cache=False), _ctx(tmp_path))[0].cache_dir is None


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"r": 0}, "method.r"),
        ({"r": -2}, "method.r"),
        ({"s": 0}, "method.s"),
        ({"t": -1}, "method.t"),
        ({"r": 2.5}, "method.r"),
        ({"alpha": 0}, "method.alpha"),
        ({"dropout": 1.0}, "method.dropout"),
        ({"target_role": ["q"]}, "did you mean 'target_roles'"),
        ({"train_head": "yes"}, "train_head"),
    ],
)
def test_validate_rejects(bad, needle):
    with pytest.raises(MethodConfigError, match=needle):
        get_method("lora_dash").validate(_cfg(**bad))


def test_a_missing_option_comes_from_the_yaml_and_names_it_when_the_yaml_lacks_it(tmp_path, monkeypatch):
    import methods.options

    cfg = _cfg()
    del cfg["svd_cache"], cfg["t"]
    options = get_method("lora_dash").options(cfg)  # conf/method/lora_dash.yaml fills them in
    assert options.t == 100 and options.svd_cache is True and options.r == 4
    preset = (Path(__file__).resolve().parents[1] / "conf" / "method" / "lora_dash.yaml").read_text()
    (tmp_path / "lora_dash.yaml").write_text("\n".join(line for line in preset.splitlines()
                                                        if not line.startswith(("t:", "svd_cache:"))))
    monkeypatch.setattr(methods.options, "PRESET_DIR", tmp_path)
    with pytest.raises(MethodConfigError, match=r"t, svd_cache missing: conf/method/lora_dash.yaml"):
        get_method("lora_dash").validate(cfg)


def test_validate_accepts_yaml_files():
    import yaml

    root = Path(__file__).resolve().parents[1] / "conf" / "method"
    for name in ("lora_dash.yaml", "lora_dash_glue.yaml", "lora_dash_commonsense.yaml"):
        cfg = yaml.safe_load((root / name).read_text())
        assert cfg["name"] == "lora_dash"
        get_method("lora_dash").validate(cfg)


def test_s_larger_than_matrix_is_rejected_at_apply():
    # tiny BERT matrices are 32 x 32 / 32 x 64: s = 33 cannot fit
    with pytest.raises(MethodConfigError, match="exceeds min"):
        _dash(cfg=_cfg(s=33))


def test_unknown_role_for_architecture_says_what_to_set():
    ctx = MethodContext(task_type="causal_lm", model_type="llama", head_modules=["lm_head"], train_head=False)
    with pytest.raises(MethodConfigError, match="target_roles"):
        get_method("lora_dash").peft_config(_cfg(target_roles=["q", "qq"]), ctx)  # "in" / "out" are Llama roles now


# -- parameter counts ---------------------------------------------------------------------------------


def test_parameter_count_is_lora_plus_s_per_matrix():
    from peft import LoraConfig, get_peft_model

    dash = _dash(cfg=_cfg(s=5))
    ref = get_peft_model(
        _tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=dash.peft_config["default"].target_modules,
                                 modules_to_save=["classifier"])
    )
    layers = list(dash_layers(dash))
    assert len(layers) == 12
    assert _trainable(dash) - _trainable(ref) == 5 * 12
    assert {n.split(".lora_dash_d")[0] for n, p in dash.named_parameters() if "lora_dash_d" in n and p.requires_grad} == {
        n for n, _ in layers
    }


def test_llama7b_layout_adds_exactly_1280():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      vocab_size=32000)
    ctx = MethodContext(task_type="causal_lm", model_type="llama", head_modules=["lm_head"], train_head=False)
    method_cfg = _cfg(r=32, alpha=64, dropout=0.05, target_roles=["q", "k", "v", "up", "down"], t=100, s=8)
    with torch.device("meta"):  # no weights: 6.7B parameters would not fit a test
        dash = get_method("lora_dash").apply(LlamaForCausalLM(cfg), method_cfg, ctx)
    # LoRA r=32 on q k v (4096 x 4096) and up / down (4096 <-> 11008) of 32 layers: (d_in + d_out) * r each
    lora_count = 32 * 32 * (3 * (4096 + 4096) + 2 * (4096 + 11008))
    lora_part = sum(p.numel() for n, p in dash.named_parameters() if p.requires_grad and (".lora_A." in n or ".lora_B." in n))
    assert lora_part == lora_count == 56_098_816
    assert len(list(dash_layers(dash))) == 160
    assert _trainable(dash) - lora_count == 1_280
    assert not is_switched(dash)  # counted structurally, no SVD


# -- direction selection ---------------------------------------------------------------------------


def test_direction_change_matches_dense_formula():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(20, 12, generator=g)
    A, B = torch.randn(3, 12, generator=g), torch.randn(20, 3, generator=g)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    dense = torch.diagonal(U.T @ (0.7 * B @ A) @ Vh.T).abs() / S
    torch.testing.assert_close(direction_change(U, S, Vh, A, B, 0.7), dense, rtol=1e-5, atol=1e-6)


class _OneLinear(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.lin(x)


def test_planted_update_selects_planted_directions():
    from peft import get_peft_model

    d_out, d_in = 24, 16
    g = torch.Generator().manual_seed(0)
    U0, _ = torch.linalg.qr(torch.randn(d_out, d_in, generator=g))
    V0, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g))
    S0 = torch.linspace(10.0, 1.0, d_in)
    net = _OneLinear(d_in, d_out)
    with torch.no_grad():
        net.lin.weight.copy_(U0 @ torch.diag(S0) @ V0.T)
    # planted diagonal changes: direction 5 has the 2nd largest |u^T dW v| but a large s_5, so its
    # ratio ranks below 13 and 9; two off-diagonal terms (u_2 v_7^T, u_11 v_3^T) change no direction
    planted = {0: 5.0, 5: 2.0, 9: -1.5, 13: 0.8}
    ratios = {j: abs(c) / S0[j].item() for j, c in planted.items()}
    expected = sorted(ratios, key=ratios.get, reverse=True)[:3]
    assert expected == [0, 13, 9]
    cols_u = [U0[:, j] * c for j, c in planted.items()] + [U0[:, 2] * 10.0, U0[:, 11] * -7.0]
    rows_v = [V0[:, j] for j in planted] + [V0[:, 7], V0[:, 3]]
    config = LoraDashConfig(r=6, lora_alpha=3, target_modules=["lin"], dash_s=3, dash_t=0)  # scaling 0.5
    model = get_peft_model(net, config)
    layer = model.base_model.model.lin
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.stack(cols_u, 1) / 0.5)
        layer.lora_A["default"].weight.copy_(torch.stack(rows_v, 0))
    info = switch_to_dash(model, step=0)
    assert info["switch_matrices"] == 1
    assert layer.lora_dash_index["default"].tolist() == expected
    U_s, Vh_s = layer.lora_dash_U["default"], layer.lora_dash_Vh["default"]
    for k, j in enumerate(expected):  # u v^T is sign-invariant
        torch.testing.assert_close(torch.outer(U_s[:, k], Vh_s[k]), torch.outer(U0[:, j], V0[:, j]), atol=1e-5, rtol=0)
    assert int(layer.lora_dash_step["default"]) == 0 and layer.is_switched("default")


def test_select_directions_breaks_ties_by_singular_value():
    assert select_directions(torch.tensor([0.0, 2.0, 2.0, 0.0, 1.0]), 3).tolist() == [1, 2, 4]
    assert select_directions(torch.zeros(6), 2).tolist() == [0, 1]


# -- the dash term -----------------------------------------------------------------------------------


def test_switch_keeps_outputs_and_d_then_acts(tmp_path):
    model = _dash(tmp_path=tmp_path)
    _randomize_lora(model)
    x = _ids()
    before = model(input_ids=x).logits
    switch_to_dash(model, step=3, cache_dir=str(tmp_path / "cache"))
    assert is_switched(model) and switch_step(model) == 3
    after = model(input_ids=x).logits
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    for _, layer in dash_layers(model):
        assert torch.count_nonzero(layer.lora_dash_d["default"]) == 0
        # orthonormal chosen directions
        U, Vh = layer.lora_dash_U["default"], layer.lora_dash_Vh["default"]
        torch.testing.assert_close(U.T @ U, torch.eye(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(Vh @ Vh.T, torch.eye(3), atol=1e-5, rtol=0)
    _randomize_d(model)
    moved = model(input_ids=x).logits
    assert (moved - before).abs().max() > 1e-3
    # y = W x + scaling B A x + U diag(d) V^T x, checked on one layer against the explicit formula
    name, layer = next(iter(dash_layers(model)))
    h = torch.randn(2, 5, 32)
    expected = (
        layer.get_base_layer()(h)
        + layer.scaling["default"] * h @ layer.lora_A["default"].weight.T @ layer.lora_B["default"].weight.T
        + h @ layer.lora_dash_Vh["default"].T @ torch.diag(layer.lora_dash_d["default"]) @ layer.lora_dash_U["default"].T
    )
    torch.testing.assert_close(layer(h), expected, atol=1e-5, rtol=1e-5)


def test_switch_twice_is_a_no_op(tmp_path):
    model = _dash()
    _randomize_lora(model)
    switch_to_dash(model, step=3)
    U = [layer.lora_dash_U["default"].clone() for _, layer in dash_layers(model)]
    _randomize_lora(model, seed=9)  # a second switch would now choose differently
    info = switch_to_dash(model, step=7)
    assert info["switch_matrices"] == 0 and switch_step(model) == 3
    assert all(torch.equal(u, layer.lora_dash_U["default"]) for u, (_, layer) in zip(U, dash_layers(model)))


def _trainable_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def test_d_untouched_before_switch_even_with_weight_decay_and_equals_late_param_group():
    """d held by AdamW from the start == d added as a new group at the switch, step for step."""
    held = _dash(cfg=_cfg(dropout=0.0))
    late = copy.deepcopy(held)
    hp = dict(lr=0.05, weight_decay=0.3, betas=(0.9, 0.999), eps=1e-8, foreach=False)
    p_held = _trainable_params(held)
    p_late = _trainable_params(late)
    d_names = [n for n in p_held if "lora_dash_d" in n]
    opt_held = torch.optim.AdamW(list(p_held.values()), **hp)
    opt_late = torch.optim.AdamW([p for n, p in p_late.items() if n not in d_names], **hp)
    labels = torch.tensor([0, 1, 1])
    for step in range(1, 7):
        for model, opt in ((held, opt_held), (late, opt_late)):
            model(input_ids=_ids(seed=step), labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        if step < 3:
            for n in d_names:
                assert p_held[n].grad is None and p_held[n] not in opt_held.state
                assert torch.count_nonzero(p_held[n]) == 0
        if step == 3:
            switch_to_dash(held, step)
            switch_to_dash(late, step)
            opt_late.add_param_group({"params": [p_late[n] for n in d_names]})
    for n in d_names:
        assert torch.count_nonzero(p_held[n]) > 0
        assert opt_held.state[p_held[n]]["step"] == 3  # three dash steps, none before
    for n in p_held:
        torch.testing.assert_close(p_held[n], p_late[n], atol=1e-6, rtol=0)


# -- the switch inside a real Trainer ------------------------------------------------------------------


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=48, seq=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, 128, (n, seq), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


class _Recorder:
    """on_step_end after the switch callback: (global_step, switched, max|d|, d in optimizer state)."""

    def __init__(self):
        from transformers import TrainerCallback

        rows = self.rows = []

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
                ds = [l.lora_dash_d["default"] for _, l in dash_layers(model)]
                in_state = any(len(optimizer.state.get(d, {})) > 0 for d in ds)
                rows.append((state.global_step, is_switched(model), max(d.abs().max().item() for d in ds), in_state))

        self.callback = CB()


def _train(out_dir, model_cfg, *, max_steps=6, accum=1, eval_every=None, save_steps=None, checkpointing=False,
           resume=None, lr=1e-2, seed=0, cache_dir=None):
    from transformers import Trainer, TrainingArguments

    method = get_method("lora_dash")
    torch.manual_seed(seed)
    model = method.apply(_tiny_bert(seed), model_cfg, _ctx(cache_dir=cache_dir, total_steps=max_steps))
    if checkpointing:
        model.enable_input_require_grads()
    rec = _Recorder()
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=4, per_device_eval_batch_size=8,
        gradient_accumulation_steps=accum, max_steps=max_steps, learning_rate=lr, weight_decay=0.1,
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, report_to=[], use_cpu=True, seed=seed,
        eval_strategy="steps" if eval_every else "no", eval_steps=eval_every,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": True} if checkpointing else None,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
    )
    data = _Data()
    trainer = Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=_Data(16, seed=5) if eval_every else None,
        callbacks=method.callbacks(model, model_cfg, _ctx(cache_dir=cache_dir)) + [rec.callback],
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, rec.rows, trainer


@pytest.mark.parametrize("accum, eval_every, checkpointing", [(1, None, False), (3, 1, True)])
def test_trainer_switches_at_optimizer_step_t(tmp_path, accum, eval_every, checkpointing):
    t, lr = 3, 1e-2
    model, rows, _ = _train(tmp_path / "run", _cfg(t=t), accum=accum, eval_every=eval_every,
                            checkpointing=checkpointing, lr=lr)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    for step, switched, dmax, in_state in rows:
        assert switched == (step >= t)
        if step <= t:  # d exactly 0 and never seen by the optimizer up to and including the switch step
            assert dmax == 0.0 and not in_state
        else:
            assert dmax > 0 and in_state
    assert switch_step(model) == t
    # the first dash update of Adam is lr_k * g / (|g| + eps) ~ lr_k: the linear schedule applies to d
    # (step t+1 uses lr * (6 - t) / 6; weight decay acts on d = 0 and so changes nothing)
    first = rows[t][2]
    assert first == pytest.approx(lr * (6 - t) / 6, rel=1e-3)
    for _, layer in dash_layers(model):  # LoRA kept training through the run
        assert torch.count_nonzero(layer.lora_B["default"].weight) > 0


def test_resume_before_and_after_switch_equals_uninterrupted(tmp_path):
    cfg = _cfg(t=3, dropout=0.1)
    full, rows_full, _ = _train(tmp_path / "full", cfg, save_steps=2)
    ref = {n: p.detach().clone() for n, p in _trainable_params(full).items()}
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        resumed, rows, _ = _train(tmp_path / f"from-{ckpt}", cfg, resume=str(tmp_path / "full" / ckpt))
        assert switch_step(resumed) == 3, ckpt
        first = int(ckpt.split("-")[1]) + 1
        assert [r[0] for r in rows] == list(range(first, 7))
        got = _trainable_params(resumed)
        assert set(got) == set(ref)
        for n, p in ref.items():
            torch.testing.assert_close(got[n], p, atol=1e-6, rtol=0, msg=f"{ckpt}: {n}")


# -- save / reload / merge -------------------------------------------------------------------------


def test_save_reload_merge_unmerge(tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    model = _dash()
    _randomize_lora(model)
    switch_to_dash(model, step=3)
    _randomize_d(model)
    x = _ids()
    expected = model(input_ids=x).logits
    get_method("lora_dash").save(model, _cfg(), str(tmp_path / "adapter"))

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    # the type name plus what to import (methods/peft_compat.saved_name), so plain peft says what is missing
    assert config["peft_type"] == "LORA_DASH (peft-bench tuner: `import methods` registers it with peft)"
    assert config["dash_s"] == 3 and config["dash_t"] == 3
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).keys()
    for suffix in ("lora_dash_d", "lora_dash_U", "lora_dash_Vh", "lora_dash_index", "lora_dash_step"):
        assert sum(k.endswith(suffix) for k in keys) == 12, suffix

    reloaded = PeftModel.from_pretrained(_tiny_bert(), str(tmp_path / "adapter"))
    assert is_switched(reloaded) and switch_step(reloaded) == 3
    torch.testing.assert_close(reloaded(input_ids=x).logits, expected, atol=1e-5, rtol=0)
    state = get_method("lora_dash").record_state(reloaded, _cfg())
    assert state["switch_step"] == 3 and state["d_abs_max"] > 0 and state["d_abs_mean"] > 0  # d was randomized

    # merge in place and back
    originals = {n: l.get_base_layer().weight.detach().clone() for n, l in dash_layers(reloaded)}
    reloaded.merge_adapter()
    torch.testing.assert_close(reloaded(input_ids=x).logits, expected, atol=1e-5, rtol=0)
    reloaded.unmerge_adapter()
    for n, l in dash_layers(reloaded):
        torch.testing.assert_close(l.get_base_layer().weight, originals[n], atol=1e-6, rtol=0)
    # exact merged weight: W + scaling B A + U diag(d) V^T
    n0, l0 = next(iter(dash_layers(reloaded)))
    want = originals[n0] + l0.scaling["default"] * l0.lora_B["default"].weight @ l0.lora_A["default"].weight + (
        l0.lora_dash_U["default"] @ torch.diag(l0.lora_dash_d["default"]) @ l0.lora_dash_Vh["default"]
    )
    merged = reloaded.merge_and_unload()
    assert not any(isinstance(m, DashLinear) for m in merged.modules())
    torch.testing.assert_close(merged(input_ids=x).logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.get_submodule(n0.removeprefix("base_model.model.")).weight, want,
                               atol=1e-6, rtol=0)


def test_reload_before_switch_keeps_it_pending(tmp_path):
    from peft import PeftModel

    model = _dash()
    _randomize_lora(model)
    model.save_pretrained(str(tmp_path / "a"))
    reloaded = PeftModel.from_pretrained(_tiny_bert(), str(tmp_path / "a"), is_trainable=True)
    assert not is_switched(reloaded) and switch_step(reloaded) is None
    assert all(p.requires_grad for n, p in reloaded.named_parameters() if "lora_dash_d" in n)


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)).eval()
    ctx = MethodContext(task_type="causal_lm", model_type="gpt2", head_modules=["lm_head"], train_head=False)
    model = get_method("lora_dash").apply(base, _cfg(target_modules=["c_attn", "c_fc"]), ctx)
    _randomize_lora(model)
    switch_to_dash(model, step=3)  # would fail on a shape check if W were not transposed to (d_out, d_in)
    _randomize_d(model)
    x = torch.randint(0, 64, (2, 7))
    expected = model(input_ids=x).logits
    merged = model.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=x).logits, expected, atol=1e-5, rtol=0)


# -- SVD cache ------------------------------------------------------------------------------------


def test_svd_cache_hit_on_second_apply(tmp_path):
    cache = str(tmp_path / "cache")
    first = _dash()
    _randomize_lora(first)
    info1 = switch_to_dash(first, step=3, cache_dir=cache)
    assert (info1["svd_cache_hits"], info1["svd_cache_misses"]) == (0, 12)
    assert len(list((tmp_path / "cache" / "lora_dash_svd").glob("*.safetensors"))) == 12
    second = _dash()
    _randomize_lora(second)
    info2 = switch_to_dash(second, step=3, cache_dir=cache)
    assert (info2["svd_cache_hits"], info2["svd_cache_misses"]) == (12, 0)
    for (_, a), (_, b) in zip(dash_layers(first), dash_layers(second)):
        assert torch.equal(a.lora_dash_index["default"], b.lora_dash_index["default"])
        assert torch.equal(a.lora_dash_U["default"], b.lora_dash_U["default"])
    # a different base model (other seed) misses
    third = _dash(seed=1)
    info3 = switch_to_dash(third, step=3, cache_dir=cache)
    assert (info3["svd_cache_hits"], info3["svd_cache_misses"]) == (0, 12)
    state = get_method("lora_dash").record_state(third, _cfg())
    assert state["switch_cost"]["svd_cache_misses"] == 12 and state["switched"] and state["switch_step"] == 3
    assert state["dash_parameters"] == 36 and state["adapted_matrices"] == 12
    assert state["d_abs_max"] == 0.0  # just switched: d starts at 0
    assert math.isfinite(state["switch_cost"]["switch_seconds"])


@pytest.mark.parametrize("dtype, low_cpu_mem", [(torch.bfloat16, False), (torch.float32, True)])
def test_dtype_and_low_cpu_mem_reload(tmp_path, dtype, low_cpu_mem):
    # (peft itself rounds LoRA weights to the base dtype when low_cpu_mem_usage meets a bf16 base,
    # so that combination cannot be exact for plain LoRA either)
    from peft import PeftModel

    model = get_method("lora_dash").apply(_tiny_bert().to(dtype), _cfg(), _ctx())
    _randomize_lora(model)
    switch_to_dash(model, step=3)
    _randomize_d(model)
    for _, layer in dash_layers(model):
        assert layer.get_base_layer().weight.dtype == dtype
        assert layer.lora_dash_U["default"].dtype == torch.float32  # not truncated to a bf16 base
        assert layer.lora_dash_d["default"].dtype == torch.float32  # peft's adapter autocast
    x = _ids()
    expected = model(input_ids=x).logits
    model.save_pretrained(str(tmp_path / "a"))
    reloaded = PeftModel.from_pretrained(_tiny_bert().to(dtype), str(tmp_path / "a"), low_cpu_mem_usage=low_cpu_mem)
    for (_, a), (_, b) in zip(dash_layers(model), dash_layers(reloaded)):
        assert b.lora_dash_U["default"].dtype == torch.float32
        assert torch.equal(a.lora_dash_U["default"], b.lora_dash_U["default"])
        assert torch.equal(a.lora_dash_d["default"], b.lora_dash_d["default"])
    assert is_switched(reloaded) and switch_step(reloaded) == 3
    torch.testing.assert_close(reloaded(input_ids=x).logits, expected, atol=1e-5, rtol=0)
