"""Forgetting (``train.forgetting=true``): how much worse a causal LM models generic text after fine-tuning.

peft's method comparison reports the rise of the per-token loss on generic (Wikipedia) text after training. Here the
generic text is a fixed sample of distinct Wikipedia paragraphs: the ``context`` column of SQuAD v1.1 dev
(``<data_dir>/squad/squad/validation.parquet``), read at run time (never committed). The sample is the same for
every run: ``SAMPLE_SIZE`` distinct paragraphs drawn with numpy's ``default_rng(SAMPLE_SEED)`` from the paragraphs
in first-seen order, each cut to its first ``MAX_TOKENS`` tokens.

The figure is the mean cross-entropy (nats per predicted token, every token of a paragraph after its first) of the
model as training starts (the method applied, nothing trained) and after training, and the increase after - before.
A run with ``train.max_steps=0`` scores the same model twice: an increase of 0. The record's ``forgetting`` block
names the sample (size, seed, file and text fingerprints) so two runs can be checked to have used the same one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import torch

from bench.errors import BenchError
from bench.tasks.loglikelihood import padded

SOURCE = "squad/squad/validation.parquet"  # relative to data_dir: SQuAD v1.1 dev, its `context` column
SAMPLE_SIZE = 32
SAMPLE_SEED = 0
MAX_TOKENS = 128


def check(cfg: Any, family) -> None:
    """train.forgetting=true needs a causal LM (the reasoning family)."""
    if cfg.train.get("forgetting") and getattr(family, "task_type", None) != "causal_lm":
        raise BenchError(f"train.forgetting=true scores causal language models (reasoning tasks); task "
                         f"{cfg.task.name} trains a {family.task_type} model: set train.forgetting=false")


def sample_paragraphs(data_dir: Optional[str], n: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED) -> tuple[list[str], dict]:
    """The fixed sample of distinct SQuAD dev paragraphs and its description."""
    import numpy as np
    import pandas as pd

    path = Path(data_dir).expanduser() / SOURCE if data_dir else None
    if path is None or not path.is_file():
        where = f"no file {path}" if path else "no data directory is set (data_dir=null, BENCH_DATA_DIR unset)"
        raise BenchError(f"train.forgetting=true reads SQuAD v1.1 dev paragraphs: {where}; point data_dir= (or "
                         f"BENCH_DATA_DIR) at a folder holding {SOURCE}, or set train.forgetting=false")
    contexts = pd.read_parquet(path, columns=["context"])["context"]
    distinct = [str(x) for x in pd.unique(contexts) if str(x).strip()]
    if not distinct:
        raise BenchError(f"{path} holds no paragraph in its context column; set train.forgetting=false")
    k = min(int(n), len(distinct))
    picked = np.random.default_rng(int(seed)).choice(len(distinct), size=k, replace=False)
    texts = [distinct[i] for i in picked]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    info = {"source": f"SQuAD v1.1 dev context ({SOURCE})", "paragraphs": k, "distinct_paragraphs": len(distinct),
            "seed": int(seed), "max_tokens": MAX_TOKENS, "file_sha256": h.hexdigest()[:16],
            "sample_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]}
    return texts, info


def encode(tokenizer, texts: list[str], max_tokens: int = MAX_TOKENS) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in texts]


@torch.no_grad()
def token_loss(model, sequences: list[list[int]], batch_size: int, pad_token_id: int = 0) -> tuple[float, int]:
    """(mean cross-entropy in nats per predicted token, tokens predicted) of the sequences, right-padded batches."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(sequences), int(batch_size)):
            chunk = [s for s in sequences[start : start + int(batch_size)] if len(s) >= 2]
            if not chunk:
                continue
            ids, mask = padded(chunk, pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            keep = mask[:, 1:].float()
            total += float((nll * keep).sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    if count == 0:
        raise BenchError("the forgetting sample has no paragraph of two tokens or more")
    return total / count, count


class Probe:
    """The sample, tokenised once; ``before(model)`` as training starts, ``after(model)`` -> the record's block."""

    def __init__(self, cfg: Any, tokenizer):
        self.texts, self.info = sample_paragraphs(cfg.get("data_dir"))
        self.sequences = encode(tokenizer, self.texts)
        self.batch_size = int(cfg.train.eval_batch_size)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.loss_before: Optional[float] = None

    def before(self, model) -> float:
        self.loss_before, self.tokens = token_loss(model, self.sequences, self.batch_size, self.pad)
        return self.loss_before

    def after(self, model) -> dict:
        if self.loss_before is None:
            raise RuntimeError("Probe.after() before Probe.before()")
        after, _ = token_loss(model, self.sequences, self.batch_size, self.pad)
        return {"loss_before": round(self.loss_before, 6), "loss_after": round(after, 6),
                "increase": round(after - self.loss_before, 6), "tokens": self.tokens,
                "unit": "nats per token", "sample": self.info}
