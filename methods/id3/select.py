"""Deterministic top-k over large score vectors without sorting (or even holding) all of them.

Order used everywhere: larger score first; equal scores are broken by position (smaller first). Positions are
(tensor order, flat index) folded into one integer, so "global top-k" is a total order and the same inputs always
select the same entries, whatever ``torch.topk`` does with ties.

``torch.topk`` on CPU costs ~13 ns per element even for a tiny k (a 4M-entry chunk takes ~50 ms), while a comparison
plus ``nonzero`` takes ~4 ms. So a chunk is first cut by a threshold estimated from a strided sample (or by the k-th
best score found so far in earlier chunks, which no later entry can beat on a tie), and the exact top-k runs only on
the few survivors. The sample affects speed only, never the result.
"""

from __future__ import annotations

from typing import Optional

import torch

#: entries scored at once; bounds the scratch buffers (CHUNK floats + CHUNK bools)
CHUNK = 1 << 21
#: size of the strided sample used to estimate a chunk's threshold
SAMPLE = 1 << 14
#: the score given to entries that may not be selected (real scores are >= 0)
MASKED = -1.0


def det_topk(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (ascending) of the k best entries of a 1-D tensor: larger value first, ties to the smaller index.

    A NaN counts as 0 (the lowest real score, above the MASKED sentinel), so a NaN gradient can never make a
    masked-out entry win nor leave the budget short.
    """
    n = values.numel()
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=values.device)
    if k >= n:
        return torch.arange(n, device=values.device)
    kth = torch.topk(values, k, sorted=False).values.min()
    if torch.isnan(kth):
        values = torch.nan_to_num(values, nan=0.0)
        kth = torch.topk(values, k, sorted=False).values.min()
    above = torch.nonzero(values > kth).view(-1)
    tied = torch.nonzero(values == kth).view(-1)[: k - above.numel()]
    return torch.cat([above, tied]).sort().values


def chunk_top(scores: torch.Tensor, k: int, floor: Optional[float], bool_buf: torch.Tensor):
    """The chunk's k best entries (local indices ascending, their scores), dropping any score <= ``floor``.

    ``floor`` is the k-th best score among earlier chunks (None while fewer than k were found): an entry of this chunk
    equal to it comes later in the order and loses the tie, so only entries strictly above it can matter.
    ``k`` must not exceed the number of selectable (score >= 0) entries of the chunk.
    """
    n = scores.numel()
    thr = floor
    if 8 * k < n:  # tighten with a sampled estimate of this chunk's k-th score
        stride = max(1, n // SAMPLE)
        sample = scores[::stride]
        ns = sample.numel()
        ks = min(ns, (2 * k * ns) // n + 8)
        est = float(torch.topk(sample, ks, sorted=False).values.min())
        if est == est:  # not NaN
            thr = est if thr is None else max(thr, est)
    if thr is not None:
        loc = torch.nonzero(torch.gt(scores, thr, out=bool_buf[:n])).view(-1)
        count = loc.numel()
        if count >= k or thr == floor:
            vals = scores.index_select(0, loc)
            if count > k:
                keep = det_topk(vals, k)
                loc, vals = loc[keep], vals[keep]
            return loc, vals
        # fewer than k strictly above the estimate (ties at it, or a poor sample): exact path below
    loc = det_topk(scores, k)
    vals = scores.index_select(0, loc)
    if floor is not None:
        keep = vals > floor
        loc, vals = loc[keep], vals[keep]
    return loc, vals


class StreamingTopK:
    """Running global top-k over chunks (in increasing position order unless ``in_order`` is False); memory O(k).

    An offer may carry a ``payload`` (one value per entry, e.g. the gradient there): it follows its entry through
    every cut, so the winners' payloads are at hand without reading the source again.
    """

    def __init__(self, k: int, device: torch.device):
        self.k = k
        self.vals: Optional[torch.Tensor] = None
        self.pos = torch.empty(0, dtype=torch.long, device=device)
        self.payload: Optional[torch.Tensor] = None
        #: False when chunks come in any order: every offer then re-sorts the (at most 2k) kept entries by position
        self.in_order = True

    @property
    def floor(self) -> Optional[float]:
        if self.vals is None or self.vals.numel() < self.k:
            return None
        return float(self.vals.min())

    def offer(self, vals: torch.Tensor, pos: torch.Tensor, payload: Optional[torch.Tensor] = None) -> None:
        if pos.numel() == 0:
            return
        if self.vals is not None and (payload is None) != (self.payload is None):
            raise ValueError("StreamingTopK: every offer carries a payload, or none does")
        if self.vals is None:
            self.vals, self.pos, self.payload = vals, pos, payload
        else:  # in order: pos is larger than every kept position, so concatenation stays in position order
            self.vals = torch.cat([self.vals, vals])
            self.pos = torch.cat([self.pos, pos])
            if payload is not None:
                self.payload = torch.cat([self.payload, payload])
            if not self.in_order:
                by_pos = torch.argsort(self.pos)
                self.vals, self.pos = self.vals[by_pos], self.pos[by_pos]
                if payload is not None:
                    self.payload = self.payload[by_pos]
        if self.pos.numel() > self.k:
            keep = det_topk(self.vals, self.k)
            self.vals, self.pos = self.vals[keep], self.pos[keep]
            if self.payload is not None:
                self.payload = self.payload[keep]
