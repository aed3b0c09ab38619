"""SQuAD v1.1 / v2.0: extractive question answering (span start / end logits), official scoring.

Pre-processing (per example, fast tokenizer): the question (stripped, cut to max_query_length tokens)
then the context, truncating the context only; a long context becomes several overlapping windows
(max_length tokens, doc_stride tokens of overlap, as the HF `stride`). Training labels are the token
span of the first gold answer, or the CLS token when the answer is not wholly inside a window and for
unanswerable v2 questions.

Post-processing: per window, the n-best start and n-best end logits of context tokens are paired
(end >= start, at most max_answer_length tokens); the example's answer is its best span over all its
windows, cut out of the context by character offsets. v2: the null score (start + end logit of CLS,
the smallest over the example's windows) minus the best span's score above `null_threshold` means
"no answer" (""). Logits are reduced to candidates batch by batch, never kept for the whole set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from bench.errors import BenchError
from bench.models.build import build_model
from bench.tasks import squad_metrics
from bench.tasks.base import TaskFamily
from bench.tasks.data import TaskData
from bench.tasks.glue import metric_key  # alias 'default' keeps plain names, others get _<alias>

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
SPECIAL_TOKENS_MAX = 4  # <s> q </s></s> c </s> (RoBERTa); BERT needs 3
FEATURES_VERSION = 1  # part of the tokenized-cache key: bump when the feature code changes


@dataclass(frozen=True)
class QASettings:
    """The task config's pre/post-processing knobs (conf/task/squad*.yaml)."""

    v2: bool = False
    max_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: Union[float, str] = 0.0  # a number, or "best" (tuned on the eval set, reported as such)

    @classmethod
    def from_task(cls, task) -> "QASettings":
        thr = task.get("null_threshold", 0.0)
        return cls(
            v2=bool(task.get("version_2_with_negative", False)),
            max_length=int(task.get("max_length", 384)),
            doc_stride=int(task.get("doc_stride", 128)),
            max_query_length=int(task.get("max_query_length", 64)),
            n_best=int(task.get("n_best", 20)),
            max_answer_length=int(task.get("max_answer_length", 30)),
            null_threshold=thr if isinstance(thr, str) else float(thr),
        )

    def problems(self) -> list[str]:
        out = []
        if self.max_length < 16:
            out.append(f"max_length must be >= 16 (got {self.max_length}); e.g. task.max_length=384")
        if self.max_query_length < 1:
            out.append(f"max_query_length must be >= 1 (got {self.max_query_length}); e.g. task.max_query_length=64")
        room = self.max_length - self.max_query_length - SPECIAL_TOKENS_MAX
        if not 0 <= self.doc_stride < room:
            out.append(
                f"doc_stride must be in [0, max_length - max_query_length - {SPECIAL_TOKENS_MAX}) = [0, {room}) "
                f"(got {self.doc_stride}); e.g. task.doc_stride=128 with task.max_length=384"
            )
        if self.n_best < 1:
            out.append(f"n_best must be >= 1 (got {self.n_best}); e.g. task.n_best=20")
        if self.max_answer_length < 1:
            out.append(f"max_answer_length must be >= 1 (got {self.max_answer_length}); e.g. task.max_answer_length=30")
        if isinstance(self.null_threshold, str) and self.null_threshold != "best":
            out.append(f"null_threshold must be a number or 'best' (got {self.null_threshold!r})")
        return out


# ------------------------------------------------------------------------------------------------
# pre-processing
# ------------------------------------------------------------------------------------------------
def truncate_questions(questions: list[str], tokenizer, max_query_length: int) -> list[str]:
    """Strip leading white space and cut each question after max_query_length tokens (by offsets)."""
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for q, offsets in zip(questions, enc["offset_mapping"]):
        out.append(q[: offsets[max_query_length - 1][1]] if len(offsets) > max_query_length else q)
    return out


def context_token_range(sequence_ids: list, context_id: int) -> tuple[int, int]:
    """First and last token index of the context in one window."""
    first = sequence_ids.index(context_id)
    last = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
    return first, last


