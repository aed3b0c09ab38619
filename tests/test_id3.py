"""ID3: exact budget, schedule, no lost entries, O(B) state and storage, AdamW semantics, peer parity."""

import copy

import pytest
import torch
from torch import nn

from methods.base import Method, MethodConfigError, MethodContext
from methods.id3 import ID3Optimizer, apply_delta, read_metadata, resolve_budget
from methods.id3 import in_backward as id3_in_backward
from methods.id3 import select as id3_select
from methods.registry import available, get_method, register


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than two threads on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def _mlp_data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(20, 6, generator=g), torch.randint(0, 3, (20,), generator=g)


def _mlp_step(net, opt, X, Y):
    opt.zero_grad()
    nn.functional.cross_entropy(net(X), Y).backward()
    opt.step()


def _bert_batch(seed=0, n=4, length=12):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 128, (n, length), generator=g),
        "labels": torch.randint(0, 2, (n,), generator=g),
    }


def _ctx(total_steps, **kw):
    return MethodContext(task_type="seq_cls", model_type="bert", head_modules=["classifier"],
                         total_steps=total_steps, **kw)


TRAIN_CFG = dict(lr=1e-2, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)


def _id3_cfg(**kw):
    cfg = dict(name="id3", budget=300, T=4, schedule="incremental", eps=1e-3, exp=0, scope="backbone",
               base=None, base_cfg={})
    cfg.update(kw)
    return cfg


def _train(model, opt, steps, seed0=0):
    model.train(False)  # no dropout: runs are repeatable
    for s in range(steps):
        opt.zero_grad()
        model(**_bert_batch(seed0 + s)).loss.backward()
        opt.step()


def _changed(before: dict, model) -> dict:
    """name -> flat indices where the model differs from ``before``."""
    out = {}
    for n, p in model.named_parameters():
        d = torch.nonzero(p.detach().reshape(-1) != before[n].reshape(-1)).view(-1)
        if d.numel():
            out[n] = d
    return out


def _selected(opt, model) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: opt.selected_indices(p) for p in opt.selective_params if opt.selected_indices(p).numel()}


