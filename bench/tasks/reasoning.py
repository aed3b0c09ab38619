"""Math and commonsense reasoning with causal LMs: generative SFT, answer-checked evaluation.

A reasoning task is one YAML (conf/task/gsm8k.yaml is the model): its data (``local_dir`` / ``hub``, or
``source: reasoning_gym``), how a row becomes a prompt, a target and a gold (jinja2 templates,
bench/tasks/templates.py) and how an output becomes a prediction (filter lists, bench/tasks/filters.py).
Adding a math or commonsense set needs no Python.

Training: supervised fine-tuning on prompt + answer, the loss on the answer tokens only (prompt and
padding carry label -100), the prompt rendered with the model's chat template when it has one
(else the Alpaca prompt that LLM-Adapters uses), length-grouped batches so that padding stays small.

Evaluation (``task.eval_mode``): ``generate`` (the default) or ``loglikelihood`` (multiple choice: each choice's
continuation scored by its log-probability, ``acc`` / ``acc_norm``, bench/tasks/loglikelihood.py). Generation:
batched greedy generation with the KV cache and LEFT padding (bench/tasks/generate.py),
stopping at EOS or ``task.max_new_tokens``; every filter of the task is scored (``accuracy_<filter>``,
the main filter's also as ``accuracy``) and every prediction is written to ``predictions.jsonl`` next to
the run's record.

Data: a task may train on another dataset (``task.train_source``: the math test sets train on GSM8K
train, with that block's own templates), carve a training part out of its test split
(``task.carve_if_missing``: commonsense), or generate its data (``task.source: reasoning_gym``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from bench.errors import BenchError
from bench.tasks.base import TaskFamily
from bench.tasks.data import TaskData
from bench.tasks.filters import FilterSet
from bench.tasks.templates import DATA_CODE_VERSION, prompt_ids, task_templates, train_templates, uses_chat_template

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------
# the SFT example and the loss mask
# ------------------------------------------------------------------------------------------------
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
# the family
# ------------------------------------------------------------------------------------------------
class ReasoningFamily(TaskFamily):
    task_type = "causal_lm"

    @property
    def prompt_style(self) -> str:
        return str(self.cfg.model.get("prompt_style") or "auto")

    def required_columns(self) -> list[str]:
        return task_templates(self.task).columns

    def validate(self) -> None:
        t = self.task
        self.templates = task_templates(t)
        self.train_templates = train_templates(t)
        self.filters = FilterSet(t)
        from bench.tasks import loglikelihood as LL

        if LL.eval_mode(t) == "loglikelihood":
            self.ll_spec = LL.LoglikelihoodSpec(t)
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
        from bench.tasks.loglikelihood import eval_mode

        if eval_mode(self.task) == "loglikelihood":
            names = ["accuracy", "acc", "acc_norm"]
        else:
            names = [*FilterSet(self.task).metric_names(), "truncated_rate", "mean_new_tokens"]
        return [n if a == "default" else f"{n}_{a}" for a in self.task.eval_splits for n in names]

    # --- data ---------------------------------------------------------------------------------
    def load_data(self) -> TaskData:
        from bench.tasks.data import assemble, load_task_data

        if not hasattr(self, "templates"):
            self.validate()
        cfg = self.cfg
        task_default = self.task.get("max_eval_samples")  # the task's own CPU-sized default eval subsample
        if cfg.data.get("max_eval_samples") is None and task_default is not None:
            cfg = OmegaConf.merge(cfg, {"data": {"max_eval_samples": int(task_default)}})
        if self.task.get("source", "files") == "reasoning_gym":
            from bench.tasks.gsm_symbolic_gen import generated_splits

            data = assemble(cfg, *generated_splits(self.task))
        elif self.task.get("train_source"):
            data = assemble(cfg, *self._splits_with_train_source(cfg))
        else:
            data = load_task_data(cfg, self.required_columns())
        return self._normalized(data)

    def _splits_with_train_source(self, cfg):
        """Training rows from another dataset (e.g. SVAMP trained on GSM8K train), evaluation splits from the task."""
        from bench.tasks.data import check_columns, load_split

        ts, data_dir = self.task.train_source, cfg.get("data_dir")
        source_task = OmegaConf.merge(ts, {"name": f"{self.task.name} (train source {ts.get('name', ts.local_dir)})"})
        train, train_source = load_split(source_task, ts.get("split", "train"), data_dir)
        check_columns(train, self.train_templates.columns, self.task.name, train_source)
        info: dict = {"data_dir": data_dir, "sources": {"train": train_source}, "carved": None,
                      "train_from": ts.get("name", ts.local_dir)}
        evals = {}
        for alias, split in self.task.eval_splits.items():
            evals[alias], info["sources"][f"eval:{alias}"] = load_split(self.task, split, data_dir)
            check_columns(evals[alias], self.required_columns(), self.task.name, info["sources"][f"eval:{alias}"])
        return train, evals, info

    def _normalized(self, data: TaskData) -> TaskData:
        data.train = self.train_templates.normalize(data.train)
        data.evals = {a: self.templates.normalize(d) for a, d in data.evals.items()}
        if self.filters.kind == "label":
            for alias, ds in data.evals.items():
                if any(len(x) == 0 for x in ds["labels"]):
                    raise BenchError(
                        f"task {self.task.name}: some rows of {alias!r} name no answer labels ('Answer format: a/b' "
                        "in the instruction); set task.labels=[...]"
                    )
        data.info["answer_kind"] = self.filters.kind
        data.info["filters"] = list(self.filters.filters)
        data.info["main_filter"] = self.filters.main
        return data

    # --- model --------------------------------------------------------------------------------
    def load_tokenizer(self):
        from bench.models.llm import load_tokenizer

        return load_tokenizer(self.cfg.model, self.cache_dir)

    def build_model(self, tokenizer):
        from bench.models.llm import load_causal_lm

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
        from bench.records.predictions import examples_fingerprint
        from bench.tasks import loglikelihood
        from bench.tasks.generate import generate_texts

        if loglikelihood.eval_mode(self.task) == "loglikelihood":  # task.eval_mode: each choice scored, no generation
            return loglikelihood.evaluate(self, model, data, tokenizer, out_dir)
        data.info["eval_mode"] = "generate"

        filters = getattr(self, "filters", None) or FilterSet(self.task)
        max_new = int(self.task.max_new_tokens)
        bs = int(self.cfg.train.eval_batch_size)
        metrics: dict = {}
        records: list[dict] = []
        self.last_predictions = {}  # per example: 1 = judged right (bench/records/predictions.py), for paired tests
        for alias, ds in data.evals.items():
            rows = ds.to_list()
            prompts = [prompt_ids(tokenizer, r["prompt"], self.prompt_style) for r in rows]
            texts, n_new, seconds = generate_texts(
                model, tokenizer, prompts, max_new_tokens=max_new, batch_size=bs,
                desc=f"generate {self.task.name}/{alias}", progress=bool(self.cfg.train.get("progress", True)))
            results = []
            for r, text, k in zip(rows, texts, n_new):
                res = {**filters.check(text, r), "new_tokens": k, "truncated": k >= max_new}
                results.append(res)
                records.append({"split": alias, "prompt": r["prompt"], "gold": r["gold"], "output": text, **res})
            self.last_predictions[alias] = {
                "pred": [int(x["correct"]) for x in results], "label": [1] * len(results),
                "label_fingerprint": examples_fingerprint([[r["prompt"], str(r["gold"])] for r in rows])}
            n = max(1, len(results))
            m = {**filters.summarize(results),
                 "truncated_rate": sum(x["truncated"] for x in results) / n,
                 "mean_new_tokens": sum(x["new_tokens"] for x in results) / n}
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
