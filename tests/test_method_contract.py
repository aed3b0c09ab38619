"""One contract for every method in methods.available(), on tiny-bert (sequence classification) and tiny-llama
(causal LM), in the manner of peft's own tests:

1. it applies (or refuses the model family in one line: CANNOT below);
2. two optimizer steps give a finite loss and change what the method trains;
3. the trainable count of the run = `bench params` (meta device) = the closed form in CLOSED_FORM;
4. save, then reload onto a fresh base model in a fresh process, gives the same outputs;
5. merge gives the unmerged outputs, or says "cannot merge" in one line (prompt learning, bottleneck adapters).

Closed forms (h hidden, I FFN width, L layers; tiny-bert h=32 I=64 L=2, V=30522, P=512, 2 labels;
tiny-llama h=32 I=64 L=2, 4 heads / 2 kv heads of 8 -> k / v width kv=16, tied embeddings, VL=32000):
a matrix d_in -> d_out adapted by LoRA rank r costs r (d_in + d_out); the roles adapted are each preset's.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_cfg

H, I, L, V, P, KV, VL = 32, 64, 2, 30522, 512, 16, 32000  # VL: LlamaConfig's default vocabulary
BERT_HEAD = 2 * H + 2  # classifier (pooler output -> 2 labels)
# bert: q, k, v, o are h -> h; llama: q, o h -> h, k, v h -> kv, gate / up h -> I, down I -> h
BERT_QV = [(H, H), (H, H)]
LLAMA_QV = [(H, H), (H, KV)]  # (d_in, d_out)
LLAMA_ALL6 = [(H, H), (H, KV), (H, KV), (H, H), (H, I), (I, H)]  # q k v o up(in) down(out)
BERT_ALL6 = [(H, H)] * 4 + [(H, I), (I, H)]


def lora(r, mats):
    return L * sum(r * (i + o) for i, o in mats)


def bert_total():
    emb = V * H + P * H + 2 * H + 2 * H  # word, position, token type (2), LayerNorm
    layer = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H
    return emb + L * layer + (H * H + H)  # + pooler (the backbone); the head apart


def llama_total():
    layer = (H * H) * 2 + (H * KV) * 2 + 3 * H * I + 2 * H  # q o, k v, gate up down, 2 RMSNorm
    return VL * H + L * layer + H  # tied lm_head, final norm


def lokr_matrix(i, o, r):
    """peft LoKr, decompose_factor -1: each side split into m x n (m <= n closest to sqrt); W1 full (m_out x m_in),
    W2 full when r >= max(n_out, n_in) / 2 else r (n_out + n_in)."""
    def split(d):
        m = max(a for a in range(1, int(math.isqrt(d)) + 1) if d % a == 0)
        return m, d // m
    (mo, no), (mi, ni) = split(o), split(i)
    w2 = no * ni if r >= max(no, ni) / 2 else r * (no + ni)
    return mo * mi + w2


BUDGET = 0.01  # id3 / pafi / random_mask here: 1% of the scope's entries (floor)
# per method and model: the closed form of the method's own trainable count (head apart), or CANNOT
CANNOT = "cannot"
CLOSED_FORM = {
    "full": (bert_total(), llama_total()),
    "lora": (lora(8, BERT_QV), lora(8, LLAMA_QV)),
    "peft": (lora(8, BERT_QV), lora(8, LLAMA_QV)),  # peft's LoRA defaults: r=8 on its default targets (q, v)
    "pissa": (lora(8, BERT_QV), lora(8, LLAMA_QV)),
    "milora": (lora(8, BERT_QV), lora(8, LLAMA_QV)),
    "dora": (lora(8, BERT_QV) + L * 2 * H, lora(8, LLAMA_QV) + L * (H + KV)),  # + a magnitude per output unit
    "lora_dash": (lora(8, BERT_QV) + L * 2 * 8, lora(8, LLAMA_QV) + L * 2 * 8),  # + s=8 scales per matrix
    "adalora": tuple(L * sum(12 * (i + o) + 12 for i, o in m) for m in (BERT_ALL6, LLAMA_ALL6)),  # P, Q, E at init_r
    # peft's defaults: key, value outputs and the inputs of "output.dense" (a suffix: BERT's attention output h AND
    # FFN output I) / Llama's down_proj (I)
    "ia3": (L * (3 * H + I), L * (2 * KV + I)),
    "vera": (L * 2 * (H + 1024), L * ((H + 1024) + (KV + 1024))),  # lambda_b (d_out) + lambda_d (r) per matrix
    "loha": tuple(L * sum(2 * 8 * (i + o) for i, o in m) for m in (BERT_QV, LLAMA_QV)),  # two rank-8 pairs
    "lokr": tuple(L * sum(lokr_matrix(i, o, 8) for i, o in m) for m in (BERT_QV, LLAMA_QV)),
    "oft": (L * 2 * (32 * 31 // 2),) * 2,  # one skew block of n(n-1)/2 per 32 inputs
    "fourierft": (L * 2 * 100,) * 2,  # n_frequency (100 here) per matrix
    "prefix_tuning": (CANNOT, 20 * L * 2 * KV),  # keys and values of 20 virtual tokens per layer
    "prompt_tuning": (20 * H, 20 * H),  # 20 virtual token embeddings
    # every Linear / Embedding output unit scaled by its z (the head's 2 outputs count as head)
    "propulsion": (3 * H + L * (5 * H + I) + H, None),
    "bitfit": (H + L * (7 * H + I) + H, CANNOT),  # emb LN; q k v o, 2 LN, FFN in / out biases; pooler. Llama: none
    "id3": (math.floor(BUDGET * bert_total()), math.floor(BUDGET * llama_total())),
    "pafi": (math.floor(BUDGET * bert_total()), math.floor(BUDGET * llama_total())),
    "random_mask": (math.floor(BUDGET * bert_total()), math.floor(BUDGET * llama_total())),
    # bottleneck adapters (r=64) after the attention output (o) and FFN output (down) of each layer: W_down, b_down,
    # W_up, b_up = 2 h r + r + h each (a parallel adapter reads the sub-layer's h-wide input, so the same)
    "adapter_series": (L * 2 * (2 * H * 64 + 64 + H),) * 2,
    "adapter_parallel": (L * 2 * (2 * H * 64 + 64 + H),) * 2,
}
NO_MERGE = ("prompt_tuning", "prefix_tuning", "adapter_series", "adapter_parallel")  # say "cannot merge" instead
OVERRIDES = {  # tiny-model settings where a preset's paper value does not fit a 32-wide model
    "id3": [f"method.budget={BUDGET}"], "pafi": [f"method.budget={BUDGET}"],
    "random_mask": [f"method.budget={BUDGET}"], "fourierft": ["method.n_frequency=100"],
    "lora_dash": ["method.t=1"],
}
MODELS = {"tiny-bert": ("seq_cls", "task=rte"), "tiny-llama": ("causal_lm", "task=gsm8k")}
SAVED = Path(__import__("tempfile").gettempdir()) / f"peft-bench-contract-{__import__('os').getpid()}"  # read by the fresh-process reload


def _methods():
    from methods import available

    return available()


def _cfg(name, model):
    return compose_cfg([f"method={name}", f"model={model}", MODELS[model][1], *OVERRIDES.get(name, [])])


def _build(cfg, task_type):
    from bench.models.build import build_model

    torch.manual_seed(0)
    kw = {"num_labels": 2} if task_type == "seq_cls" else {}
    return build_model(cfg.model, task_type, **kw).eval()


def _batch(task_type, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (4, 10), generator=g)
    kw = {"labels": torch.tensor([0, 1, 0, 1])} if task_type == "seq_cls" else {"labels": ids}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **kw}


def _out(model, batch):
    """Logits and the last hidden states (a tiny random BERT's logits barely depend on its backbone)."""
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return torch.cat([out.logits.reshape(-1), out.hidden_states[-1].reshape(-1)])


def test_closed_form_table_covers_every_method():
    assert sorted(CLOSED_FORM) == _methods(), "a method without a contract row: add its closed form"


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("name", _methods())
def test_method_contract(name, model_name):
    from bench.models.params import count_parameters
    from bench.perf.paramtable import count_for
    from bench.run.runner import plain, resolve_method
    from bench.run.training import method_context
    from methods import MethodConfigError

    col = list(MODELS).index(model_name)
    expected = CLOSED_FORM[name][col]
    task_type = MODELS[model_name][0]
    cfg = _cfg(name, model_name)
    method = resolve_method(cfg)
    model = _build(cfg, task_type)
    heads = __import__("bench.models.build", fromlist=["head_modules"]).head_modules(model)
    base_total = count_parameters(model)["total"]
    ctx = method_context(model, task_type, cfg, total_steps=2, heads=heads, cache_dir=str(SAVED / "cache"))
    mcfg = plain(cfg.method)
    torch.manual_seed(0)
    if expected == CANNOT:  # the model family cannot take it: one line
        with pytest.raises(MethodConfigError) as e:
            method.apply(model, mcfg, ctx)
        assert "\n" not in str(e.value) and len(str(e.value)) < 600
        return
    model = method.apply(model, mcfg, ctx)
    counts = count_parameters(model, heads, base_total, method.trainable_parameters(model, mcfg))
    if expected is not None:
        assert counts["trainable_method"] == expected, "closed form"
    assert counts["trainable_method"] == count_for(cfg)["trainable_method"], "bench params (meta)"
    assert counts["total"] == base_total

    # two optimizer steps, finite loss, something trained
    train_cfg = {"lr": 1e-2, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
                 "grad_accum": 1, "precision": "fp32", "max_grad_norm": 1.0}
    opt = method.create_optimizer(model, mcfg, ctx, train_cfg) or torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    for step in range(2):
        loss = model(**_batch(task_type, step)).loss
        assert torch.isfinite(loss), loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before), "nothing trained"

    batch = _batch(task_type, 7)
    if hasattr(model, "peft_config"):
        # two small steps move some adapters (AdaLoRA's E starts at 0) too little for a merge or a reload that drops
        # them to show at the tolerance: move every trained adapter tensor as a longer run would, then require the
        # adapter to change the outputs visibly
        with torch.no_grad():
            g = torch.Generator().manual_seed(3)
            for n, p in model.named_parameters():
                if p.requires_grad and not any(h in n for h in heads) and p.is_floating_point():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        if not model.peft_config["default"].is_prompt_learning:  # (virtual tokens change the output's shape)
            with model.disable_adapter():
                plain_out = _out(model, batch)
            assert (_out(model, batch) - plain_out).abs().max() > 1e-3, "the adapter does not change the outputs"
    want = _out(model, batch)
    folder = SAVED / f"{name}__{model_name}"
    method.save(model, mcfg, str(folder / "adapter"))
    torch.save({"batch": batch, "want": want}, folder / "expected.pt")
    (folder / "meta.json").write_text(json.dumps({"method": name, "model": model_name, "task_type": task_type,
                                                  "overrides": OVERRIDES.get(name, [])}))

    # merge
    try:
        merged = method.merge(model, mcfg)
    except MethodConfigError as e:
        assert "cannot merge" in str(e) and "\n" not in str(e)
        assert name in NO_MERGE
        return
    assert name not in NO_MERGE, "merged a method that cannot merge"
    assert not hasattr(merged, "peft_config"), "merge left a peft wrapper"
    torch.testing.assert_close(_out(merged, batch), want, atol=1e-4, rtol=1e-4)


