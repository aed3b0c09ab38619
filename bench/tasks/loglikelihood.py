"""Multiple choice scored by log-likelihood (``task.eval_mode=loglikelihood``), as lm-evaluation-harness scores it.

A reasoning task whose rows list their choices (``doc_to_choices``) may declare how each choice is scored:

    eval_mode: generate            # generate (the default: answer-checked generation) | loglikelihood
    loglikelihood:                 # read only when eval_mode=loglikelihood (and hashed only then)
      prompt_format: raw           # raw: the context as plain text (lm-eval's way) | model: inside the chat /
                                   # Alpaca prompt the model trains and generates with
      doc_to_context: "Question: {{ prompt | mc_question }}\\nAnswer:"   # one context shared by every choice
      doc_to_continuations: "{{ choices | pick(prompt | mc_options, ' ') }}"   # one continuation per choice
      main: acc                    # acc | acc_norm: which one is the task's `accuracy` (and its per-example preds)
      prefix_cache: false          # optional: run a shared context once and reuse its KV cache for every choice

Templates (jinja2, bench/tasks/templates.py) see the normalised row: ``prompt``, ``gold``, ``labels``,
``options`` (a dict), ``choices`` (the row's choice names: its labels, else its option letters, unless the block's
own ``doc_to_choices`` renders them) and ``task``.
``doc_to_contexts`` (a list, one context per choice) replaces ``doc_to_context`` where the choices differ before
a shared ending (WinoGrande's partial scoring); ``doc_to_continuations`` may also render one string, then shared.

The score of a choice is the sum of its continuation tokens' log-probabilities given its context. Context and
continuation are tokenised apart and concatenated (so every choice of a row starts from the same prompt ids).
``acc``: the choice of highest score is the gold one; ``acc_norm``: the highest score divided by the
continuation's length in characters (lm-eval's per-character normalisation). Ties go to the first choice.

Scoring (``choice_logprobs``): every (context + continuation) runs as one left-padded sequence, batched up to
``train.eval_batch_size`` sequences and sorted by length, with only the continuation positions' logits computed.
With ``prefix_cache: true`` in the block, a context shared by a row's choices runs once instead and its key/value
cache is copied to every choice, whose continuations then run as one batch (rows with a context per choice are
still scored in full). Not the default: on SmolLM2-135M on a 2-core CPU with ARC-e's short prompts it scored 0.47-
0.53 examples per CPU-second against 0.65-0.81 in full (docs/loglikelihood.md). Both paths give the same scores as
one sequence at a time (tests/test_loglikelihood.py).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from bench.errors import BenchError

EVAL_MODES = ("generate", "loglikelihood")
LL_KEYS = {"prompt_format", "doc_to_choices", "doc_to_context", "doc_to_contexts", "doc_to_continuations", "main",
           "prefix_cache"}


# ------------------------------------------------------------------------------------------------
# the task's declaration
# ------------------------------------------------------------------------------------------------
def eval_mode(task: Any) -> str:
    mode = str(task.get("eval_mode") or "generate")
    if mode not in EVAL_MODES:
        raise BenchError(f"task.eval_mode must be generate | loglikelihood (got {mode!r})")
    return mode


class LoglikelihoodSpec:
    """The ``loglikelihood`` block of a task: checked once; ``requests(row)`` renders one normalised row."""

    def __init__(self, task: Any):
        from omegaconf import OmegaConf

        from bench.tasks.templates import compile_template

        self.where = f"task {task.get('name')}"
        block = task.get("loglikelihood")
        block = OmegaConf.to_container(block, resolve=True) if OmegaConf.is_config(block) else block
        if not isinstance(block, dict) or not block:
            raise BenchError(f"{self.where}: eval_mode=loglikelihood needs a `loglikelihood:` block in its YAML "
                             "(doc_to_context and doc_to_continuations; see conf/task/arc_easy.yaml), or "
                             "task.eval_mode=generate")
        unknown = set(block) - LL_KEYS
        if unknown:
            raise BenchError(f"{self.where}: unknown loglikelihood key(s) {sorted(unknown)}; known: {sorted(LL_KEYS)}")
        self.prompt_format = str(block.get("prompt_format") or "raw")
        if self.prompt_format not in ("raw", "model"):
            raise BenchError(f"{self.where}: loglikelihood.prompt_format must be raw | model "
                             f"(got {self.prompt_format!r})")
        self.main = str(block.get("main") or "acc")
        if self.main not in ("acc", "acc_norm"):
            raise BenchError(f"{self.where}: loglikelihood.main must be acc | acc_norm (got {self.main!r})")
        self.prefix_cache = block.get("prefix_cache", False)
        if not isinstance(self.prefix_cache, bool):
            raise BenchError(f"{self.where}: loglikelihood.prefix_cache must be true or false "
                             f"(got {self.prefix_cache!r})")
        if ("doc_to_context" in block) == ("doc_to_contexts" in block):
            raise BenchError(f"{self.where}: the loglikelihood block needs exactly one of doc_to_context (shared by "
                             "every choice) and doc_to_contexts (one per choice)")
        if "doc_to_continuations" not in block:
            raise BenchError(f"{self.where}: the loglikelihood block needs doc_to_continuations (one continuation "
                             "per choice, e.g. \"{{ choices | pick(prompt | mc_options, ' ') }}\")")
        self.sources = {k: block[k] for k in ("doc_to_choices", "doc_to_context", "doc_to_contexts",
                                              "doc_to_continuations") if k in block}
        for key, source in self.sources.items():
            if not isinstance(source, str):
                raise BenchError(f"{self.where}: loglikelihood.{key} must be a string template")
            try:
                compile_template(source)
                compile_template(source, native=True)
            except Exception as e:  # noqa: BLE001 - jinja2's syntax error: one line naming the key
                raise BenchError(f"{self.where}: loglikelihood.{key} is not a valid jinja2 template ({e})") from None
        self.task = task

    def _render(self, key: str, ctx: dict, want_list: bool):
        from bench.tasks.templates import compile_template

        value = compile_template(self.sources[key], native=True).render(**ctx)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            if want_list and key == "doc_to_contexts":
                raise BenchError(f"{self.where}: loglikelihood.doc_to_contexts must render a list (one context "
                                 f"per choice), got {type(value).__name__}")
            return compile_template(self.sources[key]).render(**ctx)  # the exact text (native types re-read it)
        return [str(x) for x in value]

    def requests(self, row: dict) -> dict:
        """{'choices', 'gold_index', 'contexts' (one per choice), 'continuations'} of one normalised row."""
        from bench.tasks.answers import json_options

        options = json_options(row.get("options"))
        choices = [str(x) for x in (row.get("labels") or [])] or list(options)
        if "doc_to_choices" in self.sources:  # the block's own list of choice names (AQuA: read from the prompt)
            try:
                got = self._render("doc_to_choices", {**row, "options": options, "task": _plain(self.task)}, False)
            except Exception as e:  # noqa: BLE001 - one message naming the key
                raise BenchError(f"{self.where}: loglikelihood.doc_to_choices failed on a row ({type(e).__name__}: "
                                 f"{e})") from None
            choices = [got] if isinstance(got, str) else list(got)
        hint = "loglikelihood mode needs at least two choices per row (doc_to_choices); or task.eval_mode=generate"
        if not choices:
            raise BenchError(f"{self.where}: a row has no choices ({row.get('prompt', '')[:60]!r}); {hint}")
        if len(choices) == 1:
            raise BenchError(f"{self.where}: a row has only one choice {choices}: nothing to choose between; {hint}")
        ctx = {**row, "options": options, "choices": choices, "task": _plain(self.task)}
        key = "doc_to_continuations"
        try:
            conts = self._render(key, ctx, want_list=False)
            key = "doc_to_contexts" if "doc_to_contexts" in self.sources else "doc_to_context"
            contexts = self._render(key, ctx, want_list=True)
        except BenchError:
            raise
        except Exception as e:  # noqa: BLE001 - a template or filter failing on this row: one message naming both
            raise BenchError(f"{self.where}: loglikelihood.{key} failed on a row ({type(e).__name__}: {e})") from None
        if isinstance(conts, str):
            conts = [conts] * len(choices)
        if isinstance(contexts, str):
            contexts = [contexts] * len(choices)
        for name, got in (("doc_to_continuations", conts), (key, contexts)):
            if len(got) != len(choices):
                raise BenchError(f"{self.where}: loglikelihood.{name} gave {len(got)} entries for {len(choices)} "
                                 f"choices {choices}")
        for c, text in zip(choices, conts):
            if not text.strip():
                raise BenchError(f"{self.where}: choice {c!r} has an empty continuation (nothing to score); give "
                                 "every choice some text in loglikelihood.doc_to_continuations")
        gold = str(row.get("gold", "")).strip().lower()
        gold_index = next((i for i, c in enumerate(choices) if c.lower() == gold), None)
        if gold_index is None:
            raise BenchError(f"{self.where}: the gold answer {row.get('gold')!r} is not one of the row's choices "
                             f"{choices}; check doc_to_gold and doc_to_choices")
        return {"choices": choices, "gold_index": gold_index, "contexts": contexts, "continuations": conts}


def _plain(cfg: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


# ------------------------------------------------------------------------------------------------
# the metrics
# ------------------------------------------------------------------------------------------------
def choose(logprobs: Sequence[float], continuations: Sequence[str]) -> tuple[int, int]:
    """(argmax of the sums, argmax of the sums per continuation character): acc's and acc_norm's choice."""
    if len(logprobs) != len(continuations) or not logprobs:
        raise ValueError("one score per continuation, at least one")
    norm = [lp / len(c) for lp, c in zip(logprobs, continuations)]
    return (max(range(len(logprobs)), key=lambda i: (logprobs[i], -i)),
            max(range(len(norm)), key=lambda i: (norm[i], -i)))


# ------------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------------
def encode_requests(tokenizer, req: dict, prompt_format: str, style: str = "auto") -> tuple[list, list]:
    """(context ids per choice, continuation ids per choice): tokenised apart, as the scores sum them."""
    from bench.tasks.templates import prompt_ids

    cache: dict[str, list[int]] = {}
    ctx_ids = []
    for text in req["contexts"]:
        if text not in cache:
            cache[text] = (prompt_ids(tokenizer, text, style) if prompt_format == "model"
                           else tokenizer(text, add_special_tokens=True)["input_ids"])
        ctx_ids.append(cache[text])
    cont_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in req["continuations"]]
    for c, ids in zip(req["continuations"], cont_ids):
        if not ids:
            raise BenchError(f"the continuation {c!r} has no tokens: nothing to score")
    if any(not ids for ids in ctx_ids):
        raise BenchError("a context has no tokens (empty prompt and no BOS): the first continuation token has "
                         "nothing to be predicted from; give doc_to_context some text")
    return ctx_ids, cont_ids


def padded(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as one padded batch: (input_ids, attention_mask), both long. side="left" ends every row at the
    right edge (generation, and scoring only the last positions)."""
    rows = [torch.as_tensor(s, dtype=torch.long) for s in seqs]
    ids = pad_sequence(rows, batch_first=True, padding_value=int(pad_id), padding_side=side)
    mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0, padding_side=side)
    return ids, mask