def _brute_topk(scores: list, k: int) -> list:
    """Global top-k positions by (score desc, position asc), over the concatenation."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))
    return sorted(order[:k])


# ----------------------------------------------------------------------------------------------- selection core
def test_det_topk_breaks_ties_by_position():
    g = torch.Generator().manual_seed(0)
    for n, k in [(50, 7), (200, 199), (1000, 10), (17, 17)]:
        vals = torch.randint(0, 4, (n,), generator=g).float()  # heavy ties
        got = id3_select.det_topk(vals, k).tolist()
        assert got == _brute_topk([vals], k)


@pytest.mark.parametrize("skip_by_bound", [True, False])  # chunks by decreasing max |g| (CPU) / in position order
def test_chunked_streaming_selection_matches_brute_force(monkeypatch, skip_by_bound):
    """Small CHUNK / SAMPLE force the multi-chunk, sampled-threshold and floor paths; the result must not change."""
    monkeypatch.setattr(ID3Optimizer, "skip_by_bound", skip_by_bound)
    monkeypatch.setattr(id3_select, "CHUNK", 64)
    monkeypatch.setattr(id3_select, "SAMPLE", 8)
    g = torch.Generator().manual_seed(3)
    params = [nn.Parameter(torch.randn(n, generator=g)) for n in (300, 5, 129, 64)]
    for p in params:  # quantised gradients: many ties, also across tensors and chunks; some zero runs
        p.grad = torch.randint(-3, 4, (p.numel(),), generator=g).float()
    params[2].grad[10:100] = 0.0
    for k in (1, 7, 40, 300, 498):
        opt = ID3Optimizer(params, budget=498, T=1, free_grads=False)
        got = opt._select(k, exclude_selected=False)
        flat = []
        for i, idx in enumerate(got):
            flat += (idx + opt._offsets[i]).tolist()
        assert flat == _brute_topk([p.grad.abs() for p in params], k)
    # still-masked only: after a first growth, the next pick skips the selected entries
    opt = ID3Optimizer(params, budget=498, T=1, free_grads=False)
    opt._grow(57)
    taken = set()
    for i, p in enumerate(params):
        taken |= {int(j) + opt._offsets[i] for j in opt.selected_indices(p)}
    scores = torch.cat([p.grad.abs() for p in params])
    scores[list(taken)] = -1.0
    got = opt._select(100, exclude_selected=True)
    flat = sorted(int(j) + opt._offsets[i] for i, idx in enumerate(got) for j in idx)
    assert flat == _brute_topk([scores], 100)
    assert not (set(flat) & taken)


def test_batched_selection_matches_brute_force_and_the_chunked_path(monkeypatch):
    """The GPU path (one flat score vector, one global top-k; forced here on CPU) selects exactly what the chunked
    path and the brute-force order select: ties across tensors, masked entries, exp != 0; a NaN gradient as 0."""
    monkeypatch.setattr(id3_select, "CHUNK", 64)
    monkeypatch.setattr(id3_select, "SAMPLE", 8)
    g = torch.Generator().manual_seed(3)
    params = [nn.Parameter(torch.randn(n, generator=g)) for n in (300, 5, 129, 64)]
    for p in params:
        p.grad = torch.randint(-3, 4, (p.numel(),), generator=g).float()
    params[2].grad[10:100] = 0.0
    for exp in (0.0, 1.0, 2.0):
        for k in (1, 7, 40, 300, 498):
            picks = []
            for batched in (False, True):
                monkeypatch.setattr(ID3Optimizer, "batched", batched)
                opt = ID3Optimizer(params, budget=498, T=1, free_grads=False, score_exp=exp)
                picks.append([idx.tolist() for idx in opt._select(k, exclude_selected=False)])
            assert picks[0] == picks[1], (exp, k)
            if exp == 0.0:
                flat = [j + opt._offsets[i] for i, idx in enumerate(picks[1]) for j in idx]
                assert flat == _brute_topk([torch.nan_to_num(p.grad.abs()) for p in params], k)
    # a NaN gradient counts as 0 (select.det_topk's rule): it neither wins nor leaves the budget short
    params[0].grad[7] = float("nan")
    for batched in (True, False):  # both paths: the chunked one must not drop the NaN where zeros are taken
        monkeypatch.setattr(ID3Optimizer, "batched", batched)
        for k in (1, 300, 420, 498):
            got = ID3Optimizer(params, budget=498, T=1, free_grads=False)._select(k, exclude_selected=False)
            flat = [j + opt._offsets[i] for i, idx in enumerate(got) for j in idx.tolist()]
            assert flat == _brute_topk([torch.nan_to_num(p.grad.abs()) for p in params], k), (batched, k)
    params[0].grad[7] = 1.0
    # growth over steps: the kept mask positions exclude what was taken, as the per-tensor idx does
    masks = []
    for batched in (False, True):
        monkeypatch.setattr(ID3Optimizer, "batched", batched)
        opt = ID3Optimizer(params, budget=400, T=4, free_grads=False)
        for _ in range(4):
            opt._grow(opt.increment(opt.steps))
            opt.steps += 1
        masks.append([opt.selected_indices(p).tolist() for p in params])
        assert opt.unmasked_count() == 400
    assert masks[0] == masks[1]


@pytest.mark.parametrize("schedule", ["incremental", "dynamic"])
def test_batched_path_trains_bert_as_the_chunked_path(tiny_bert, monkeypatch, schedule):
    monkeypatch.setattr(id3_select, "CHUNK", 1 << 12)  # several chunks on the tiny model
    runs = []
    for batched in (False, True):
        monkeypatch.setattr(ID3Optimizer, "batched", batched)
        model = copy.deepcopy(tiny_bert)
        method = get_method("id3")
        cfg = _id3_cfg(budget=500, T=3, schedule=schedule, exp=1)
        model = method.apply(model, cfg, _ctx(3))
        opt = method.create_optimizer(model, cfg, _ctx(3), TRAIN_CFG)
        _train(model, opt, 4)
        runs.append((_selected(opt, model), {n: p.detach().clone() for n, p in model.named_parameters()}))
    (sel_a, w_a), (sel_b, w_b) = runs
    assert sel_a.keys() == sel_b.keys() and all(torch.equal(sel_a[n], sel_b[n]) for n in sel_a)
    assert all(torch.equal(w_a[n], w_b[n]) for n in w_a)


def test_chunks_visited_by_largest_gradient_skip_unread_and_select_the_same(monkeypatch):
    """exp = 0: chunks go in decreasing max |g|; those below the k-th best are never scored; ties still by position."""
    monkeypatch.setattr(id3_select, "CHUNK", 32)
    monkeypatch.setattr(id3_select, "SAMPLE", 8)
    g = torch.Generator().manual_seed(5)
    scales = (0.01, 1.0, 0.01, 0.5, 1.0, 0.001)  # small-gradient tensors first and between the large ones
    params = [nn.Parameter(torch.randn(n, generator=g)) for n in (200, 70, 96, 64, 33, 150)]
    for p, sc in zip(params, scales):  # quantised: ties within and across tensors, also at the k-th score
        p.grad = sc * torch.randint(-3, 4, (p.numel(),), generator=g).float()
    scored = []
    for k in (1, 5, 30, 90, 130, 400, 613):
        opt = ID3Optimizer(params, budget=613, T=1, free_grads=False)
        real = opt._score
        monkeypatch.setattr(opt, "_score", lambda p, s, e, out, real=real: scored.append(1) or real(p, s, e, out))
        scored.clear()
        got = opt._select(k, exclude_selected=False)
        flat = [int(j) + opt._offsets[i] for i, idx in enumerate(got) for j in idx]
        assert flat == _brute_topk([p.grad.abs() for p in params], k), k
        if k <= 90:  # the small-gradient tensors (half of the entries) are never scored
            assert len(scored) < len(opt._chunks()), (k, len(scored))


# ----------------------------------------------------------------------------------------------- schedule / budget
def test_unmasked_count_follows_the_schedule():
    net = _mlp()
    X, Y = _mlp_data()
    opt = ID3Optimizer(net.parameters(), budget=10, T=4, lr=1e-2)
    counts = []
    for _ in range(6):
        _mlp_step(net, opt, X, Y)
        counts.append(opt.unmasked_count())
        assert opt.unmasked_count() == opt.expected_unmasked(opt.steps)
    assert counts == [3, 6, 8, 10, 10, 10]  # 10 // 4 = 2, remainder 2 to the first two steps
    assert opt.updates_performed == 3 + 6 + 8 + 10 + 10 + 10


def test_budget_smaller_than_T_gives_exactly_B():
    net = _mlp()
    base = copy.deepcopy(net)
    X, Y = _mlp_data()
    opt = ID3Optimizer(net.parameters(), budget=3, T=7, lr=1e-2, weight_decay=0.1)
    counts = []
    for _ in range(9):
        _mlp_step(net, opt, X, Y)
        counts.append(opt.unmasked_count())
    assert counts == [1, 2, 3, 3, 3, 3, 3, 3, 3]
    changed = sum(int((p != q).sum()) for p, q in zip(net.parameters(), base.parameters()))
    assert changed == 3


def test_tied_scores_keep_the_budget_exact_with_weight_decay():
    """All scores tie every step (constant gradient, equal weights): exactly B entries change, by flat index order."""
    lin = nn.Linear(16, 16, bias=False)
    nn.init.constant_(lin.weight, 0.5)
    base = lin.weight.detach().clone()
    opt = ID3Optimizer(lin.parameters(), budget=37, T=5, lr=1e-2, weight_decay=0.1, score_exp=1.0)
    x = torch.ones(3, 16)
    for _ in range(8):
        opt.zero_grad()
        lin(x).sum().backward()
        opt.step()
    changed = torch.nonzero(lin.weight.detach().view(-1) != base.view(-1)).view(-1)
    assert changed.tolist() == list(range(37))
    assert opt.unmasked_count() == 37


def test_ties_across_tensors_go_to_the_earlier_tensor():
    a, b = nn.Parameter(torch.zeros(10)), nn.Parameter(torch.zeros(10))
    opt = ID3Optimizer([a, b], budget=15, T=1, lr=1e-2)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert opt.selected_indices(a).tolist() == list(range(10))
    assert opt.selected_indices(b).tolist() == list(range(5))


def test_full_budget_is_exactly_torch_adamw():
    """With every entry selected at step 0, the sparse update is torch's AdamW (decoupled weight decay included)."""
    net, ref = _mlp(), _mlp()
    X, Y = _mlp_data()
    entries = sum(p.numel() for p in net.parameters())
    opt = ID3Optimizer(net.parameters(), budget=entries, T=1, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99))
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), foreach=False)
    for _ in range(5):
        _mlp_step(net, opt, X, Y)
        _mlp_step(ref, ref_opt, X, Y)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_dense_group_is_torch_adamw_and_reads_lr_from_the_group():
    net, ref = _mlp(), _mlp()
    X, Y = _mlp_data()
    sel = nn.Parameter(torch.linspace(-1, 1, 7))
    opt = ID3Optimizer([{"params": [sel]}, {"params": list(net.parameters()), "selective": False}],
                       budget=5, T=2, lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda s: 1.0 / (1 + s))
    for _ in range(4):
        opt.zero_grad()
        (nn.functional.cross_entropy(net(X), Y) + (sel**3).sum()).backward()
        opt.step()
        _mlp_step(ref, ref_opt, X, Y)
        sched.step()
        ref_sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 5)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert opt.unmasked_count() == 5 and int((sel.detach() != torch.linspace(-1, 1, 7)).sum()) == 5


