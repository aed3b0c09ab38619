"""Fine-tuning methods: one sub-package (or module) per method, found by the registry."""

from methods.base import Method, MethodConfigError, MethodContext
from methods.registry import available, get_method, register

__all__ = ["Method", "MethodConfigError", "MethodContext", "available", "get_method", "register"]

# the tuners peft does not ship register their peft types here, so that after `import methods` plain
# peft code (PeftModel.from_pretrained, merge_and_unload, ...) loads saved Propulsion / LoRA-Dash / bottleneck adapters
from methods import bottleneck as _bottleneck  # noqa: F401
from methods import lora_dash as _lora_dash  # noqa: F401
from methods import propulsion as _propulsion  # noqa: F401
