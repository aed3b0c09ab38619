"""LoRA and IA3 through the peft library (never rewritten here)."""

from __future__ import annotations

from typing import Any, Mapping

from methods.base import Method, MethodConfigError, MethodContext
from methods.registry import register
from methods.targets import resolve_targets


def _head_to_save(cfg: Mapping[str, Any], ctx: MethodContext) -> list[str] | None:
    train_head = cfg.get("train_head", "auto")
    if train_head == "auto":
        train_head = ctx.train_head
    return list(ctx.head_modules) if (train_head and ctx.head_modules) else None


@register
class LoRA(Method):
    """peft LoRA; defaults are the LoRA paper's GLUE setting (r=8, alpha 16, dropout 0.1 on query/value)."""

    name = "lora"

    def validate(self, cfg):
        if int(cfg.get("r", 0)) <= 0:
            raise MethodConfigError(f"method.r must be a positive integer (got {cfg.get('r')}); e.g. method.r=8")
        if float(cfg.get("alpha", 0)) <= 0:
            raise MethodConfigError(f"method.alpha must be > 0 (got {cfg.get('alpha')}); e.g. method.alpha=16")
        if not 0.0 <= float(cfg.get("dropout", 0.0)) < 1.0:
            raise MethodConfigError(f"method.dropout must be in [0, 1) (got {cfg.get('dropout')})")

    def peft_config(self, cfg, ctx: MethodContext):
        from peft import LoraConfig

        return LoraConfig(
            r=int(cfg["r"]),
            lora_alpha=float(cfg["alpha"]),
            lora_dropout=float(cfg.get("dropout", 0.0)),
            target_modules=resolve_targets(ctx.model_type, cfg.get("target_modules"), cfg.get("target_roles", ["q", "v"])),
            bias=cfg.get("bias", "none"),
            modules_to_save=_head_to_save(cfg, ctx),
            use_rslora=bool(cfg.get("use_rslora", False)),
        )

    def apply(self, model, cfg, ctx: MethodContext):
        from peft import get_peft_model

        self.validate(cfg)
        return get_peft_model(model, self.peft_config(cfg, ctx))


@register
class IA3(Method):
    """peft IA3; default targets are peft's per-architecture defaults (key, value, FFN output)."""

    name = "ia3"

    def apply(self, model, cfg, ctx: MethodContext):
        from peft import IA3Config, get_peft_model

        target = cfg.get("target_modules")
        ff = cfg.get("feedforward_modules")
        config = IA3Config(
            target_modules=list(target) if target and not isinstance(target, str) else target,
            feedforward_modules=list(ff) if ff and not isinstance(ff, str) else ff,
            modules_to_save=_head_to_save(cfg, ctx),
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