# ----------------------------------------------------------------------------------------------- the method on BERT
def _bert_id3(model, steps=6, **cfg_kw):
    method = get_method("id3")
    cfg = _id3_cfg(**cfg_kw)
    method.validate(cfg)
    model = method.apply(model, cfg, _ctx(total_steps=steps))
    opt = method.create_optimizer(model, cfg, _ctx(total_steps=steps), TRAIN_CFG)
    return method, cfg, model, opt


def test_bert_budget_exact_entries_never_lost_head_dense(tiny_bert):
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    method, cfg, model, opt = _bert_id3(tiny_bert, budget=301, T=4)
    assert method.trainable_parameters(model, cfg) == 301
    assert all(p.requires_grad for p in model.parameters())  # backbone in scope + dense head
    prev: dict = {}
    for s in range(6):
        _train(model, opt, 1, seed0=s)
        sel = _selected(opt, model)
        for n, idx in prev.items():  # the mask only grows
            assert set(idx.tolist()) <= set(sel[n].tolist())
        prev = sel
        assert sum(v.numel() for v in sel.values()) == opt.expected_unmasked(s + 1)
    assert sum(v.numel() for v in prev.values()) == 301
    changed = _changed(before, model)
    head = {n for n in changed if n.startswith("classifier.")}
    assert head == {"classifier.weight", "classifier.bias"}
    assert changed["classifier.weight"].numel() == model.classifier.weight.numel()  # dense head
    backbone_changed = 0
    for n, idx in changed.items():
        if n in head:
            continue
        assert set(idx.tolist()) <= set(prev[n].tolist()), n  # nothing outside the mask moved
        backbone_changed += idx.numel()
    # exp = 0 picks the largest |g| first, all non-zero here, so every selected entry moved: exactly B differ
    assert backbone_changed == 301
    state = method.record_state(model, cfg)
    assert state["unmasked"] == 301 and state["steps"] == 6 and state["budget"] == 301
    assert state["updates_performed"] == sum(opt.expected_unmasked(s) for s in range(1, 7))
    assert not state["budget_is_per_step"]


