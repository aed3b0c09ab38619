"""Declarative prompts of the reasoning tasks: a task YAML says how a data row becomes a prompt, a target and a gold.

In the manner of lm-evaluation-harness, a reasoning task YAML holds jinja2 templates over one row's columns:

    columns:        [question, answer]          # what the data files must have (checked at load)
    doc_to_text:    "{{ question | trim }}"     # the user message the model sees
    doc_to_gold:    "{{ answer | gsm8k_gold }}" # the answer an output is checked against
    doc_to_target:  "{{ answer }}"              # the supervised answer text (training)
    doc_to_choices: "{{ prompt | labels_from_instruction or task.labels }}"   # optional: a list of allowed
                    # labels, or {letter: option text}; rendered to a Python object (jinja2 native types)

Templates see the row's columns, ``task`` (the task config as a dict), ``prompt`` (the rendered
doc_to_text) and ``gold`` (the rendered doc_to_gold); doc_to_choices and doc_to_target are rendered last.
A column a row lacks is empty (``{% if input %}``), as ``row.get`` would be. Filters for the templates
(bench/tasks/answers.py): gsm8k_gold, strip_calculator_annotations, labels_from_instruction, aqua_options,
and ``alternation`` (a list -> an escaped regex alternation, longest first) for the answer filters
(bench/tasks/filters.py). A block ``train_source:`` may carry its own columns / doc_to_text / doc_to_target
(the math sets train on GSM8K rows).

Also here: the two prompt formats around the user message (the model's chat template, or the Alpaca
prompt of LLM-Adapters when it has none) and the normalised split every reasoning task trains and
evaluates on: prompt, target, gold, labels (list) and options (JSON of {letter: text}).
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.nativetypes import NativeEnvironment

from bench.errors import BenchError
from bench.tasks import answers as A

#: bump when the normalised schema or the rendering changes: part of the cache keys of mapped data
DATA_CODE_VERSION = 2
TEMPLATE_KEYS = ("doc_to_text", "doc_to_gold", "doc_to_choices", "doc_to_target")
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alternation(items) -> str:
    """['answer1', 'answer10'] -> 'answer10|answer1': escaped, longest first (so answer10 is never read as answer1)."""
    return "|".join(re.escape(str(x)) for x in sorted(items or [], key=lambda x: len(str(x)), reverse=True))


FILTERS = {
    "gsm8k_gold": A.gsm8k_gold,
    "strip_calculator_annotations": A.strip_calculator_annotations,
    "labels_from_instruction": A.labels_from_instruction,
    "aqua_options": A.aqua_options,
    "alternation": alternation,
    "mc_question": A.mc_question,  # log-likelihood scoring (bench/tasks/loglikelihood.py)
    "mc_options": A.mc_options,
    "pick": A.pick,
    "llm_adapters_answers": A.llm_adapters_answers,
    "blank_contexts": A.blank_contexts,
    "after_blank": A.after_blank,
    "lettered_options": A.lettered_options,
}


def _env(cls):
    env = cls(undefined=jinja2.Undefined, autoescape=False)
    env.filters.update(FILTERS)
    env.globals["NUMBER"] = A.NUMBER
    return env


TEXT_ENV = _env(jinja2.Environment)
NATIVE_ENV = _env(NativeEnvironment)  # doc_to_choices: a list / dict, not its string


@lru_cache(maxsize=256)
def compile_template(source: str, native: bool = False) -> jinja2.Template:
    return (NATIVE_ENV if native else TEXT_ENV).from_string(source)


def render(source: str, context: dict) -> str:
    return compile_template(source).render(**context)


class TaskTemplates:
    """The doc_to_* templates of one task (or of its train_source block), checked once, rendered per row."""

    def __init__(self, spec: Any, task: Any, where: str, required: tuple = ("doc_to_text", "doc_to_target")):
        self.where = where
        self.task = _plain(task)
        self.columns = [str(c) for c in (spec.get("columns") or [])]
        self.sources = {k: spec.get(k) for k in TEMPLATE_KEYS if spec.get(k) is not None}
        for key in required:
            if key not in self.sources:
                raise BenchError(f"{where}: {key} is missing; reasoning tasks declare their prompt as jinja2 templates "
                                 f"(e.g. {key}: \"{{{{ question | trim }}}}\"; see bench/tasks/templates.py)")
        for key, source in self.sources.items():
            if not isinstance(source, str):
                raise BenchError(f"{where}: {key} must be a string template (got {type(source).__name__})")
            try:
                compile_template(source, native=key == "doc_to_choices")
            except jinja2.TemplateSyntaxError as e:
                raise BenchError(f"{where}: {key} is not a valid jinja2 template ({e.message}, line {e.lineno})") from None

    def fingerprint(self) -> str:
        return json.dumps({"columns": self.columns, **self.sources, "task_labels": self.task.get("labels"),
                           "strip": self.task.get("strip_calculator_annotations")}, sort_keys=True)

    def row(self, row: dict) -> dict:
        """{'prompt', 'target', 'gold', 'labels', 'options'} of one data row."""
        ctx = {**row, "task": self.task}
        key = "doc_to_text"
        try:
            ctx["prompt"] = prompt = render(self.sources[key], ctx)
            key = "doc_to_gold"
            ctx["gold"] = gold = render(self.sources[key], ctx) if key in self.sources else ""
            key = "doc_to_choices"
            choices = compile_template(self.sources[key], native=True).render(**ctx) if key in self.sources else None
            key = "doc_to_target"
            target = render(self.sources[key], ctx)
        except Exception as e:  # noqa: BLE001 - a template or filter failing on this row: one message naming both
            raise BenchError(f"{self.where}: {key} failed on a row ({type(e).__name__}: {e}); row columns: "
                             f"{sorted(row)}") from None
        if not prompt.strip():
            raise BenchError(f"{self.where}: doc_to_text rendered an empty prompt; check its column names "
                             f"(the rows have {sorted(row)})")
        labels = [str(x) for x in choices] if isinstance(choices, (list, tuple)) else []
        options = json.dumps({str(k): str(v) for k, v in choices.items()}) if isinstance(choices, dict) else ""
        return {"prompt": prompt, "target": target, "gold": gold, "labels": labels, "options": options}

    def normalize(self, ds):
        """A split mapped to the normalised schema; its fingerprint derives from the data and the templates."""
        tag = f"{ds._fingerprint}|normalize-v{DATA_CODE_VERSION}|{self.fingerprint()}"
        fingerprint = hashlib.sha256(tag.encode()).hexdigest()[:16]
        return ds.map(self.row, remove_columns=list(ds.column_names), new_fingerprint=fingerprint, desc="normalize")


def _plain(cfg: Any) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def task_templates(task: Any) -> TaskTemplates:
    return TaskTemplates(task, task, f"task {task.get('name')}", ("doc_to_text", "doc_to_gold", "doc_to_target"))


def train_templates(task: Any) -> TaskTemplates:
    """The templates of the training rows: the train_source block's when it has one, else the task's own."""
    ts = task.get("train_source")
    if ts is None:
        return task_templates(task)
    return TaskTemplates(ts, task, f"task {task.get('name')} (train_source {ts.get('name')})")


# ------------------------------------------------------------------------------------------------
# the prompt format around the user message
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


def normalize_row(row: dict, task: Any, train: bool = False) -> dict:
    """One row through a task config's templates (its train_source block's when train=True)."""
    return (train_templates(task) if train else task_templates(task)).row(row)
