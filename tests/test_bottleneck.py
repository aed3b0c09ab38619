"""Series (Houlsby) and parallel (He et al.) bottleneck adapters: placement, start = base, the math of each mode,
no merge, unload, bad input, and the closed-form count against `bench params` on roberta-base."""

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_cfg

from methods import MethodConfigError
from methods.bottleneck import BottleneckLayer, closed_form

MODELS = {"tiny-bert": ("seq_cls", "task=rte"), "tiny-llama": ("causal_lm", "task=gsm8k")}
# the output projections each mode adapts (roles o, down of methods/targets.py)
WRAPPED = {
    "tiny-bert": {f"bert.encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output.dense", "output.dense")},
    "tiny-llama": {f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.o_proj", "mlp.down_proj")},
}


def _apply(name, model_name, *overrides, randomize_up=False):
    from bench.models.build import build_model, head_modules
    from bench.run.runner import plain, resolve_method
    from bench.run.training import method_context

    task_type, task = MODELS[model_name]
    cfg = compose_cfg([f"method={name}", f"model={model_name}", task, *overrides])
    method = resolve_method(cfg)
    torch.manual_seed(0)
    base = build_model(cfg.model, task_type, **({"num_labels": 2} if task_type == "seq_cls" else {})).eval()
    ctx = method_context(base, task_type, cfg, total_steps=2, heads=head_modules(base), cache_dir="/nonexistent")
    peft_model = method.apply(base, plain(cfg.method), ctx).eval()
    if randomize_up:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in peft_model.base_model.bottleneck_layers().values():
                for mod in (layer.bottleneck_up["default"], layer.bottleneck_down["default"]):
                    mod.weight.copy_(0.2 * torch.randn(mod.weight.shape, generator=g))
                    mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
    return method, cfg, peft_model


def _ids():
    return torch.randint(3, 1000, (2, 9), generator=torch.Generator().manual_seed(0))


def _adapter(layer, u):
    down, up = layer.bottleneck_down["default"], layer.bottleneck_up["default"]
    return F.linear(F.relu(F.linear(u, down.weight, down.bias)), up.weight, up.bias)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", ["adapter_series", "adapter_parallel"])
def test_placement_count_and_start_equal_to_base(name, model_name):
    _, _, model = _apply(name, model_name)
    layers = model.base_model.bottleneck_layers()
    assert set(layers) == WRAPPED[model_name]
    ups = [layer.bottleneck_up["default"] for layer in layers.values()]
    assert all(torch.count_nonzero(u.weight) == 0 and torch.count_nonzero(u.bias) == 0 for u in ups)
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad and "bottleneck_" in n}
    assert sum(trained.values()) == closed_form(32, 64, 4) == 4 * (2 * 32 * 64 + 64 + 32)
    ids = _ids()
    with torch.no_grad():
        got = model(input_ids=ids, output_hidden_states=True)
        with model.disable_adapter():
            want = model(input_ids=ids, output_hidden_states=True)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.hidden_states[-1], want.hidden_states[-1])


def _capture(model, names):
    """Inputs and outputs of the named modules of one forward pass."""
    seen, handles = {}, []
    for n in names:
        mod = model.get_submodule(n)
        handles.append(mod.register_forward_hook(
            lambda m, a, kw, out, n=n: seen.__setitem__(n, (a[0] if a else next(iter(kw.values())), out)),
            with_kwargs=True))
    with torch.no_grad():
        model(input_ids=_ids())
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("model_name", list(MODELS))
def test_series_adds_the_adapter_of_the_projection_output(model_name):
    _, _, model = _apply("adapter_series", model_name, randomize_up=True)
    layers = model.base_model.bottleneck_layers()
    seen = _capture(model.base_model.model, layers)
    for name, layer in layers.items():
        x, y = seen[name]
        h = layer.get_base_layer()(x)
        torch.testing.assert_close(y, h + _adapter(layer, h))
        assert (y - h).abs().max() > 1e-3