def answer_token_span(offsets, ctx_first: int, ctx_last: int, start_char: int, end_char: int) -> Optional[tuple[int, int]]:
    """Token span covering characters [start_char, end_char) of the context, or None when not wholly in the window."""
    if start_char < offsets[ctx_first][0] or end_char > offsets[ctx_last][1]:
        return None
    s = ctx_first
    while s <= ctx_last and offsets[s][1] <= start_char:  # skip tokens that end before the answer
        s += 1
    e = ctx_last
    while e >= ctx_first and offsets[e][0] >= end_char:  # skip tokens that start after it
        e -= 1
    return (s, e) if s <= e else None


def cls_position(input_ids: list[int], tokenizer) -> int:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    if cls_id is not None and cls_id in input_ids:
        return input_ids.index(cls_id)
    return 0


def tokenize_windows(batch: dict, tokenizer, s: QASettings):
    """Tokenize a batch of examples into windows; returns (encoding, window -> example-in-batch, context seq id)."""
    if not getattr(tokenizer, "is_fast", False):
        raise BenchError(
            f"SQuAD pre-processing needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not. "
            "Use a model whose tokenizer.json is available (model=minilm, model=roberta-base, ...)."
        )
    question_first = tokenizer.padding_side == "right"
    questions = truncate_questions(list(batch["question"]), tokenizer, s.max_query_length)
    contexts = list(batch["context"])
    enc = tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=s.max_length,
        stride=s.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    window_to_example = enc.pop("overflow_to_sample_mapping")
    return enc, window_to_example, 1 if question_first else 0


def train_features(batch: dict, tokenizer, s: QASettings) -> dict:
    """Model inputs + start_positions / end_positions (CLS for no answer in the window)."""
    enc, w2e, ctx_id = tokenize_windows(batch, tokenizer, s)
    offsets_all = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offsets_all):
        cls = cls_position(enc["input_ids"][i], tokenizer)
        answers = batch["answers"][w2e[i]]
        span = None
        if len(answers["text"]) > 0:
            start_char = int(answers["answer_start"][0])
            end_char = start_char + len(answers["text"][0])
            first, last = context_token_range(enc.sequence_ids(i), ctx_id)
            span = answer_token_span(offsets, first, last, start_char, end_char)
        starts.append(span[0] if span else cls)
        ends.append(span[1] if span else cls)
    out = {k: enc[k] for k in MODEL_INPUTS if k in enc}
    out["start_positions"] = starts
    out["end_positions"] = ends
    return out


def eval_features(batch: dict, indices: list[int], tokenizer, s: QASettings) -> dict:
    """Model inputs + what post-processing needs: example index, context token range, its offsets, CLS index."""
    enc, w2e, ctx_id = tokenize_windows(batch, tokenizer, s)
    offsets_all = enc.pop("offset_mapping")
    out = {k: enc[k] for k in MODEL_INPUTS if k in enc}
    out.update(example_idx=[], ctx_start=[], ctx_end=[], ctx_offsets=[], cls_index=[])
    for i, offsets in enumerate(offsets_all):
        first, last = context_token_range(enc.sequence_ids(i), ctx_id)
        out["example_idx"].append(int(indices[w2e[i]]))
        out["ctx_start"].append(first)
        out["ctx_end"].append(last)
        out["ctx_offsets"].append([list(o) for o in offsets[first : last + 1]])
        out["cls_index"].append(cls_position(enc["input_ids"][i], tokenizer))
    return out


