"""The one parameter counter used everywhere (records, tables, `bench params`)."""

from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

from methods.base import is_head


def _unique(model: nn.Module):
    """(name, param) once per tensor: tied / shared weights appear once (by identity, also on meta)."""
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield name, p


def count_parameters(
    model: nn.Module,
    head_modules: Iterable[str] = (),
    base_total: Optional[int] = None,
    trainable_override: Optional[int] = None,
) -> dict:
    """Total, trainable, and the trainable split between the method and the task head.

    base_total: the count of the model before the method touched it (peft keeps a frozen copy of
    modules_to_save, which must not inflate the total); trainable_override: a method's own count of
    trained scalars when requires_grad does not tell it (ID3's budget).
    """
    head_modules = list(head_modules)
    total = 0
    trainable_head = 0
    trainable_method = 0
    for name, p in _unique(model):
        n = p.numel()
        total += n
        if p.requires_grad:
            if is_head(name, head_modules):
                trainable_head += n
            else:
                trainable_method += n
    if trainable_override is not None:
        trainable_method = int(trainable_override)
    total = base_total if base_total is not None else total
    trainable = trainable_method + trainable_head
    return {
        "total": int(total),
        "trainable": int(trainable),
        "trainable_method": int(trainable_method),
        "trainable_head": int(trainable_head),
        "trainable_pct": 100.0 * trainable / total if total else 0.0,
    }
