"""bitfit, pafi and random_mask: fixed masks on ID3's machinery (methods/selective.py)."""

import pytest
import torch

from conftest import tiny_bert_config
from methods import MethodConfigError, MethodContext, get_method
from methods.selective import smallest_k


def _bert(seed=0):
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    with torch.no_grad():  # BERT's init zeroes biases: give them pretrained-like values so no mask is all zeros
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.05)
    return model


def _ctx(seed=0):
    return MethodContext("seq_cls", model_type="bert", head_modules=["classifier"], total_steps=4, seed=seed)


TRAIN = {"lr": 1e-2, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
         "grad_accum": 1, "precision": "fp32", "max_grad_norm": 1.0}


def _train(name, cfg, steps=3, seed=0, in_backward=False):
    method = get_method(name)
    model = method.apply(_bert(), {"name": name, **cfg, "in_backward": in_backward}, _ctx(seed))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = method.create_optimizer(model, cfg, _ctx(seed), TRAIN)
    model.train()
    for s in range(steps):
        ids = torch.randint(3, 120, (4, 9), generator=torch.Generator().manual_seed(s))
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1, 0, 1]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n: (p.detach() != before[n]).reshape(-1).nonzero().squeeze(1) for n, p in model.named_parameters()}
    return method, model, opt, before, {n: c for n, c in changed.items() if c.numel()}


def brute_smallest(tensors, k, key):
    flat = torch.cat([key(i, t).reshape(-1).float() for i, t in enumerate(tensors)])
    pos = torch.arange(flat.numel())
    order = sorted(range(flat.numel()), key=lambda j: (float(flat[j]), j))[:k]
    return sorted(int(pos[j]) for j in order)


@pytest.mark.parametrize("k", [1, 7, 40, 300, 2000])
def test_smallest_k_is_the_global_smallest_with_ties_to_the_lower_position(k):
    g = torch.Generator().manual_seed(k)
    tensors = [torch.randn(37, generator=g), torch.zeros(50), torch.randn(8, 25, generator=g).round(decimals=1),
               torch.randn(400, generator=g)]
    key = lambda i, t: t.abs()  # noqa: E731
    got = smallest_k(tensors, k, key)
    offsets = [0, 37, 87, 287]
    flat = sorted(int(i) + offsets[j] for j, idx in enumerate(got) for i in idx)
    assert flat == brute_smallest(tensors, k, key)


def test_pafi_trains_exactly_the_budget_of_smallest_magnitude_entries():
    budget = 500
    method, model, opt, before, changed = _train("pafi", {"budget": budget})
    scope = [n for n in before if "classifier" not in n]
    assert method.trainable_parameters(model, {}) == budget == opt.unmasked_count()
    values = torch.cat([before[n].reshape(-1).abs() for n in scope])
    threshold = values.kthvalue(budget).values
    for n in scope:
        if n in changed:
            assert (before[n].reshape(-1)[changed[n]].abs() <= threshold).all(), n
    assert sum(c.numel() for n, c in changed.items() if n in scope) <= budget
    assert opt.state_numel()["selective"] == 3 * budget  # index + two AdamW moments per masked entry: O(budget)
    assert any("classifier" in n for n in changed)  # the head trains densely
    # the mask spans weight matrices (decayed) and biases / norms (not decayed): both optimizer groups
    assert any(n.endswith("weight") and "LayerNorm" not in n for n in changed if n in scope)
    assert any(n.endswith("bias") for n in changed if n in scope)


@pytest.mark.parametrize("in_backward", [False, True])
def test_random_mask_is_seeded_uniform_and_only_its_entries_change(in_backward):
    _, _, opt, _, changed = _train("random_mask", {"budget": 300}, seed=1, in_backward=in_backward)
    _, _, opt2, _, _ = _train("random_mask", {"budget": 300}, seed=1)
    _, _, opt3, _, _ = _train("random_mask", {"budget": 300}, seed=2)
    masks = [[opt_.selected_indices(p).tolist() for p in opt_.selective_params] for opt_ in (opt, opt2, opt3)]
    assert masks[0] == masks[1] != masks[2]
    assert opt.unmasked_count() == 300
    sel = {id(p): set(opt.selected_indices(p).tolist()) for p in opt.selective_params}
    model_params = dict(zip([id(p) for p in opt.selective_params], opt.selective_params))
    assert len(sel) == len(model_params)
    # a mask drawn by magnitude would sit in the smallest |theta|; a random one spreads over the tensors
    assert len([s for s in sel.values() if s]) > 5


def test_bitfit_trains_every_backbone_bias_and_nothing_else():
    method, model, opt, before, changed = _train("bitfit", {})
    biases = [n for n in before if n.endswith("bias") and "classifier" not in n]
    assert method.trainable_parameters(model, {}) == sum(before[n].numel() for n in biases)
    assert opt.unmasked_count() == sum(before[n].numel() for n in biases)
    assert all(n.endswith("bias") or "classifier" in n for n in changed)
    assert sum(1 for n in biases if n in changed) > len(biases) // 2


def test_budget_above_the_scope_and_unknown_options_are_refused():
    with pytest.raises(MethodConfigError, match="exceeds the"):
        get_method("pafi").apply(_bert(), {"name": "pafi", "budget": 10**9}, _ctx())
    with pytest.raises(MethodConfigError, match="unknown pafi option"):
        get_method("pafi").validate({"name": "pafi", "budget": 10, "schedule": "dynamic"})


def test_selective_delta_saves_o_budget_and_reloads(tmp_path):
    from methods.id3 import apply_delta

    method, model, opt, before, changed = _train("pafi", {"budget": 200})
    method.save(model, {}, str(tmp_path / "d"))
    fresh = _bert()
    apply_delta(fresh, str(tmp_path / "d"))
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
