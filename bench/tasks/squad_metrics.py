"""SQuAD scoring with the official semantics (v1.1 and v2.0 evaluation scripts), offline.

- Normalisation: lower case, drop ASCII punctuation, drop the articles a / an / the, collapse white space.
- Exact match and token F1 of one prediction against one gold answer; an example's score is the max over
  its gold answers.
- v1.1: every gold answer counts as given (the v1.1 script's F1 is 0 when both sides normalise to nothing).
- v2.0: gold answers that normalise to "" are dropped, an example with none left is unanswerable (gold
  [""]), and an empty prediction means "no answer"; F1 is 1 when both sides are empty. Scores are also
  broken down into HasAns / NoAns.

Scores are fractions in [0, 1] (the harness stores every metric that way; tables multiply by 100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Mapping, Sequence

import numpy as np

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official normalisation, applied in the official order."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, empty_matches_empty: bool = True) -> float:
    """Bag-of-tokens F1 after normalisation.

    empty_matches_empty: the v2.0 rule (both empty -> 1, one empty -> 0). The v1.1 script has no such
    rule and gives 0 whenever no token is shared, empty or not.
    """
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(gold).split()
    if empty_matches_empty and (not pred or not ref):
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers_v2(answers: Iterable[str]) -> list[str]:
    """v2.0: gold answers that normalise to nothing are dropped; none left means unanswerable ([""])."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def example_scores(prediction: str, golds: Sequence[str], v2: bool) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the max over the gold answers."""
    if v2:
        golds = gold_answers_v2(golds)
    elif not golds:
        raise ValueError("a SQuAD v1.1 example needs at least one gold answer")
    em = max(exact_match(prediction, g) for g in golds)
    f1 = max(token_f1(prediction, g, empty_matches_empty=v2) for g in golds)
    return em, f1


def score_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """SQuAD v1.1: {'exact_match', 'f1', 'total'} over the ids in references (a missing prediction scores 0)."""
    if not references:
        raise ValueError("no references to score")
    em = f1 = 0.0
    for qid, golds in references.items():
        e, f = example_scores(predictions.get(qid, ""), golds, v2=False) if qid in predictions else (0.0, 0.0)
        em += e
        f1 += f
    n = len(references)
    return {"exact_match": em / n, "f1": f1 / n, "total": n}


def _v2_arrays(predictions, references):
    qids = list(references)
    has_ans = np.array([gold_answers_v2(references[q]) != [""] for q in qids], dtype=bool)
    em = np.zeros(len(qids))
    f1 = np.zeros(len(qids))
    for i, q in enumerate(qids):
        if q in predictions:
            em[i], f1[i] = example_scores(predictions[q], references[q], v2=True)
    return qids, has_ans, em, f1


def _summary(em: np.ndarray, f1: np.ndarray, has_ans: np.ndarray) -> dict:
    out = {"exact_match": float(em.mean()), "f1": float(f1.mean()), "total": int(len(em))}
    for name, mask in (("HasAns", has_ans), ("NoAns", ~has_ans)):
        n = int(mask.sum())
        out[f"{name}_total"] = n
        if n:  # the official script leaves a part out when it has no example
            out[f"{name}_exact_match"] = float(em[mask].mean())
            out[f"{name}_f1"] = float(f1[mask].mean())
    return out


def score_v2(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """SQuAD v2.0: overall, HasAns_* and NoAns_* exact match / F1 (an empty prediction = no answer)."""
    if not references:
        raise ValueError("no references to score")
    _, has_ans, em, f1 = _v2_arrays(predictions, references)
    return _summary(em, f1, has_ans)


def best_null_threshold(
    span_texts: Mapping[str, str],
    null_diffs: Mapping[str, float],
    references: Mapping[str, Sequence[str]],
    metric: str = "f1",
) -> tuple[float, float]:
    """The threshold t on (null score - best span score) that maximises `metric` over these examples.

    An example answers "" when its diff > t, else its best non-null span text. Every t between two
    consecutive diffs gives the same predictions, so the candidates are "below every diff" and each
    diff itself. Unlike the official script, which re-scores its already thresholded predictions,
    this uses each example's best non-null span, so the score reported is exactly what a run with
    that threshold predicts. Returns (best score as a fraction, threshold).
    """
    qids = list(references)
    if not qids:
        raise ValueError("no references to score")
    has_ans = np.array([gold_answers_v2(references[q]) != [""] for q in qids], dtype=bool)
    idx = 0 if metric == "exact_match" else 1
    answered = np.array([example_scores(span_texts.get(q, ""), references[q], v2=True)[idx] for q in qids])
    empty = (~has_ans).astype(float)  # "" scores 1 on unanswerable questions, 0 elsewhere (EM and F1 alike)
    diffs = np.array([float(null_diffs.get(q, np.inf)) for q in qids])
    order = np.argsort(diffs, kind="stable")
    d = diffs[order]
    gain = (answered - empty)[order]
    # answering every example with diff <= d[k]: total = sum(empty) + cumsum(gain)[k]
    totals = empty.sum() + np.cumsum(gain)
    last_of_tie = np.append(d[1:] != d[:-1], True)
    best_total, best_t = float(empty.sum()), float(d[0] - 1.0) if np.isfinite(d[0]) else 0.0
    for k in np.flatnonzero(last_of_tie & np.isfinite(d)):
        if totals[k] > best_total + 1e-12:
            best_total, best_t = float(totals[k]), float(d[k])
    return best_total / len(qids), best_t


def apply_null_threshold(
    span_texts: Mapping[str, str], null_diffs: Mapping[str, float], threshold: float
) -> dict[str, str]:
    """Predictions: "" where null score - best span score > threshold, else the best span's text."""
    return {q: ("" if float(null_diffs.get(q, -np.inf)) > threshold else t) for q, t in span_texts.items()}


def score(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], v2: bool) -> dict:
    """v1.1 or v2.0 scores of final predictions (id -> text; "" = no answer)."""
    return score_v2(predictions, references) if v2 else score_v1(predictions, references)
