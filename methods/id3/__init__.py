"""ID3 (Agarwal et al., arXiv 2408.14470): incremental selective fine-tuning under an exact budget.

``method=id3`` trains at most B scalar entries of the backbone (``scope: backbone``) or of a base method's trainable
tensors (``base: lora`` / ``propulsion`` / ...): entries are unmasked B/T per step by the importance
``|g| / (|theta| + eps)**exp`` and trained by :class:`ID3Optimizer` (AdamW whose state exists only for selected
entries). The dense task head, when it trains, is a separate dense AdamW group of the same optimizer and is counted
apart by the harness (``trainable_parameters`` returns the selective count only).

Budget: ``budget`` is an integer B >= 1, or a fraction in (0, 1) of the scope's entries (floor, at least 1); B larger
than the scope is clamped to it. With ``schedule: dynamic`` B is a per-step budget (see optimizer.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from torch import nn

from methods.base import Method, MethodConfigError, MethodContext, trains_head
from methods.base import is_head as _is_head
from methods.options import Options
from methods.registry import available, get_method, is_method, register

from .optimizer import SCHEDULES, ID3Optimizer
from .storage import apply_delta, read_metadata, save_delta

__all__ = ["ID3", "ID3Optimizer", "ID3Plan", "apply_delta", "save_delta", "read_metadata", "resolve_budget"]

SCOPES = ("backbone", "all")
_PLAN_ATTR = "_id3_plan"
_OPT_ATTR = "_id3_optimizer"


@dataclass
class ID3Plan:
    """What apply() decided; create_optimizer / record_state / save read it back from the model."""

    scope_names: list[str]
    head_names: list[str]
    scope_entries: int
    budget_requested: Any
    budget: int
    T: int
    schedule: str
    eps: float
    exp: float
    base: Optional[str] = None
    base_cfg: dict = field(default_factory=dict)
    head_entries: int = 0


def resolve_budget(budget, entries: int) -> int:
    """B as an entry count: an int >= 1, a fraction in (0, 1) of ``entries``, or "all" (= entries).

    A count above ``entries`` is an error (it would silently train every entry): ask for "all" instead.
    """
    if budget == "all":
        return entries
    if isinstance(budget, float) and 0.0 < budget < 1.0:
        return max(1, int(math.floor(budget * entries)))
    b = int(budget)
    if b > entries:
        raise MethodConfigError(
            f"method.budget={budget} exceeds the {entries:,} selectable entries of this model's scope; "
            f"choose method.budget <= {entries} (or a fraction such as 0.01), or method.budget=all to train every entry"
        )
    return b


def _unique_named_parameters(model: nn.Module):
    seen = set()
    for name, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield name, p


def _decay_names(model: nn.Module) -> set[str]:
    """Parameters weight decay applies to, by the Trainer's own rule (not biases, not norm layers)."""
    from torch.nn import LayerNorm
    from transformers.trainer_pt_utils import get_parameter_names

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return set(get_parameter_names(model, [LayerNorm], patterns))


