"""ID3's optimizer: AdamW over a growing set of scalar entries, with state only for those entries.

Semantics (per optimizer step t = 0, 1, ...):

1. Selection, from the gradients of this step (after any clipping the Trainer did):
   * ``incremental`` (the paper): u_t = B // T new entries (+1 while t < B % T), for t < T; the GLOBAL top-u_t of
     ``H = |g| / (|theta| + eps)**exp`` among still-masked entries of all selective tensors joins the mask. The mask
     only grows, so exactly min(B, entries) entries are ever selected.
   * ``static``: the top-B mask is chosen once, at t = 0.
   * ``dynamic``: the top-B mask is re-chosen among all entries at every step t < T (then frozen). B is then a
     per-step budget: entries that leave the mask keep the value they reached, so more than B entries may differ
     from the base model at the end (``changed_entries`` counts them). Moments of entries that leave are dropped; an
     entry that comes back starts again from zero moments.
   Ties in H are broken by (tensor order, flat index): the same inputs always select the same entries.
2. AdamW (torch's formula: decoupled weight decay, bias correction) on the selected entries only. Masked entries get
   no update at all, not even weight decay. The bias-correction step is the optimizer's step count, as in a dense
   AdamW whose masked gradients are zeroed (the authors' reference), so an entry selected at step t takes the same
   update it would take there.
3. Groups with ``selective=False`` (the task head) train densely with plain AdamW semantics.

State per selective tensor: ``idx`` (flat indices of selected entries, int64), ``exp_avg``, ``exp_avg_sq`` (one
value per selected entry): optimizer memory is O(B), not O(model). Scoring reuses two scratch buffers of
``select.CHUNK`` entries and never concatenates the scores of the model (on CPU; on a GPU the scores go into one
flat vector and one global top-k, see methods/id3/scoring.py).

``in_backward=True`` selects during the backward pass instead (methods/id3/in_backward.py).
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch.optim import Optimizer

from .in_backward import InBackwardMixin, _BackwardStep
from .scoring import SelectionMixin

SCHEDULES = ("incremental", "static", "dynamic")


class ID3Optimizer(SelectionMixin, InBackwardMixin, Optimizer):
    """AdamW restricted to a budget of ``budget`` scalar entries selected incrementally (ID3, arXiv 2408.14470).

    Args:
        params: tensors, or param-group dicts; a group with ``selective=False`` trains densely (e.g. the task head).
            Every group may carry its own ``lr`` / ``weight_decay`` / ``betas`` / ``eps``.
        budget: B, entries of the selective tensors that may ever change (clamped to their total size).
        T: optimizer steps over which the budget is unmasked (incremental), or during which the mask is re-chosen
            (dynamic). Ignored by ``static``.
        schedule: ``incremental`` | ``static`` | ``dynamic`` (see the module docstring).
        score_eps, score_exp: eps and exp of the importance ``|g| / (|theta| + eps)**exp``.
        lr, betas, eps, weight_decay: AdamW's; ``lr`` is read from each group at every step, so LR schedulers work.
        free_grads: drop the selective tensors' ``.grad`` at the end of ``step()`` (they are O(model) memory).
        in_backward: select (and drop each selective gradient) during the backward pass; see the module docstring.
        max_grad_norm: with ``in_backward``, clip the global gradient norm to this (0 = no clipping).
    """


    def __init__(
        self,
        params: Iterable,
        *,
        budget: int,
        T: int,
        schedule: str = "incremental",
        score_eps: float = 1e-3,
        score_exp: float = 0.0,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        free_grads: bool = True,
        in_backward: bool = False,
        max_grad_norm: float = 0.0,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if int(budget) < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        if int(T) < 1 and schedule != "static":
            raise ValueError(f"T must be >= 1, got {T}")
        if score_eps <= 0 or score_exp < 0:
            raise ValueError(f"need score_eps > 0 and score_exp >= 0 (got {score_eps}, {score_exp})")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, selective=True)
        super().__init__(params, defaults)
        self.selective_params: list[torch.Tensor] = [
            p for g in self.param_groups if g["selective"] for p in g["params"]
        ]
        if not self.selective_params:
            raise ValueError("ID3Optimizer needs at least one selective tensor")
        for p in self.selective_params:
            if not p.is_contiguous():
                raise ValueError("ID3Optimizer needs contiguous selective tensors (flat indices address them)")
        sizes = [p.numel() for p in self.selective_params]
        self._offsets = [0]
        for n in sizes:
            self._offsets.append(self._offsets[-1] + n)
        self.entries = self._offsets[-1]
        self.budget_requested = int(budget)
        self.budget = min(int(budget), self.entries)
        self.T = int(T)
        self.schedule = schedule
        self.score_eps = float(score_eps)
        self.score_exp = float(score_exp)
        self.free_grads = free_grads
        # run bookkeeping (saved in state_dict under "id3")
        self.steps = 0  # optimizer steps taken
        self.updates_performed = 0  # sum over steps of the mask size: scalar updates done
        self._unmasked = 0
        self._scratch: dict = {}
        self._chunk_plan = None
        self.in_backward = bool(in_backward)
        if max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {max_grad_norm}")
        self.max_grad_norm = float(max_grad_norm)
        self.last_grad_norm: Optional[torch.Tensor] = None  # in_backward: the global norm before clipping
        self._bw: Optional[_BackwardStep] = None
        self._positions: dict[int, torch.Tensor] = {}  # small tensors: their global positions (for staged scoring)
        self._hooks = []
        self._pos_cache: Optional[torch.Tensor] = None  # batched: global positions of the mask (see _mask_positions)
        self._selected_pos: Optional[torch.Tensor] = None  # batched: global positions the last _select chose
        self._flat: Optional[torch.Tensor] = None  # batched: the flat score vector
        if self.in_backward:
            self._install_hooks()


    def zero_grad(self, set_to_none: bool = True) -> None:
        """Also forgets what the in-backward hooks gathered since the last step (a skipped step starts afresh)."""
        super().zero_grad(set_to_none=set_to_none)
        self._bw = None

    # ------------------------------------------------------------------ schedule
    def increment(self, t: int) -> int:
        """Entries to add at step t (incremental / static); the budget left caps it."""
        B = self.budget
        if self.schedule == "static":
            u = B if t == 0 else 0
        elif t >= self.T:
            u = 0
        else:
            u = B // self.T + (1 if t < B % self.T else 0)
        return max(0, min(u, B - self._unmasked))

    def expected_unmasked(self, steps: int) -> int:
        """Mask size after ``steps`` optimizer steps, by the schedule (for checks and records)."""
        B = self.budget
        if self.schedule != "incremental":
            return B if steps > 0 else 0
        s = min(steps, self.T)
        return min(B, s * (B // self.T) + min(s, B % self.T))

    # ------------------------------------------------------------------ accessors
    def unmasked_count(self) -> int:
        return self._unmasked

    def selected_indices(self, p: torch.Tensor) -> torch.Tensor:
        """Flat indices (ascending) of p's entries in the current mask."""
        st = self.state.get(p, {})
        idx = st.get("idx")
        if idx is None:
            return torch.empty(0, dtype=torch.long, device=p.device)
        return idx.sort().values

    def changed_indices(self, p: torch.Tensor) -> torch.Tensor:
        """Flat indices (ascending) of p's entries that may differ from their initial value."""
        st = self.state.get(p, {})
        if self.schedule == "dynamic" and "ever" in st:
            return st["ever"].clone()
        return self.selected_indices(p)

    def changed_count(self) -> int:
        if self.schedule != "dynamic":
            return self._unmasked
        return sum(int(self.state[p]["ever"].numel()) for p in self.selective_params if "ever" in self.state.get(p, {}))

    def state_numel(self) -> dict:
        """Elements held in optimizer state: selective (O(B)) and dense (the head's moments)."""
        sel = dense = 0
        for group in self.param_groups:
            for p in group["params"]:
                for v in self.state.get(p, {}).values():
                    if torch.is_tensor(v) and v.dim() > 0:
                        if group["selective"]:
                            sel += v.numel()
                        else:
                            dense += v.numel()
        return {"selective": sel, "dense": dense}

    def _grow(self, k: int) -> None:
        self._add_to_mask(self._select(k, exclude_selected=True))

    def _add_to_mask(self, news: list[torch.Tensor]) -> None:
        pos, self._selected_pos = self._selected_pos, None
        if self._pos_cache is not None:
            self._pos_cache = torch.cat([self._pos_cache, pos]) if pos is not None else None
        for p, new in zip(self.selective_params, news):
            if new.numel() == 0:
                continue
            st = self.state[p]
            zeros = torch.zeros(new.numel(), dtype=p.dtype, device=p.device)
            if "idx" not in st:
                st["idx"], st["exp_avg"], st["exp_avg_sq"] = new, zeros, zeros.clone()
            else:
                st["idx"] = torch.cat([st["idx"], new])
                st["exp_avg"] = torch.cat([st["exp_avg"], zeros])
                st["exp_avg_sq"] = torch.cat([st["exp_avg_sq"], zeros])
            self._unmasked += new.numel()

    def _reselect(self, k: int) -> None:
        """Dynamic schedule: replace the mask by the top-k of all entries, carrying moments of entries that stay."""
        self._set_mask(self._select(k, exclude_selected=False))

    def _set_mask(self, news: list[torch.Tensor]) -> None:
        self._pos_cache, self._selected_pos = self._selected_pos, None
        total = 0
        for p, new in zip(self.selective_params, news):
            st = self.state[p]
            m = torch.zeros(new.numel(), dtype=p.dtype, device=p.device)
            v = torch.zeros_like(m)
            old = st.get("idx")
            if old is not None and old.numel() and new.numel():  # old is ascending in dynamic mode
                at = torch.searchsorted(old, new).clamp_(max=old.numel() - 1)
                stays = old[at] == new
                m[stays] = st["exp_avg"][at[stays]]
                v[stays] = st["exp_avg_sq"][at[stays]]
            st["idx"], st["exp_avg"], st["exp_avg_sq"] = new, m, v
            ever = st.get("ever")
            st["ever"] = new.clone() if ever is None else torch.unique(torch.cat([ever, new]))
            total += new.numel()
        self._unmasked = total

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.in_backward:
            self._step_in_backward()
            return loss
        t = self.steps
        k, exclude = self._selection_plan()
        if k > 0:
            if exclude:
                self._grow(k)
            else:
                self._reselect(k)
        self.steps = t + 1
        self.updates_performed += self._unmasked

        for group in self.param_groups:
            if group["selective"]:
                self._sparse_adamw(group)
            else:
                self._dense_adamw(group)
        if self.free_grads:
            for p in self.selective_params:
                p.grad = None
        return loss

    def _selection_plan(self) -> tuple[int, bool]:
        """(entries to select at this step, whether already selected entries are excluded)."""
        t = self.steps
        if self.schedule == "dynamic":
            return (self.budget, False) if (t < self.T or t == 0) else (0, True)
        return self.increment(t), True

    def _sparse_adamw(self, group, gathered: Optional[dict] = None) -> None:
        """torch's AdamW formula on the gathered selected entries; one foreach op per stage for all tensors.

        ``gathered`` (in_backward): per tensor, its gradient at ``idx`` (None: no gradient this step, no update)."""
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        step = self.steps
        bc1 = 1 - beta1**step
        bc2_sqrt = math.sqrt(1 - beta2**step)
        flats, idxs, ws, gs, ms, vs = [], [], [], [], [], []
        for p in group["params"]:
            st = self.state.get(p)
            g = gathered.get(p) if gathered is not None else p.grad
            if not st or "idx" not in st or st["idx"].numel() == 0 or g is None:
                continue
            idx = st["idx"]
            flat = p.detach().view(-1)
            flats.append(flat)
            idxs.append(idx)
            ws.append(flat.index_select(0, idx))
            gs.append(g if gathered is not None else g.reshape(-1).index_select(0, idx))
            ms.append(st["exp_avg"])
            vs.append(st["exp_avg_sq"])
        if not ws:
            return
        if wd != 0:
            torch._foreach_mul_(ws, 1 - lr * wd)
        torch._foreach_lerp_(ms, gs, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - beta2)
        denoms = torch._foreach_sqrt(vs)
        torch._foreach_div_(denoms, bc2_sqrt)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(ws, ms, denoms, value=-lr / bc1)
        for flat, idx, w in zip(flats, idxs, ws):
            flat.index_copy_(0, idx, w)

    def _dense_adamw(self, group) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self.state[p]
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            g, m, v = p.grad, st["exp_avg"], st["exp_avg_sq"]
            if wd != 0:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2 ** st["step"])).add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** st["step"]))

    # ------------------------------------------------------------------ checkpointing
    _INT_KEYS = ("idx", "ever")

    def state_dict(self):
        sd = super().state_dict()
        sd["id3"] = {
            "steps": self.steps,
            "updates_performed": self.updates_performed,
            "unmasked": self._unmasked,
            "budget": self.budget,
            "T": self.T,
            "schedule": self.schedule,
        }
        return sd

    def load_state_dict(self, state_dict):
        """torch casts every state tensor of a float parameter to its dtype; index tensors must stay int64."""
        state_dict = dict(state_dict)
        self._pos_cache = self._selected_pos = None
        meta = state_dict.pop("id3", None)
        saved_state = {k: dict(v) for k, v in state_dict["state"].items()}
        ints: dict = {}
        for key, st in saved_state.items():
            for name in self._INT_KEYS:
                if name in st:
                    ints.setdefault(key, {})[name] = st.pop(name)
        state_dict["state"] = saved_state
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        by_id = dict(zip(saved_ids, params))
        for key, named in ints.items():
            p = by_id[key]
            for name, val in named.items():
                self.state[p][name] = val.to(device=p.device, dtype=torch.long)
        if meta is not None:
            self.steps = int(meta["steps"])
            self.updates_performed = int(meta["updates_performed"])
            self._unmasked = int(meta["unmasked"])
