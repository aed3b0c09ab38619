"""Full fine-tuning: every weight trains. The reference point for cost and score."""

from __future__ import annotations

from methods.base import Method, MethodContext
from methods.registry import register


@register
class FullFineTuning(Method):
    name = "full"

    def apply(self, model, cfg, ctx: MethodContext):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