RELOAD = r'''
import json, sys, torch
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import compose_cfg
import methods  # registers this project's peft types (plain peft loads them after this import)
from bench.models.build import build_model
from methods.id3 import apply_delta
from methods.id3.storage import DELTA_FILE
out = {}
for folder in sorted(Path(sys.argv[1]).glob("*__*")):
    meta = json.loads((folder / "meta.json").read_text())
    task = {"seq_cls": "task=rte", "causal_lm": "task=gsm8k"}[meta["task_type"]]
    cfg = compose_cfg([f"method={meta['method']}", f"model={meta['model']}", task, *meta["overrides"]])
    torch.manual_seed(0)
    base = build_model(cfg.model, meta["task_type"], **({"num_labels": 2} if meta["task_type"] == "seq_cls" else {})).eval()
    saved = folder / "adapter"
    if (saved / "adapter_config.json").is_file():
        from peft import PeftModel
        model = PeftModel.from_pretrained(base, str(saved)).eval()
    elif (saved / DELTA_FILE).is_file():
        apply_delta(base, str(saved)); model = base
    else:
        model = type(base).from_pretrained(str(saved)).eval()
    exp = torch.load(folder / "expected.pt")
    b = exp["batch"]
    with torch.no_grad():
        o = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    got = torch.cat([o.logits.reshape(-1), o.hidden_states[-1].reshape(-1)])
    out[folder.name] = float((got - exp["want"]).abs().max())
print(json.dumps(out))
'''


def test_saved_methods_reload_in_a_fresh_process():
    """Runs last in this module: every adapter the contract test saved, reloaded by plain peft / apply_delta /
    from_pretrained in a new interpreter, gives the outputs the trained model gave."""
    folders = sorted(SAVED.glob("*__*"))
    if not folders:
        pytest.skip("run together with test_method_contract (it writes the adapters)")
    r = subprocess.run([sys.executable, "-c", RELOAD, str(SAVED)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    diffs = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(diffs) == {f.name for f in folders}
    bad = {k: v for k, v in diffs.items() if not v <= 1e-4}
    assert not bad, bad


@pytest.fixture(scope="module", autouse=True)
def _fresh_saved():
    import shutil

    shutil.rmtree(SAVED, ignore_errors=True)
    SAVED.mkdir(parents=True)
    yield