def test_parallel_reads_the_sublayer_input_llama():
    """LlamaMLP: mlp(x) = down(silu(gate x) * up x) + a(x); attention: o_proj(context) + a(attention block input)."""
    _, _, model = _apply("adapter_parallel", "tiny-llama", randomize_up=True)
    inner = model.base_model.model
    names = [f"model.layers.{i}.{m}" for i in range(2) for m in ("mlp", "self_attn", "self_attn.o_proj")]
    seen = _capture(inner, names)
    for i in range(2):
        mlp = inner.get_submodule(f"model.layers.{i}.mlp")
        x, y = seen[f"model.layers.{i}.mlp"]
        down = mlp.down_proj
        base = down.get_base_layer()(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        torch.testing.assert_close(y, base + _adapter(down, x))
        attn_in = seen[f"model.layers.{i}.self_attn"][0]
        ctx, o_out = seen[f"model.layers.{i}.self_attn.o_proj"]
        o = inner.get_submodule(f"model.layers.{i}.self_attn.o_proj")
        torch.testing.assert_close(o_out, o.get_base_layer()(ctx) + _adapter(o, attn_in))
        assert (o_out - o.get_base_layer()(ctx)).abs().max() > 1e-3


def test_parallel_reads_the_sublayer_input_bert():
    """BERT: FFN output.dense(intermediate) + a(FFN input = intermediate's input); attention.output.dense(context)
    + a(the attention block's input)."""
    _, _, model = _apply("adapter_parallel", "tiny-bert", randomize_up=True)
    inner = model.base_model.model
    names = [f"bert.encoder.layer.{i}.{m}" for i in range(2)
             for m in ("attention", "intermediate", "output.dense", "attention.output.dense")]
    seen = _capture(inner, names)
    for i in range(2):
        p = f"bert.encoder.layer.{i}"
        for proj, source in (("output.dense", "intermediate"), ("attention.output.dense", "attention")):
            layer = inner.get_submodule(f"{p}.{proj}")
            x, y = seen[f"{p}.{proj}"]
            u = seen[f"{p}.{source}"][0]
            torch.testing.assert_close(y, layer.get_base_layer()(x) + _adapter(layer, u))


@pytest.mark.parametrize("name", ["adapter_series", "adapter_parallel"])
def test_cannot_merge_and_unload_gives_the_base_back(name):
    method, cfg, model = _apply(name, "tiny-llama", randomize_up=True)
    with pytest.raises(MethodConfigError) as e:
        method.merge(model, {})
    assert "cannot merge" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="cannot merge"):
        model.merge_and_unload()
    ids = _ids()
    with torch.no_grad(), model.disable_adapter():
        want = model(input_ids=ids).logits
    base = model.unload()
    assert not any(isinstance(m, BottleneckLayer) for m in base.modules())
    assert not any(m._forward_pre_hooks for m in base.modules()), "parallel input hooks left behind"
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=ids).logits, want)


@pytest.mark.parametrize("overrides, says", [
    (["method.r=0"], "positive integer"),
    (["method.non_linearity=relux"], "did you mean 'relu'"),
    (["+method.bottleneck=8"], "unknown adapter_parallel option"),
    (["method.target_roles=[q]"], "no sublayer_inputs rule"),  # parallel needs a sub-layer's output projection
])
def test_bad_input_is_one_line(overrides, says):
    from bench.errors import BenchError

    with pytest.raises((MethodConfigError, BenchError)) as e:
        _apply("adapter_parallel", "tiny-bert", *overrides)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["adapter_series", "adapter_parallel"])
def test_bench_params_roberta_base_equals_closed_form(name):
    """roberta-base: 12 layers x 2 adapters x (2 * 768 * 64 + 64 + 768) = 2,379,264 (the head apart)."""
    from bench.config.compose import compose
    from bench.perf import paramtable

    cfg = compose([f"method={name}", "model=roberta-base", "task=sst2"])
    assert paramtable.count_for(cfg)["trainable_method"] == closed_form(768, 64, 24) == 2_379_264