def test_optimizer_state_is_order_budget(tiny_bert):
    method, cfg, model, opt = _bert_id3(tiny_bert, budget=200, T=3)
    _train(model, opt, 4)
    numel = opt.state_numel()
    assert numel["selective"] == 3 * 200  # idx + exp_avg + exp_avg_sq per selected entry
    assert numel["dense"] == 2 * sum(p.numel() for p in model.classifier.parameters())
    assert all(p.grad is None for p in opt.selective_params)  # grads freed after the step


def test_save_apply_roundtrip_reproduces_the_model(tiny_bert, tmp_path):
    from tests.conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    method, cfg, model, opt = _bert_id3(tiny_bert, budget=250, T=3)
    _train(model, opt, 5)
    method.save(model, cfg, str(tmp_path))
    meta = read_metadata(str(tmp_path))
    assert meta["budget"] == 250 and meta["unmasked"] == 250

    from safetensors import safe_open

    with safe_open(str(tmp_path / "id3_delta.safetensors"), framework="pt") as f:
        stored = sum(f.get_tensor(k).numel() for k in f.keys() if k.endswith("::idx"))
        dense = {k for k in f.keys() if k.endswith("::dense")}
    assert stored == 250  # O(B): only the selected entries
    assert dense == {"classifier.weight::dense", "classifier.bias::dense"}

    torch.manual_seed(0)
    fresh = BertForSequenceClassification(tiny_bert_config()).eval()
    apply_delta(fresh, str(tmp_path))
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n
    batch = _bert_batch(99)
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch["input_ids"]).logits, fresh(input_ids=batch["input_ids"]).logits)


def test_static_and_dynamic_schedules(tiny_bert, tmp_path):
    from tests.conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    method, cfg, model, opt = _bert_id3(tiny_bert, budget=120, T=5, schedule="dynamic")
    for s in range(5):
        _train(model, opt, 1, seed0=s)
        assert opt.unmasked_count() == 120  # B per step
    changed = _changed(before, model)
    ever = sum(v.numel() for n, v in changed.items() if not n.startswith("classifier."))
    state = method.record_state(model, cfg)
    assert state["budget_is_per_step"] and "may exceed B" in state["note"]
    assert ever <= state["changed_entries"] and state["changed_entries"] > 120  # masks moved between steps
    method.save(model, cfg, str(tmp_path))
    torch.manual_seed(0)
    fresh = BertForSequenceClassification(tiny_bert_config()).eval()
    apply_delta(fresh, str(tmp_path))
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n

    torch.manual_seed(0)
    m2 = BertForSequenceClassification(tiny_bert_config()).eval()
    _, _, m2, opt2 = _bert_id3(m2, budget=120, T=5, schedule="static")
    _train(m2, opt2, 1)
    first = _selected(opt2, m2)
    _train(m2, opt2, 3, seed0=1)
    assert opt2.unmasked_count() == 120
    assert {n: v.tolist() for n, v in _selected(opt2, m2).items()} == {n: v.tolist() for n, v in first.items()}


