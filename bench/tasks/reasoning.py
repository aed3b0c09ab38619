"""Math and commonsense reasoning with causal LMs: generative SFT, answer-checked evaluation.

Training: supervised fine-tuning on prompt + answer, the loss on the answer tokens only (prompt and
padding carry label -100), the prompt rendered with the model's chat template when it has one
(else the Alpaca prompt that LLM-Adapters uses), length-grouped batches so that padding stays small.

Evaluation: batched greedy generation with the KV cache and LEFT padding, stopping at EOS or
``task.max_new_tokens``; the answer is extracted per ``task.answer_kind`` (bench/answers.py) and
every prediction is written to ``predictions.jsonl`` next to the run's record.

Data (``task.format``):
- ``gsm8k``: columns question, answer ('... #### <n>'); GSM8K itself and GSM-symbolic.
- ``llm_adapters``: columns instruction, input, output, answer (the LLM-Adapters math and
  commonsense test sets).
A task may train on another source (``task.train_source``: the math test sets train on GSM8K
train), carve a training part out of its test split (``task.carve_if_missing``: commonsense), or
generate its data (``task.source: reasoning_gym``: GSM-symbolic, seeded, train and test disjoint).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import OmegaConf

from bench import answers as A
from bench.data import TaskData
from bench.errors import BenchError
from bench.tasks.base import TaskFamily

IGNORE_INDEX = -100
#: bump when normalize_row / encode_example change: both are part of the cache keys of mapped data
DATA_CODE_VERSION = 1
FORMAT_COLUMNS = {
    "gsm8k": ["question", "answer"],
    "llm_adapters": ["instruction", "answer"],
}
ANSWER_KINDS = ("number", "letter", "label")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


# ------------------------------------------------------------------------------------------------
# rows -> (prompt, target, gold): one normalized schema for every format
# ------------------------------------------------------------------------------------------------
def normalize_row(row: dict, fmt: str, kind: str, strip_annotations: bool = True) -> dict:
    """{'prompt': user message, 'target': SFT answer text, 'gold': answer to check, 'labels', 'options'}."""
    if fmt == "gsm8k":
        solution = row["answer"]
        prompt = row["question"].strip()
        target = A.strip_calculator_annotations(solution) if strip_annotations else solution
        gold = A.gsm8k_gold(solution)
    elif fmt == "llm_adapters":
        prompt = row["instruction"].strip()
        extra = (row.get("input") or "").strip()
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        target = (row.get("output") or "").strip()
        gold = str(row["answer"]).strip()
        if kind == "number" and not target:
            target = f"The answer is {gold}."
    else:
        raise BenchError(f"task.format must be one of {sorted(FORMAT_COLUMNS)} (got {fmt!r})")
    labels: list[str] = []
    options = ""
    if kind == "label":
        labels = A.labels_from_instruction(prompt) or []
    elif kind == "letter":
        options = json.dumps(A.aqua_options(prompt))
    return {"prompt": prompt, "target": target, "gold": gold, "labels": labels, "options": options}


def normalize(ds, fmt: str, kind: str, strip_annotations: bool = True, fixed_labels: Optional[list] = None):
    """Map a split to the normalized schema; the fingerprint is derived, so the tokenized cache is stable."""
    columns = list(ds.column_names)

    def fn(row):
        out = normalize_row(row, fmt, kind, strip_annotations)
        if kind == "label" and not out["labels"]:
            out["labels"] = list(fixed_labels or [])
        return out

    tag = f"{ds._fingerprint}|normalize-v{DATA_CODE_VERSION}|{fmt}|{kind}|{strip_annotations}|{fixed_labels}"
    fingerprint = hashlib.sha256(tag.encode()).hexdigest()[:16]
    return ds.map(fn, remove_columns=columns, new_fingerprint=fingerprint, desc="normalize")


# ------------------------------------------------------------------------------------------------
# prompts and the loss mask
# ------------------------------------------------------------------------------------------------
def uses_chat_template(tokenizer, style: str = "auto") -> bool:
    if style == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise BenchError("model.prompt_style=chat, but this tokenizer has no chat template; use prompt_style=alpaca")
        return True
    if style == "alpaca":
        return False
    if style != "auto":
        raise BenchError(f"model.prompt_style must be auto | chat | alpaca (got {style!r})")
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer, prompt: str, style: str = "auto") -> list[int]:
    """Token ids of the rendered prompt, exactly what the model sees before its answer (training and generation)."""
    if uses_chat_template(tokenizer, style):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(ALPACA_PROMPT.format(instruction=prompt), add_special_tokens=True)["input_ids"]


def encode_example(tokenizer, prompt: str, target: str, max_length: int, style: str = "auto") -> dict:
    """input_ids = prompt + target + EOS; labels = -100 on the prompt, the target ids (and EOS) after it.

    Truncated on the right to max_length; an example left without any answer token gets no labels
    at all (the caller drops it).
    """
    p = prompt_ids(tokenizer, prompt, style)
    t = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + t)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + t)[:max_length]
    return {"input_ids": ids, "labels": labels}


class CausalLMCollator:
    """Right-pads a batch for training: padding gets attention 0 and label -100 (never inferred from the pad id)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = None):
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        n = len(features)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        for i, f in enumerate(features):
            ids = torch.as_tensor(f["input_ids"], dtype=torch.long)
            k = ids.numel()
            input_ids[i, :k] = ids
            attention[i, :k] = 1
            labels[i, :k] = torch.as_tensor(f["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# ------------------------------------------------------------------------------------------------
# batched greedy generation
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | list[int],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[list[int]]:
    """Greedy continuation of every prompt (token ids), batched with LEFT padding and the KV cache.

    Prompts are sorted by length (long first) so a batch holds similar lengths and the largest
    batch runs first; the outputs come back in the input order, each cut at its first EOS.
    """
    from transformers import GenerationConfig

    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    gen_config = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_ids,
        pad_token_id=int(pad_token_id),
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    outputs: list[list[int]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), int(batch_size)):
            idx = order[start : start + int(batch_size)]
            width = max(len(prompts[i]) for i in idx)
            input_ids = torch.full((len(idx), width), int(pad_token_id), dtype=torch.long)
            attention = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                k = len(prompts[i])
                input_ids[row, width - k :] = torch.as_tensor(prompts[i], dtype=torch.long)
                attention[row, width - k :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=gen_config
            )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                cut = next((j for j, tok in enumerate(new) if tok in eos_ids), None)
                outputs[i] = new if cut is None else new[:cut]
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return outputs


# ------------------------------------------------------------------------------------------------
# GSM-symbolic from reasoning-gym: seeded, reproducible, train and test disjoint
# ------------------------------------------------------------------------------------------------
#: the test set's seed is offset by this much, so its per-example seeds (seed + index) never meet the train set's
TEST_SEED_OFFSET = 1_000_003


def gsm_symbolic_rows(seed: int, size: int, dataset: str = "gsm_symbolic") -> list[dict]:
    """``size`` generated problems in the GSM8K schema: question, answer = worked solution ending '#### <n>'."""
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BenchError("task gsm_symbolic needs the reasoning-gym package: `pip install reasoning-gym`") from e
    ds = reasoning_gym.create_dataset(dataset, seed=int(seed), size=int(size))
    rows = []
    for i in range(len(ds)):
        ex = ds[i]
        rows.append({"question": ex["question"], "answer": ex["metadata"]["answer_cot"]})
    return rows


def gsm_symbolic_splits(seed: int, train_size: int, test_size: int, dataset: str = "gsm_symbolic"):
    """(train_rows, test_rows, info): test drawn from another seed range, questions seen in train removed."""
    if int(train_size) >= TEST_SEED_OFFSET:
        raise BenchError(f"task.generator.train_size must be < {TEST_SEED_OFFSET} (got {train_size})")
    train = gsm_symbolic_rows(seed, train_size, dataset)
    seen = {r["question"] for r in train}
    test, dropped = [], 0
    for r in gsm_symbolic_rows(int(seed) + TEST_SEED_OFFSET, test_size, dataset):
        if r["question"] in seen:
            dropped += 1
            continue
        seen.add(r["question"])
        test.append(r)
    info = {
        "generator": f"reasoning_gym:{dataset}",
        "seed_train": int(seed),
        "seed_test": int(seed) + TEST_SEED_OFFSET,
        "test_dropped_overlap": dropped,
    }
    return train, test, info


def _dataset_from_rows(rows: list[dict], fingerprint_tag: str):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    ds._fingerprint = hashlib.sha256(fingerprint_tag.encode()).hexdigest()[:16]
    return ds


# ------------------------------------------------------------------------------------------------
# the family
# ------------------------------------------------------------------------------------------------
class ReasoningFamily(TaskFamily):
    task_type = "causal_lm"

    # --- config -------------------------------------------------------------------------------
    @property
    def fmt(self) -> str:
        return str(self.task.get("format", "gsm8k"))

    @property
    def kind(self) -> str:
        return str(self.task.get("answer_kind", "number"))

    @property
    def prompt_style(self) -> str:
        return str(self.cfg.model.get("prompt_style") or "auto")

    def required_columns(self) -> list[str]:
        return list(FORMAT_COLUMNS.get(self.fmt, []))

    def validate(self) -> None:
        t = self.task
        if self.fmt not in FORMAT_COLUMNS:
            raise BenchError(f"task {t.name}: format must be one of {sorted(FORMAT_COLUMNS)} (got {self.fmt!r})")
        if self.kind not in ANSWER_KINDS:
            raise BenchError(f"task {t.name}: answer_kind must be one of {ANSWER_KINDS} (got {self.kind!r})")
        if t.main_metric not in self._metric_names():
            raise BenchError(f"task {t.name}: main_metric {t.main_metric!r} is not one of {self._metric_names()}")
        for key in ("max_new_tokens", "max_length"):
            if not (t.get(key) is not None and int(t[key]) >= 1):
                raise BenchError(f"task.{key} must be a positive integer (got {t.get(key)}); e.g. task.{key}=256")
        if t.get("source", "files") not in ("files", "reasoning_gym"):
            raise BenchError(f"task {t.name}: source must be files | reasoning_gym (got {t.get('source')!r})")
        if self.cfg.model.get("source") not in (None, "gguf", "hub", "package", "tiny", "custom"):
            raise BenchError(f"model.source must be gguf | hub | package | tiny (got {self.cfg.model.source!r})")

    def _metric_names(self) -> list[str]:
        names = ["accuracy", "no_answer_rate", "truncated_rate", "mean_new_tokens"]
        if self.kind == "number":
            names.append("accuracy_strict")
        aliases = list(self.task.eval_splits)
        return [n if a == "default" else f"{n}_{a}" for a in aliases for n in names]

    # --- data ---------------------------------------------------------------------------------
    def _effective_cfg(self):
        """cfg with the task's own CPU-sized default eval subsample when data.max_eval_samples is unset."""
        task_default = self.task.get("max_eval_samples")
        if self.cfg.data.get("max_eval_samples") is None and task_default is not None:
            return OmegaConf.merge(self.cfg, {"data": {"max_eval_samples": int(task_default)}})
        return self.cfg

    def load_data(self) -> TaskData:
        cfg = self._effective_cfg()
        if self.task.get("source", "files") == "reasoning_gym":
            data = self._generated_data(cfg)
        elif self.task.get("train_source"):
            data = self._data_with_train_source(cfg)
        else:
            from bench.data import load_task_data

            data = load_task_data(cfg, self.required_columns())
        return self._normalized(data)

    def _normalized(self, data: TaskData) -> TaskData:
        strip = bool(self.task.get("strip_calculator_annotations", True))
        labels = list(self.task.get("labels") or [])
        train_fmt = self.task.train_source.get("format", "gsm8k") if self.task.get("train_source") else self.fmt
        train_kind = "number" if self.task.get("train_source") else self.kind
        data.train = normalize(data.train, train_fmt, train_kind, strip, labels)
        data.evals = {a: normalize(d, self.fmt, self.kind, strip, labels) for a, d in data.evals.items()}
        if self.kind == "label":
            for alias, ds in data.evals.items():
                if any(len(x) == 0 for x in ds["labels"]):
                    raise BenchError(
                        f"task {self.task.name}: some rows of {alias!r} name no answer labels ('Answer format: a/b' "
                        "in the instruction); set task.labels=[...]"
                    )
        data.info["format"] = self.fmt
        data.info["answer_kind"] = self.kind
        return data

    def _generated_data(self, cfg) -> TaskData:
        from bench.data import subsample

        g = self.task.generator
        train_rows, test_rows, gen_info = gsm_symbolic_splits(
            int(g.seed), int(g.train_size), int(g.test_size), str(g.get("dataset", "gsm_symbolic"))
        )
        tag = f"{gen_info['generator']}|{g.seed}|{g.train_size}|{g.test_size}"
        train = _dataset_from_rows(train_rows, tag + "|train")
        test = _dataset_from_rows(test_rows, tag + "|test")
        seed = int(cfg.data.subsample_seed)
        aliases = list(self.task.eval_splits)
        info: dict = {
            "data_dir": None,
            "sources": {"train": f"{gen_info['generator']} seed {gen_info['seed_train']}"},
            "carved": None,
            "generated": gen_info,
            "train_size_full": len(train),
        }
        train = subsample(train, cfg.data.get("max_train_samples"), seed)
        evals = {a: subsample(test, cfg.data.get("max_eval_samples"), seed) for a in aliases}
        for a in aliases:
            info["sources"][f"eval:{a}"] = f"{gen_info['generator']} seed {gen_info['seed_test']} (disjoint from train)"
        info.update(
            train_size=len(train),
            eval_sizes_full={a: len(test) for a in aliases},
            eval_sizes={a: len(d) for a, d in evals.items()},
            max_train_samples=cfg.data.get("max_train_samples"),
            max_eval_samples=cfg.data.get("max_eval_samples"),
            subsample_seed=seed,
        )
        return TaskData(train=train, evals=evals, info=info)

    def _data_with_train_source(self, cfg) -> TaskData:
        """Evaluation splits from the task, training rows from another dataset (e.g. SVAMP trained on GSM8K)."""
        from bench.data import check_columns, load_split, subsample

        ts = self.task.train_source
        data_dir = cfg.get("data_dir")
        source_task = OmegaConf.create(
            {"name": f"{self.task.name} (train source {ts.get('name', ts.local_dir)})", "local_dir": ts.local_dir,
             "hub": OmegaConf.to_container(ts.hub) if ts.get("hub") else None}
        )
        train, train_source = load_split(source_task, ts.get("split", "train"), data_dir)
        check_columns(train, FORMAT_COLUMNS[ts.get("format", "gsm8k")], self.task.name, train_source)
        info: dict = {"data_dir": data_dir, "sources": {"train": train_source}, "carved": None,
                      "train_from": ts.get("name", ts.local_dir)}
        evals = {}
        for alias, split in self.task.eval_splits.items():
            ds, source = load_split(self.task, split, data_dir)
            check_columns(ds, self.required_columns(), self.task.name, source)
            evals[alias] = ds
            info["sources"][f"eval:{alias}"] = source
        seed = int(cfg.data.subsample_seed)
        info["train_size_full"] = len(train)
        train = subsample(train, cfg.data.get("max_train_samples"), seed)
        info["eval_sizes_full"] = {a: len(d) for a, d in evals.items()}
        evals = {a: subsample(d, cfg.data.get("max_eval_samples"), seed) for a, d in evals.items()}
        info.update(
            train_size=len(train),
            eval_sizes={a: len(d) for a, d in evals.items()},
            max_train_samples=cfg.data.get("max_train_samples"),
            max_eval_samples=cfg.data.get("max_eval_samples"),
            subsample_seed=seed,
        )
        return TaskData(train=train, evals=evals, info=info)

    # --- model --------------------------------------------------------------------------------
    def load_tokenizer(self):
        from bench.llm import load_tokenizer

        return load_tokenizer(self.cfg.model, self.cache_dir)

    def build_model(self, tokenizer):
        from bench.llm import load_causal_lm

        t0 = time.perf_counter()
        model = load_causal_lm(self.cfg.model, self.cache_dir, tokenizer, dtype=self.cfg.model.get("dtype"))
        self.model_load_s = round(time.perf_counter() - t0, 3)
        return model

    # --- training -----------------------------------------------------------------------------
    def train_dataset(self, data: TaskData, tokenizer):
        max_length = int(self.task.max_length)
        style = self.prompt_style

        def fn(batch):
            out: dict = {"input_ids": [], "labels": [], "length": []}
            for prompt, target in zip(batch["prompt"], batch["target"]):
                ex = encode_example(tokenizer, prompt, target, max_length, style)
                if all(x == IGNORE_INDEX for x in ex["labels"]):
                    continue  # the prompt alone fills max_length: nothing to learn from this row
                out["input_ids"].append(ex["input_ids"])
                out["labels"].append(ex["labels"])
                out["length"].append(len(ex["input_ids"]))
            return out

        chat = uses_chat_template(tokenizer, style)
        tag = f"reasoning-sft-v{DATA_CODE_VERSION}|{max_length}|{'chat' if chat else 'alpaca'}|{getattr(tokenizer, 'chat_template', '')}"
        tokenized = self.cached_map(data.train, fn, tokenizer, tag, batched=True, remove_columns=data.train.column_names)
        if len(tokenized) == 0:
            raise BenchError(
                f"task {self.task.name}: no training example fits task.max_length={max_length}; raise task.max_length"
            )
        lengths = tokenized["length"]
        data.info["prompt_format"] = "chat_template" if chat else "alpaca"
        data.info["train_examples_tokenized"] = len(tokenized)
        data.info["train_dropped_too_long"] = len(data.train) - len(tokenized)
        data.info["train_tokens_mean"] = round(sum(lengths) / len(lengths), 1)
        data.info["train_truncated"] = int(sum(1 for n in lengths if n >= max_length))
        data.info["length_grouped"] = bool(self.task.get("group_by_length", False))
        if hasattr(self, "model_load_s"):
            data.info["model_load_s"] = self.model_load_s
        return tokenized

    def collator(self, tokenizer):
        return CausalLMCollator(tokenizer.pad_token_id)

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self, model, data: TaskData, tokenizer, out_dir: Path | None = None) -> dict:
        from tqdm.auto import tqdm

        style = self.prompt_style
        max_new = int(self.task.max_new_tokens)
        bs = int(self.cfg.train.eval_batch_size)
        tol = float(self.task.get("abs_tolerance", 1e-3))
        eos = _eos_ids(tokenizer, model)
        metrics: dict = {}
        records: list[dict] = []
        for alias, ds in data.evals.items():
            rows = ds.to_list()
            prompts = [prompt_ids(tokenizer, r["prompt"], style) for r in rows]
            bar = tqdm(total=len(rows), unit="ex", desc=f"generate {self.task.name}/{alias}",
                       disable=not bool(self.cfg.train.get("progress", True)))
            t0 = time.perf_counter()
            outs = generate(model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                            max_new_tokens=max_new, batch_size=bs, on_batch=bar.update)
            seconds = time.perf_counter() - t0
            bar.close()
            results = []
            for r, out in zip(rows, outs):
                text = tokenizer.decode(out, skip_special_tokens=True)
                options = json.loads(r["options"]) if r.get("options") else None
                res = A.check(self.kind, text, r["gold"], labels=r.get("labels"), options=options, abs_tol=tol)
                res["new_tokens"] = len(out)
                res["truncated"] = len(out) >= max_new
                results.append(res)
                records.append({"split": alias, "prompt": r["prompt"], "gold": r["gold"], "output": text, **res})
            n = max(1, len(results))
            m = {
                "accuracy": sum(x["correct"] for x in results) / n,
                "no_answer_rate": sum(x["pred"] is None for x in results) / n,
                "truncated_rate": sum(x["truncated"] for x in results) / n,
                "mean_new_tokens": sum(x["new_tokens"] for x in results) / n,
            }
            if self.kind == "number":
                m["accuracy_strict"] = sum(x["correct_strict"] for x in results) / n
            for k, v in m.items():
                metrics[k if alias == "default" else f"{k}_{alias}"] = round(float(v), 6)
            print(f"[bench] {self.task.name}/{alias}: accuracy {m['accuracy']:.4f} on {len(results)} examples "
                  f"({len(results) / max(seconds, 1e-9):.2f} ex/s, max_new_tokens {max_new}, batch {bs})")
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return metrics


def _eos_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS plus the model's generation EOS ids (a chat model may end turns with another token)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in [gen] if isinstance(gen, int) else list(gen or []):
        if x not in ids:
            ids.append(int(x))
    if not ids:
        raise BenchError("the tokenizer has no EOS token: generation could not stop before max_new_tokens")
    return ids
