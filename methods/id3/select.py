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

import math
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


def chunk_top(scores: torch.Tensor, k: int, floor: Optional[float], bool_buf: torch.Tensor, exact: bool = True):
    """The chunk's k best entries (local indices ascending, their scores), dropping any score <= ``floor``.

    ``exact=False`` may return more than k entries (every entry above a threshold that at least k entries pass, so
    still a superset of the k best), leaving the final cut to the caller's running top-k.

    ``floor`` is the k-th best score among earlier chunks (None while fewer than k were found): an entry of this chunk
    equal to it comes later in the order and loses the tie, so only entries strictly above it can matter.
    ``k`` must not exceed the number of selectable (score >= 0) entries of the chunk. A NaN score counts as 0.
    With a negative ``floor`` (zeros still count) ``scores`` is rewritten in place (NaN -> 0): callers pass scratch.
    """
    n = scores.numel()
    thr = floor
    if floor is not None and floor < 0:  # zeros can still be taken: a NaN counts as one of them (det_topk's rule)
        scores.masked_fill_(torch.isnan(scores), 0.0)
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
            vals = scores.index_select(0, loc)  # no NaN: a NaN is never greater than thr
            if count > k and exact:
                keep = det_topk(vals, k)
                loc, vals = loc[keep], vals[keep]
            return loc, vals
        # fewer than k strictly above the estimate (ties at it, or a poor sample): exact path below
    loc = det_topk(scores, k)  # may pick a NaN entry (as 0): its returned score is 0 too
    vals = scores.index_select(0, loc)
    vals = vals.masked_fill(torch.isnan(vals), 0.0)  # no NaN reaches a running top-k (a NaN floor stops every cut)
    if floor is not None:
        keep = vals > floor
        loc, vals = loc[keep], vals[keep]
    return loc, vals


def just_below(floor: Optional[float], dtype: torch.dtype) -> Optional[float]:
    """The largest ``dtype`` value below ``floor``: as a ``chunk_top`` floor it keeps the entries tied with ``floor``
    (needed when offers come out of position order, so a tie may still win on position)."""
    if floor is None:
        return None
    return float(torch.nextafter(torch.tensor(floor, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)))


class StreamingTopK:
    """Running global top-k over chunks (in increasing position order unless ``in_order`` is False); memory O(k).

    An offer may carry a ``payload`` (one value per entry, e.g. the gradient there): it follows its entry through
    every cut, so the winners' payloads are at hand without reading the source again.

    ``slack``: offers pile up until ``slack`` entries are held, then one cut keeps the best k (default k:
    cut at every offer). A larger slack means fewer cuts when many small offers come (e.g. one per tensor); the
    ``floor`` then lags behind (it is the k-th best at the last cut), which only makes it a looser bound.
    """

    def __init__(self, k: int, device: torch.device, slack: Optional[int] = None):
        self.k = k
        self.device = torch.device(device)
        self.slack = max(k, slack or k)
        #: False when chunks come in any order: every cut then first sorts the held entries by position
        self.in_order = True
        self._vals: list[torch.Tensor] = []
        self._pos: list[torch.Tensor] = []
        self._payload: list[torch.Tensor] = []
        self._held = 0
        self._sorted = True
        self._floor: Optional[float] = None

    @property
    def floor(self) -> Optional[float]:
        """The k-th best score at the last cut (None before k entries were ever held at a cut)."""
        return self._floor

    def offer(self, vals: torch.Tensor, pos: torch.Tensor, payload: Optional[torch.Tensor] = None) -> None:
        if pos.numel() == 0:
            return
        if self._vals and (payload is None) != (not self._payload):
            raise ValueError("StreamingTopK: every offer carries a payload, or none does")
        self._vals.append(vals)
        self._pos.append(pos)
        if payload is not None:
            self._payload.append(payload)
        self._held += pos.numel()
        self._sorted = self.in_order  # out of order: the held entries are sorted by position at the next cut
        if self._held >= self.slack:
            self._cut()

    def _cut(self) -> None:
        if not self._pos:
            return
        if len(self._pos) > 1:  # in order: every offer's positions exceed the held ones, concatenation stays sorted
            vals, pos = torch.cat(self._vals), torch.cat(self._pos)
            payload = torch.cat(self._payload) if self._payload else None
        else:
            vals, pos = self._vals[0], self._pos[0]
            payload = self._payload[0] if self._payload else None
        if not self.in_order and not self._sorted:
            by_pos = torch.argsort(pos)
            vals, pos = vals[by_pos], pos[by_pos]
            payload = payload[by_pos] if payload is not None else None
        if pos.numel() > self.k:
            keep = det_topk(vals, self.k)
            vals, pos = vals[keep], pos[keep]
            payload = payload[keep] if payload is not None else None
        self._vals, self._pos = [vals], [pos]
        self._payload = [payload] if payload is not None else []
        self._held = pos.numel()
        self._sorted = True
        if pos.numel() >= self.k:
            self._floor = float(vals.min())

    def _final(self) -> None:
        if len(self._pos) > 1 or self._held > self.k or not self._sorted:
            self._cut()

    @property
    def pos(self) -> torch.Tensor:
        """Positions of the best k (ascending)."""
        self._final()
        return self._pos[0] if self._pos else torch.empty(0, dtype=torch.long, device=self.device)

    @property
    def payload(self) -> Optional[torch.Tensor]:
        self._final()
        return self._payload[0] if self._payload else None