def test_optimizer_checkpoint_resume_is_exact():
    X, Y = _mlp_data()
    net_a, net_b = _mlp(), _mlp()
    opt_a = ID3Optimizer(net_a.parameters(), budget=30, T=6, lr=1e-2, weight_decay=0.1)
    for _ in range(6):
        _mlp_step(net_a, opt_a, X, Y)
    opt_b = ID3Optimizer(net_b.parameters(), budget=30, T=6, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        _mlp_step(net_b, opt_b, X, Y)
    sd = copy.deepcopy(opt_b.state_dict())
    opt_c = ID3Optimizer(net_b.parameters(), budget=30, T=6, lr=1e-2, weight_decay=0.1)
    opt_c.load_state_dict(sd)
    assert all(opt_c.state[p]["idx"].dtype == torch.long for p in opt_c.selective_params if "idx" in opt_c.state[p])
    for _ in range(3):
        _mlp_step(net_b, opt_c, X, Y)
    assert opt_c.steps == 6 and opt_c.unmasked_count() == 30
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------------------------- config / composition
def test_validate_rejects_bad_options_with_hints():
    m = get_method("id3")
    for bad, word in [
        (dict(budget=0), "budget"), (dict(budget=-5), "budget"), (dict(budget=1.5), "budget"),
        (dict(budget=True), "budget"), (dict(exp=-1), "exp"), (dict(eps=0), "eps"),
        (dict(schedule="weekly"), "schedule"), (dict(T=0), "T"), (dict(scope="head"), "scope"),
        (dict(base="lorra"), "base"), (dict(base="id3"), "base"),
    ]:
        with pytest.raises(MethodConfigError, match=word):
            m.validate(_id3_cfg(**bad))
    m.validate(_id3_cfg(budget=0.01))
    m.validate(_id3_cfg(budget=1e5))
    assert resolve_budget(0.01, 12345) == 123
    # a budget above the selectable entries is refused (it would silently train every entry); "all" asks for that
    with pytest.raises(MethodConfigError, match="exceeds the 500 selectable entries"):
        resolve_budget(10**9, 500)
    assert resolve_budget(500, 500) == 500 and resolve_budget("all", 500) == 500
    m.validate(_id3_cfg(budget="all"))


def test_missing_T_is_an_actionable_error(tiny_bert):
    m = get_method("id3")
    with pytest.raises(MethodConfigError, match="method.T"):
        m.apply(tiny_bert, _id3_cfg(T=None), _ctx(total_steps=None))


class _BiasOnly(Method):
    """Stand-in base method: only biases (and the head) train, like BitFit."""

    name = "_id3_test_bias_only"

    def apply(self, model, cfg, ctx):
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith(".bias") or n.startswith("classifier."))
        return model


register(_BiasOnly)


def test_composition_with_a_base_method_counts_its_entries(tiny_bert):
    before = {n: p.detach().clone() for n, p in tiny_bert.named_parameters()}
    method, cfg, model, opt = _bert_id3(tiny_bert, budget=40, T=3, base="_id3_test_bias_only")
    assert all(n.endswith(".bias") for n in model._id3_plan.scope_names)
    assert model._id3_plan.head_names == ["classifier.weight", "classifier.bias"]
    assert not model.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    _train(model, opt, 4)
    changed = _changed(before, model)
    assert sum(v.numel() for n, v in changed.items() if not n.startswith("classifier.")) <= 40
    assert opt.unmasked_count() == 40
    assert all(n.endswith(".bias") or n.startswith("classifier.") for n in changed)


@pytest.mark.skipif("lora" not in available(), reason="methods/peft_methods.py has no 'lora' yet")
def test_composition_with_lora_roundtrip(tiny_bert, tmp_path):
    from tests.conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(123)
    method, cfg, model, opt = _bert_id3(tiny_bert, budget=64, T=4, base="lora",
                                        base_cfg={"r": 2, "alpha": 4, "dropout": 0.0})
    scope = model._id3_plan.scope_names
    assert scope and all("lora_" in n for n in scope)
    assert model._id3_plan.scope_entries == 2 * 2 * (2 * 32 * 2)  # 2 layers x q,v x (A + B), r=2, hidden 32
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, opt, 5)
    changed = _changed(before, model)
    lora_changed = sum(v.numel() for n, v in changed.items() if "lora_" in n)
    assert 0 < lora_changed <= 64 and opt.unmasked_count() == 64
    assert all("lora_" in n or "classifier" in n for n in changed)  # pretrained weights untouched
    method.save(model, cfg, str(tmp_path))

    torch.manual_seed(0)
    fresh = BertForSequenceClassification(tiny_bert_config()).eval()
    torch.manual_seed(123)  # LoRA's A is random: the starting point needs the same seed
    fresh = get_method("lora").apply(fresh, model._id3_plan.base_cfg, _ctx(total_steps=5))
    apply_delta(fresh, str(tmp_path))
    batch = _bert_batch(7)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=batch["input_ids"]).logits,
                                   fresh(input_ids=batch["input_ids"]).logits, rtol=0, atol=0)