# ------------------------------------------------------------------------------------------------
# post-processing
# ------------------------------------------------------------------------------------------------
def nbest_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    ctx_start: torch.Tensor,
    ctx_end: torch.Tensor,
    n_best: int,
    max_answer_length: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window: the n-best start x n-best end pairs inside the context, valid ones ranked by score.

    Returns (scores, start tokens, end tokens), each (batch, k); invalid slots score -inf.
    """
    bsz, length = start_logits.shape
    pos = torch.arange(length, device=start_logits.device)
    in_ctx = (pos[None, :] >= ctx_start[:, None]) & (pos[None, :] <= ctx_end[:, None])
    neg = torch.finfo(start_logits.dtype).min
    s = start_logits.masked_fill(~in_ctx, neg)
    e = end_logits.masked_fill(~in_ctx, neg)
    k = min(n_best, length)
    s_val, s_idx = s.topk(k, dim=-1)
    e_val, e_idx = e.topk(k, dim=-1)
    s_ok = s_val > neg
    e_ok = e_val > neg
    span_len = e_idx[:, None, :] - s_idx[:, :, None] + 1
    valid = (span_len >= 1) & (span_len <= max_answer_length) & s_ok[:, :, None] & e_ok[:, None, :]
    pair = (s_val[:, :, None] + e_val[:, None, :]).masked_fill(~valid, float("-inf")).reshape(bsz, -1)
    top_val, top_flat = pair.topk(min(n_best, k * k), dim=-1)
    starts = s_idx.gather(1, torch.div(top_flat, k, rounding_mode="floor"))
    ends = e_idx.gather(1, top_flat % k)
    return top_val.cpu().numpy(), starts.cpu().numpy(), ends.cpu().numpy()


class _ExampleBest:
    """Running best span and smallest null score per example, filled window by window."""

    def __init__(self, n_examples: int):
        self.score = np.full(n_examples, -np.inf)
        self.chars = np.zeros((n_examples, 2), dtype=np.int64)
        self.null = np.full(n_examples, np.inf)

    def update(self, ex: int, score: float, start_char: int, end_char: int, null: float) -> None:
        if score > self.score[ex]:
            self.score[ex] = score
            self.chars[ex] = (start_char, end_char)
        self.null[ex] = min(self.null[ex], null)


# ------------------------------------------------------------------------------------------------
# the family
# ------------------------------------------------------------------------------------------------
class SquadFamily(TaskFamily):
    task_type = "qa"

    @property
    def settings(self) -> QASettings:
        return QASettings.from_task(self.task)

    def required_columns(self) -> list[str]:
        cols = ["id", "context", "question", "answers"]
        group = self.task.get("group_field")
        return cols + [group] if group and group not in cols else cols

    def metric_names(self) -> list[str]:
        names = ["exact_match", "f1"]
        if self.settings.v2:
            names += [f"{p}_{m}" for p in ("HasAns", "NoAns") for m in ("exact_match", "f1")]
            names += ["best_exact_match", "best_f1"]
        return names

    def validate(self) -> None:
        t = self.task
        problems = [f"task {t.name}: {p}" for p in self.settings.problems()]
        unknown = [m for m in t.get("metrics", []) if m not in self.metric_names()]
        if unknown:
            problems.append(f"task {t.name}: metrics {unknown} are not computed here; known: {self.metric_names()}")
        keys = {metric_key(m, a) for m in self.metric_names() for a in t.eval_splits}
        if t.main_metric not in keys:
            problems.append(f"task {t.name}: main_metric {t.main_metric!r} is not one of {sorted(keys)}")
        if problems:
            raise BenchError("Invalid task configuration:\n  - " + "\n  - ".join(problems))

    def build_model(self, tokenizer):
        model = build_model(self.cfg.model, self.task_type, tokenizer)
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return model

    def _tag(self, kind: str, tokenizer) -> str:
        s = self.settings
        return (f"squad{FEATURES_VERSION}|{kind}|v2={s.v2}|{s.max_length}|{s.doc_stride}|{s.max_query_length}"
                f"|{tokenizer.padding_side}")

    # --- training -------------------------------------------------------------------------------
    def train_dataset(self, data: TaskData, tokenizer):
        s = self.settings
        ds = data.train
        feats = self.cached_map(
            ds, lambda b: train_features(b, tokenizer, s), tokenizer, self._tag("train", tokenizer),
            batched=True, remove_columns=ds.column_names,
        )
        data.info["train_features"] = len(feats)
        return feats.with_format("torch")

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    # --- evaluation -----------------------------------------------------------------------------
    def eval_dataset(self, ds, tokenizer):
        s = self.settings
        return self.cached_map(
            ds, lambda b, idx: eval_features(b, idx, tokenizer, s), tokenizer, self._tag("eval", tokenizer),
            batched=True, with_indices=True, remove_columns=ds.column_names,
        )

    @torch.no_grad()
    def predict(self, model, feats, n_examples: int, contexts: list[str], tokenizer) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Best span text per example, its score, and the example's null score (smallest over windows)."""
        from tqdm.auto import tqdm

        s = self.settings
        model.eval()
        device = next(model.parameters()).device
        bs = int(self.cfg.train.eval_batch_size)
        inputs = [c for c in MODEL_INPUTS if c in feats.column_names]
        best = _ExampleBest(n_examples)
        progress = bool(self.cfg.train.get("progress", True))
        for lo in tqdm(range(0, len(feats), bs), desc=f"eval {self.task.name}", disable=not progress, unit="batch"):
            rows = feats[lo : lo + bs]
            batch = tokenizer.pad({c: rows[c] for c in inputs}, return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            start_logits = (out.start_logits if hasattr(out, "start_logits") else out[0]).float()
            end_logits = (out.end_logits if hasattr(out, "end_logits") else out[1]).float()
            ctx_start = torch.tensor(rows["ctx_start"], device=device)
            ctx_end = torch.tensor(rows["ctx_end"], device=device)
            scores, starts, ends = nbest_spans(start_logits, end_logits, ctx_start, ctx_end, s.n_best, s.max_answer_length)
            cls = torch.tensor(rows["cls_index"], device=device)[:, None]
            null = (start_logits.gather(1, cls) + end_logits.gather(1, cls)).squeeze(1).cpu().numpy()
            for b, ex in enumerate(rows["example_idx"]):
                c0 = rows["ctx_start"][b]
                if np.isfinite(scores[b, 0]):
                    offs = rows["ctx_offsets"][b]
                    best.update(ex, float(scores[b, 0]), offs[starts[b, 0] - c0][0], offs[ends[b, 0] - c0][1], float(null[b]))
                else:
                    best.update(ex, -np.inf, 0, 0, float(null[b]))
        texts = [contexts[i][a:z] if np.isfinite(best.score[i]) else "" for i, (a, z) in enumerate(best.chars)]
        return texts, best.score, best.null

    def evaluate(self, model, data: TaskData, tokenizer, out_dir: Optional[Path] = None) -> dict:
        s = self.settings
        was_training = model.training
        cache = self.__dict__.setdefault("_eval_features", {})
        out: dict = {}
        for alias, ds in data.evals.items():
            if alias not in cache:
                cache[alias] = self.eval_dataset(ds, tokenizer)
                data.info.setdefault("eval_features", {})[alias] = len(cache[alias])
            texts, span_scores, null_scores = self.predict(model, cache[alias], len(ds), list(ds["context"]), tokenizer)
            ids = list(ds["id"])
            references = {q: list(a["text"]) for q, a in zip(ids, list(ds["answers"]))}
            span_texts = dict(zip(ids, texts))
            if s.v2:
                diffs = dict(zip(ids, (null_scores - span_scores).tolist()))  # +inf when no valid span
                best = {m: squad_metrics.best_null_threshold(span_texts, diffs, references, m) for m in ("exact_match", "f1")}
                threshold = best["f1"][1] if s.null_threshold == "best" else float(s.null_threshold)
                predictions = squad_metrics.apply_null_threshold(span_texts, diffs, threshold)
                metrics = squad_metrics.score_v2(predictions, references)
                for m, (value, thresh) in best.items():
                    metrics[f"best_{m}"] = value
                    metrics[f"best_{m}_thresh"] = thresh
                metrics["null_threshold"] = threshold
                metrics["null_threshold_tuned_on_eval"] = int(s.null_threshold == "best")
            else:
                diffs = None
                predictions = span_texts
                metrics = squad_metrics.score_v1(predictions, references)
            metrics.pop("total", None)
            if out_dir is not None:
                self._write_predictions(Path(out_dir), alias, predictions, diffs)
            for name, value in metrics.items():
                out[metric_key(name, alias)] = value
        model.train(was_training)
        return out

    def _write_predictions(self, out_dir: Path, alias: str, predictions: dict, diffs: Optional[dict]) -> None:
        """predictions.json (id -> text) in the official scripts' format; v2 also null_odds.json (id -> diff)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = "" if alias in ("", "default") else f"_{alias}"
        (out_dir / f"predictions{suffix}.json").write_text(json.dumps(predictions, indent=1, ensure_ascii=False))
        if diffs is not None:
            finite = {q: (d if np.isfinite(d) else 1e9) for q, d in diffs.items()}
            (out_dir / f"null_odds{suffix}.json").write_text(json.dumps(finite, indent=1))
