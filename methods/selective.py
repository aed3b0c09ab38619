"""Selective baselines on ID3's machinery (methods/id3/): a FIXED mask of scalar entries, chosen once before training,
trained by ID3Optimizer (AdamW whose state exists for the masked entries only: O(budget)) and saved as an O(budget)
delta (methods/id3/storage.py). The task head trains densely and is counted apart, as with ID3.

* ``bitfit`` (Ben Zaken et al., arXiv 2106.10199): every bias of the backbone (attention, FFN and LayerNorm biases);
  the budget is their entry count.
* ``pafi`` (Liao et al., arXiv 2305.16742; the ID3 authors' toolkit's PaFi): the ``budget`` entries of the scope
  with the smallest |theta|, chosen from the pretrained weights before training.
* ``random_mask``: ``budget`` entries drawn uniformly at random (seeded by the run's seed): ID3's control, the same
  budget with no importance.

Ties (PaFi: equal |theta|, e.g. zeros) go to the lower (tensor order, flat index), as ID3's own selection; exactly
min(budget, entries) entries are ever trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from methods.base import MethodConfigError, MethodContext, trains_head
from methods.id3 import ID3, ID3Options, plan_of
from methods.options import Options, check_train_head
from methods.registry import register

_MASK_ATTR = "_fixed_mask"


def smallest_k(tensors: list[torch.Tensor], k: int, key) -> list[torch.Tensor]:
    """Per tensor, the ascending flat indices of the k entries with the smallest ``key(i, tensor)`` over all tensors,
    ties to the lower (tensor order, flat index). Holds O(k) candidates at any time, never the model's keys at once."""
    offsets = [0]
    for t in tensors:
        offsets.append(offsets[-1] + t.numel())
    held_v = torch.empty(0)
    held_p = torch.empty(0, dtype=torch.long)
    for i, t in enumerate(tensors):
        v = key(i, t).reshape(-1).float().cpu()
        take = min(k, v.numel())
        if take < v.numel():  # this tensor's own k best (ties to the lowest index)
            kth = torch.kthvalue(v, take).values
            below = (v < kth).nonzero().squeeze(1)
            equal = (v == kth).nonzero().squeeze(1)[: take - below.numel()]
            local = torch.cat([below, equal]).sort().values
        else:
            local = torch.arange(v.numel())
        cand_v = torch.cat([held_v, v[local]])
        cand_p = torch.cat([held_p, local + offsets[i]])  # held positions precede this tensor's: ascending
        order = torch.sort(cand_v, stable=True).indices[:k]  # stable: equal keys keep (tensor, index) order
        keep = order.sort().values
        held_v, held_p = cand_v[keep], cand_p[keep]
    return [held_p[(held_p >= offsets[i]) & (held_p < offsets[i + 1])] - offsets[i] for i in range(len(tensors))]


@dataclass(frozen=True)
class FixedMaskOptions(Options):
    """conf/method/pafi.yaml / random_mask.yaml"""

    budget: Any
    scope: Any
    in_backward: Any
    train_head: Any

    def check(self) -> None:
        check_train_head(self.train_head)
        self.id3().check()

    def id3(self, budget: Any = None) -> ID3Options:
        """The ID3 plan of a fixed mask: the static schedule, no base, the given budget (default: the option)."""
        return ID3Options(budget=self.budget if budget is None else budget, T=None, schedule="static", eps=1e-3,
                          exp=0, scope=self.scope, base=None, base_cfg={}, in_backward=self.in_backward)


@dataclass(frozen=True)
class BitFitOptions(FixedMaskOptions):
    """conf/method/bitfit.yaml: the budget is every bias entry, not an option"""

    budget: Any = dataclasses.field(default="all", init=False)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(k for k in super().keys() if k != "budget")


class FixedMask(ID3):
    """An ID3 plan with the static schedule whose whole mask is chosen in apply (not from gradients)."""

    name = ""
    options_class = FixedMaskOptions

    def eligible(self, name: str) -> bool:
        return True

    def key(self, ctx: MethodContext):
        raise NotImplementedError

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> nn.Module:
        o: FixedMaskOptions = self.options(cfg)
        ctx = dataclasses.replace(ctx, train_head=trains_head(o.train_head, ctx.train_head))
        model = ID3.apply(self, model, o.id3(), ctx)
        plan = plan_of(model)
        params = dict(model.named_parameters())
        for n in plan.scope_names:
            if not self.eligible(n):
                params[n].requires_grad_(False)
        plan.scope_names = [n for n in plan.scope_names if self.eligible(n)]
        if not plan.scope_names:
            raise MethodConfigError(f"{self.name}: this model has no tensor to select from")
        plan.scope_entries = sum(params[n].numel() for n in plan.scope_names)
        from methods.id3 import resolve_budget

        plan.budget = resolve_budget(o.budget, plan.scope_entries)
        if any(params[n].is_meta for n in plan.scope_names):
            return model  # bench params: shapes only, the count is the budget
        tensors = [params[n].detach() for n in plan.scope_names]
        mask = smallest_k(tensors, plan.budget, self.key(ctx))
        keep = [i for i, m in enumerate(mask) if m.numel()]
        for i, n in enumerate(plan.scope_names):  # tensors without a masked entry need no gradient
            if i not in keep:
                params[n].requires_grad_(False)
        plan.scope_names = [plan.scope_names[i] for i in keep]
        model.__dict__[_MASK_ATTR] = {id(params[plan.scope_names[j]]): mask[i].to(tensors[i].device)
                                      for j, i in enumerate(keep)}
        return model

    def create_optimizer(self, model, cfg, ctx, train_cfg):
        opt = super().create_optimizer(model, self.options(cfg).id3(), ctx, train_cfg)
        mask = model.__dict__[_MASK_ATTR]  # tensor -> its masked flat indices (the optimizer orders tensors its own way)
        news = [mask[id(p)] for p in opt.selective_params]
        assert sum(m.numel() for m in news) == plan_of(model).budget
        opt._add_to_mask(news)  # the whole budget before step 0: the static step adds nothing
        return opt

    def record_state(self, model, cfg) -> dict:
        state = super().record_state(model, self.options(cfg).id3())
        state["mask"] = self.name
        return state


@register
class BitFit(FixedMask):
    name = "bitfit"
    options_class = BitFitOptions

    def eligible(self, name: str) -> bool:
        return name.endswith("bias")

    def key(self, ctx):
        return lambda i, t: torch.zeros(t.numel())  # every bias entry (budget = all)


@register
class PaFi(FixedMask):
    name = "pafi"

    def key(self, ctx):
        return lambda i, t: t.abs()


@register
class RandomMask(FixedMask):
    name = "random_mask"

    def key(self, ctx):
        gen = torch.Generator().manual_seed(int(ctx.seed) * 1_000_003 + 17)
        return lambda i, t: torch.rand(t.numel(), generator=gen)