def test_trainer_drives_the_optimizer(tiny_bert, tmp_path):
    """The harness path: transformers.Trainer with our optimizer; its LR scheduler sets each group's lr."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    method, cfg, model, opt = _bert_id3(tiny_bert, budget=90, T=3)
    rows = [{"input_ids": _bert_batch(i, n=1)["input_ids"][0].tolist(), "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4,
                             learning_rate=1e-2, lr_scheduler_type="linear", report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True, logging_steps=100)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), optimizers=(opt, None))
    trainer.train()
    assert opt.steps == 4 and opt.unmasked_count() == 90
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # linear decay to 0 reached the group


# ----------------------------------------------------------------------------------------------- peer
@pytest.mark.parametrize("in_backward", [False, True])
@pytest.mark.parametrize("exp", [0.0, 1.0])
def test_same_selection_as_selective_optimizers(exp, in_backward):
    """The authors' package (selective-optimizers 0.4) selects the same entries and gives the same weights when scores
    have no ties. Its optimizer never advances its own step counter, so the test advances it (B % T != 0 here), and
    it keeps unmasking past T, so the comparison covers T steps."""
    wrap = pytest.importorskip("selective_optimizers.wrap", reason="selective-optimizers (test-only) not installed")
    X, Y = _mlp_data()
    ours_net, peer_net = _mlp(), _mlp()
    B, T = 41, 8
    ours = ID3Optimizer(ours_net.parameters(), budget=B, T=T, lr=1e-2, score_eps=1e-3, score_exp=exp,
                        free_grads=False, in_backward=in_backward)
    peer_cls = wrap.get_selective_optimizer(torch.optim.AdamW, "id3")
    peer = peer_cls(peer_net.parameters(), lr=1e-2, budget=B, max_steps=T, eps=1e-3, exp=exp, verify=False)
    for _ in range(T):
        _mlp_step(ours_net, ours, X, Y)
        _mlp_step(peer_net, peer, X, Y)
        peer.global_step += 1
        for p, q, mask in zip(ours_net.parameters(), peer_net.parameters(), peer.param_groups[0]["chosen_masks"]):
            mine = torch.zeros(p.numel(), dtype=torch.bool)
            mine[ours.selected_indices(p)] = True
            assert torch.equal(mine, mask.reshape(-1))
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert ours.unmasked_count() == peer.get_budget_used() == B


def test_causal_lm_with_tied_embeddings(tiny_llama):
    """An LM: the head is not trained (train_head False); the tied embedding / LM head tensor is one scope tensor."""
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    method = get_method("id3")
    cfg = _id3_cfg(budget=100, T=2)
    ctx = MethodContext(task_type="causal_lm", model_type="llama", head_modules=["lm_head"], train_head=False,
                        total_steps=2)
    model = method.apply(tiny_llama, cfg, ctx)
    opt = method.create_optimizer(model, cfg, ctx, TRAIN_CFG)
    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert opt.unmasked_count() == 100 and opt.state_numel()["dense"] == 0
    changed = _changed(before, model)
    assert sum(v.numel() for v in changed.values()) == 100


# ----------------------------------------------------------------------------------------------- in-backward mode
def _bert_pair_run(in_backward, schedule, exp, clip, steps=6):
    """tiny BERT, ID3 through the method hooks; the standard mode clips as the Trainer does (before step)."""
    from tests.conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    method = get_method("id3")
    cfg = _id3_cfg(budget=300, T=4, schedule=schedule, exp=exp, in_backward=in_backward)
    model = method.apply(model, cfg, _ctx(total_steps=4))
    opt = method.create_optimizer(model, cfg, _ctx(total_steps=4), {**TRAIN_CFG, "max_grad_norm": clip})
    assert opt.in_backward is in_backward and opt.handles_grad_clipping is in_backward
    trainable = [p for p in model.parameters() if p.requires_grad]
    for s in range(steps):
        opt.zero_grad()
        model(**_bert_batch(s)).loss.backward()
        if in_backward:  # every selective gradient was scored and dropped during backward; the head's is kept
            assert all(p.grad is None for p in opt.selective_params)
            assert model.classifier.weight.grad is not None
            bw = opt._bw  # O(B): the gradient at the selected entries, and at the (<= k) candidates of this step
            assert sum(g.numel() for g in bw.gsel.values()) == (opt.unmasked_count() if bw.exclude else 0)
            assert bw.top.pos.numel() <= bw.k
        elif clip:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        opt.step()
    return model, opt


@pytest.mark.parametrize("schedule,exp,clip,small", [
    ("incremental", 0.0, 0.0, 64), ("incremental", 1.0, 0.05, 64), ("incremental", 0.0, 0.05, 4096),
    ("static", 0.0, 0.05, 64), ("dynamic", 0.0, 0.0, 64), ("dynamic", 1.0, 0.05, 4096), ("incremental", 1.0, 0.0, 0),
])
def test_in_backward_selects_and_trains_as_the_step_mode(monkeypatch, schedule, exp, clip, small):
    """Selection during backward (several chunks per tensor, bound skipping on; small tensors staged and scored in
    batches, several flushes) = selection in step(); the weights agree exactly without clipping, and to float
    rounding of the global norm with it (clip 0.05 always bites)."""
    monkeypatch.setattr(id3_select, "CHUNK", 500)
    monkeypatch.setattr(id3_select, "SAMPLE", 16)
    monkeypatch.setattr(id3_in_backward, "STAGE_SMALL", small)
    monkeypatch.setattr(id3_in_backward, "STAGE_FLUSH", 700)
    a, oa = _bert_pair_run(False, schedule, exp, clip)
    b, ob = _bert_pair_run(True, schedule, exp, clip)
    for p, q in zip(oa.selective_params, ob.selective_params):
        assert torch.equal(oa.selected_indices(p), ob.selected_indices(q))
    assert oa.changed_count() == ob.changed_count() and ob.unmasked_count() == 300
    tol = 0 if clip == 0 else 1e-7
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=tol)
    if clip:
        assert float(ob.last_grad_norm) > clip


@pytest.mark.parametrize("blocks", [False, True])
@pytest.mark.parametrize("order_seed,small,flush,nan", [(0, 0, 1, False), (1, 100, 150, False),
                                                      (2, 4096, 1 << 16, False), (3, 100, 1 << 16, False),
                                                      (4, 0, 1, True), (5, 100, 150, True)])
def test_in_backward_ties_in_any_hook_order_match_brute_force(monkeypatch, order_seed, small, flush, nan, blocks):
    """Gradients arrive in backward order, not position order; with heavy ties (also at the k-th score, across
    tensors, chunks and staged batches of small tensors) the selection is still the global top-k by (score,
    position). ``nan``: NaN gradients count as 0, with a budget that takes zeros too (select.det_topk's rule).
    ``blocks``: chunks scored only in the blocks whose largest |g| reaches the floor (partial last blocks too)."""
    monkeypatch.setattr(id3_select, "CHUNK", 64)
    monkeypatch.setattr(id3_select, "SAMPLE", 8)
    monkeypatch.setattr(id3_in_backward, "BLOCK", 8 if blocks else 1 << 7)
    monkeypatch.setattr(id3_in_backward, "BLOCK_MIN", 20 if blocks else 1 << 30)
    if blocks:  # cut at every offer, so the floor is known from the second tensor on and the blocks are used
        monkeypatch.setattr(id3_in_backward, "SLACK_FACTOR", 1)
        monkeypatch.setattr(id3_in_backward, "SLACK_EXTRA", 0)
    monkeypatch.setattr(id3_in_backward, "STAGE_SMALL", small)
    monkeypatch.setattr(id3_in_backward, "STAGE_FLUSH", flush)
    g = torch.Generator().manual_seed(3)
    sizes = (300, 5, 129, 64, 90)
    grads = [torch.randint(-3, 4, (n,), generator=g).float() * sc for n, sc in zip(sizes, (1, 1, 0.5, 1, 0.01))]
    grads[2][10:100] = 0.0
    budget = 230
    if nan:
        grads[0][7] = grads[3][3] = grads[2][50] = float("nan")
        budget = 560  # of 588 entries: zeros (and so the NaNs) are taken in the last steps
    params = [nn.Parameter(torch.randn(n, generator=g)) for n in sizes]
    opt = ID3Optimizer(params, budget=budget, T=3, lr=1e-3, in_backward=True)
    order = torch.randperm(len(params), generator=torch.Generator().manual_seed(order_seed)).tolist()
    taken: set = set()
    for step in range(3):
        k = opt.increment(step)
        for i in order:  # what autograd's hook would do, in a shuffled order
            params[i].grad = grads[i].clone()
            opt._on_grad(i, params[i])
        opt.step()
        now = {int(j) + opt._offsets[i] for i, p in enumerate(params) for j in opt.selected_indices(p)}
        scores = torch.cat([torch.nan_to_num(x.abs()) for x in grads])
        scores[list(taken)] = -1.0
        assert sorted(now - taken) == _brute_topk([scores], k), step
        assert taken <= now
        taken = now
    assert len(taken) == budget


def test_in_backward_needs_one_backward_per_step():
    net = _mlp()
    X, Y = _mlp_data()
    opt = ID3Optimizer(net.parameters(), budget=10, T=2, in_backward=True)
    nn.functional.cross_entropy(net(X), Y).backward()
    with pytest.raises(RuntimeError, match="in_backward=False"):
        nn.functional.cross_entropy(net(X), Y).backward()
    opt.zero_grad()  # forgets the gathered step: a new backward is fine
    nn.functional.cross_entropy(net(X), Y).backward()
    opt.step()
    assert opt.unmasked_count() == 5
    second = ID3Optimizer(net.parameters(), budget=10, T=2, in_backward=True)  # replaces the first one's hooks
    nn.functional.cross_entropy(net(X), Y).backward()
    second.step()
    assert second.unmasked_count() == 5 and opt._bw is None
    second.remove_hooks()
    net.zero_grad()
    nn.functional.cross_entropy(net(X), Y).backward()  # hooks gone: plain gradients again
    assert all(p.grad is not None for p in net.parameters())


def test_in_backward_mode_follows_the_run(tiny_bert):
    """auto: on for one backward per step, off for gradient accumulation or fp16; true with those is an error."""
    method = get_method("id3")
    with pytest.raises(MethodConfigError, match="in_backward"):
        method.validate(_id3_cfg(in_backward="yes"))
    for train, mode, expect in [({}, "auto", True), ({"grad_accum": 4}, "auto", False),
                                ({"precision": "fp16"}, "auto", False), ({}, False, False), ({}, True, True)]:
        cfg = _id3_cfg(in_backward=mode)
        model = method.apply(copy.deepcopy(tiny_bert), cfg, _ctx(total_steps=4))
        opt = method.create_optimizer(model, cfg, _ctx(total_steps=4), {**TRAIN_CFG, **train})
        assert opt.in_backward is expect, (train, mode)
        assert method.record_state(model, cfg)["in_backward"] is expect
        opt.remove_hooks()
    model = method.apply(copy.deepcopy(tiny_bert), _id3_cfg(in_backward=True), _ctx(total_steps=4))
    with pytest.raises(MethodConfigError, match="grad_accum=2"):
        method.create_optimizer(model, _id3_cfg(in_backward=True), _ctx(total_steps=4), {**TRAIN_CFG, "grad_accum": 2})


def test_trainer_with_in_backward_clipping_matches_the_trainers_own(tiny_bert, tmp_path):
    """The runner's contract: an optimizer that clips itself gets a Trainer with max_grad_norm 0, and the run equals
    the standard mode clipped by the Trainer."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    rows = [{"input_ids": _bert_batch(i, n=1)["input_ids"][0].tolist(), "labels": i % 2} for i in range(8)]
    finals = []
    for in_bw in (False, True):
        model = copy.deepcopy(tiny_bert)
        method = get_method("id3")
        cfg = _id3_cfg(budget=90, T=3, in_backward=in_bw)
        model = method.apply(model, cfg, _ctx(total_steps=4))
        opt = method.create_optimizer(model, cfg, _ctx(total_steps=4), {**TRAIN_CFG, "max_grad_norm": 0.02})
        args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4,
                                 learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                                 disable_tqdm=True, logging_steps=100, seed=0, data_seed=0,
                                 max_grad_norm=0.0 if opt.handles_grad_clipping else 0.02)
        Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), optimizers=(opt, None)).train()
        assert opt.steps == 4 and opt.unmasked_count() == 90
        finals.append([p.detach().clone() for p in model.parameters()])
    for p, q in zip(*finals):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gc", [False, True])
