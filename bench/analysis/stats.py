"""Statistics of a comparison: intervals over seeds and paired tests at the seed and the example level.

* ``t_interval``: mean and the 95% Student-t interval of the mean over seeds.
* ``seed_paired_t``: paired t-test of two rows' scores over their common seeds.
* ``paired_bootstrap``: a two-level paired bootstrap of a metric difference. Each resample draws the seeds
  (pairs, with replacement) and the examples of the reported split (the same draw for both rows, with
  replacement), then averages ``metric(a) - metric(b)`` over the drawn seeds. It thus covers both sources of
  noise a reader cares about - which seeds ran and which examples the split happens to hold. Two-sided p =
  twice the smaller tail share of resampled differences on either side of 0 (at least 1 / B).
* Metrics are recomputed on every resample from the saved predictions, vectorised (accuracy, F1 and
  Matthews from confusion counts; Pearson / Spearman row-wise), and equal bench.tasks.metrics on the full sample.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

ALPHA = 0.05


N_BOOT = 2000  # bootstrap resamples of every paired test (tables, studies, the report); n_boot=<k> changes it

def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high) of the mean; NaN interval for fewer than two values."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    return (mean, std, *t_bounds(mean, std, len(x), level))


def t_bounds(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """(low, high) of t_interval from a mean, its sample std and its count (NaN for fewer than two values)."""
    if n < 2 or mean is None or std is None or math.isnan(mean) or math.isnan(std):
        return math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def seed_paired_t(a: Sequence[float], b: Sequence[float]) -> float:
    """p of a paired t-test over seeds (NaN with fewer than two pairs or no spread of the differences)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2 or np.allclose(d, d[0]):
        return 0.0 if len(d) >= 2 and d[0] != 0 else math.nan
    return float(sps.ttest_rel(a, b).pvalue)


# ------------------------------------------------------------------------------------------------
# metrics on resampled index sets: idx has shape (B, n); returns shape (B,)
# ------------------------------------------------------------------------------------------------
def _counts(pred, label, idx):
    p = pred[idx].astype(bool)
    y = label[idx].astype(bool)
    tp = (p & y).sum(1).astype(float)
    tn = (~p & ~y).sum(1).astype(float)
    fp = (p & ~y).sum(1).astype(float)
    fn = (~p & y).sum(1).astype(float)
    return tp, tn, fp, fn


def _accuracy(pred, label, idx):
    return (pred[idx] == label[idx]).mean(1)


def _f1(pred, label, idx):
    tp, _, fp, fn = _counts(pred, label, idx)
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def _matthews(pred, label, idx):
    if len(np.unique(label)) > 2 or len(np.unique(pred)) > 2:  # multi-class: one resample at a time
        from sklearn.metrics import matthews_corrcoef

        return np.array([matthews_corrcoef(label[i], pred[i]) for i in idx])
    tp, tn, fp, fn = _counts(pred, label, idx)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1), 0.0)


def _pearson(pred, label, idx):
    return _pearson_rows(pred[idx].astype(float), label[idx].astype(float))


def _spearman(pred, label, idx):
    rp = sps.rankdata(pred[idx], axis=1)
    ry = sps.rankdata(label[idx], axis=1)
    return _pearson_rows(rp, ry)


def _pearson_rows(p, y):
    p = p - p.mean(1, keepdims=True)
    y = y - y.mean(1, keepdims=True)
    den = np.sqrt((p * p).sum(1) * (y * y).sum(1))
    return np.where(den > 0, (p * y).sum(1) / np.where(den > 0, den, 1), 0.0)


RESAMPLED = {"accuracy": _accuracy, "f1": _f1, "matthews": _matthews, "pearson": _pearson, "spearman": _spearman}


def metric_on(name: str, pred, label, idx) -> np.ndarray:
    if name not in RESAMPLED:
        raise KeyError(f"no resampled form of metric {name!r}; known: {sorted(RESAMPLED)}")
    return RESAMPLED[name](np.asarray(pred), np.asarray(label), np.asarray(idx))


def paired_bootstrap(metric: str, preds_a: list, preds_b: list, label, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Two-level paired bootstrap of metric(a) - metric(b), averaged over paired seeds.

    preds_a[i] and preds_b[i] are the two rows' predictions of seed i on the same examples (labels `label`).
    Returns the observed difference, its 95% percentile interval, and the two-sided p.
    """
    if len(preds_a) != len(preds_b) or not preds_a:
        raise ValueError("paired_bootstrap needs the same number (>= 1) of seeds on both sides")
    label = np.asarray(label)
    n, k = len(label), len(preds_a)
    A, Bm = np.stack([np.asarray(p) for p in preds_a]), np.stack([np.asarray(p) for p in preds_b])
    full = np.arange(n)[None, :]
    observed = float(np.mean([metric_on(metric, A[i], label, full)[0] - metric_on(metric, Bm[i], label, full)[0]
                              for i in range(k)]))
    rng = np.random.default_rng(seed)
    seeds_drawn = rng.integers(0, k, size=(n_boot, k))
    idx = rng.integers(0, n, size=(n_boot, n))
    # per seed: the difference on every example resample; then average over the drawn seeds
    per_seed = np.stack([metric_on(metric, A[i], label, idx) - metric_on(metric, Bm[i], label, idx) for i in range(k)])
    diffs = per_seed[seeds_drawn, np.arange(n_boot)[:, None]].mean(1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"diff": observed, "low": float(lo), "high": float(hi), "p": float(min(1.0, max(p, 1.0 / n_boot))),
            "n_seeds": k, "n_examples": n, "n_boot": n_boot}
