"""The contract between the harness and a fine-tuning method.

A method is one sub-package of ``methods/`` that registers a :class:`Method` subclass.
The harness never branches on method names: it calls these hooks in this order::

    method.validate(cfg)                       # before any model is built
    model = method.apply(model, cfg, ctx)      # freeze / wrap / add adapters
    callbacks = method.callbacks(model, cfg, ctx)
    optimizer = method.create_optimizer(model, cfg, ctx, train_cfg)   # None -> harness AdamW
    ... training (transformers Trainer) ...
    method.record_state(model, cfg) -> dict    # method-specific facts for the result record
    method.save(model, cfg, path)              # optional adapter export

Nothing in ``methods/`` imports from ``bench/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Optional

import torch
from torch import nn


class MethodConfigError(ValueError):
    """A method's hyperparameter is invalid; the message says what to type instead."""


@dataclass
class MethodContext:
    """What a method may know about the run; filled in by the harness."""

    task_type: str  # "seq_cls" | "qa" | "causal_lm"
    task_name: str = ""  # e.g. "sst2", "squad", "gsm8k" (for per-task presets such as Propulsion's degree)
    model_type: str = ""  # transformers config.model_type: "bert", "roberta", "deberta-v2", "llama", ...
    head_modules: list[str] = field(default_factory=list)  # module names of the task head, e.g. ["classifier"]
    train_head: bool = True  # do the task head's own weights train (task_trains_head; methods may override by preset)
    total_steps: Optional[int] = None  # optimizer steps of the run
    seed: int = 0
    cache_dir: str = ".cache/bench"  # where a method may cache (e.g. SVDs)
    num_labels: Optional[int] = None


class Method:
    """Base class: full fine-tuning semantics unless overridden."""

    name: ClassVar[str] = ""
    #: peft-style task types this method supports
    supports: ClassVar[tuple[str, ...]] = ("seq_cls", "qa", "causal_lm")
    #: the method's typed options (a methods.options.Options subclass, defaults in conf/method/<name>.yaml); None
    #: for a method that reads its config itself (the peft presets: their typed config is the peft config)
    options_class: ClassVar[Optional[type]] = None

    def options(self, cfg: Mapping[str, Any]) -> Any:
        """``cfg`` as this method's typed options: unknown keys refused, absent ones from the preset, checked."""
        if self.options_class is None:
            raise NotImplementedError(f"{type(self).__name__} declares no options_class")
        return self.options_class.parse(cfg, self.name)

    def validate(self, cfg: Mapping[str, Any]) -> None:
        """Raise MethodConfigError for unknown options and out-of-range hyperparameters (by default: parse the
        options)."""
        if self.options_class is not None:
            self.options(cfg)

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> nn.Module:
        raise NotImplementedError

    def callbacks(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> list:
        """transformers.TrainerCallback instances the method needs (e.g. a phase switch)."""
        return []

    def create_optimizer(
        self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext, train_cfg: Mapping[str, Any]
    ) -> Optional[torch.optim.Optimizer]:
        """A custom optimizer, or None for the harness's AdamW over requires_grad parameters.

        train_cfg has at least: lr, weight_decay, adam_beta1, adam_beta2, adam_epsilon.
        """
        return None

    def trainable_parameters(self, model: nn.Module, cfg: Mapping[str, Any]) -> Optional[int]:
        """Override the count of trained scalars when requires_grad does not tell it (e.g. ID3's budget)."""
        return None

    def record_state(self, model: nn.Module, cfg: Mapping[str, Any]) -> dict:
        """Method-specific facts for the result record (switch step, mask size, ...)."""
        return {}

    def merge(self, model: nn.Module, cfg: Mapping[str, Any]) -> nn.Module:
        """The trained model as a plain transformers model with the method folded into its weights (no extra
        latency). Adapter methods merge through peft's ``merge_and_unload``; a method that changes the weights
        themselves (full, ID3, BitFit, ...) already is one. Raise MethodConfigError("... cannot merge ...") where
        the method has no weight delta (prompt learning)."""
        if hasattr(model, "merge_and_unload"):
            return model.merge_and_unload()
        return model

    def save(self, model: nn.Module, cfg: Mapping[str, Any], path: str) -> None:
        """Write the fine-tuned adapter / delta to ``path`` (a directory)."""
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(path)
        else:  # pragma: no cover - plain modules
            import os

            from safetensors.torch import save_file

            os.makedirs(path, exist_ok=True)
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, f"{path}/model.safetensors")


def is_head(name: str, head_modules: Iterable[str]) -> bool:
    """Whether the parameter (or module) ``name`` lies in one of the task head's modules (MethodContext.head_modules,
    e.g. "classifier" or "qa_outputs"): the module itself, under it, or under it below a wrapper's prefix
    ("base_model.model.classifier.weight"). The one test of "head" for the methods and the parameter counts."""
    dotted = "." + name
    return any(name == h or name.startswith(h + ".") or f".{h}." in dotted for h in head_modules)


def task_trains_head(task_type: str) -> bool:
    """What the task decides (MethodContext.train_head): a classification / QA head is new and trains, an LM head
    (the pretrained output embedding) does not."""
    return task_type != "causal_lm"


def trains_head(train_head: Any, auto: bool) -> bool:
    """The one "train the head" rule of every method's ``train_head`` option: true / false say it, ``auto`` leaves it
    to ``auto`` (the task's ``ctx.train_head``, or a method's own rule such as Propulsion's paper protocol)."""
    return bool(auto) if train_head == "auto" else bool(train_head)


def head_to_save(train_head: Any, ctx: MethodContext, auto: Optional[bool] = None) -> Optional[list[str]]:
    """The head modules that train densely (peft ``modules_to_save``) under :func:`trains_head` (``auto`` default:
    ``ctx.train_head``), or None."""
    trains = trains_head(train_head, ctx.train_head if auto is None else auto)
    return list(ctx.head_modules) if (trains and ctx.head_modules) else None


def set_head_trainable(model: nn.Module, head_modules: list[str], trainable: bool = True) -> list[str]:
    """Set requires_grad on every parameter under the named head modules; returns the names touched."""
    touched = []
    for name, p in model.named_parameters():
        if is_head(name, head_modules):
            p.requires_grad_(trainable)
            touched.append(name)
    return touched