@dataclass(frozen=True)
class ID3Options(Options):
    """conf/method/id3.yaml"""

    budget: Any
    T: Any
    schedule: Any
    eps: Any
    exp: Any
    scope: Any
    base: Any
    base_cfg: Any
    in_backward: Any

    def check(self) -> None:
        budget = self.budget
        ok = False
        if budget == "all":
            ok = True
        elif isinstance(budget, bool) or budget is None:
            ok = False
        elif isinstance(budget, int):
            ok = budget >= 1
        elif isinstance(budget, float):
            ok = (0.0 < budget < 1.0) or (budget >= 1.0 and budget.is_integer())
        if not ok:
            raise MethodConfigError(
                f"method.budget must be a positive integer number of entries (e.g. method.budget=320000) or a "
                f"fraction in (0, 1) of the scope's entries (e.g. method.budget=0.01), or all; got {budget!r}"
            )
        exp, eps = self.exp, self.eps
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp < 0:
            raise MethodConfigError(f"method.exp must be a number >= 0 (the paper's default is 0); got {exp!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps <= 0:
            raise MethodConfigError(f"method.eps must be a number > 0 (the paper's default is 1e-3); got {eps!r}")
        schedule = self.schedule
        if schedule not in SCHEDULES:
            raise MethodConfigError(f"method.schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
        T = self.T
        if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
            raise MethodConfigError(
                f"method.T must be a positive integer (steps over which the budget is unmasked) or null for all "
                f"optimizer steps of the run; got {T!r}"
            )
        scope = self.scope
        if scope not in SCOPES:
            raise MethodConfigError(f"method.scope must be one of {', '.join(SCOPES)}; got {scope!r}")
        base = self.base
        if base is not None:
            if base == ID3.name:
                raise MethodConfigError("method.base cannot be id3 itself; use e.g. method.base=lora or null")
            if not is_method(base):
                raise MethodConfigError(
                    f"method.base={base!r} is not a registered method; choose one of "
                    f"{', '.join(m for m in available() if m != ID3.name)} or null"
                )
        in_bw = self.in_backward
        if in_bw not in ("auto", True, False):
            raise MethodConfigError(
                f"method.in_backward must be auto, true or false (select during the backward pass and never hold "
                f"every gradient; auto = when the run allows it); got {in_bw!r}"
            )
        base_cfg = self.base_cfg
        if base_cfg is not None and not isinstance(base_cfg, Mapping):
            raise MethodConfigError(f"method.base_cfg must be a mapping of the base method's options; got {base_cfg!r}")



@register
class ID3(Method):
    name = "id3"
    options_class = ID3Options

    def _id3_options(self, cfg: Any) -> ID3Options:
        """ID3's options: parsed from a config, or as given (the fixed-mask baselines hand theirs over built)."""
        return cfg if isinstance(cfg, ID3Options) else ID3Options.parse(cfg, ID3.name)

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> nn.Module:
        o = self._id3_options(cfg)
        base = o.base
        base_cfg: dict = {}
        scope_all = o.scope == "all"
        train_head = trains_head("auto", ctx.train_head)  # ID3 has no train_head option: the task decides
        if base:
            # the base method's settings over its conf/method/<base>.yaml defaults (the harness fills them in under
            # method.base_cfg; the base method's options fill what is left out)
            base_cfg = {**dict(o.base_cfg or {}), "name": base}
            base_method = get_method(base)
            base_method.validate(base_cfg)
            model = base_method.apply(model, base_cfg, ctx)
            named = list(_unique_named_parameters(model))
            trainable = [(n, p) for n, p in named if p.requires_grad]
            head = [] if scope_all else [(n, p) for n, p in trainable if _is_head(n, ctx.head_modules)]
            head_ids = {id(p) for _, p in head}
            scope = [(n, p) for n, p in trainable if id(p) not in head_ids]
        else:
            named = list(_unique_named_parameters(model))
            if scope_all:
                scope, head = named, []
            else:
                scope = [(n, p) for n, p in named if not _is_head(n, ctx.head_modules)]
                head = [(n, p) for n, p in named if _is_head(n, ctx.head_modules)] if train_head else []
            keep = {id(p) for _, p in scope + head}
            for _, p in named:
                p.requires_grad_(id(p) in keep)
        if not scope:
            raise MethodConfigError(
                "ID3 found no tensor to select from (the base method left nothing trainable outside the task head); "
                "check method.base / method.base_cfg"
            )
        T = o.T if o.T is not None else ctx.total_steps
        schedule = o.schedule
        if T is None and schedule != "static":
            raise MethodConfigError(
                "ID3 needs T, the number of optimizer steps over which the budget is unmasked: set method.T=<steps> "
                "(the run did not say how many optimizer steps it takes)"
            )
        entries = sum(p.numel() for _, p in scope)
        plan = ID3Plan(
            scope_names=[n for n, _ in scope],
            head_names=[n for n, _ in head],
            scope_entries=entries,
            budget_requested=o.budget,
            budget=resolve_budget(o.budget, entries),
            T=int(T) if T is not None else 1,
            schedule=schedule,
            eps=float(o.eps),
            exp=float(o.exp),
            base=base,
            base_cfg=base_cfg,
            head_entries=sum(p.numel() for _, p in head),
        )
        setattr(model, _PLAN_ATTR, plan)
        return model

    def create_optimizer(self, model, cfg, ctx, train_cfg) -> ID3Optimizer:
        plan = plan_of(model)
        params = dict(model.named_parameters())
        decay = _decay_names(model)
        wd = float(train_cfg["weight_decay"])
        groups = []
        for selective, names in ((True, plan.scope_names), (False, plan.head_names)):
            for decays in (True, False):
                ps = [params[n] for n in names if (n in decay) == decays]
                if ps:
                    groups.append({"params": ps, "selective": selective, "weight_decay": wd if decays else 0.0})
        in_bw = _in_backward(self._id3_options(cfg).in_backward, train_cfg)
        opt = ID3Optimizer(
            groups,
            in_backward=in_bw,
            max_grad_norm=float(train_cfg.get("max_grad_norm") or 0.0) if in_bw else 0.0,
            budget=plan.budget,
            T=plan.T,
            schedule=plan.schedule,
            score_eps=plan.eps,
            score_exp=plan.exp,
            lr=float(train_cfg["lr"]),
            betas=(float(train_cfg["adam_beta1"]), float(train_cfg["adam_beta2"])),
            eps=float(train_cfg["adam_epsilon"]),
            weight_decay=wd,
        )
        setattr(model, _OPT_ATTR, opt)
        return opt

    def trainable_parameters(self, model, cfg) -> Optional[int]:
        """The selective count min(B, scope entries) only; the harness counts the dense head apart."""
        return plan_of(model).budget

    def record_state(self, model, cfg) -> dict:
        plan = plan_of(model)
        opt: Optional[ID3Optimizer] = getattr(model, _OPT_ATTR, None)
        state = {
            "budget": plan.budget,
            "budget_requested": plan.budget_requested,
            "scope_entries": plan.scope_entries,
            "scope_tensors": len(plan.scope_names),
            "head_entries_dense": plan.head_entries,
            "T": plan.T,
            "schedule": plan.schedule,
            "eps": plan.eps,
            "exp": plan.exp,
            "base": plan.base,
            "budget_is_per_step": plan.schedule == "dynamic",
        }
        if opt is not None:
            state["in_backward"] = opt.in_backward
        if plan.schedule == "dynamic":
            state["note"] = (
                "dynamic schedule: the top-B mask is re-chosen every step, so B bounds the entries updated per step; "
                "changed_entries (entries that differ from the base) may exceed B"
            )
        if opt is not None:
            state.update(
                steps=opt.steps,
                unmasked=opt.unmasked_count(),
                expected_unmasked=opt.expected_unmasked(opt.steps),
                changed_entries=opt.changed_count(),
                updates_performed=opt.updates_performed,
                updates_if_static=opt.steps * plan.budget,
                optimizer_state_numel=opt.state_numel(),
            )
        return state

    def save(self, model, cfg, path: str) -> None:
        """Only (tensor name, flat index, value) of changed entries (+ the dense head): O(B). See apply_delta."""
        opt = getattr(model, _OPT_ATTR, None)
        if opt is None:
            raise RuntimeError("ID3.save needs the run's optimizer: call create_optimizer (and train) first")
        meta = {k: v for k, v in asdict(plan_of(model)).items() if k not in ("scope_names", "head_names")}
        meta.update(steps=opt.steps, unmasked=opt.unmasked_count(), changed_entries=opt.changed_count())
        save_delta(model, opt, path, metadata=meta)


def _in_backward(mode, train_cfg: Mapping[str, Any]) -> bool:
    """Resolve method.in_backward against the run: the mode needs one backward per step and unscaled gradients."""
    accum = int(train_cfg.get("grad_accum", 1) or 1)
    fp16 = train_cfg.get("precision") == "fp16"
    if mode == "auto":
        return accum == 1 and not fp16
    if mode and (accum != 1 or fp16):
        why = f"train.grad_accum={accum}" if accum != 1 else "train.precision=fp16 (loss scaling)"
        raise MethodConfigError(
            f"method.in_backward=true needs one backward per optimizer step with unscaled gradients, but this run "
            f"has {why}; use method.in_backward=auto or false"
        )
    return bool(mode)


def plan_of(model) -> ID3Plan:
    """The ID3 plan that ID3.apply attached to the model (its budget, scope and base method)."""
    plan = getattr(model, _PLAN_ATTR, None)
    if plan is None:
        raise RuntimeError("this model was not prepared by ID3.apply (no ID3 plan attached)")
    return plan
