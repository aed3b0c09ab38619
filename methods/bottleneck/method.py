"""The harness hooks: ``method=adapter_series`` and ``method=adapter_parallel`` (conf/method/adapter_*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from methods.base import Method, MethodConfigError, MethodContext, head_to_save
from methods.options import Options, check_train_head
from methods.registry import register
from registry import did_you_mean
from methods.targets import resolve_targets

from .config import NON_LINEARITIES, BottleneckConfig
from .layer import CANNOT_MERGE
from .placement import SUBLAYER_INPUTS

_PEFT_TASK_TYPE = {"causal_lm": "CAUSAL_LM"}


def closed_form(d: int, r: int, adapters: int) -> int:
    """Trainable parameters of ``adapters`` bottleneck adapters of size r on a width-d residual stream:
    W_down (r x d) + b_down (r) + W_up (d x r) + b_up (d) = 2 d r + r + d each."""
    return adapters * (2 * d * r + r + d)


@dataclass(frozen=True)
class BottleneckOptions(Options):
    """conf/method/adapter_series.yaml / adapter_parallel.yaml"""

    r: Any
    non_linearity: Any
    scaling: Any
    target_roles: Any
    target_modules: Any
    train_head: Any

    def check(self) -> None:
        r = self.r
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise MethodConfigError(f"method.r (bottleneck size) must be a positive integer, got {r!r}; e.g. method.r=64")
        act = self.non_linearity
        if act not in NON_LINEARITIES:
            raise MethodConfigError(
                f"method.non_linearity={act!r}{did_you_mean(act, NON_LINEARITIES)} is not one of {', '.join(NON_LINEARITIES)}"
            )
        scaling = self.scaling
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not scaling > 0:
            raise MethodConfigError(f"method.scaling must be a number > 0, got {scaling!r}; e.g. method.scaling=1.0")
        if not self.target_modules and not self.target_roles:
            raise MethodConfigError("set method.target_roles (e.g. [o, down]) or method.target_modules")
        check_train_head(self.train_head)


#: the option names (BottleneckOptions' fields)
CONFIG_KEYS = BottleneckOptions.keys()


class BottleneckMethod(Method):
    """Shared by the two modes; a subclass fixes ``mode``."""

    mode = "series"
    options_class = BottleneckOptions

    def peft_config(self, cfg: Mapping[str, Any], ctx: MethodContext) -> BottleneckConfig:
        o: BottleneckOptions = self.options(cfg)
        try:
            targets = resolve_targets(ctx.model_type, o.target_modules, list(o.target_roles or []))
        except KeyError as e:
            raise MethodConfigError(f"{self.name}: {e.args[0]}") from None
        sublayer_inputs = None
        if self.mode == "parallel":
            if ctx.model_type not in SUBLAYER_INPUTS:
                raise MethodConfigError(
                    f"{self.name}: no sub-layer input table for model_type {ctx.model_type!r} (known: "
                    f"{', '.join(sorted(SUBLAYER_INPUTS))}); a parallel adapter must know what enters each sub-layer"
                )
            sublayer_inputs = dict(SUBLAYER_INPUTS[ctx.model_type])
        return BottleneckConfig(
            mode=self.mode,
            r=int(o.r),
            non_linearity=o.non_linearity,
            scaling=float(o.scaling),
            target_modules=targets,
            sublayer_inputs=sublayer_inputs,
            modules_to_save=head_to_save(o.train_head, ctx),
            # the plain PeftModel (no SEQ_CLS task type): peft's SEQ_CLS class would add the head to modules_to_save
            # even with train_head=false
            task_type=_PEFT_TASK_TYPE.get(ctx.task_type),
        )

    def apply(self, model: nn.Module, cfg: Mapping[str, Any], ctx: MethodContext) -> nn.Module:
        from peft import get_peft_model

        config = self.peft_config(cfg, ctx)
        try:
            return get_peft_model(model, config)
        except ValueError as e:
            raise MethodConfigError(f"{self.name} cannot be applied to this {ctx.model_type} model: "
                                    f"{' '.join(str(e).split())[:400]}") from None

    def record_state(self, model: nn.Module, cfg: Mapping[str, Any]) -> dict:
        tuner = getattr(model, "base_model", None)
        if not hasattr(tuner, "bottleneck_layers"):
            return {}
        config = next(iter(model.peft_config.values()))
        return {"mode": config.mode, "r": config.r, "non_linearity": config.non_linearity,
                "scaling": config.scaling, "adapters": len(tuner.bottleneck_layers())}

    def merge(self, model: nn.Module, cfg: Mapping[str, Any]) -> nn.Module:
        raise MethodConfigError(f"{self.name}: {CANNOT_MERGE}")


@register
class AdapterSeries(BottleneckMethod):
    """Houlsby et al. 2019: h + W_up f(W_down h) after the attention and FFN output projections."""

    name = "adapter_series"
    mode = "series"


@register
class AdapterParallel(BottleneckMethod):
    """He et al. 2022: the adapter reads the sub-layer's input and adds to its output."""

    name = "adapter_parallel"
    mode = "parallel"
