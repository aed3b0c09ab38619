"""Fine-tuning methods: one sub-package (or module) per method, found by the registry."""

from methods.base import Method, MethodConfigError, MethodContext
from methods.registry import available, get_method, register

__all__ = ["Method", "MethodConfigError", "MethodContext", "available", "get_method", "register"]
