r"""Answer filters of the reasoning tasks: how a generated output becomes a prediction, declared in the task YAML.

In the manner of lm-evaluation-harness' filter lists, a reasoning task YAML says:

    answer_kind: number      # number | letter | label: how a match is read and compared with the gold
    filters:                 # name -> extractors tried in order; every filter is scored as accuracy_<name>
      flexible:
        - {regex: '(?i)(?:####|answer is|answer:)\s*\$?\s*\(?\s*({{ NUMBER }})', select: first}
        - {regex: '{{ NUMBER }}', select: last}
      strict:
        - {regex: '####\s*\$?\s*({{ NUMBER }})', select: first}
    main_filter: flexible    # its scores are also the task's `accuracy` and `no_answer_rate`

An extractor has
- ``regex``: a jinja2 template over the normalised row (``prompt``, ``labels``, ``options``; the gold is
  not visible) and ``NUMBER`` (bench/tasks/answers.py's number pattern), rendered per row, then compiled;
- ``group``: the group read (default 1 when the regex has a group, else the whole match);
- ``select``: ``first`` | ``last``: the order in which its matches are tried;
- ``as``: ``value`` (default) | ``option``: the match is a number, answered by the option of that value
  (AQuA: a model that answers 1000 chose the option '(B) 1000'; no such option = no answer).

The first extractor with a usable match decides. Usable: for ``number`` a match that parses as a number
(compared with the gold within task.abs_tolerance), for ``letter`` a non-empty match (compared upper-cased),
for ``label`` a match equal to one of the row's labels, case aside (the label's own spelling is kept).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Optional

import jinja2
from jinja2 import meta

from bench.errors import BenchError
from bench.tasks import answers as A
from bench.tasks.templates import TEXT_ENV, compile_template

ANSWER_KINDS = ("number", "letter", "label")
EXTRACTOR_KEYS = {"regex", "group", "select", "as"}


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


class Extractor:
    def __init__(self, spec: Any, where: str, kind: str):
        if not isinstance(spec, dict) or not isinstance(spec.get("regex"), str):
            raise BenchError(f"{where}: each extractor is a mapping with a `regex` string (got {spec!r})")
        unknown = set(spec) - EXTRACTOR_KEYS
        if unknown:
            raise BenchError(f"{where}: unknown extractor key(s) {sorted(unknown)}; known: {sorted(EXTRACTOR_KEYS)}")
        self.source = spec["regex"]
        self.select = spec.get("select", "first")
        self.as_ = spec.get("as", "value")
        self.group = spec.get("group")
        if self.select not in ("first", "last"):
            raise BenchError(f"{where}: select must be first | last (got {self.select!r})")
        if self.as_ not in ("value", "option") or (self.as_ == "option" and kind != "letter"):
            raise BenchError(f"{where}: `as` must be value, or option for answer_kind letter (got {self.as_!r})")
        if self.group is not None and not (isinstance(self.group, int) and self.group >= 0):
            raise BenchError(f"{where}: group must be an integer >= 0 (got {self.group!r})")
        try:
            self.template = compile_template(self.source)
            row_vars = meta.find_undeclared_variables(TEXT_ENV.parse(self.source)) - {"NUMBER"}
            pattern = self.pattern({"prompt": "", "labels": ["x"], "options": {}})  # a first compile: bad regex fails now
            self.static = None if row_vars else pattern  # a regex that reads no row is rendered once
        except jinja2.TemplateSyntaxError as e:
            raise BenchError(f"{where}: regex is not a valid jinja2 template ({e.message})") from None
        except re.error as e:
            raise BenchError(f"{where}: regex {self.source!r} does not compile ({e})") from None
        if self.group is not None and self.group > pattern.groups:
            raise BenchError(f"{where}: group {self.group} but the regex has {pattern.groups} group(s)")

    def pattern(self, ctx: dict) -> re.Pattern:
        return getattr(self, "static", None) or _compiled(self.template.render(**ctx))

    def candidates(self, output: str, ctx: dict) -> list[str]:
        pattern = self.pattern(ctx)
        group = self.group if self.group is not None else (1 if pattern.groups else 0)
        found = [m.group(group) for m in pattern.finditer(output)]
        return found[::-1] if self.select == "last" else found


class Filter:
    """One named filter: its extractors in order; extract() -> (prediction text or None, numeric value or None)."""

    def __init__(self, name: str, specs: Any, kind: str, where: str):
        if not isinstance(specs, list) or not specs:
            raise BenchError(f"{where}: filter {name!r} must be a non-empty list of extractors")
        self.name, self.kind = name, kind
        self.extractors = [Extractor(s, f"{where}: filter {name!r}, extractor {i}", kind) for i, s in enumerate(specs)]

    def extract(self, output: str, ctx: dict) -> tuple[Optional[str], Optional[float]]:
        for ex in self.extractors:
            for cand in ex.candidates(output, ctx):
                if cand is None:
                    continue
                if self.kind == "number" or ex.as_ == "option":
                    value = A.parse_number(cand)
                    if value is None:
                        continue
                    if ex.as_ == "option":
                        return _option_of(value, ctx.get("options") or {}), None
                    return A.format_number(value), value
                if self.kind == "letter":
                    if cand.strip():
                        return cand.strip().upper(), None
                    continue
                label = next((x for x in ctx.get("labels") or [] if x.lower() == cand.lower()), None)
                if label is not None:
                    return label, None
        return None, None


def _option_of(value: float, options: dict) -> Optional[str]:
    for letter, text in options.items():
        words = str(text).split()
        if words and A.numbers_match(value, A.parse_number(words[0])):
            return letter
    return None


class FilterSet:
    """A task's answer_kind, filters and main filter; check() scores one output against one normalised row."""

    def __init__(self, task: Any):
        self.where = f"task {task.get('name')}"
        self.kind = str(task.get("answer_kind", "number"))
        if self.kind not in ANSWER_KINDS:
            raise BenchError(f"{self.where}: answer_kind must be one of {ANSWER_KINDS} (got {self.kind!r})")
        from omegaconf import OmegaConf

        specs = task.get("filters")
        specs = OmegaConf.to_container(specs, resolve=True) if OmegaConf.is_config(specs) else specs
        if not isinstance(specs, dict) or not specs:
            raise BenchError(f"{self.where}: `filters` must map filter names to extractor lists (see "
                             "bench/tasks/filters.py; e.g. conf/task/gsm8k.yaml)")
        for name in specs:
            if not re.fullmatch(r"[A-Za-z0-9_]+", str(name)):
                raise BenchError(f"{self.where}: filter name {name!r} must be letters, digits or _ (it names a metric)")
        self.filters = {str(n): Filter(str(n), s, self.kind, self.where) for n, s in specs.items()}
        self.main = str(task.get("main_filter") or (next(iter(self.filters)) if len(self.filters) == 1 else ""))
        if self.main not in self.filters:
            raise BenchError(f"{self.where}: main_filter must name one of the filters {list(self.filters)} "
                             f"(got {task.get('main_filter')!r})")
        self.abs_tol = float(task.get("abs_tolerance", 1e-3))

    def metric_names(self) -> list[str]:
        return ["accuracy", "no_answer_rate", *(f"accuracy_{n}" for n in self.filters)]

    def correct(self, pred: Optional[str], value: Optional[float], gold: str) -> bool:
        if pred is None:
            return False
        if self.kind == "number":
            return A.numbers_match(value, A.parse_number(gold), abs_tol=self.abs_tol)
        if self.kind == "letter":
            return pred == str(gold).strip().upper()
        return pred.lower() == str(gold).strip().lower()

    def check(self, output: str, row: dict) -> dict:
        """{'pred', 'correct'} of the main filter and {'pred_<name>', 'correct_<name>'} of every filter."""
        options = A.json_options(row.get("options"))
        ctx = {"prompt": row.get("prompt", ""), "labels": list(row.get("labels") or []), "options": options}
        out: dict = {}
        for name, f in self.filters.items():
            pred, value = f.extract(output, ctx)
            out[f"pred_{name}"] = pred
            out[f"correct_{name}"] = self.correct(pred, value, row["gold"])
        out["pred"], out["correct"] = out[f"pred_{self.main}"], out[f"correct_{self.main}"]
        return out

    def summarize(self, results: list[dict]) -> dict:
        n = max(1, len(results))
        m = {"accuracy": sum(r["correct"] for r in results) / n,
             "no_answer_rate": sum(r["pred"] is None for r in results) / n}
        for name in self.filters:
            m[f"accuracy_{name}"] = sum(r[f"correct_{name}"] for r in results) / n
        return m
