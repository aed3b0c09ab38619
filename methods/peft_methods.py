"""LoRA and IA3 through the peft library (never rewritten here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from methods.base import Method, MethodConfigError, MethodContext, head_to_save
from methods.options import Options, check_train_head
from methods.registry import register
from methods.targets import resolve_targets


@dataclass(frozen=True)
class LoraOptions(Options):
    """conf/method/lora.yaml"""

    r: Any
    alpha: Any
    dropout: Any
    target_roles: Any
    target_modules: Any
    bias: Any
    use_rslora: Any
    train_head: Any

    def check(self) -> None:
        if int(self.r or 0) <= 0:
            raise MethodConfigError(f"method.r must be a positive integer (got {self.r}); e.g. method.r=8")
        if float(self.alpha or 0) <= 0:
            raise MethodConfigError(f"method.alpha must be > 0 (got {self.alpha}); e.g. method.alpha=16")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise MethodConfigError(f"method.dropout must be in [0, 1) (got {self.dropout})")
        check_train_head(self.train_head)


@dataclass(frozen=True)
class IA3Options(Options):
    """conf/method/ia3.yaml"""

    target_modules: Any
    feedforward_modules: Any
    train_head: Any

    def check(self) -> None:
        check_train_head(self.train_head)


@register
class LoRA(Method):
    """peft LoRA; defaults (conf/method/lora.yaml) are the LoRA paper's GLUE setting (r=8, alpha 16, dropout 0.1 on
    query/value)."""

    name = "lora"
    options_class = LoraOptions

    def peft_config(self, cfg, ctx: MethodContext):
        from peft import LoraConfig

        o: LoraOptions = self.options(cfg)
        return LoraConfig(
            r=int(o.r),
            lora_alpha=float(o.alpha),
            lora_dropout=float(o.dropout),
            target_modules=resolve_targets(ctx.model_type, o.target_modules, o.target_roles),
            bias=o.bias,
            modules_to_save=head_to_save(o.train_head, ctx),
            use_rslora=bool(o.use_rslora),
        )

    def apply(self, model, cfg, ctx: MethodContext):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(cfg, ctx))


@register
class IA3(Method):
    """peft IA3; default targets are peft's per-architecture defaults (key, value, FFN output)."""

    name = "ia3"
    options_class = IA3Options

    def apply(self, model, cfg, ctx: MethodContext):
        from peft import IA3Config, get_peft_model

        o: IA3Options = self.options(cfg)
        target, ff = o.target_modules, o.feedforward_modules
        config = IA3Config(
            target_modules=list(target) if target and not isinstance(target, str) else target,
            feedforward_modules=list(ff) if ff and not isinstance(ff, str) else ff,
            modules_to_save=head_to_save(o.train_head, ctx),
        )
        if target is None and ctx.model_type not in _peft_ia3_defaults():
            raise MethodConfigError(
                f"peft has no default IA3 targets for model_type {ctx.model_type!r}; set method.target_modules "
                "and method.feedforward_modules"
            )
        return get_peft_model(model, config)


def _peft_ia3_defaults():
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as m
    except ImportError:  # pragma: no cover - older peft
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as m
    return m
