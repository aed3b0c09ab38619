"""The harness hook: ``method=propulsion`` (conf/method/propulsion.yaml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from methods.base import Method, MethodConfigError, MethodContext, head_to_save, trains_head
from methods.options import Options
from methods.registry import register

from .config import PropulsionConfig, paper_degree, paper_train_head

_PEFT_TASK_TYPE = {"causal_lm": "CAUSAL_LM"}


def _check_module_spec(key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as err:
            raise MethodConfigError(
                f"method.{key}={value!r} is not a valid regular expression ({err}); give a regex that matches whole "
                f"module names, e.g. '.*attention.*', or a list of name suffixes, e.g. [query,value]."
            ) from None
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return
    raise MethodConfigError(
        f"method.{key}={value!r} is invalid: use null, a regex string (full match), or a non-empty list of module "
        "name suffixes such as [query,value]."
    )


def resolve_degree(value: Any, task_name: str) -> int:
    """``auto`` -> the paper's degree for the task; an integer overrides."""
    if value == "auto":
        degree = paper_degree(task_name)
        if degree is None:
            raise MethodConfigError(
                f"method.degree=auto has no paper preset for task {task_name!r} (presets: SST-2/QQP/RTE 15, "
                "QNLI/MRPC 55, CoLA/MNLI/STS-B 20, SQuAD 35, math/commonsense reasoning 15); set method.degree=<int>, "
                "or give the task its degree in conf/propulsion_paper.yaml."
            )
        return degree
    return int(value)


def resolve_train_head(value: Any, task_name: str) -> bool:
    """``auto`` -> the authors' protocol: head frozen (only scaled) except STS-B; true/false override."""
    return trains_head(value, paper_train_head(task_name))


@dataclass(frozen=True)
class PropulsionOptions(Options):
    """conf/method/propulsion.yaml"""

    degree: Any
    train_head: Any
    target_modules: Any
    exclude_modules: Any

    def check(self) -> None:
        degree = self.degree
        if degree != "auto" and (isinstance(degree, bool) or not isinstance(degree, int) or degree < 1):
            raise MethodConfigError(
                f"method.degree={degree!r} is invalid: the degree k in z**k must be a positive integer "
                "(paper: 15, 20, 35 or 55) or 'auto' for the paper's per-task value, e.g. method.degree=15."
            )
        if self.train_head != "auto" and not isinstance(self.train_head, bool):
            raise MethodConfigError(
                f"method.train_head={self.train_head!r} is invalid: use auto (head frozen except STS-B, as in the "
                "paper), true or false."
            )
        for key in ("target_modules", "exclude_modules"):
            _check_module_spec(key, getattr(self, key))


#: the option names (PropulsionOptions' fields)
CONFIG_KEYS = PropulsionOptions.keys()


@register
class PropulsionMethod(Method):
    """Propulsion: y = (W x + b) * z**k on every frozen Linear / Embedding; only z trains."""

    name = "propulsion"
    supports = ("seq_cls", "qa", "causal_lm")
    options_class = PropulsionOptions

    def resolve(self, cfg: Mapping[str, Any], ctx: MethodContext) -> dict:
        """The concrete settings this run uses (presets resolved by task)."""
        if ctx.task_type not in self.supports:
            raise MethodConfigError(
                f"propulsion supports task types {list(self.supports)}, not {ctx.task_type!r}."
            )
        o: PropulsionOptions = self.options(cfg)
        train_head = resolve_train_head(o.train_head, ctx.task_name)
        if train_head and not ctx.head_modules:
            raise MethodConfigError(
                "method.train_head is true but the task names no head module; set method.train_head=false."
            )
        return {
            "degree": resolve_degree(o.degree, ctx.task_name),
            "train_head": train_head,
            "modules_to_save": head_to_save(o.train_head, ctx, auto=paper_train_head(ctx.task_name)),
            "target_modules": _as_spec(o.target_modules),
            "exclude_modules": _as_spec(o.exclude_modules),
        }

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> nn.Module:
        from peft import get_peft_model

        settings = self.resolve(cfg, ctx)
        config = PropulsionConfig(
            degree=settings["degree"],
            target_modules=settings["target_modules"],
            exclude_modules=settings["exclude_modules"],
            modules_to_save=settings["modules_to_save"],
            # peft's SEQ_CLS / QUESTION_ANS model classes force the head into modules_to_save (training it), which
            # the paper's frozen-head protocol forbids; the plain PeftModel behaves the same otherwise.
            task_type=_PEFT_TASK_TYPE.get(ctx.task_type),
        )
        return get_peft_model(model, config)

    def record_state(self, model: nn.Module, cfg: Mapping[str, Any]) -> dict:
        tuner = getattr(model, "base_model", None)
        if not hasattr(tuner, "scale_statistics"):
            return {}
        config = next(iter(model.peft_config.values()))
        return {
            "degree": config.degree,
            "train_head": bool(config.modules_to_save),
            "modules_to_save": list(config.modules_to_save or []),
            **tuner.scale_statistics(),
        }

    def save(self, model: nn.Module, cfg: Mapping[str, Any], path: str) -> None:
        # save_embedding_layers=False: peft would otherwise add whole embedding tables whenever target_modules names
        # an embedding (embed_tokens); the adapter needs only the z vectors (+ modules_to_save).
        model.save_pretrained(path, save_embedding_layers=False)


def _as_spec(value: Any):
    if value is None or isinstance(value, str):
        return value
    return list(value)
