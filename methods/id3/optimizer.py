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
``select.CHUNK`` entries and never concatenates the scores of the model.

``in_backward=True`` moves the selection into the backward pass: as soon as a selective tensor's gradient is
accumulated, a hook offers its best still-masked entries (score, position and gradient value) to the running global
top-k, keeps the gradient at its already-selected entries, adds its squared norm to the clipping total, and drops
the gradient. The model's gradients are then never all held at once: besides O(B) state the optimizer keeps one
tensor's gradient at a time. ``step()`` finishes the selection, clips (``max_grad_norm``, torch's
``clip_grad_norm_`` formula over the selective and the dense gradients together: the harness must not clip too,
see ``handles_grad_clipping``) and updates. It needs exactly one backward per step (no gradient accumulation, no
fp16 loss scaling). Scores are ranked before clipping, which scales every score by the same factor, so the
selection is the standard mode's except where that scaling rounds two different scores to one value.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch.optim import Optimizer

from .select import CHUNK, MASKED, StreamingTopK, chunk_top, just_below

SCHEDULES = ("incremental", "static", "dynamic")
#: in_backward: tensors of at most this many entries are staged and scored together, STAGE_FLUSH entries at a time
STAGE_SMALL = 1 << 12
STAGE_FLUSH = 1 << 16