def test_runner_in_backward_run_equals_the_step_mode_run(glue_dir, tmp_path, gc):
    """The harness end to end (with and without gradient checkpointing): the Trainer does not clip when the optimizer
    clips itself, so both modes train the same model (clip 0.01 always bites)."""
    from conftest import compose_cfg

    from bench.run import runner

    recs = []
    for mode in ("false", "true"):
        cfg = compose_cfg(["method=id3", "method.budget=500", f"method.in_backward={mode}", "task=sst2",
                           "model=tiny-bert", "train.max_steps=3", "train.max_grad_norm=0.01", "train.lr=1e-2",
                           f"train.gradient_checkpointing={str(gc).lower()}", "data.max_train_samples=24",
                           "data.max_eval_samples=16", "train.progress=false", f"data_dir={glue_dir}",
                           f"results_dir={tmp_path}/{mode}", f"cache_dir={tmp_path}/cache", "save_adapter=true"])
        recs.append(runner.run(cfg))
    std, inb = recs
    assert std["method_state"]["in_backward"] is False and inb["method_state"]["in_backward"] is True
    assert std["method_state"]["unmasked"] == inb["method_state"]["unmasked"] == 500
    from safetensors.torch import load_file

    from methods.id3.storage import DELTA_FILE

    da, db = (load_file(f"{r['adapter_path']}/{DELTA_FILE}") for r in recs)
    assert da.keys() == db.keys()
    for key in da:  # the same entries changed, to the same values (up to the rounding of the global norm)
        if key.endswith("::idx"):
            assert torch.equal(da[key], db[key]), key
        else:
            torch.testing.assert_close(da[key], db[key], rtol=0, atol=1e-6)
    assert sum(v.numel() for k, v in da.items() if k.endswith("::idx")) == 500


def test_harness_fills_the_base_methods_yaml_defaults(tiny_bert):
    """methods/ reads no config file: the harness (bench/run/training.py) puts conf/method/<base>.yaml under
    method.base_cfg, the user's base_cfg over it; ID3 applies the base method with exactly that."""
    import yaml
    from conftest import ROOT, compose_cfg

    from bench.run import training

    cfg = compose_cfg(["method=id3", "method.base=lora", "+method.base_cfg.r=2", "method.budget=50", "method.T=3",
                       "model=tiny-bert", "task=sst2"])
    applied = training.apply_method(cfg, get_method("id3"), tiny_bert, "seq_cls", 3)
    lora_yaml = yaml.safe_load((ROOT / "conf" / "method" / "lora.yaml").read_text())
    assert applied.mcfg["base_cfg"] == {**lora_yaml, "r": 2}
    plan = applied.model._id3_plan
    assert plan.base == "lora" and plan.base_cfg == {**lora_yaml, "r": 2, "name": "lora"}
    assert applied.model.peft_config["default"].r == 2
    assert applied.model.peft_config["default"].lora_alpha == lora_yaml["alpha"]
