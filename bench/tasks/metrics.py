"""Offline metrics for the papers' tables (sklearn / scipy; no hub download)."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from registry import Registry


def accuracy(preds, labels) -> float:
    return float(accuracy_score(labels, preds))


def f1_positive(preds, labels) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return float(f1_score(labels, preds, pos_label=1, average="binary", zero_division=0))


def matthews(preds, labels) -> float:
    return float(matthews_corrcoef(labels, preds))


def pearson(preds, labels) -> float:
    preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0  # undefined correlation (constant predictions): report 0, not NaN
    return float(pearsonr(preds, labels)[0])


def spearman(preds, labels) -> float:
    preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
    if np.std(preds) == 0 or np.std(labels) == 0:
        return 0.0
    return float(spearmanr(preds, labels)[0])


#: metric name (as task configs write it: ``metrics: [f1, accuracy]``) -> fn(preds, labels) -> float
METRICS: Registry = Registry(
    "metric",
    {"accuracy": accuracy, "f1": f1_positive, "matthews": matthews, "pearson": pearson, "spearman": spearman},
    unknown="unknown metric {name!r}{hint}; known: {known}",
    hint=" (did you mean {!r}?)",
)


def compute(names, preds, labels) -> dict[str, float]:
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise KeyError(f"unknown metric(s) {unknown}; known: {METRICS.names()}")
    return {n: METRICS.get(n)(preds, labels) for n in names}
