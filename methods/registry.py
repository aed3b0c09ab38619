"""Name -> method registry. Each sub-package of ``methods/`` registers itself on import."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Type

from methods.base import Method

_REGISTRY: dict[str, Type[Method]] = {}
_DISCOVERED = False


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return self.args[0]


def register(cls: Type[Method]) -> Type[Method]:
    """Class decorator: ``@register`` on a Method subclass with a ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import methods

    for info in pkgutil.iter_modules(methods.__path__):
        if info.name not in {"base", "registry", "targets"}:
            importlib.import_module(f"methods.{info.name}")
    _DISCOVERED = True


def available() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    _discover()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownMethodError(
            f"Unknown method {name!r}.{hint} Valid methods: {', '.join(sorted(_REGISTRY))} "
            f"(choose one with method=<name>)."
        )
    return _REGISTRY[name]()