def _gather(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log-softmax in float32 at the target ids: logits [..., V], targets [...] -> [...]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def choice_logprobs(model, examples: list[tuple[list, list]], *, batch_size: int, pad_token_id: int = 0,
                    prefix_cache: bool = False) -> tuple[list[list[float]], str]:
    """Sum of log p(continuation | context) of every choice of every example, and the path used.

    examples: [(context ids per choice, continuation ids per choice), ...]. batch_size: sequences per forward.
    prefix_cache: run a context shared by a row's choices once and reuse its key/value cache (rows whose choices
    have their own contexts are scored as full sequences). Returns ([[score per choice] per example], path).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[float]] = [[0.0] * len(conts) for _, conts in examples]
    shared = [i for i, (ctxs, _) in enumerate(examples) if all(c == ctxs[0] for c in ctxs)]
    # every decoder-only model of transformers takes past_key_values (use_cache=True asks for it, whatever the
    # config's default: training turns that off for gradient checkpointing); an encoder-decoder scores in full
    decoder_only = not bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))
    cached = set(shared) if prefix_cache and decoder_only else set()
    try:
        _score_full(model, examples, [i for i in range(len(examples)) if i not in cached], out, batch_size,
                    pad_token_id, device)
        _score_prefix(model, examples, sorted(cached), out, batch_size, pad_token_id, device)
    finally:
        model.train(was_training)
    path = ("prefix_cache" if len(cached) == len(examples) else "batched" if not cached else "prefix_cache+batched")
    return out, path


def _base(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft's wrapper


def _forward(model, keep, **kw):
    """model(**kw) computing the logits at the last ``keep`` positions only (an int), or at the positions ``keep``
    (a 1-D tensor), where the model takes logits_to_keep; else every position, sliced here."""
    params = inspect.signature(_base(model).forward).parameters
    if "past_key_values" in kw and "past_key_values" not in params and "cache" in params:
        kw["cache"] = kw.pop("past_key_values")  # transformers >= 5.x names it `cache`
    if "logits_to_keep" in params:
        return model(**kw, logits_to_keep=keep)
    out = model(**kw)
    out.logits = out.logits[:, -keep:] if isinstance(keep, int) else out.logits[:, keep]
    return out


def _cache_of(out):
    cache = getattr(out, "cache", None)  # transformers >= 5.x; before, past_key_values
    return cache if cache is not None else out.past_key_values


def _score_full(model, examples, todo, out, batch_size, pad_id, device) -> None:
    """Each (context + continuation) as one LEFT-padded sequence (the continuations end together at the right edge,
    so only the last positions' logits are computed); batches of similar length."""
    seqs = [(i, j) for i in todo for j in range(len(examples[i][1]))]
    seqs.sort(key=lambda ij: -(len(examples[ij[0]][0][ij[1]]) + len(examples[ij[0]][1][ij[1]])))
    for start in range(0, len(seqs), int(batch_size)):
        chunk = seqs[start : start + int(batch_size)]
        # the last token is only ever a target
        ids, mask = padded([(examples[i][0][j] + examples[i][1][j])[:-1] for i, j in chunk], pad_id, side="left")
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        targets, t_mask = padded([examples[i][1][j] for i, j in chunk], 0, side="left")
        keep = targets.shape[1]
        logits = _forward(model, keep, input_ids=ids.to(device), attention_mask=mask.to(device),
                          position_ids=positions.to(device), use_cache=False).logits
        sums = (_gather(logits, targets.to(logits.device)) * t_mask.to(logits.device)).sum(1).tolist()
        for r, (i, j) in enumerate(chunk):
            out[i][j] = float(sums[r])


def _score_prefix(model, examples, todo, out, batch_size, pad_id, device) -> None:
    """Contexts once (right-padded batch, cache kept), then every choice's continuation on a copy of its row's cache."""
    start = 0
    while start < len(todo):
        chunk, n_seq = [], 0
        while start < len(todo) and (not chunk or n_seq + len(examples[todo[start]][1]) <= int(batch_size)):
            chunk.append(todo[start])
            n_seq += len(examples[todo[start]][1])
            start += 1
        ctxs = [examples[i][0][0] for i in chunk]
        ids, mask = padded(ctxs, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        ends = sorted({len(c) - 1 for c in ctxs})  # each context's last position predicts its choices' first token
        res = _forward(model, torch.as_tensor(ends, device=device), input_ids=ids, attention_mask=mask,
                       use_cache=True)
        last = torch.stack([res.logits[r, ends.index(len(c) - 1)] for r, c in enumerate(ctxs)])
        rep, conts = [], []
        for r, i in enumerate(chunk):
            for cont in examples[i][1]:
                rep.append(r)
                conts.append(cont)
        rep_t = torch.as_tensor(rep, device=device)
        first = _gather(last[rep_t], torch.as_tensor([c[0] for c in conts], device=device))
        rest = torch.zeros(len(conts), device=device)
        tail = max(len(c) for c in conts) - 1
        if tail > 0:  # the other continuation tokens: one batch over the copied caches
            cache = _cache_of(res)
            cache.batch_select_indices(rep_t)
            c_ids = torch.full((len(conts), tail), int(pad_id), dtype=torch.long, device=device)
            c_mask = torch.zeros((len(conts), tail), dtype=torch.long, device=device)
            targets = torch.zeros((len(conts), tail), dtype=torch.long, device=device)
            for k, c in enumerate(conts):
                c_ids[k, : len(c) - 1] = torch.as_tensor(c[:-1])
                c_mask[k, : len(c) - 1] = 1
                targets[k, : len(c) - 1] = torch.as_tensor(c[1:])
            ctx_len = torch.as_tensor([len(ctxs[r]) for r in rep], device=device)
            positions = ctx_len[:, None] + torch.arange(tail, device=device)[None, :]
            logits = _forward(model, 0, input_ids=c_ids, attention_mask=torch.cat([mask[rep_t], c_mask], dim=1),
                              position_ids=positions, past_key_values=cache, use_cache=True).logits
            rest = (_gather(logits, targets) * c_mask).sum(1)
        sums = (first + rest).tolist()
        k = 0
        for i in chunk:
            for j in range(len(examples[i][1])):
                out[i][j] = float(sums[k])
                k += 1


# ------------------------------------------------------------------------------------------------
# the evaluation of a task
# ------------------------------------------------------------------------------------------------
def evaluate(family, model, data, tokenizer, out_dir: Optional[Path] = None) -> dict:
    """acc / acc_norm of every evaluation split; predictions.jsonl and the family's per-example predictions."""
    spec = LoglikelihoodSpec(family.task)
    bs = int(family.cfg.train.eval_batch_size)
    metrics: dict = {}
    records: list[dict] = []
    family.last_predictions = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for alias, ds in data.evals.items():
        rows = ds.to_list()
        reqs = [spec.requests(r) for r in rows]
        encoded = [encode_requests(tokenizer, q, spec.prompt_format, family.prompt_style) for q in reqs]
        t0 = time.perf_counter()
        scores, path = choice_logprobs(model, encoded, batch_size=bs, pad_token_id=pad,
                                       prefix_cache=spec.prefix_cache)
        seconds = time.perf_counter() - t0
        preds, golds, n_acc, n_norm = [], [], 0, 0
        for r, q, lps in zip(rows, reqs, scores):
            i_acc, i_norm = choose(lps, q["continuations"])
            n_acc += i_acc == q["gold_index"]
            n_norm += i_norm == q["gold_index"]
            pred = i_acc if spec.main == "acc" else i_norm
            preds.append(pred)
            golds.append(q["gold_index"])
            records.append({"split": alias, "prompt": r["prompt"], "gold": r["gold"], "mode": "loglikelihood",
                            "choices": q["choices"], "continuations": q["continuations"],
                            "logprobs": [round(x, 5) for x in lps], "pred": q["choices"][pred],
                            "pred_acc": q["choices"][i_acc], "pred_acc_norm": q["choices"][i_norm],
                            "correct": pred == q["gold_index"], "correct_acc": i_acc == q["gold_index"],
                            "correct_acc_norm": i_norm == q["gold_index"]})
        n = max(1, len(rows))
        m = {"acc": n_acc / n, "acc_norm": n_norm / n}
        m["accuracy"] = m[spec.main]
        for k, v in m.items():
            metrics[k if alias == "default" else f"{k}_{alias}"] = round(float(v), 6)
        family.last_predictions[alias] = {"pred": preds, "label": golds}
        data.info.setdefault("loglikelihood", {})[alias] = {
            "examples_per_s": round(len(rows) / max(seconds, 1e-9), 3), "seconds": round(seconds, 3),
            "scoring": path, "choices": sum(len(q["choices"]) for q in reqs)}
        print(f"[bench] {family.task.name}/{alias}: acc {m['acc']:.4f} acc_norm {m['acc_norm']:.4f} on {len(rows)} "
              f"examples (log-likelihood, {len(rows) / max(seconds, 1e-9):.2f} ex/s, {path}, batch {bs})")
    data.info["eval_mode"] = "loglikelihood"
    data.info["loglikelihood_prompt_format"] = spec.prompt_format
    data.info["loglikelihood_main"] = spec.main
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return metrics
