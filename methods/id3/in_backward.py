"""ID3 in the backward pass (a mixin of :class:`ID3Optimizer`, ``in_backward=True``).

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

import torch

from . import select
from .select import MASKED, StreamingTopK, chunk_top, just_below

#: tensors of at most this many entries are staged and scored together, STAGE_FLUSH entries at a time
STAGE_SMALL = 1 << 12
STAGE_FLUSH = 1 << 16
#: with exp = 0 and a positive floor, a chunk of at least BLOCK_MIN entries is read once for the largest |g| of each
#: block of BLOCK entries, and only the blocks that reach the floor are scored (in a transformer ~10% of the weight
#: matrices' entries and well under 1% of the word embeddings', whose rows are zero for tokens not in the batch)
BLOCK = 128
BLOCK_MIN = 1 << 15
#: the running top-k of one backward pass holds up to SLACK_FACTOR * k + SLACK_EXTRA entries before a cut
SLACK_FACTOR = 4
SLACK_EXTRA = 1024


class InBackwardMixin:
    def _install_hooks(self) -> None:
        """A post-accumulate-grad hook on every selective tensor (replacing an earlier ID3 optimizer's)."""
        self._hooks = []
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
        for s in range(0, n, select.CHUNK):
            e = min(n, s + select.CHUNK)
            floor = top.floor
            if skip and floor is not None and floor > 0 and e - s >= BLOCK_MIN:
                self._offer_blocks(i, flat, s, e, _chunk_local(chosen, s, e, n), bw, floor)
                continue
            if skip and floor is not None:
                lo, hi = torch.aminmax(flat[s:e])
                if float(torch.maximum(hi, -lo)) < floor:  # a NaN bound compares False: never skipped
                    continue
            local = _chunk_local(chosen, s, e, n)
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

    def _offer_blocks(self, i: int, flat: torch.Tensor, s: int, e: int, chosen_local, bw: "_BackwardStep",
                      floor: float) -> None:
        """:meth:`_offer_tensor` for entries [s, e) of tensor i, scoring only the blocks of BLOCK entries whose
        largest |g| reaches ``floor`` (> 0, exp = 0): an entry below the k-th best score held so far can never be
        selected, so the offer is the same as scoring the whole chunk, whose final cut decides by (score, position).
        A NaN gradient makes its block's bound NaN: that block is scored (the NaN counts as 0 there, chunk_top's rule)."""
        seg, n = flat[s:e], e - s
        nb = n // BLOCK
        body = seg[: nb * BLOCK].view(nb, BLOCK)
        hi, lo = body.amax(dim=1), body.amin(dim=1)  # on CPU ~10x faster than aminmax(dim=1)
        rows = torch.nonzero(~(torch.maximum(hi, -lo) < floor)).view(-1)  # a NaN bound (a NaN in the block): kept
        m, tail = rows.numel(), n - nb * BLOCK
        arange = torch.arange(BLOCK, device=flat.device)
        local = (rows.unsqueeze(1) * BLOCK + arange).view(-1)  # chunk-local positions of the kept blocks, ascending
        if tail:  # the last partial block is always scored
            local = torch.cat([local, torch.arange(nb * BLOCK, n, device=flat.device)])
        if local.numel() == 0:
            return
        g = seg.index_select(0, local)
        scores = g.abs()
        n_masked = 0
        c = chosen_local  # already-selected entries (chunk-local) of the kept blocks score MASKED
        if c is not None and c.numel():
            slot = torch.full((nb + 1,), -1, dtype=torch.long, device=flat.device)
            slot[rows] = torch.arange(m, device=flat.device)
            slot[nb] = m  # the tail follows the kept blocks in ``local``
            at = slot[torch.div(c, BLOCK, rounding_mode="floor")]
            hit = at >= 0
            where = at[hit] * BLOCK + c[hit] % BLOCK
            if where.numel():
                scores.index_fill_(0, where, MASKED)
                n_masked = where.numel()
        selectable = local.numel() - n_masked
        if selectable <= 0:
            return
        _, bool_buf = self._buffers(self.selective_params[i])
        loc, vals = chunk_top(scores, min(bw.k, selectable), just_below(floor, scores.dtype), bool_buf, exact=False)
        top = bw.top
        top.offer(vals.to(top.device), local.index_select(0, loc).to(top.device) + (self._offsets[i] + s),
                  payload=g.index_select(0, loc).to(top.device))

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


def _chunk_local(chosen, s: int, e: int, n: int):
    """The already-selected flat indices of a tensor of n entries that fall in [s, e), made chunk-local (or None)."""
    if chosen is None:
        return None
    return chosen if (s == 0 and e == n) else chosen[(chosen >= s) & (chosen < e)] - s


class _BackwardStep:
    """What the in-backward hooks gather during one backward pass (cleared by ``step()``)."""

    def __init__(self, k: int, exclude: bool, device: torch.device):
        self.k, self.exclude = k, exclude
        # one offer per tensor (a hundred or more): cut only when 4k entries pile up
        self.top = StreamingTopK(max(k, 1), device, slack=SLACK_FACTOR * max(k, 1) + SLACK_EXTRA)
        self.top.in_order = False  # hooks fire in backward order, not position order
        self.seen: set[int] = set()
        self.staged: list[tuple[int, torch.Tensor]] = []  # (tensor, copy of its gradient): small tensors, batched
        self.staged_n = 0
        self.sq: list[torch.Tensor] = []  # squared norms of the selective gradients (for clipping)
        self.gsel: dict[int, torch.Tensor] = {}  # tensor -> its gradient at the entries selected before this step

