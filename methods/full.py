"""Full fine-tuning: every weight trains. The reference point for cost and score."""

from __future__ import annotations

from dataclasses import dataclass

from methods.base import Method, MethodContext
from methods.options import Options
from methods.registry import register


@dataclass(frozen=True)
class FullOptions(Options):
    """conf/method/full.yaml: no option (any other key is refused)."""


@register
class FullFineTuning(Method):
    name = "full"
    options_class = FullOptions

    def apply(self, model, cfg, ctx: MethodContext):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