class ID3Optimizer(Optimizer):
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

    #: visit chunks by decreasing max |g| and skip those that cannot enter (exp = 0); None = on CPU tensors only.
    #: The selection is the same either way.
    skip_by_bound: Optional[bool] = None

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
        if self.in_backward:
            for i, p in enumerate(self.selective_params):
                old = getattr(p, "_id3_grad_hook", None)
                if old is not None:  # an earlier in-backward ID3 optimizer of this tensor: this one replaces it
                    old.remove()
                p._id3_grad_hook = p.register_post_accumulate_grad_hook(self._grad_hook(i))
                self._hooks.append(p._id3_grad_hook)

    @property
    def handles_grad_clipping(self) -> bool:
        """True when this optimizer clips the gradients itself (in_backward): the training loop must not."""
        return self.in_backward

    def remove_hooks(self) -> None:
        """Detach the in-backward hooks from the parameters: their gradients are plain gradients again."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for p in self.selective_params:
            if hasattr(p, "_id3_grad_hook"):
                del p._id3_grad_hook
        self._bw = None

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

    # ------------------------------------------------------------------ scoring / selection
    def _chunks(self) -> list:
        """The global position space cut into chunks of <= CHUNK entries, each of one (device, dtype).

        A chunk is (start, end, segments); a segment (i, s, e, at) puts entries [s, e) of selective tensor i at
        offset ``at`` of the chunk. Small tensors share a chunk, so a step runs a few dozen large ops instead of a
        dozen small ops per tensor (which matters most on a busy CPU).
        """
        key = CHUNK
        if self._chunk_plan is not None and self._chunk_plan[0] == key:
            return self._chunk_plan[1]
        chunks, segs, start, fill, kind = [], [], 0, 0, None
        for i, p in enumerate(self.selective_params):
            n, s = p.numel(), 0
            if segs and (p.device, p.dtype) != kind:
                chunks.append((start, start + fill, segs))
                segs, start, fill = [], start + fill, 0
            kind = (p.device, p.dtype)
            while s < n:
                take = min(n - s, CHUNK - fill)
                segs.append((i, s, s + take, fill))
                s, fill = s + take, fill + take
                if fill == CHUNK:
                    chunks.append((start, start + fill, segs))
                    segs, start, fill = [], start + fill, 0
        if segs:
            chunks.append((start, start + fill, segs))
        self._chunk_plan = (key, chunks)
        return chunks

    def _buffers(self, p: torch.Tensor):
        key = (p.device, p.dtype)
        if key not in self._scratch or self._scratch[key][0].numel() < min(CHUNK, self.entries):
            n = min(CHUNK, self.entries)
            self._scratch[key] = (
                torch.empty(n, dtype=p.dtype, device=p.device),
                torch.empty(n, dtype=torch.bool, device=p.device),
            )
        return self._scratch[key]

    def _score(self, p: torch.Tensor, s: int, e: int, out: torch.Tensor, g: Optional[torch.Tensor] = None) -> torch.Tensor:
        """H for entries [s, e) of p (gradient ``g``, default p.grad), written into ``out``."""
        if g is None:
            g = p.grad
        if g is None:  # no gradient reached this tensor: every entry scores 0
            return out.zero_()
        gs = g.reshape(-1)[s:e]
        if self.score_exp == 0.0:
            return torch.abs(gs, out=out)
        torch.abs(p.detach().view(-1)[s:e], out=out)
        out.add_(self.score_eps)
        if self.score_exp == 2.0:
            out.mul_(out)
        elif self.score_exp != 1.0:
            out.pow_(self.score_exp)
        torch.div(gs, out, out=out)
        return out.abs_()

    def _skips_by_bound(self, device: torch.device) -> bool:
        """Skip chunks by their largest |g| (exp = 0 only). Auto: a win where scoring is bandwidth-bound (CPU);
        on a GPU the extra launches cost more."""
        skip = self.skip_by_bound
        if skip is None:
            skip = device.type == "cpu"
        return bool(skip) and self.score_exp == 0.0

    def _chunk_bounds(self, chunks) -> list[float]:
        """Per chunk, max |g| over its entries (with exp = 0, an upper bound of its scores; NaN if a gradient holds
        NaN). One read pass (aminmax), no write, one device-to-host transfer."""
        per_seg, owner = [], []
        for c, (_, _, segs) in enumerate(chunks):
            for i, s, e, _ in segs:
                g = self.selective_params[i].grad
                if g is not None:
                    lo, hi = torch.aminmax(g.reshape(-1)[s:e])  # 5x faster than vector_norm(ord=inf) on CPU
                    per_seg.append(torch.maximum(hi, -lo).float())
                    owner.append(c)
        bounds = [0.0] * len(chunks)
        if per_seg:
            for c, b in zip(owner, torch.stack(per_seg).tolist()):
                if b != b or bounds[c] != bounds[c]:
                    bounds[c] = math.nan
                else:
                    bounds[c] = max(bounds[c], b)
        return bounds

    @torch.no_grad()
    def _select(self, k: int, exclude_selected: bool) -> list[torch.Tensor]:
        """Per selective tensor, the flat indices (ascending) of the global top-k entries by H.

        With exp = 0 the chunks are visited in decreasing order of their largest |g| (NaN first), so the k-th
        best score found so far rises fast and every chunk whose largest |g| is below it is skipped unread
        (in a transformer most of them: the scores of the embeddings are orders of magnitude smaller). Entries
        equal to that k-th score are kept as candidates, and the final cut breaks ties by position, so the
        selection is the same as visiting every chunk in position order.
        """
        params = self.selective_params
        chunks = self._chunks()
        top = StreamingTopK(k, params[0].device)
        order = list(range(len(chunks)))
        bounds = None
        if self._skips_by_bound(params[0].device) and len(chunks) > 1:
            bounds = self._chunk_bounds(chunks)
            order.sort(key=lambda c: (-math.inf if bounds[c] != bounds[c] else -bounds[c], c))
            top.in_order = False
        for c in order:
            start, end, segs = chunks[c]
            floor = top.floor
            if bounds is not None and floor is not None and bounds[c] < floor:
                break  # this chunk and every later one (smaller bounds) hold no entry >= the k-th best so far
            masked = []  # (segment, chunk-local indices of already selected entries)
            n_masked = 0
            if exclude_selected:
                for i, s, e, at in segs:
                    chosen = self.state[params[i]].get("idx") if params[i] in self.state else None
                    if chosen is None or chosen.numel() == 0:
                        continue
                    if not (s == 0 and e == params[i].numel()):
                        chosen = chosen[(chosen >= s) & (chosen < e)]
                    if chosen.numel():
                        masked.append(chosen + (at - s))
                        n_masked += chosen.numel()
            selectable = (end - start) - n_masked
            if selectable <= 0:
                continue
            buf, bool_buf = self._buffers(params[segs[0][0]])
            scores = buf[: end - start]
            for i, s, e, at in segs:
                self._score(params[i], s, e, scores[at : at + e - s])
            for local in masked:
                scores.index_fill_(0, local, MASKED)
            if bounds is not None:  # out of position order: keep ties with the floor
                floor = just_below(floor, scores.dtype)
            loc, vals = chunk_top(scores, min(k, selectable), floor, bool_buf)
            top.offer(vals.to(top.device), loc.to(top.device) + start)
        pos = top.pos  # ascending global positions
        out = []
        bounds = torch.tensor(self._offsets, device=pos.device)
        cut = torch.searchsorted(pos, bounds).tolist()
        for i, p in enumerate(params):
            out.append((pos[cut[i] : cut[i + 1]] - self._offsets[i]).to(p.device))
        return out

    def _grow(self, k: int) -> None:
        self._add_to_mask(self._select(k, exclude_selected=True))

    def _add_to_mask(self, news: list[torch.Tensor]) -> None:
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

    # ------------------------------------------------------------------ in-backward mode
    def _grad_hook(self, i: int):
        def hook(p: torch.Tensor) -> None:
            self._on_grad(i, p)

        return hook

    @torch.no_grad()
    def _on_grad(self, i: int, p: torch.Tensor) -> None:
        bw = self._bw
        if bw is None:
            k, exclude = self._selection_plan()
            bw = self._bw = _BackwardStep(k, exclude, p.device)
        if i in bw.seen:
            raise RuntimeError(
                "ID3Optimizer(in_backward=True) got a second gradient for the same tensor before step(): this mode "
                "needs exactly one backward per optimizer step. For gradient accumulation use in_backward=False "
                "(method.in_backward=false)"
            )
        bw.seen.add(i)
        flat = p.grad.reshape(-1)
        if self.max_grad_norm > 0:
            bw.sq.append(torch.linalg.vector_norm(flat, dtype=torch.float32).square())
        if bw.k > 0:
            if flat.numel() <= STAGE_SMALL:  # small tensors (biases, norms) are scored together, a batch at a time
                bw.staged.append((i, flat.clone()))
                bw.staged_n += flat.numel()
                if bw.staged_n >= STAGE_FLUSH:
                    self._flush_staged(bw)
            else:
                self._offer_tensor(i, flat, bw)
        st = self.state.get(p)
        if bw.exclude and st and "idx" in st and st["idx"].numel():
            bw.gsel[i] = flat.index_select(0, st["idx"])
        p.grad = None

    def _offer_tensor(self, i: int, flat: torch.Tensor, bw: "_BackwardStep") -> None:
        """Offer tensor i's best selectable entries (score, global position, gradient) to this step's top-k."""
        p = self.selective_params[i]
        n, off, top = flat.numel(), self._offsets[i], bw.top
        chosen = None
        if bw.exclude and p in self.state:
            chosen = self.state[p].get("idx")
            if chosen is not None and chosen.numel() == 0:
                chosen = None
        skip = self._skips_by_bound(p.device)
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            floor = top.floor
            if skip and floor is not None:
                lo, hi = torch.aminmax(flat[s:e])
                if float(torch.maximum(hi, -lo)) < floor:  # a NaN bound compares False: never skipped
                    continue
            local = None
            if chosen is not None:
                local = chosen if (s == 0 and e == n) else chosen[(chosen >= s) & (chosen < e)] - s
            selectable = (e - s) - (0 if local is None else local.numel())
            if selectable <= 0:
                continue
            buf, bool_buf = self._buffers(p)
            scores = buf[: e - s]
            self._score(p, s, e, scores, g=flat)
            if local is not None and local.numel():
                scores.index_fill_(0, local, MASKED)
            floor = just_below(floor, scores.dtype)  # offers come in any order: position decides ties later
            loc, vals = chunk_top(scores, min(bw.k, selectable), floor, bool_buf, exact=False)
            top.offer(vals.to(top.device), loc.to(top.device) + (off + s),
                      payload=flat[s:e].index_select(0, loc).to(top.device))

    def _flush_staged(self, bw: "_BackwardStep") -> None:
        """Offer the staged small tensors' best selectable entries as one batch (a few ops instead of ~10 each)."""
        if not bw.staged:
            return
        # in tensor order, so the batch is in position order: chunk_top breaks ties by place in the batch
        staged, bw.staged, bw.staged_n = sorted(bw.staged, key=lambda t: t[0]), [], 0
        params, top = self.selective_params, bw.top
        g = torch.cat([f for _, f in staged])
        scores = torch.empty_like(g)
        pos, masked, at = [], [], 0
        for i, f in staged:
            n = f.numel()
            if self.score_exp != 0.0:
                self._score(params[i], 0, n, scores[at : at + n], g=f)
            ar = self._positions.get(i)
            if ar is None:
                ar = self._positions[i] = torch.arange(n, device=g.device) + self._offsets[i]
            pos.append(ar)
            if bw.exclude and params[i] in self.state:
                chosen = self.state[params[i]].get("idx")
                if chosen is not None and chosen.numel():
                    masked.append(chosen + at)
            at += n
        if self.score_exp == 0.0:
            torch.abs(g, out=scores)
        n_masked = 0
        if masked:
            local = torch.cat(masked)
            n_masked = local.numel()
            scores.index_fill_(0, local, MASKED)
        selectable = g.numel() - n_masked
        if selectable <= 0:
            return
        floor = just_below(top.floor, scores.dtype)  # any order: position decides ties later
        bool_buf = torch.empty(g.numel(), dtype=torch.bool, device=g.device)
        loc, vals = chunk_top(scores, min(bw.k, selectable), floor, bool_buf)
        allpos = torch.cat(pos)
        top.offer(vals.to(top.device), allpos.index_select(0, loc).to(top.device),
                  payload=g.index_select(0, loc).to(top.device))

    @torch.no_grad()
    def _step_in_backward(self) -> None:
        bw = self._bw
        self._bw = None
        params = self.selective_params
        if bw is None:  # no selective gradient this step (e.g. every selective tensor was unused)
            k, exclude = self._selection_plan()
            bw = _BackwardStep(k, exclude, params[0].device)
        if bw.k > 0:  # tensors no gradient reached score 0 everywhere, as in the standard mode
            self._flush_staged(bw)
            for i, p in enumerate(params):
                if i not in bw.seen:
                    self._offer_tensor(i, torch.zeros(p.numel(), dtype=p.dtype, device=p.device), bw)
        dense = [p for g in self.param_groups if not g["selective"] for p in g["params"] if p.grad is not None]
        coef = None
        if self.max_grad_norm > 0:
            sq = bw.sq + [torch.linalg.vector_norm(p.grad, dtype=torch.float32).square() for p in dense]
            if sq:
                dev = params[0].device
                total = torch.stack([v.to(dev) for v in sq]).sum().sqrt()
                self.last_grad_norm = total
                coef = torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)
                for p in dense:
                    p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
        # the selection, and each tensor's gathered gradient in the order of its idx after the update
        grads: dict = {}
        if bw.k > 0:
            top = bw.top
            pos, pay = top.pos, top.payload
            if pay is None:
                pay = torch.empty(0, dtype=params[0].dtype, device=pos.device)
            cut = torch.searchsorted(pos, torch.tensor(self._offsets, device=pos.device)).tolist()
            news = [(pos[cut[i] : cut[i + 1]] - self._offsets[i]).to(p.device) for i, p in enumerate(params)]
            new_g = [pay[cut[i] : cut[i + 1]].to(p.device) for i, p in enumerate(params)]
            if bw.exclude:
                self._add_to_mask(news)
                for i in bw.seen:
                    old = bw.gsel.get(i)
                    grads[i] = new_g[i] if old is None else torch.cat([old, new_g[i]])
            else:
                self._set_mask(news)
                for i in bw.seen:
                    grads[i] = new_g[i]
        else:
            grads = dict(bw.gsel)
        self.steps += 1
        self.updates_performed += self._unmasked
        if coef is not None:
            for g in grads.values():
                g.mul_(coef.to(g.device, g.dtype))
        index = {p: i for i, p in enumerate(params)}
        for group in self.param_groups:
            if group["selective"]:
                self._sparse_adamw(group, {p: grads.get(index[p]) for p in group["params"]})
            else:
                self._dense_adamw(group)

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


class _BackwardStep:
    """What the in-backward hooks gather during one backward pass (cleared by ``step()``)."""

    def __init__(self, k: int, exclude: bool, device: torch.device):
        self.k, self.exclude = k, exclude
        # one offer per tensor (a hundred or more): cut only when 4k entries pile up
        self.top = StreamingTopK(max(k, 1), device, slack=4 * max(k, 1) + 1024)
        self.top.in_order = False  # hooks fire in backward order, not position order
        self.seen: set[int] = set()
        self.staged: list[tuple[int, torch.Tensor]] = []  # (tensor, copy of its gradient): small tensors, batched
        self.staged_n = 0
        self.sq: list[torch.Tensor] = []  # squared norms of the selective gradients (for clipping)
        self.gsel: dict[int, torch.Tensor] = {}  # tensor -> its gradient at the entries selected before this step
